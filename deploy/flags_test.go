package deploy

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pmem-webhook/pmem-webhook/config"
)

// serverFlags mirrors the flags cmd/pmem-webhook defines itself (package main cannot be
// imported); the injection flags come from the real config.Register, so the injection settings
// the manifests pass are parsed and validated by the webhook's own code.
func serverFlags(fs *flag.FlagSet) {
	fs.String("bind-address", "", "")
	fs.Int("port", 9443, "")
	fs.String("cert-dir", "", "")
	fs.String("health-addr", "", "")
	fs.String("metrics-addr", "", "")
	fs.Duration("shutdown-timeout", 0, "")
	fs.Int("v", 0, "")
}

// selfSignedFlags are the flags the chart's certs.mode=selfSigned passes (see docs/deploy.md);
// they are not part of the server yet, so they are dropped before parsing.
var selfSignedFlags = []string{"--self-signed", "--webhook-config-name", "--service-name", "--namespace", "--cert-secret-name", "--cert-validity"}

func TestManifestArgsParse(t *testing.T) {
	k, err := RenderDefault()
	if err != nil {
		t.Fatal(err)
	}
	renderings := map[string][]byte{"kustomize": k}
	for name, values := range map[string]map[string]any{
		"helm certManager": nil,
		"helm selfSigned":  selfSignedValues,
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
			var args []string
			for _, a := range r.deployment.Spec.Template.Spec.Containers[0].Args {
				flagName, _, _ := strings.Cut(a, "=")
				if !slices.Contains(selfSignedFlags, flagName) {
					args = append(args, a)
				}
			}
			fs := flag.NewFlagSet("pmem-webhook", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			serverFlags(fs)
			inject := config.Register(fs)
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
			if d := fs.Lookup("shutdown-timeout").Value.(flag.Getter).Get().(time.Duration); d <= 0 {
				t.Errorf("--shutdown-timeout %s, want > 0", d)
			}
			if name == "helm kmem" && (cfg.KMEMNodeSelector["pmem.example/kmem"] != "true" || cfg.KMEMNodeSelector["zone"] != "a" || cfg.SizeFactor != 1.5) {
				t.Errorf("kmem values did not reach the config: %+v", cfg)
			}
		})
	}
}
