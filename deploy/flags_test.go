package deploy

import (
	"flag"
	"io"
	"testing"
	"time"

	"github.com/pmem-webhook/pmem-webhook/certs/bootstrap"
	"github.com/pmem-webhook/pmem-webhook/config"
	"github.com/pmem-webhook/pmem-webhook/server"
)

// The manifests' args are parsed by the webhook's own flag set: the server
// flags from server.Register, the injection flags from config.Register and
// the self-signed flags from bootstrap.Register, exactly as cmd/pmem-webhook
// registers them, so an arg the binary would reject fails here.
func TestManifestArgsParse(t *testing.T) {
	k, err := RenderDefault()
	if err != nil {
		t.Fatal(err)
	}
	renderings := map[string][]byte{"kustomize": k}
	for name, values := range map[string]map[string]any{
		"helm certManager": nil,
		"helm selfSigned":  SelfSignedValues(),
		"helm kmem": {"injection": map[string]any{
			"kmemNodeSelector": map[string]any{"pmem.example/kmem": "true", "zone": "a"}, "sizeFactor": 1.5,
			"allowedStorageClasses": []any{"csi-pmem-direct", "other"}}},
	} {
		if renderings[name], err = RenderHelm("pmem-webhook", Namespace, values); err != nil {
			t.Fatal(err)
		}
	}
	for name, m := range renderings {
		t.Run(name, func(t *testing.T) {
			r := decodeAll(t, m)
			args := r.deployment.Spec.Template.Spec.Containers[0].Args
			fs := flag.NewFlagSet("pmem-webhook", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			serverFlags := server.Register(fs)
			inject := config.Register(fs)
			selfSigned := bootstrap.Register(fs)
			if err := fs.Parse(args); err != nil {
				t.Fatalf("the webhook would reject its args %v: %v", args, err)
			}
			if fs.NArg() != 0 {
				t.Fatalf("stray arguments %v", fs.Args())
			}
			cfg, err := inject.Load()
			if err != nil {
				t.Fatalf("injection settings %v: %v", args, err)
			}
			if cfg.MemkindImage == "" || cfg.DefaultStorageClass != "csi-pmem-direct" || cfg.SizeFactor <= 0 {
				t.Errorf("loaded config %+v", cfg)
			}
			boot, err := selfSigned.Load()
			if err != nil {
				t.Fatalf("self-signed settings %v: %v", args, err)
			}
			if wantSelfSigned := name == "helm selfSigned"; (boot != nil) != wantSelfSigned {
				t.Errorf("self-signed mode on = %v, want %v", boot != nil, wantSelfSigned)
			}
			if boot != nil {
				// The names the chart gives the Secret, the Service and the configuration.
				want := bootstrap.Options{
					Namespace: Namespace, ServiceName: "pmem-webhook", SecretName: "pmem-webhook-serving-cert",
					WebhookConfigName: "pmem-webhook", CertValidity: 8760 * time.Hour, CAValidity: 3 * 8760 * time.Hour,
					CABundlePropagation: bootstrap.DefaultCABundlePropagation,
				}
				if *boot != want {
					t.Errorf("self-signed options %+v, want %+v", *boot, want)
				}
				for _, kind := range []struct{ kind, name string }{
					{"Secret", boot.SecretName}, {"Service", boot.ServiceName}, {"MutatingWebhookConfiguration", boot.WebhookConfigName},
				} {
					if _, err := Find(r.objs, kind.kind, kind.name); err != nil {
						t.Errorf("--self-signed names a %s that the chart does not render: %v", kind.kind, err)
					}
				}
			}
			if d := serverFlags.Options().ShutdownTimeout; d <= 0 {
				t.Errorf("--shutdown-timeout %s, want > 0", d)
			}
			if name == "helm kmem" && (cfg.KMEMNodeSelector["pmem.example/kmem"] != "true" || cfg.KMEMNodeSelector["zone"] != "a" || cfg.SizeFactor != 1.5) {
				t.Errorf("kmem values did not reach the config: %+v", cfg)
			}
		})
	}
}
