// Package e2e holds the end-to-end features of pmem-webhook, written once
// against a rest.Config / controller-runtime client with
// sigs.k8s.io/e2e-framework, and the providers that give them a cluster:
// "local" (etcd + kube-apiserver + kube-controller-manager built from source,
// webhook in-process; see test/cluster), "kubelet" (the same plus a real node on
// this machine; test/kubelet) and "kind" (needs Docker; compiled here, not run).
//
// A provider only has to supply an Env; the feature bodies never know which
// provider runs them.
package e2e

import (
	"context"
	"net/http"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// Env is what a provider gives the features besides the envconf.Config
// (which carries the cluster's client).
type Env struct {
	// Injection is the configuration the webhook under test runs with, so
	// the features can tell what an injected pod must contain.
	Injection patch.Config

	// ServeWebhook makes h reachable by the apiserver as an admission webhook
	// and returns the clientConfig to register it with, plus a stop function.
	// The reinvocation feature uses it for a second mutating webhook.
	ServeWebhook func(ctx context.Context, h http.Handler) (admissionregistrationv1.WebhookClientConfig, func(), error)
}

// ProviderEnvVar selects the provider (default ProviderLocal).
const ProviderEnvVar = "E2E_PROVIDER"

// ProviderLocal runs the control plane from test/cluster on this machine.
const ProviderLocal = "local"
