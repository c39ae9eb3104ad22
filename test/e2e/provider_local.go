package e2e

import (
	"context"
	"fmt"
	"net/http"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/client-go/rest"

	"github.com/pmem-webhook/pmem-webhook/test/cluster"
)

// Local is the "local" provider: a control plane from test/cluster and the
// webhook served in-process, registered with deploy/'s configuration.
type Local struct {
	ControlPlane *cluster.ControlPlane
	Webhook      *cluster.Webhook
}

// StartLocal starts the control plane and the webhook. The error wraps
// cluster.ErrBinariesMissing when the binaries are not built.
func StartLocal(ctx context.Context, logf func(string, ...any)) (*Local, *rest.Config, *Env, error) {
	cp, err := cluster.Start(ctx, cluster.Options{Logf: logf})
	if err != nil {
		return nil, nil, nil, err
	}
	wh, err := cp.StartWebhook(ctx, cluster.WebhookOptions{})
	if err != nil {
		cp.Stop()
		return nil, nil, nil, fmt.Errorf("start webhook: %w", err)
	}

	logf("webhook serving at %s, registered from deploy/", wh.URL)
	env := &Env{
		Injection: wh.Config,
		ServeWebhook: func(_ context.Context, h http.Handler) (admissionregistrationv1.WebhookClientConfig, func(), error) {
			srv, err := cluster.ServeTLS(h)
			if err != nil {
				return admissionregistrationv1.WebhookClientConfig{}, nil, err
			}
			url := srv.URL + "/mutate"
			return admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: srv.CAPEM}, func() { _ = srv.Close() }, nil
		},
	}
	return &Local{ControlPlane: cp, Webhook: wh}, cp.Config, env, nil
}

// Stop stops the webhook, then the control plane.
func (l *Local) Stop() error {
	err := l.Webhook.Stop()
	l.ControlPlane.Stop()
	return err
}
