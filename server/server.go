// Package server runs the admission webhook: TLS with certificates that
// are reloaded when cert-manager rotates them, health and readiness
// endpoints, Prometheus metrics and a graceful shutdown.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"

	"github.com/pmem-webhook/pmem-webhook/certs"
	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/webhook"
)

// Options configure Run.
type Options struct {
	// BindAddress and Port of the TLS webhook listener; Port 0 picks a
	// free port (tests), readable from Server.WebhookAddr.
	BindAddress string
	Port        int
	// CertDir holds CertName and KeyName (a kubernetes.io/tls Secret
	// mount). They are re-read when they change.
	CertDir, CertName, KeyName string
	// CertReloadInterval is how often the cert files are re-read even
	// without a filesystem event (Secret mounts update through symlink
	// swaps that inotify can miss).
	CertReloadInterval time.Duration
	// HealthAddr serves /healthz and /readyz; MetricsAddr serves
	// /metrics. Empty disables; equal addresses share one listener.
	HealthAddr, MetricsAddr string
	// ShutdownTimeout bounds how long in-flight admissions may take to
	// finish after the context is cancelled.
	ShutdownTimeout time.Duration
	// ShutdownDelay keeps serving for this long after the context is
	// cancelled, unready, answering every request with "Connection: close".
	// Clients (the apiserver) pool keep-alive connections; closing an idle
	// one at the moment a request is written on it shows up as an EOF
	// admission failure. Draining them first leaves only connections that
	// carried no request during the delay.
	ShutdownDelay time.Duration
	Config        *patch.Config
	// Claims, when set, lets the webhook refuse pods whose claim
	// annotation names a PersistentVolumeClaim that does not exist.
	Claims webhook.ClaimLookup
	Log    logr.Logger
	// Registry receives the metrics; nil creates a private one with the
	// Go and process collectors.
	Registry *prometheus.Registry
}

func (o *Options) setDefaults() {
	if o.CertName == "" {
		o.CertName = certs.CertFile
	}
	if o.KeyName == "" {
		o.KeyName = certs.KeyFile
	}
	if o.CertReloadInterval == 0 {
		o.CertReloadInterval = 10 * time.Second
	}
	if o.ShutdownTimeout == 0 {
		o.ShutdownTimeout = 25 * time.Second
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
		o.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
}

// Server is a running webhook. Create it with New, run it with Run.
type Server struct {
	opts     Options
	handler  *webhook.Handler
	ready    atomic.Bool
	draining atomic.Bool
	webhookL net.Listener
	healthL  net.Listener
	metricsL net.Listener
}

// New validates the options and binds the listeners, so that addresses
// are known (and port conflicts reported) before Run.
func New(o Options) (*Server, error) {
	o.setDefaults()
	if o.Config == nil {
		return nil, errors.New("server: Options.Config is required")
	}
	if err := o.Config.Validate(); err != nil {
		return nil, err
	}
	m, err := webhook.NewMetrics(o.Registry)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	s := &Server{opts: o, handler: &webhook.Handler{Config: o.Config, Metrics: m, Log: o.Log.WithName("admission"), Claims: o.Claims}}

	if s.webhookL, err = net.Listen("tcp", net.JoinHostPort(o.BindAddress, fmt.Sprint(o.Port))); err != nil {
		return nil, fmt.Errorf("listen for webhook: %w", err)
	}
	if o.HealthAddr != "" {
		if s.healthL, err = net.Listen("tcp", o.HealthAddr); err != nil {
			s.close()
			return nil, fmt.Errorf("listen for health probes: %w", err)
		}
	}
	if o.MetricsAddr != "" && o.MetricsAddr != o.HealthAddr {
		if s.metricsL, err = net.Listen("tcp", o.MetricsAddr); err != nil {
			s.close()
			return nil, fmt.Errorf("listen for metrics: %w", err)
		}
	}
	return s, nil
}

// WebhookAddr is the address the TLS listener is bound to.
func (s *Server) WebhookAddr() string { return s.webhookL.Addr().String() }

// HealthAddr is the address of /healthz and /readyz ("" if disabled).
func (s *Server) HealthAddr() string { return addrOf(s.healthL) }

// MetricsAddr is the address of /metrics ("" if disabled).
func (s *Server) MetricsAddr() string {
	if s.metricsL == nil {
		return s.HealthAddr()
	}
	return addrOf(s.metricsL)
}

// Ready reports whether a certificate is loaded and admissions are served.
func (s *Server) Ready() bool { return s.ready.Load() }

func addrOf(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

func (s *Server) close() {
	for _, l := range []net.Listener{s.webhookL, s.healthL, s.metricsL} {
		if l != nil {
			l.Close()
		}
	}
}

// Run is New followed by (*Server).Run.
func Run(ctx context.Context, o Options) error {
	s, err := New(o)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// Run serves until ctx is cancelled, then stops accepting, finishes
// in-flight admissions (bounded by ShutdownTimeout) and returns.
func (s *Server) Run(ctx context.Context) error {
	log := s.opts.Log
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	errc := make(chan error, 3)
	var aux []*http.Server
	if s.healthL != nil {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if !s.ready.Load() {
				http.Error(w, "serving certificate not loaded yet, or shutting down", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		if s.metricsL == nil && s.opts.MetricsAddr != "" {
			mux.Handle("/metrics", s.metricsHandler())
		}
		aux = append(aux, serveAux(s.healthL, mux, errc))
	}
	if s.metricsL != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", s.metricsHandler())
		aux = append(aux, serveAux(s.metricsL, mux, errc))
	}
	defer func() {
		for _, srv := range aux {
			srv.Close()
		}
	}()

	watcher, err := s.waitForCert(ctx)
	if err != nil {
		s.close()
		return err
	}
	go func() {
		if err := watcher.Start(ctx); err != nil {
			log.Error(err, "certificate watcher stopped")
		}
	}()

	mux := http.NewServeMux()
	mux.Handle(webhook.Path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			w.Header().Set("Connection", "close")
		}
		s.handler.ServeHTTP(w, r)
	}))
	workloads := webhook.NewWorkloadWebhook(&webhook.WorkloadHandler{Config: s.opts.Config, Log: s.opts.Log.WithName("workloads")})
	mux.Handle(webhook.WorkloadPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			w.Header().Set("Connection", "close")
		}
		workloads.ServeHTTP(w, r)
	}))
	srv := &http.Server{
		Handler: mux,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: watcher.GetCertificate,
			// HTTP/1.1 only: HTTP/2 rapid reset (CVE-2023-44487) and
			// stream-multiplexing floods cannot reach the handler.
			NextProtos: []string{"http/1.1"},
		},
		// A non-nil empty map is what turns HTTP/2 off in net/http.
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
	}
	go func() {
		err := srv.Serve(tls.NewListener(s.webhookL, srv.TLSConfig))
		if !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("webhook server: %w", err)
		}
	}()
	s.ready.Store(true)
	log.Info("serving admissions", "address", s.WebhookAddr(), "path", webhook.Path, "health", s.HealthAddr(), "metrics", s.MetricsAddr())

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	// Not ready first, so no new traffic is routed here while in-flight
	// requests finish.
	s.ready.Store(false)
	if runErr == nil && s.opts.ShutdownDelay > 0 {
		log.Info("shutting down: draining keep-alive connections", "delay", s.opts.ShutdownDelay)
		s.draining.Store(true)
		time.Sleep(s.opts.ShutdownDelay)
	}
	log.Info("shutting down: finishing in-flight admissions", "timeout", s.opts.ShutdownTimeout)
	sctx, scancel := context.WithTimeout(context.Background(), s.opts.ShutdownTimeout)
	defer scancel()
	// Shutdown closes only idle connections and waits for active ones, so
	// a request whose handler ran is answered. A request that net/http
	// reads after Shutdown began (written on an idle keep-alive connection
	// as it is closed, or the first request of a connection accepted just
	// before) is dropped without reaching the handler: in Go 1.26
	// conn.serve returns when shuttingDown() right after readRequest, so
	// the case golang/go#65802 describes (a handler running for a request
	// on a connection closeIdleConns already closed) cannot happen, and
	// deferring the close of such a connection would not get it answered
	// either. The client sees EOF or a reset and has to retry (the delay
	// above makes this rare). TestNoHandledAdmissionLostInShutdown checks
	// that no handled request loses its answer.
	if err := srv.Shutdown(sctx); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("shutdown: %w", err))
	}
	log.Info("stopped")
	return runErr
}

// waitForCert blocks until the serving certificate can be loaded. With
// cert-manager the Secret may appear after the pod starts; the pod stays
// unready meanwhile instead of crash-looping.
func (s *Server) waitForCert(ctx context.Context) (*certwatcher.CertWatcher, error) {
	certPath := filepath.Join(s.opts.CertDir, s.opts.CertName)
	keyPath := filepath.Join(s.opts.CertDir, s.opts.KeyName)
	logged := false
	for {
		w, err := certwatcher.New(certPath, keyPath)
		if err == nil {
			return w.WithWatchInterval(s.opts.CertReloadInterval), nil
		}
		if !logged {
			s.opts.Log.Info("waiting for the serving certificate", "cert", certPath, "key", keyPath, "error", err.Error())
			logged = true
		}
		if _, statErr := os.Stat(s.opts.CertDir); statErr != nil && !os.IsNotExist(statErr) {
			return nil, fmt.Errorf("cert dir %s: %w", s.opts.CertDir, statErr)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no serving certificate in %s before shutdown: %w", s.opts.CertDir, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.opts.Registry, promhttp.HandlerOpts{Registry: s.opts.Registry})
}

func serveAux(l net.Listener, h http.Handler, errc chan<- error) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serve %s: %w", l.Addr(), err)
		}
	}()
	return srv
}
