package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/pmem-webhook/pmem-webhook/certs"
)

// TLSServer is an HTTPS server on 127.0.0.1 with a certificate from a fresh
// test CA: what the apiserver needs to call a webhook by URL.
type TLSServer struct {
	// URL is https://127.0.0.1:<port>, without a path.
	URL string
	// CAPEM is the caBundle to register with the apiserver.
	CAPEM []byte

	srv  *http.Server
	done chan error
}

// ServeTLS serves h on a free loopback port until Close.
func ServeTLS(h http.Handler) (*TLSServer, error) {
	bundle, err := certs.Generate(nil, []net.IP{net.IPv4(127, 0, 0, 1)}, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("webhook serving certificate: %w", err)
	}
	pair, err := tls.X509KeyPair(bundle.CertPEM, bundle.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("load webhook serving certificate: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for webhook: %w", err)
	}
	s := &TLSServer{
		URL:   "https://" + l.Addr().String(),
		CAPEM: bundle.CAPEM,
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		},
		done: make(chan error, 1),
	}
	go func() { s.done <- s.srv.ServeTLS(l, "", "") }()
	return s, nil
}

// Close stops the server, waiting at most 5 s for requests in flight.
func (s *TLSServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if serveErr := <-s.done; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	return err
}
