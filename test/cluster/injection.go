package cluster

import (
	"flag"
	"fmt"
	"io"
	"strings"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/pmem-webhook/pmem-webhook/config"
	"github.com/pmem-webhook/pmem-webhook/deploy"
	"github.com/pmem-webhook/pmem-webhook/patch"
)

// webhookContainer is the server container of deploy/'s Deployment.
const webhookContainer = "webhook"

// DeployedInjectionConfig is the injection configuration the webhook runs
// with when installed from deploy/default: the injection flags of its
// Deployment's container, parsed by the same config package the binary uses.
// Server-only flags (ports, cert dir, addresses) are ignored; the harness
// sets those itself.
func DeployedInjectionConfig() (*patch.Config, error) {
	manifests, err := deploy.RenderDefault()
	if err != nil {
		return nil, fmt.Errorf("render deploy/default: %w", err)
	}
	objs, err := deploy.Objects(manifests)
	if err != nil {
		return nil, err
	}
	u, err := deploy.Find(objs, "Deployment", deploy.ServiceName)
	if err != nil {
		return nil, err
	}
	var d appsv1.Deployment
	if err := deploy.DecodeStrict(u, &d); err != nil {
		return nil, err
	}
	var args []string
	found := false
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == webhookContainer {
			args, found = c.Args, true
		}
	}
	if !found {
		return nil, fmt.Errorf("deploy/default: Deployment %s has no container %q", d.Name, webhookContainer)
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
