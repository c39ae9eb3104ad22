package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pmem-webhook/pmem-webhook/certs"
	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/server"
	"github.com/pmem-webhook/pmem-webhook/webhook"
)

// Webhook is the pmem webhook served in-process (server.Run, exactly what
// cmd/pmem-webhook runs) on 127.0.0.1 and registered with a control plane.
type Webhook struct {
	// URL is https://127.0.0.1:<port> (without the path).
	URL string
	// CAPEM signed the serving certificate; it is the registered caBundle.
	CAPEM []byte
	// HealthURL and MetricsURL are http://127.0.0.1:<port>/readyz and /metrics.
	HealthURL, MetricsURL string
	// Config is the injection configuration the server runs with.
	Config patch.Config
	// LogFile receives the server's log.
	LogFile string

	cancel  context.CancelFunc
	done    chan error
	logFile *os.File
	once    sync.Once
	stopErr error
}

// WebhookOptions configure StartWebhook.
type WebhookOptions struct {
	// Config is the injection configuration; nil means
	// DeployedInjectionConfig, what deploy/'s Deployment runs with.
	Config *patch.Config
	// Dir receives the serving certificate and webhook.log; "" means the
	// control plane's directory.
	Dir string
}

// StartWebhook serves the webhook with a serving certificate from
// certs.Generate and registers the MutatingWebhookConfiguration that deploy/
// ships, pointed at it (RegisterWebhook). It returns once the apiserver
// calls it.
func (cp *ControlPlane) StartWebhook(ctx context.Context, opts WebhookOptions) (*Webhook, error) {
	dir := opts.Dir
	if dir == "" {
		dir = cp.Dir
	}
	return StartWebhook(ctx, cp.Config, dir, opts.Config)
}

// StartWebhook is ControlPlane.StartWebhook for any apiserver that can reach
// 127.0.0.1 (cfg must be allowed to write MutatingWebhookConfigurations).
func StartWebhook(ctx context.Context, cfg *rest.Config, dir string, injection *patch.Config) (wh *Webhook, err error) {
	if injection == nil {
		if injection, err = DeployedInjectionConfig(); err != nil {
			return nil, err
		}
	}
	conf := *injection
	certDir := filepath.Join(dir, "webhook-certs")
	bundle, err := certs.Generate(nil, []net.IP{net.IPv4(127, 0, 0, 1)}, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("webhook serving certificate: %w", err)
	}
	if err := bundle.WriteDir(certDir); err != nil {
		return nil, fmt.Errorf("write webhook certificate: %w", err)
	}
	logPath := filepath.Join(dir, "webhook.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open webhook log: %w", err)
	}
	log := funcr.New(func(prefix, args string) {
		fmt.Fprintf(logFile, "%s %s %s\n", time.Now().Format(time.RFC3339Nano), prefix, args)
	}, funcr.Options{Verbosity: 1})

	// As deployed (--check-claims defaults to on): claim annotations are
	// checked against the apiserver.
	clients, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("webhook claim lookups: %w", err)
	}
	srv, err := server.New(server.Options{
		BindAddress: "127.0.0.1",
		Port:        0,
		CertDir:     certDir,
		HealthAddr:  "127.0.0.1:0",
		MetricsAddr: "127.0.0.1:0",
		// Tests stop the webhook only after their last admission.
		ShutdownTimeout: 5 * time.Second,
		Config:          &conf,
		Claims:          webhook.APIClaimLookup{Client: clients},
		Log:             log,
	})
	if err != nil {
		logFile.Close()
		return nil, fmt.Errorf("webhook server: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	wh = &Webhook{
		URL:        "https://" + srv.WebhookAddr(),
		CAPEM:      bundle.CAPEM,
		HealthURL:  "http://" + srv.HealthAddr() + "/readyz",
		MetricsURL: "http://" + srv.MetricsAddr() + "/metrics",
		Config:     conf,
		LogFile:    logPath,
		cancel:     cancel,
		done:       make(chan error, 1),
		logFile:    logFile,
	}
	go func() { wh.done <- srv.Run(runCtx) }()
	defer func() {
		if err != nil {
			_ = wh.Stop()
		}
	}()

	if err := waitReady(ctx, srv, wh.done, 30*time.Second); err != nil {
		return nil, err
	}
	if _, err := RegisterWebhook(ctx, cfg, wh.URL, wh.CAPEM); err != nil {
		return nil, fmt.Errorf("%w (webhook log: %s)", err, logPath)
	}
	return wh, nil
}

func waitReady(ctx context.Context, srv *server.Server, done chan error, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for !srv.Ready() {
		select {
		case err := <-done:
			done <- err // keep it for Stop
			return fmt.Errorf("webhook server stopped before it was ready: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("webhook server not ready within %s: %w", timeout, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// Stop shuts the server down gracefully. Safe to call more than once.
func (w *Webhook) Stop() error {
	w.once.Do(func() {
		w.cancel()
		select {
		case err := <-w.done:
			if err != nil && !errors.Is(err, context.Canceled) {
				w.stopErr = err
			}
		case <-time.After(15 * time.Second):
			w.stopErr = errors.New("webhook server did not stop within 15s")
		}
		w.logFile.Close()
	})
	return w.stopErr
}
