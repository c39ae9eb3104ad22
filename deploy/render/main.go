// Command render prints the webhook's install manifests, rendered in-process with the same code
// the tests use (no kustomize or helm binary needed):
//
//	go run ./deploy/render kustomize [DIR]                 # default: deploy/default
//	go run ./deploy/render helm [-release R] [-namespace N] [-f values.yaml]...
package main

import (
	"flag"
	"fmt"
	"os"

	"helm.sh/helm/v3/pkg/chartutil"

	"github.com/pmem-webhook/pmem-webhook/deploy"
)

type valueFiles []string

func (v *valueFiles) String() string     { return fmt.Sprint(*v) }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "render: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: render kustomize [DIR] | render helm [-release NAME] [-namespace NS] [-f values.yaml]")
	}
	var out []byte
	var err error
	switch args[0] {
	case "kustomize":
		dir := deploy.DefaultDir
		switch len(args) {
		case 1:
		case 2:
			dir = args[1]
		default:
			return fmt.Errorf("kustomize: want at most one directory (relative to deploy/), got %q", args[1:])
		}
		out, err = deploy.Kustomize(dir, nil)
	case "helm":
		fs := flag.NewFlagSet("helm", flag.ContinueOnError)
		release := fs.String("release", "pmem-webhook", "release name")
		namespace := fs.String("namespace", deploy.Namespace, "release namespace")
		var files valueFiles
		fs.Var(&files, "f", "values file (repeatable; later files win)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		vals := map[string]any{}
		for _, f := range files {
			v, err := chartutil.ReadValuesFile(f)
			if err != nil {
				return fmt.Errorf("values file %s: %w", f, err)
			}
			vals = chartutil.CoalesceTables(v.AsMap(), vals)
		}
		out, err = deploy.RenderHelm(*release, *namespace, vals)
	default:
		return fmt.Errorf("unknown renderer %q: want kustomize or helm", args[0])
	}
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}
