package cluster

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/pmem-webhook/pmem-webhook/config"
	"github.com/pmem-webhook/pmem-webhook/deploy"
	"github.com/pmem-webhook/pmem-webhook/patch"
)

// DeployedInjectionConfig is the injection configuration the webhook runs
// with when installed from deploy/default: the injection flags of its
// Deployment's container, parsed by the same config package the binary uses.
// Server-only flags (ports, cert dir, addresses) are ignored; the harness
// sets those itself.
func DeployedInjectionConfig() (*patch.Config, error) {
	args, err := deploy.DefaultWebhookArgs()
	if err != nil {
		return nil, err
	}

	fs := flag.NewFlagSet("deployed-webhook", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	inject := config.Register(fs)
	var kept []string
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if fs.Lookup(name) != nil {
			kept = append(kept, a)
		}
	}
	if err := fs.Parse(kept); err != nil {
		return nil, fmt.Errorf("deploy/default webhook args %q: %w", kept, err)
	}
	cfg, err := inject.Load()
	if err != nil {
		return nil, fmt.Errorf("deploy/default webhook args %q: %w", kept, err)
	}
	return cfg, nil
}
