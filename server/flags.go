package server

import (
	"flag"
	"time"

	"github.com/pmem-webhook/pmem-webhook/certs"
	"github.com/pmem-webhook/pmem-webhook/patch"
)

// Flags holds the server's own command line flags: listeners, serving
// certificate, shutdown, logging and the claim check. They are registered
// here, beside Options, the way config.Register registers the injection
// flags, so that cmd/pmem-webhook and the manifest tests (deploy/) parse
// the same flag set.
type Flags struct {
	opts        Options
	logLevel    int
	checkClaims bool
}

// Register adds the server flags to fs.
func Register(fs *flag.FlagSet) *Flags {
	f := &Flags{}
	o := &f.opts
	fs.StringVar(&o.BindAddress, "bind-address", "", "address the webhook listens on (empty: all)")
	fs.IntVar(&o.Port, "port", 9443, "TLS port of the webhook")
	fs.StringVar(&o.CertDir, "cert-dir", "/tmp/k8s-webhook-server/serving-certs", "directory with the serving certificate and key (reloaded on change)")
	fs.StringVar(&o.CertName, "cert-name", certs.CertFile, "certificate file name in --cert-dir")
	fs.StringVar(&o.KeyName, "key-name", certs.KeyFile, "key file name in --cert-dir")
	fs.DurationVar(&o.CertReloadInterval, "cert-reload-interval", 10*time.Second, "how often the certificate files are re-read even without a change event")
	fs.StringVar(&o.HealthAddr, "health-addr", ":8081", "address of /healthz and /readyz (empty disables)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":8080", "address of /metrics (empty disables)")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 25*time.Second, "how long in-flight admissions may take to finish on SIGTERM")
	fs.DurationVar(&o.ShutdownDelay, "shutdown-delay", 0, "on SIGTERM, keep serving this long (unready, Connection: close) so clients drain pooled connections before the listener closes")
	fs.BoolVar(&f.checkClaims, "check-claims", true, "refuse pods whose "+patch.AnnotationClaim+" names a PersistentVolumeClaim that does not exist (RBAC: get persistentvolumeclaims); without it such pods are admitted and stay Pending")
	fs.IntVar(&f.logLevel, "v", 0, "log verbosity: 0 logs decisions that change or deny a pod, 1 also pass-throughs")
	return f
}

// Options returns the listener, certificate and shutdown options the flags
// set. The caller adds what no flag gives: Config, Log, Claims.
func (f *Flags) Options() Options { return f.opts }

// LogLevel is -v: 0 logs decisions that change or deny a pod, 1 also
// pass-throughs.
func (f *Flags) LogLevel() int { return f.logLevel }

// CheckClaims is --check-claims: look up the PVC a claim annotation names.
func (f *Flags) CheckClaims() bool { return f.checkClaims }
