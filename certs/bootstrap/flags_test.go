package bootstrap

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestFlagsLoad(t *testing.T) {
	base := []string{"--self-signed", "--webhook-config-name=pmem-webhook", "--service-name=pmem-webhook", "--namespace=pmem-system", "--cert-secret-name=pmem-webhook-serving-cert"}
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string // substring; "" means success
		want    *Options
	}{
		{name: "off", args: nil},
		{name: "defaults", args: base, want: &Options{
			Namespace: "pmem-system", ServiceName: "pmem-webhook", SecretName: "pmem-webhook-serving-cert", WebhookConfigName: "pmem-webhook",
			CertValidity: 8760 * time.Hour, CAValidity: 3 * 8760 * time.Hour, CABundlePropagation: DefaultCABundlePropagation,
		}},
		{name: "explicit validities", args: append(base, "--cert-validity=100h", "--ca-validity=1000h"), want: &Options{
			Namespace: "pmem-system", ServiceName: "pmem-webhook", SecretName: "pmem-webhook-serving-cert", WebhookConfigName: "pmem-webhook",
			CertValidity: 100 * time.Hour, CAValidity: 1000 * time.Hour, CABundlePropagation: DefaultCABundlePropagation,
		}},
		{name: "flag without --self-signed", args: []string{"--service-name=x", "--kubeconfig=/k"}, wantErr: "--service-name only apply with --self-signed"},
		{name: "missing secret", args: base[:4], wantErr: "needs --cert-secret-name"},
		{name: "bad service name", args: append(base, "--service-name=Pmem_Webhook"), wantErr: `--service-name="Pmem_Webhook"`},
		{name: "bad namespace", args: append(base, "--namespace=a.b"), wantErr: `--namespace="a.b"`},
		{name: "validity too short", args: append(base, "--cert-validity=90s"), wantErr: "--cert-validity=1m30s: must be at least 1m35s"},
		{name: "CA shorter than cert", args: append(base, "--cert-validity=10h", "--ca-validity=5h"), wantErr: "--ca-validity=5h0m0s: must be at least --cert-validity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			f := Register(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			got, err := f.Load()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Load() error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
				t.Errorf("Load() = %+v, want %+v", got, tc.want)
			}
		})
	}
}
