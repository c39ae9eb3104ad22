package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"

	"github.com/pmem-webhook/pmem-webhook/certs"
	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/webhook"
)

var loopback = []net.IP{net.IPv4(127, 0, 0, 1)}

type running struct {
	srv    *Server
	done   chan error
	cancel context.CancelFunc
	dir    string
}

func start(t *testing.T, writeCert bool) (*running, *certs.Bundle) {
	t.Helper()
	dir := t.TempDir()
	b, err := certs.Generate([]string{"localhost"}, loopback, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if writeCert {
		if err := b.WriteDir(dir); err != nil {
			t.Fatal(err)
		}
	}
	cfg := patch.DefaultConfig()
	srv, err := New(Options{
		BindAddress: "127.0.0.1", CertDir: dir, CertReloadInterval: 50 * time.Millisecond,
		HealthAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", Config: &cfg, Log: logr.Discard(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: srv, done: make(chan error, 1), cancel: cancel, dir: dir}
	go func() { r.done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r, b
}

// eventually polls cond with a bounded number of tries; it asserts an
// outcome, not a duration.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 200 {
		if cond() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func tlsClient(ca []byte) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}, Timeout: 5 * time.Second}
}

func TestReadyOnlyOnceCertLoaded(t *testing.T) {
	r, b := start(t, false)
	health := "http://" + r.srv.HealthAddr()
	if code, _ := get(health + "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d before cert, want 200 (alive, just not ready)", code)
	}
	if code, _ := get(health + "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d without a cert, want 503", code)
	}
	if err := b.WriteDir(r.dir); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ready after the cert appears", func() bool { code, _ := get(health + "/readyz"); return code == http.StatusOK })
}

func TestServesAdmissionOverTLS(t *testing.T) {
	r, b := start(t, true)
	eventually(t, "ready", r.srv.Ready)
	body, err := os.ReadFile(filepath.Join("..", "webhook", "testdata", "review-redis-single.json"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tlsClient(b.CAPEM).Post("https://"+r.srv.WebhookAddr()+webhook.Path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&review); err != nil {
		t.Fatal(err)
	}
	if !review.Response.Allowed || len(review.Response.Patch) == 0 {
		t.Fatalf("want an allowed, patched response, got %+v", review.Response)
	}
	if resp.ProtoMajor != 1 {
		t.Errorf("served over HTTP/%d, want HTTP/1.1", resp.ProtoMajor)
	}
	code, metrics := get("http://" + r.srv.MetricsAddr() + "/metrics")
	if code != http.StatusOK || !strings.Contains(metrics, `pmem_webhook_admissions_total{decision="injected"} 1`) {
		t.Errorf("/metrics = %d and lacks the injected count:\n%.2000s", code, metrics)
	}
}

func TestTLSPolicy(t *testing.T) {
	r, b := start(t, true)
	eventually(t, "ready", r.srv.Ready)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b.CAPEM)

	conn, err := tls.Dial("tcp", r.srv.WebhookAddr(), &tls.Config{RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p == "h2" {
		t.Errorf("server negotiated HTTP/2")
	}
	conn.Close()

	if conn, err := tls.Dial("tcp", r.srv.WebhookAddr(), &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS11}); err == nil {
		conn.Close()
		t.Errorf("server accepted TLS 1.1")
	}
}

func TestCertRotation(t *testing.T) {
	r, b := start(t, true)
	eventually(t, "ready", r.srv.Ready)
	served := func() string {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(b.CAPEM)
		conn, err := tls.Dial("tcp", r.srv.WebhookAddr(), &tls.Config{RootCAs: pool})
		if err != nil {
			return "error: " + err.Error()
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := served()
	renewed, err := b.Renew([]string{"localhost"}, loopback, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := renewed.WriteDir(r.dir); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the renewed certificate to be served", func() bool {
		s := served()
		return s != before && !strings.HasPrefix(s, "error")
	})
}

func TestGracefulShutdown(t *testing.T) {
	r, _ := start(t, true)
	eventually(t, "ready", r.srv.Ready)
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Run returned %v after cancel, want nil", err)
		}
		r.done <- nil // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if r.srv.Ready() {
		t.Error("still ready after shutdown")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	cfg := patch.DefaultConfig()
	cfg.SizeFactor = -1
	if _, err := New(Options{BindAddress: "127.0.0.1", Config: &cfg}); err == nil || !strings.Contains(err.Error(), "sizeFactor") {
		t.Fatalf("New = %v, want a sizeFactor error", err)
	}
}

// During the shutdown delay a client's pooled keep-alive connection is
// still served, and told to close, instead of being cut under a request.
func TestShutdownDelayDrainsKeepAlive(t *testing.T) {
	dir, b := certDir(t)
	cfg := patch.DefaultConfig()
	srv, err := New(Options{BindAddress: "127.0.0.1", CertDir: dir, Config: &cfg, Log: logr.Discard(), ShutdownDelay: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cancel, done := runReady(t, srv)

	body, err := os.ReadFile(filepath.Join("..", "webhook", "testdata", "review-no-annotation.json"))
	if err != nil {
		t.Fatal(err)
	}
	client := tlsClient(b.CAPEM)
	post := func() *http.Response {
		t.Helper()
		resp, err := client.Post("https://"+srv.WebhookAddr()+webhook.Path, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("admission during the shutdown delay failed: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := post(); resp.Close {
		t.Fatal("connection closed before shutdown")
	}
	cancel()
	eventually(t, "unready", func() bool { return !srv.Ready() })
	// The pooled connection from the first request carries this one.
	if resp := post(); resp.StatusCode != http.StatusOK || !resp.Close {
		t.Errorf("during the delay: status %d, Connection: close %v; want 200 and close", resp.StatusCode, resp.Close)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// certDir writes a fresh serving certificate for localhost and 127.0.0.1
// into a temporary directory (the layout --cert-dir expects).
func certDir(t *testing.T) (string, *certs.Bundle) {
	t.Helper()
	dir := t.TempDir()
	b, err := certs.Generate([]string{"localhost"}, loopback, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	return dir, b
}

// runReady starts srv.Run and waits until it reports ready; cancel stops it
// and done receives Run's result.
func runReady(t *testing.T, srv *Server) (context.CancelFunc, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	eventually(t, "ready", srv.Ready)
	return cancel, done
}
