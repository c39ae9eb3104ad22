// Command pmem-inject injects PMEM into manifests offline, the way the
// webhook would at admission (like istioctl kube-inject). Installed as
// kubectl-pmem it is the kubectl plugin "kubectl pmem inject".
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/pmem-webhook/pmem-webhook/cmd/pmem-inject/plugin"
	"github.com/pmem-webhook/pmem-webhook/config"
)

func main() {
	if err := run(os.Args, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "pmem-inject:", err)
		os.Exit(1)
	}
}

func run(argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	name, args := filepath.Base(argv[0]), argv[1:]
	// enable, disable and status talk to a cluster (package plugin); the
	// same binary serves them as pmem-inject SUBCOMMAND too.
	if len(args) > 0 && slices.Contains(plugin.Subcommands, args[0]) {
		return plugin.Run(context.Background(), args, stdout, stderr)
	}
	if name == "kubectl-pmem" {
		if len(args) == 0 || args[0] != "inject" {
			return fmt.Errorf("usage: kubectl pmem inject -f FILE [flags] | kubectl pmem {enable|disable|status} WORKLOAD [flags]")
		}
		name, args = "kubectl pmem inject", args[1:]
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("f", "-", "manifest file to inject (multi-document YAML); - reads stdin")
	inject := config.Register(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s -f FILE [flags]\n\nWrites FILE's documents to stdout with PMEM injected into the pod templates annotated pmem.alibabacloud.com/direct: \"true\".\n\n", name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (use -f FILE)", fs.Args())
	}
	cfg, err := inject.Load()
	if err != nil {
		return err
	}
	in := stdin
	if *file != "-" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	return (&injector{cfg: cfg, warnings: stderr}).Run(in, stdout)
}
