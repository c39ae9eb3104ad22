package server

import (
	"flag"
	"io"
	"testing"
	"time"
)

// The flags' defaults are the documented ones (README, "Server flags"), and
// every flag reaches its option.
func TestRegister(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want Options
	}{
		{"defaults", nil, Options{
			Port: 9443, CertDir: "/tmp/k8s-webhook-server/serving-certs", CertName: "tls.crt", KeyName: "tls.key",
			CertReloadInterval: 10 * time.Second, HealthAddr: ":8081", MetricsAddr: ":8080", ShutdownTimeout: 25 * time.Second,
		}},
		{"all set", []string{
			"--bind-address=127.0.0.1", "--port=1", "--cert-dir=/c", "--cert-name=a.crt", "--key-name=a.key",
			"--cert-reload-interval=1s", "--health-addr=:1", "--metrics-addr=", "--shutdown-timeout=2s", "--shutdown-delay=3s",
		}, Options{
			BindAddress: "127.0.0.1", Port: 1, CertDir: "/c", CertName: "a.crt", KeyName: "a.key",
			CertReloadInterval: time.Second, HealthAddr: ":1", ShutdownTimeout: 2 * time.Second, ShutdownDelay: 3 * time.Second,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("pmem-webhook", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			f := Register(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if got := f.Options(); got != tc.want {
				t.Errorf("Options() = %+v, want %+v", got, tc.want)
			}
		})
	}
	fs := flag.NewFlagSet("pmem-webhook", flag.ContinueOnError)
	f := Register(fs)
	if err := fs.Parse([]string{"-v=1", "--check-claims=false"}); err != nil {
		t.Fatal(err)
	}
	if f.LogLevel() != 1 || f.CheckClaims() {
		t.Errorf("LogLevel %d, CheckClaims %v; want 1, false", f.LogLevel(), f.CheckClaims())
	}
}
