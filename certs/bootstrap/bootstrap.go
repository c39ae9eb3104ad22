// Package bootstrap runs the webhook's self-signed mode (Helm chart
// certs.mode=selfSigned, no cert-manager): the replicas share one CA and
// serving certificate through a pre-created Secret, write the certificate
// into the server's cert dir, and keep the caBundle of their
// MutatingWebhookConfiguration trusting it, across rotations and resets.
//
// Safety with several replicas rests on three rules:
//   - the Secret is only changed with the resourceVersion that was read, so
//     of replicas racing to fill or rotate it exactly one wins and the
//     others adopt what the winner wrote;
//   - a replica writes a certificate into its cert dir only after the
//     caBundle in the API server trusts that certificate's CA;
//   - a new CA is added to the caBundle (next to the old one) before the
//     Secret switches to it, and no CA is removed from the caBundle before
//     it expires (see mergeBundle), except one that lost the race to be
//     written into the Secret and so signs nothing anybody serves.
//
// The webhook may only touch these two objects (RBAC resourceNames), so it
// reads them with GET and watches them with metadata.name field selectors.
package bootstrap

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"github.com/pmem-webhook/pmem-webhook/certs"
)

// Defaults of Options.
const (
	// DefaultCABundlePropagation is how long a replica waits between adding
	// a new CA to the caBundle and switching the Secret to it: every
	// apiserver picks up webhook configuration changes through an informer,
	// and none may see a certificate from the new CA before it trusts it.
	DefaultCABundlePropagation = 30 * time.Second
	// DefaultResync bounds the time between two checks without any event.
	DefaultResync = 10 * time.Minute

	maxBackoff = time.Minute
	// maxAttempts bounds how often one Sync re-reads the Secret after losing
	// a race or after its own write.
	maxAttempts = 5
)

// Options configure a Bootstrapper.
type Options struct {
	// Namespace holds the Service and the Secret.
	Namespace string
	// ServiceName names the Service; the certificate is for
	// <service>.<namespace>.svc and <service>.<namespace>.svc.cluster.local.
	ServiceName string
	// SecretName is the existing Secret the replicas share.
	SecretName string
	// WebhookConfigName is the MutatingWebhookConfiguration whose webhooks'
	// clientConfig.caBundle is kept trusting the CA.
	WebhookConfigName string
	// CertDir receives ca.crt, tls.crt and tls.key.
	CertDir string
	// CertValidity and CAValidity are the validities of newly issued
	// serving and CA certificates; each is renewed after 2/3 of it.
	CertValidity, CAValidity time.Duration
	// CABundlePropagation: see DefaultCABundlePropagation; 0 waits not at all.
	CABundlePropagation time.Duration
	// Resync: see DefaultResync; 0 means DefaultResync.
	Resync time.Duration
	Log    logr.Logger
}

// DNSNames are the names the serving certificate is issued for.
func (o *Options) DNSNames() []string {
	svc := o.ServiceName + "." + o.Namespace + ".svc"
	return []string{svc, svc + ".cluster.local"}
}

// Bootstrapper keeps the Secret, the cert dir and the caBundle in step.
type Bootstrapper struct {
	o       Options
	names   []string
	cs      kubernetes.Interface
	log     logr.Logger
	trigger chan struct{}
}

// New checks the options and creates the client.
func New(cfg *rest.Config, o Options) (*Bootstrapper, error) {
	for _, f := range []struct{ name, value string }{
		{"Namespace", o.Namespace}, {"ServiceName", o.ServiceName}, {"SecretName", o.SecretName},
		{"WebhookConfigName", o.WebhookConfigName}, {"CertDir", o.CertDir},
	} {
		if f.value == "" {
			return nil, fmt.Errorf("self-signed: Options.%s is required", f.name)
		}
	}
	if o.CertValidity < minValidity || o.CAValidity < o.CertValidity {
		return nil, fmt.Errorf("self-signed: CertValidity %s must be at least %s and CAValidity %s at least CertValidity", o.CertValidity, minValidity, o.CAValidity)
	}
	if o.Resync <= 0 {
		o.Resync = DefaultResync
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("self-signed: API client: %w", err)
	}
	return &Bootstrapper{
		o:       o,
		names:   o.DNSNames(),
		cs:      cs,
		log:     o.Log.WithName("self-signed"),
		trigger: make(chan struct{}, 1),
	}, nil
}

// Run syncs until ctx ends: at start, whenever the Secret or the webhook
// configuration changes, when a certificate becomes due, and at least every
// Resync. Errors (the Secret or configuration missing, RBAC, the API server
// away) are logged and retried with backoff; meanwhile the cert dir stays as
// it is, so a replica that never got a certificate stays unready. Run
// returns when ctx is done.
func (b *Bootstrapper) Run(ctx context.Context) error {
	b.watch(ctx)
	backoff := time.Second
	for {
		next, err := b.Sync(ctx)
		wait := b.o.Resync
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			b.log.Error(err, "sync failed; retrying", "after", backoff)
			wait, backoff = backoff, min(2*backoff, maxBackoff)
		default:
			backoff = time.Second
			// A little late rather than early: an early wake-up finds
			// nothing due yet.
			if d := time.Until(next) + 100*time.Millisecond; d < wait {
				wait = max(d, 0)
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-b.trigger:
			t.Stop()
		case <-t.C:
		}
	}
}

// Sync brings the Secret, the caBundle and the cert dir up to date once and
// returns when it next has to run (a certificate becomes due).
func (b *Bootstrapper) Sync(ctx context.Context) (next time.Time, err error) {
	var m material
	for attempt := 1; ; attempt++ {
		sec, err := b.cs.CoreV1().Secrets(b.o.Namespace).Get(ctx, b.o.SecretName, metav1.GetOptions{})
		if err != nil {
			return time.Time{}, b.secretErr(err)
		}
		m = parseMaterial(sec.Data)
		d := decide(m, b.names, time.Now())
		if d.act == actNone {
			next = d.next
			break
		}
		if attempt > maxAttempts {
			return time.Time{}, fmt.Errorf("secret %s/%s still needs %q after %d attempts: %s", b.o.Namespace, b.o.SecretName, d.act, maxAttempts, d.reason)
		}
		// Whether this replica wins or loses, the next round re-reads the
		// Secret and checks what is there now.
		if err := b.change(ctx, sec, m, d); err != nil {
			return time.Time{}, err
		}
	}
	if err := b.ensureCABundle(ctx, m); err != nil {
		return time.Time{}, err
	}
	if err := b.writeCertDir(m); err != nil {
		return time.Time{}, err
	}
	return next, nil
}

// change writes new material for d into the Secret, on the resourceVersion
// that was read. Losing that race is not an error.
func (b *Bootstrapper) change(ctx context.Context, sec *corev1.Secret, m material, d decision) error {
	var (
		nb  *certs.Bundle
		err error
	)
	switch d.act {
	case actNewCA, actRotateCA:
		// Generate issues a serving certificate with the CA's validity;
		// renew it at once to get the (shorter) serving validity.
		if nb, err = certs.Generate(b.names, nil, b.o.CAValidity); err == nil {
			nb, err = nb.Renew(b.names, nil, b.o.CertValidity)
		}
	case actIssue:
		nb, err = (&certs.Bundle{CAPEM: m.data[KeyCA], CAKeyPEM: m.data[KeyCAKey]}).Renew(b.names, nil, b.o.CertValidity)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", d.act, err)
	}
	newCA, err := parseCert(nb.CAPEM)
	if err != nil {
		return fmt.Errorf("%s: parse new CA: %w", d.act, err)
	}

	sec = sec.DeepCopy()
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	switch d.act {
	case actRotateCA:
		// Trust first, switch later: the old CA keeps being trusted (it
		// becomes ca-previous.crt) and the new one is trusted before any
		// replica can serve a certificate it signed.
		now := time.Now()
		want := []*x509.Certificate{newCA, m.ca}
		if m.prevCA != nil && now.Before(m.prevCA.NotAfter) {
			want = append(want, m.prevCA)
		}
		if err := b.updateCABundle(ctx, "add the new CA before rotating", func(existing []byte) ([]byte, bool) {
			return mergeBundle(existing, want, now)
		}); err != nil {
			return err
		}
		if b.o.CABundlePropagation > 0 {
			b.log.Info("new CA added to caBundle; waiting for API servers to pick it up before switching the Secret", "wait", b.o.CABundlePropagation)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(b.o.CABundlePropagation):
			}
		}
		sec.Data[KeyPreviousCA] = m.data[KeyCA]
	case actNewCA:
		// The old CA cannot issue anything, but while it is valid replicas
		// may still serve a certificate it signed: keep trusting it.
		delete(sec.Data, KeyPreviousCA)
		if now := time.Now(); m.ca != nil && m.ca.IsCA && now.Before(m.ca.NotAfter) && !now.Before(m.ca.NotBefore) {
			sec.Data[KeyPreviousCA] = m.data[KeyCA]
		}
	}
	sec.Data[KeyCA] = nb.CAPEM
	sec.Data[KeyCAKey] = nb.CAKeyPEM
	sec.Data[KeyCert] = nb.CertPEM
	sec.Data[KeyKey] = nb.KeyPEM

	// sec carries the resourceVersion it was read with: a precondition.
	_, err = b.cs.CoreV1().Secrets(b.o.Namespace).Update(ctx, sec, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		b.log.Info("another replica changed the Secret first; using what it wrote", "action", d.act.String())
		if d.act == actRotateCA {
			// Our CA lost and signs nothing anybody serves: stop trusting it.
			if err := b.updateCABundle(ctx, "drop the CA that lost the race", func(existing []byte) ([]byte, bool) {
				return removeFromBundle(existing, newCA)
			}); err != nil {
				b.log.Error(err, "could not remove unused CA from caBundle; it expires on its own", "notAfter", newCA.NotAfter)
			}
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("update secret %s/%s (%s): %w", b.o.Namespace, b.o.SecretName, d.act, err)
	}
	b.log.Info("updated Secret", "action", d.act.String(), "reason", d.reason, "secret", b.o.Namespace+"/"+b.o.SecretName)
	return nil
}

// ensureCABundle makes every webhook of the configuration trust the
// Secret's CA (and its predecessor while that is valid).
func (b *Bootstrapper) ensureCABundle(ctx context.Context, m material) error {
	now := time.Now()
	want := []*x509.Certificate{m.ca}
	if m.prevCA != nil && now.Before(m.prevCA.NotAfter) {
		want = append(want, m.prevCA)
	}
	return b.updateCABundle(ctx, "trust the Secret's CA", func(existing []byte) ([]byte, bool) {
		return mergeBundle(existing, want, now)
	})
}

// conflictBackoff retries read-modify-write of the webhook configuration,
// which every replica edits.
var conflictBackoff = wait.Backoff{Steps: 10, Duration: 20 * time.Millisecond, Factor: 2, Jitter: 0.5}

// updateCABundle applies edit to each webhook's caBundle and updates the
// configuration, on the resourceVersion read, when anything changed.
func (b *Bootstrapper) updateCABundle(ctx context.Context, why string, edit func([]byte) ([]byte, bool)) error {
	client := b.cs.AdmissionregistrationV1().MutatingWebhookConfigurations()
	err := retry.RetryOnConflict(conflictBackoff, func() error {
		cfg, err := client.Get(ctx, b.o.WebhookConfigName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		var changed []string
		for i := range cfg.Webhooks {
			out, ch := edit(cfg.Webhooks[i].ClientConfig.CABundle)
			if ch {
				cfg.Webhooks[i].ClientConfig.CABundle = out
				changed = append(changed, cfg.Webhooks[i].Name)
			}
		}
		if len(changed) == 0 {
			return nil
		}
		if _, err := client.Update(ctx, cfg, metav1.UpdateOptions{}); err != nil {
			return err
		}
		b.log.Info("updated caBundle", "why", why, "webhookConfiguration", b.o.WebhookConfigName, "webhooks", changed)
		return nil
	})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("MutatingWebhookConfiguration %s not found (it is installed with the webhook and must exist): %w", b.o.WebhookConfigName, err)
	}
	if err != nil {
		return fmt.Errorf("%s: caBundle of MutatingWebhookConfiguration %s: %w", why, b.o.WebhookConfigName, err)
	}
	return nil
}

// writeCertDir installs the Secret's certificate and key, if they differ
// from what is there.
func (b *Bootstrapper) writeCertDir(m material) error {
	bundle := &certs.Bundle{CAPEM: m.data[KeyCA], CertPEM: m.data[KeyCert], KeyPEM: m.data[KeyKey]}
	same := true
	for name, want := range map[string][]byte{certs.CAFile: bundle.CAPEM, certs.CertFile: bundle.CertPEM, certs.KeyFile: bundle.KeyPEM} {
		have, err := os.ReadFile(filepath.Join(b.o.CertDir, name))
		if err != nil || !bytes.Equal(have, want) {
			same = false
			break
		}
	}
	if same {
		return nil
	}
	if err := bundle.WriteDir(b.o.CertDir); err != nil {
		return fmt.Errorf("write cert dir %s: %w", b.o.CertDir, err)
	}
	b.log.Info("installed serving certificate", "dir", b.o.CertDir, "serial", m.cert.SerialNumber.Text(16), "notAfter", m.cert.NotAfter, "caSerial", m.ca.SerialNumber.Text(16))
	return nil
}

func (b *Bootstrapper) secretErr(err error) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("secret %s/%s not found: it must exist (the Helm chart creates it empty; the webhook may not create Secrets): %w", b.o.Namespace, b.o.SecretName, err)
	}
	return fmt.Errorf("get secret %s/%s: %w", b.o.Namespace, b.o.SecretName, err)
}

// watch starts informers on exactly the two objects: RBAC restricted by
// resourceNames allows list and watch only with a metadata.name field
// selector. Any event triggers a Sync, which then reads both objects fresh.
func (b *Bootstrapper) watch(ctx context.Context) {
	poke := func() {
		select {
		case b.trigger <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}
	byName := func(name string) func(*metav1.ListOptions) {
		return func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}
	}
	secretSel, configSel := byName(b.o.SecretName), byName(b.o.WebhookConfigName)
	secrets := b.cs.CoreV1().Secrets(b.o.Namespace)
	configs := b.cs.AdmissionregistrationV1().MutatingWebhookConfigurations()
	for _, inf := range []struct {
		obj runtime.Object
		lw  *cache.ListWatch
	}{
		{&corev1.Secret{}, &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				secretSel(&o)
				return secrets.List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				secretSel(&o)
				return secrets.Watch(ctx, o)
			},
		}},
		{&admissionregistrationv1.MutatingWebhookConfiguration{}, &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				configSel(&o)
				return configs.List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				configSel(&o)
				return configs.Watch(ctx, o)
			},
		}},
	} {
		_, ctrl := cache.NewInformerWithOptions(cache.InformerOptions{ListerWatcher: inf.lw, ObjectType: inf.obj, Handler: h})
		go ctrl.RunWithContext(ctx)
	}
}
