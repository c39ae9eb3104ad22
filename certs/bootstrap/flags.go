package bootstrap

import (
	"flag"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// minValidity keeps a fresh certificate from being due at once: certs
// backdates NotBefore by a minute for clock skew and renewal starts after
// two thirds of the validity, so anything up to 90s would renew forever.
const minValidity = 95 * time.Second

// Flags are the command-line flags of the self-signed mode; Register
// defines them, Load validates them.
type Flags struct {
	fs                                                     *flag.FlagSet
	enabled                                                bool
	configName, serviceName, namespace, secretName, kubecf string
	certValidity, caValidity                               time.Duration
}

// Register defines the self-signed flags on fs.
func Register(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs}
	fs.BoolVar(&f.enabled, "self-signed", false, "issue and rotate the serving certificate and the webhook configuration's caBundle ourselves (no cert-manager); needs the flags below")
	fs.StringVar(&f.configName, "webhook-config-name", "", "self-signed: MutatingWebhookConfiguration whose caBundle is kept up to date")
	fs.StringVar(&f.serviceName, "service-name", "", "self-signed: Service in front of the webhook; the certificate is for <service>.<namespace>.svc[.cluster.local]")
	fs.StringVar(&f.namespace, "namespace", "", "self-signed: namespace of the Service and the Secret")
	fs.StringVar(&f.secretName, "cert-secret-name", "", "self-signed: existing Secret the replicas share the CA and certificate through")
	fs.DurationVar(&f.certValidity, "cert-validity", 8760*time.Hour, "self-signed: validity of the serving certificate; renewed after 2/3 of it")
	fs.DurationVar(&f.caValidity, "ca-validity", 0, "self-signed: validity of the CA; 0 means 3 x --cert-validity. Rotated after 2/3 of it")
	fs.StringVar(&f.kubecf, "kubeconfig", "", "kubeconfig file for the webhook's API calls (self-signed mode, claim checks); default: the in-cluster service account")
	return f
}

// Load returns the validated options (with CertDir still to be set by the
// caller), or nil when --self-signed is off. Self-signed flags without
// --self-signed are an error rather than silently ignored.
func (f *Flags) Load() (*Options, error) {
	if !f.enabled {
		var stray []string
		f.fs.Visit(func(fl *flag.Flag) {
			switch fl.Name {
			case "webhook-config-name", "service-name", "namespace", "cert-secret-name", "cert-validity", "ca-validity":
				stray = append(stray, "--"+fl.Name)
			}
		})
		if len(stray) > 0 {
			return nil, fmt.Errorf("%s only apply with --self-signed", strings.Join(stray, ", "))
		}
		return nil, nil
	}
	for _, c := range []struct {
		flag, value string
		check       func(string) []string
	}{
		{"webhook-config-name", f.configName, validation.IsDNS1123Subdomain},
		{"service-name", f.serviceName, validation.IsDNS1035Label},
		{"namespace", f.namespace, validation.IsDNS1123Label},
		{"cert-secret-name", f.secretName, validation.IsDNS1123Subdomain},
	} {
		if c.value == "" {
			return nil, fmt.Errorf("--self-signed needs --%s", c.flag)
		}
		if errs := c.check(c.value); len(errs) > 0 {
			return nil, fmt.Errorf("--%s=%q: %s", c.flag, c.value, strings.Join(errs, "; "))
		}
	}
	if f.certValidity < minValidity {
		return nil, fmt.Errorf("--cert-validity=%s: must be at least %s (certificates are backdated 1m and renewed after 2/3 of their validity)", f.certValidity, minValidity)
	}
	ca := f.caValidity
	if ca == 0 {
		ca = 3 * f.certValidity
	}
	if ca < f.certValidity {
		return nil, fmt.Errorf("--ca-validity=%s: must be at least --cert-validity (%s)", f.caValidity, f.certValidity)
	}
	return &Options{
		Namespace:         f.namespace,
		ServiceName:       f.serviceName,
		SecretName:        f.secretName,
		WebhookConfigName: f.configName,
		CertValidity:      f.certValidity,
		CAValidity:        ca,
		// Rotating the CA is rare; waiting half a minute more costs nothing.
		CABundlePropagation: DefaultCABundlePropagation,
	}, nil
}

// RESTConfig is the client configuration: --kubeconfig if set, else the
// in-cluster service account.
func (f *Flags) RESTConfig() (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if f.kubecf == "" {
		if cfg, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("in-cluster client configuration (outside a cluster pass --kubeconfig): %w", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", f.kubecf); err != nil {
		return nil, fmt.Errorf("--kubeconfig=%s: %w", f.kubecf, err)
	}
	cfg.UserAgent = "pmem-webhook"
	return cfg, nil
}
