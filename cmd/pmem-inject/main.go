// Command pmem-inject injects PMEM into manifests offline, the way the
// webhook would at admission (like istioctl kube-inject). Installed as
// kubectl-pmem it is the kubectl plugin "kubectl pmem inject".
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/pmem-webhook/pmem-webhook/cmd/pmem-inject/plugin"
	"github.com/pmem-webhook/pmem-webhook/config"
)

func main() {
	if err := run(os.Args, os.Stdin, os.Stdout, os.Stderr); err != nil {
		// Named as invoked: kubectl-pmem when kubectl runs it as a plugin.
		fmt.Fprintf(os.Stderr, "%s: %v\n", filepath.Base(os.Args[0]), err)
		os.Exit(1)
	}
}

// overview is the help of the command as a whole, printed for help, -h and
// --help (and, as a kubectl plugin, no arguments), like kubectl's own.
const overview = `Inject PMEM into manifests offline, or turn it on and off for workloads in a cluster.

Usage:
  kubectl pmem inject -f FILE [flags]      write FILE's documents with PMEM injected (- reads stdin)
  kubectl pmem enable WORKLOAD [flags]     annotate a workload (e.g. deployment/redis); its pods roll onto PMEM
  kubectl pmem disable WORKLOAD [flags]    remove the annotations enable set
  kubectl pmem status [WORKLOAD] [flags]   what each annotated pod's preload reports

Run as pmem-inject, "inject" is implied. "kubectl pmem COMMAND --help" lists a command's flags.
`

func isHelp(arg string) bool {
	return arg == "help" || arg == "-h" || arg == "--help" || arg == "-help"
}

func run(argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	name, args := filepath.Base(argv[0]), argv[1:]
	// enable, disable and status talk to a cluster (package plugin); the
	// same binary serves them as pmem-inject SUBCOMMAND too.
	if len(args) > 0 && slices.Contains(plugin.Subcommands, args[0]) {
		return plugin.Run(context.Background(), args, stdout, stderr)
	}
	if (len(args) == 0 && name == "kubectl-pmem") || (len(args) == 1 && isHelp(args[0])) {
		fmt.Fprint(stdout, overview)
		return nil
	}
	if name == "kubectl-pmem" {
		if args[0] != "inject" {
			return fmt.Errorf("unknown command %q: use inject, %s (kubectl pmem --help)", args[0], strings.Join(plugin.Subcommands, ", "))
		}
		name, args = "kubectl pmem inject", args[1:]
	}
	// pflag, as enable, disable and status (package plugin) and kubectl itself: -f or --filename,
	// --memkind-image.
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.StringP("filename", "f", "-", "manifest file to inject (multi-document YAML); - reads stdin")
	inject := config.RegisterPFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s -f FILE [flags]\n\nWrites FILE's documents to stdout with PMEM injected into the pod templates annotated pmem.alibabacloud.com/direct: \"true\".\n\nFlags:\n%s", name, fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil // help asked for and printed: not a failure
		}
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
