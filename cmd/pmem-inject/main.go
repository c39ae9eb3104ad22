// Command pmem-inject injects PMEM into manifests offline, the way the
// webhook would at admission (like istioctl kube-inject). Installed as
// kubectl-pmem it is the kubectl plugin "kubectl pmem inject".
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"golang.org/x/term"

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
  kubectl pmem inject -f FILE|DIR [flags]  write the manifests' documents with PMEM injected (- reads stdin)
  kubectl pmem enable WORKLOAD [flags]     annotate a workload (e.g. deployment/redis); its pods roll onto PMEM
  kubectl pmem disable WORKLOAD [flags]    remove the annotations enable set
  kubectl pmem status [WORKLOAD] [flags]   what each annotated pod's preload reports

Run as pmem-inject, "inject" is implied. "kubectl pmem help COMMAND" (or COMMAND --help) lists a command's flags.
`

func isHelp(arg string) bool {
	return arg == "help" || arg == "-h" || arg == "--help" || arg == "-help"
}

func run(argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	name, args := filepath.Base(argv[0]), argv[1:]
	// help COMMAND is COMMAND --help, as in kubectl.
	if len(args) == 2 && args[0] == "help" {
		switch topic := args[1]; {
		case isHelp(topic):
			args = args[1:] // help help: the overview
		case topic == "inject" || slices.Contains(plugin.Subcommands, topic):
			args = []string{topic, "--help"}
		default:
			return fmt.Errorf("unknown help topic %q: use inject, %s (kubectl pmem --help)", topic, strings.Join(plugin.Subcommands, ", "))
		}
	}
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
	} else if len(args) > 0 && args[0] == "inject" {
		args = args[1:] // implied, and accepted when given (pmem-inject help inject)
	}
	// pflag, as enable, disable and status (package plugin) and kubectl itself: -f or --filename
	// (repeated, or a comma list, as kubectl's), -R, --memkind-image.
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	files := fs.StringSliceP("filename", "f", nil, "manifest file (multi-document YAML or JSON) or directory to inject; repeat it for more, - reads stdin (default: stdin)")
	recursive := fs.BoolP("recursive", "R", false, "process the directories given with -f, --filename recursively")
	inject := config.RegisterPFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s -f FILE|DIR [-f ...] [flags]\n\n"+
			"Writes the documents of every -f, in order, to stdout as one YAML stream, with PMEM injected into the pod\n"+
			"templates annotated pmem.alibabacloud.com/direct: \"true\"; other documents are written unchanged.\n"+
			"A directory gives its .yaml, .yml and .json files in lexical order (-R: its subdirectories' too).\n"+
			"Without -f, a manifest piped to stdin is read. If any document fails, nothing is written.\n\nFlags:\n%s", name, fs.FlagUsages())
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
	if len(*files) == 0 && stdinIsTerminal(stdin) {
		// Reading a terminal would wait silently for input nobody means to type.
		return fmt.Errorf("no manifest given: pass -f FILE (or -f DIR), or pipe one in (cat app.yaml | %s); -f - reads stdin even from a terminal", name)
	}
	cfg, err := inject.Load()
	if err != nil {
		return err
	}
	sources, err := expand(*files, *recursive, name)
	if err != nil {
		return err
	}
	// Like the documents of one stream: every source is injected before
	// anything is written, and one failure anywhere writes nothing.
	var out bytes.Buffer
	var errs []error
	for _, src := range sources {
		var res, warnings bytes.Buffer
		err := injectSource(src, stdin, &injector{cfg: cfg, warnings: &warnings}, &res)
		if err != nil {
			errs = append(errs, labelErr(src.label, err))
		}
		io.WriteString(stderr, labelWarnings(src.label, warnings.String()))
		if err != nil || res.Len() == 0 {
			continue
		}
		if out.Len() > 0 {
			if !bytes.HasSuffix(out.Bytes(), []byte("\n")) {
				out.WriteByte('\n')
			}
			out.WriteString("---\n")
		}
		out.Write(res.Bytes())
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if len(bytes.TrimSpace(out.Bytes())) == 0 {
		// As kubectl apply ("no objects passed to apply"): in a pipeline
		// (gen | pmem-inject -f - | kubectl apply -f -) an empty input is
		// an upstream failure, not a manifest without pods.
		in := strings.Join(*files, ", ")
		if in == "" {
			in = "stdin"
		}
		return fmt.Errorf("no objects in the input (%s): nothing to inject", in)
	}
	_, err = stdout.Write(out.Bytes())
	return err
}

// stdinIsTerminal reports whether r is a terminal; a variable for tests.
var stdinIsTerminal = func(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// source is one manifest file (path "-": stdin). label names it in
// messages, empty when it is the only input and the user named it.
type source struct {
	path, label string
}

// manifestExts are the files a directory gives, as kubectl's -f DIR (the
// message of expand names them).
var manifestExts = []string{".yaml", ".yml", ".json"}

// expand turns the -f values into the files to read, in order: a directory
// gives its manifest files in lexical order (walking subdirectories when
// recursive), as kubectl does. URLs are refused: nothing here reads the
// network.
func expand(files []string, recursive bool, name string) ([]source, error) {
	if len(files) == 0 {
		files = []string{"-"}
	}
	var out []source
	stdinSeen := false
	for _, f := range files {
		if strings.HasPrefix(f, "http://") || strings.HasPrefix(f, "https://") {
			return nil, fmt.Errorf("-f %s: URLs are not read; download the manifest and pipe it in: curl -sL %s | %s -f -", f, f, name)
		}
		if f == "-" {
			if stdinSeen {
				return nil, errors.New("-f - given more than once: stdin can be read only once")
			}
			stdinSeen = true
			out = append(out, source{path: f, label: "stdin"})
			continue
		}
		fi, err := os.Stat(f)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			out = append(out, source{path: f, label: f})
			continue
		}
		n := len(out)
		if out, err = walk(f, recursive, out); err != nil {
			return nil, err
		}
		if len(out) == n {
			hint := ""
			if !recursive {
				hint = " (-R reads its subdirectories too)"
			}
			return nil, fmt.Errorf("-f %s: the directory has no .yaml, .yml or .json files%s", f, hint)
		}
	}
	// One input named on the command line needs no name in messages.
	if len(out) == 1 && (len(files) == 1 && files[0] == out[0].path) {
		out[0].label = ""
	}
	return out, nil
}

// walk appends dir's manifest files in lexical order, and with recursive
// those of its subdirectories at their place in that order (as
// filepath.WalkDir, but following dir itself when it is a symbolic link).
func walk(dir string, recursive bool, out []source) ([]source, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		switch {
		case e.IsDir() && recursive:
			if out, err = walk(path, recursive, out); err != nil {
				return nil, err
			}
		case !e.IsDir() && slices.Contains(manifestExts, filepath.Ext(path)):
			out = append(out, source{path: path, label: path})
		}
	}
	return out, nil
}

func injectSource(src source, stdin io.Reader, in *injector, w io.Writer) error {
	r := stdin
	if src.path != "-" {
		f, err := os.Open(src.path)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	return in.Run(r, w)
}

// labelErr prefixes each of err's messages (errors.Join keeps one per
// document) with the input's name.
func labelErr(label string, err error) error {
	if label == "" {
		return err
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var errs []error
		for _, e := range j.Unwrap() {
			errs = append(errs, labelErr(label, e))
		}
		return errors.Join(errs...)
	}
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return err // the *PathError names the file already
	}
	return fmt.Errorf("%s: %w", label, err)
}

// labelWarnings names the input in each "warning: ..." line.
func labelWarnings(label, s string) string {
	if label == "" || s == "" {
		return s
	}
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if rest, ok := strings.CutPrefix(l, "warning: "); ok {
			lines[i] = "warning: " + label + ": " + rest
		} else if l != "" {
			lines[i] = label + ": " + l
		}
	}
	return strings.Join(lines, "")
}
