package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	"github.com/pmem-webhook/pmem-webhook/cmd/pmem-inject/plugin"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.yaml")

func inject(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err = run(append([]string{"pmem-inject"}, args...), strings.NewReader(""), &out, &errOut)
	return out.String(), errOut.String(), err
}

// documents decodes a multi-document stream into generic objects so
// outputs are compared as objects, not bytes.
func documents(t *testing.T, s string) []any {
	t.Helper()
	var out []any
	for _, part := range strings.Split(s, "\n---\n") {
		var v any
		if err := yaml.Unmarshal([]byte(part), &v); err != nil {
			t.Fatalf("output document does not parse: %v\n%s", err, part)
		}
		out = append(out, v)
	}
	return out
}

func TestInjectGolden(t *testing.T) {
	stdout, stderr, err := inject(t, "-f", "testdata/multi.yaml", "--kmem-node-selector", "pmem.alibabacloud.com/kmem=true")
	if err != nil {
		t.Fatalf("pmem-inject failed: %v\n%s", err, stderr)
	}
	golden := filepath.Join("testdata", "multi.golden.yaml")
	if *update {
		if err := os.WriteFile(golden, []byte(stdout), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := documents(t, stdout), documents(t, string(want)); !reflect.DeepEqual(got, want) {
		t.Errorf("output differs from %s:\n%s", golden, cmp.Diff(want, got))
	}
	if !strings.HasPrefix(stdout, "# A config map passes through untouched") {
		t.Errorf("untouched documents must be copied byte for byte, comments included")
	}
	for _, w := range []string{
		`warning: Deployment misplaced (document 5): annotation pmem.alibabacloud.com/size="8Gi" on the Deployment is not copied to the pod template, which sets "2Gi" itself; the template's value wins`,
		"warning: StatefulSet cache (document 3): mode kmem: added nodeSelector",
	} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr)
		}
	}
	if !strings.Contains(stdout, "futureField: kept") {
		t.Error("a field unknown to the Go types was dropped")
	}
}

func TestInjectRefusesInvalid(t *testing.T) {
	stdout, _, err := inject(t, "-f", "testdata/invalid.yaml")
	if err == nil {
		t.Fatal("pmem-inject accepted invalid annotations")
	}
	if stdout != "" {
		t.Errorf("wrote output despite errors:\n%s", stdout)
	}
	for _, w := range []string{
		`Deployment typo (document 1): annotation pmem.alibabacloud.com/mode="devdax" is invalid: must be "fsdax" or "kmem"`,
		`Pod nolimit (document 2): annotation pmem.alibabacloud.com/size is not set and container "redis" has no memory limit`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}

// The examples the README shows: the annotated one is injected, the plain
// one comes back unchanged.
func TestExamples(t *testing.T) {
	stdout, _, err := inject(t, "-f", "../../deploy/examples/redis-pmem.yaml")
	if err != nil || !strings.Contains(stdout, "name: pmem-memkind-init") || !strings.Contains(stdout, "storageClassName: csi-pmem-direct") {
		t.Errorf("redis-pmem.yaml not injected (err %v):\n%s", err, stdout)
	}
	stdout, _, err = inject(t, "-f", "../../deploy/examples/redis-dram.yaml")
	want, _ := os.ReadFile("../../deploy/examples/redis-dram.yaml")
	if err != nil || stdout != string(want) {
		t.Errorf("redis-dram.yaml changed (err %v):\n%s", err, stdout)
	}
}

func TestKubectlPlugin(t *testing.T) {
	var out, errOut bytes.Buffer
	in, err := os.Open("../../deploy/examples/redis-pmem.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := run([]string{"/usr/local/bin/kubectl-pmem", "inject"}, in, &out, &errOut); err != nil {
		t.Fatalf("kubectl pmem inject (stdin): %v", err)
	}
	if !strings.Contains(out.String(), "pmem.alibabacloud.com/status: injected") {
		t.Errorf("plugin output not injected:\n%s", out.String())
	}
	err = run([]string{"kubectl-pmem", "version"}, io.LimitReader(nil, 0), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `unknown command "version"`) || !strings.Contains(err.Error(), "kubectl pmem --help") {
		t.Errorf("unknown subcommand: %v", err)
	}
	for _, argv := range [][]string{{"kubectl-pmem", "help", "version"}, {"pmem-inject", "help", "version"}} {
		var out, errOut bytes.Buffer
		err = run(argv, strings.NewReader(""), &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), `unknown help topic "version": use inject, enable, disable, status`) || out.Len()+errOut.Len() > 0 {
			t.Errorf("%q: err %v, output %q%q", argv, err, out.String(), errOut.String())
		}
	}
}

// TestOverviewListsEverySubcommand: the overview repeats each subcommand's
// synopsis; this keeps the two from drifting.
func TestOverviewListsEverySubcommand(t *testing.T) {
	for _, sub := range plugin.Subcommands {
		if u := plugin.Usage[sub]; u == "" || !strings.Contains(overview, u) {
			t.Errorf("overview lacks %s's synopsis %q", sub, u)
		}
	}
}

// TestHelp: asking for help succeeds (exit 0) and says what the command does,
// as kubectl's own --help does; it is not an error.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"kubectl-pmem"}, "kubectl pmem enable WORKLOAD"},
		{[]string{"kubectl-pmem", "--help"}, "kubectl pmem status [WORKLOAD]"},
		{[]string{"kubectl-pmem", "-h"}, "kubectl pmem inject -f FILE"},
		{[]string{"kubectl-pmem", "help"}, "kubectl pmem disable WORKLOAD"},
		{[]string{"pmem-inject", "--help"}, "kubectl pmem enable WORKLOAD"},
		{[]string{"kubectl-pmem", "inject", "--help"}, "usage: kubectl pmem inject -f FILE"},
		{[]string{"kubectl-pmem", "inject", "-h"}, "-f, --filename string"},
		{[]string{"pmem-inject", "-f", "-", "--help"}, "--memkind-image string"},
		{[]string{"kubectl-pmem", "enable", "--help"}, "usage: kubectl pmem enable WORKLOAD"},
		{[]string{"kubectl-pmem", "disable", "-h"}, "pods roll back to DRAM"},
		{[]string{"kubectl-pmem", "status", "--help"}, "--kubeconfig"},
		// help COMMAND, as kubectl's.
		{[]string{"kubectl-pmem", "help", "inject"}, "usage: kubectl pmem inject -f FILE|DIR"},
		{[]string{"kubectl-pmem", "help", "enable"}, "usage: kubectl pmem enable WORKLOAD"},
		{[]string{"kubectl-pmem", "help", "disable"}, "pods roll back to DRAM"},
		{[]string{"kubectl-pmem", "help", "status"}, "usage: kubectl pmem status [WORKLOAD]"},
		{[]string{"pmem-inject", "help", "inject"}, "usage: pmem-inject -f FILE|DIR"},
		{[]string{"pmem-inject", "help", "status"}, "usage: kubectl pmem status [WORKLOAD]"},
		{[]string{"kubectl-pmem", "inject", "--help"}, "-R, --recursive"},
		{[]string{"kubectl-pmem", "inject", "--help"}, "A directory gives its .yaml, .yml and .json files"},
		{[]string{"kubectl-pmem", "--help"}, "kubectl pmem help COMMAND"},
		{[]string{"kubectl-pmem", "help", "help"}, "kubectl pmem help COMMAND"},
	} {
		var out, errOut bytes.Buffer
		if err := run(tc.argv, strings.NewReader(""), &out, &errOut); err != nil {
			t.Errorf("%v: err = %v, want help and no error", tc.argv, err)
			continue
		}
		if help := out.String() + errOut.String(); !strings.Contains(help, tc.want) {
			t.Errorf("%v: help lacks %q:\n%s", tc.argv, tc.want, help)
		}
	}
}

func TestInjectBadYAML(t *testing.T) {
	var out bytes.Buffer
	err := run([]string{"pmem-inject"}, strings.NewReader("kind: Pod\nmetadata: [unclosed\n"), &out, io.Discard)
	if err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("bad YAML: err = %v", err)
	}
}

// TestInjectFlagStyle: inject parses its flags as enable, disable, status and kubectl do
// (spf13/pflag): -f FILE as the README shows it, and kubectl's other spellings of -f.
func TestInjectFlagStyle(t *testing.T) {
	const file = "../../deploy/examples/redis-pmem.yaml"
	want, _, err := inject(t, "-f", file)
	if err != nil || !strings.Contains(want, "pmem.alibabacloud.com/status: injected") {
		t.Fatalf("-f %s: err %v, output not injected:\n%s", file, err, want)
	}
	for _, args := range [][]string{
		{"-f=" + file},
		{"--filename", file},
		{"--filename=" + file},
		{"-f", file, "--memkind-image", "pmem-webhook/memkind:dev"}, // the default, given explicitly
		{"--memkind-image=pmem-webhook/memkind:dev", "-f", file},
	} {
		if got, stderr, err := inject(t, args...); err != nil || got != want {
			t.Errorf("%q: err %v, output differs from -f's:\n%s%s", args, err, got, stderr)
		}
	}
	var out bytes.Buffer
	in := strings.NewReader(want)
	if err := run([]string{"kubectl-pmem", "inject", "-f", "-"}, in, &out, io.Discard); err != nil || out.String() != want {
		t.Errorf("kubectl pmem inject -f - (an injected manifest on stdin): err %v, output changed:\n%s", err, out.String())
	}
	// kubectl's style has no single-dash long flags.
	if _, _, err := inject(t, "-f", file, "-memkind-image", "x"); err == nil || !strings.Contains(err.Error(), "-memkind-image") {
		t.Errorf("-memkind-image: err = %v, want an error naming it", err)
	}
}

// TestInjectInputs: every -f is read, in order, and a directory gives its
// manifest files as kubectl's -f DIR does; the output is one YAML stream,
// the same as that of the files concatenated into one input.
func TestInjectInputs(t *testing.T) {
	pmem, err := os.ReadFile("../../deploy/examples/redis-pmem.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dram, err := os.ReadFile("../../deploy/examples/redis-dram.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := write("m/10-a.yaml", pmem)
	b := write("m/20-b.yml", dram)
	cm := []byte(`{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}` + "\n")
	c := write("m/30-c.json", cm)
	write("m/README.md", []byte("# not a manifest\n"))
	write("m/sub/40-d.yaml", dram)
	noNL := write("nonl.yaml", bytes.TrimRight(dram, "\n"))
	write("empty/notes.txt", nil)
	if err := os.Symlink(filepath.Join(dir, "m"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}

	// want is what one input holding these files, separated by ---, gives.
	want := func(files ...[]byte) string {
		t.Helper()
		var out bytes.Buffer
		in := bytes.Join(files, []byte("---\n"))
		if err := run([]string{"pmem-inject"}, bytes.NewReader(in), &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"two -f", []string{"-f", b, "-f", a}, want(dram, pmem)},
		{"two -f, other order", []string{"-f", a, "--filename", b}, want(pmem, dram)},
		{"comma list, as kubectl", []string{"-f", a + "," + b}, want(pmem, dram)},
		{"stdin among files", []string{"-f", b, "-f", "-", "-f", b}, want(dram, pmem, dram)},
		{"directory: its manifest files in lexical order", []string{"-f", filepath.Join(dir, "m")}, want(pmem, dram, cm)},
		{"directory through a symbolic link", []string{"-f", filepath.Join(dir, "link")}, want(pmem, dram, cm)},
		{"-R: subdirectories too", []string{"-R", "-f", filepath.Join(dir, "m")}, want(pmem, dram, cm, dram)},
		{"--recursive", []string{"--recursive", "-f", filepath.Join(dir, "m"), "-f", a}, want(pmem, dram, cm, dram, pmem)},
		{"a file without a final newline", []string{"-f", noNL, "-f", c}, want(dram, cm)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if err := run(append([]string{"kubectl-pmem", "inject"}, tc.args...), bytes.NewReader(pmem), &out, &errOut); err != nil {
				t.Fatalf("err %v\n%s", err, errOut.String())
			}
			if out.String() != tc.want {
				t.Errorf("output differs from the concatenated input's:\n%s", cmp.Diff(tc.want, out.String()))
			}
		})
	}
}

// TestInjectInputErrors: one failure in any input writes nothing at all,
// and the message names the input; a URL or an empty directory says what
// to do instead.
func TestInjectInputErrors(t *testing.T) {
	const good = "../../deploy/examples/redis-pmem.yaml"
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	onlyComments := filepath.Join(t.TempDir(), "comments.yaml")
	if err := os.WriteFile(onlyComments, []byte("# nothing here\n---\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		// An upstream failure in a pipeline, not a manifest without pods.
		{[]string{"-f", "-"}, []string{"no objects in the input (-): nothing to inject"}},
		{nil, []string{"no objects in the input (stdin)"}},
		{[]string{"-f", onlyComments}, []string{"no objects in the input (" + onlyComments + ")"}},
		{[]string{"-f", good, "-f", "testdata/invalid.yaml"}, []string{
			`testdata/invalid.yaml: Deployment typo (document 1): annotation pmem.alibabacloud.com/mode="devdax" is invalid`,
			"\ntestdata/invalid.yaml: Pod nolimit (document 2)",
		}},
		{[]string{"-f", "testdata/invalid.yaml", "-f", good}, []string{"testdata/invalid.yaml: Deployment typo (document 1)"}},
		{[]string{"-f", good, "-f", "testdata/missing.yaml"}, []string{"testdata/missing.yaml: no such file or directory"}},
		{[]string{"-f", good, "-f", "https://example.com/app.yaml"}, []string{
			"-f https://example.com/app.yaml: URLs are not read",
			"curl -sL https://example.com/app.yaml | kubectl pmem inject -f -",
		}},
		{[]string{"-f", "http://example.com/app.yaml"}, []string{"URLs are not read"}},
		{[]string{"-f", dir}, []string{"-f " + dir + ": the directory has no .yaml, .yml or .json files (-R reads its subdirectories too)"}},
		{[]string{"-R", "-f", dir}, []string{"the directory has no .yaml, .yml or .json files"}},
		{[]string{"-f", "-", "-f", "-"}, []string{"-f - given more than once"}},
	} {
		var out bytes.Buffer
		err := run(append([]string{"kubectl-pmem", "inject"}, tc.args...), strings.NewReader(""), &out, io.Discard)
		if err == nil {
			t.Errorf("%q: no error", tc.args)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error lacks %q:\n%v", tc.args, w, err)
			}
		}
		if out.Len() > 0 {
			t.Errorf("%q: wrote output despite the error:\n%s", tc.args, out.String())
		}
	}
}

// TestInjectWarningsNameTheFile: with several inputs a warning says which
// file it is about; with one it reads as before.
func TestInjectWarningsNameTheFile(t *testing.T) {
	const w = "warning: %sDeployment misplaced (document 5): annotation pmem.alibabacloud.com/size"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-f", "testdata/multi.yaml"}, fmt.Sprintf(w, "")},
		{[]string{"-f", "../../deploy/examples/redis-dram.yaml", "-f", "testdata/multi.yaml"}, fmt.Sprintf(w, "testdata/multi.yaml: ")},
	} {
		_, stderr, err := inject(t, append(tc.args, "--kmem-node-selector", "a=b")...)
		if err != nil || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: err %v, stderr lacks %q:\n%s", tc.args, err, tc.want, stderr)
		}
	}
}

// TestInjectTerminal: without -f, a terminal on stdin is an error saying
// what to pass, not a silent wait; -f - still reads it, and stdin that is
// a file or a pipe is read.
func TestInjectTerminal(t *testing.T) {
	isTerminal := stdinIsTerminal
	defer func() { stdinIsTerminal = isTerminal }()
	stdinIsTerminal = func(io.Reader) bool { return true }
	const manifest = "../../deploy/examples/redis-pmem.yaml"
	for _, tc := range []struct {
		argv    []string
		wantErr string
	}{
		{[]string{"kubectl-pmem", "inject"}, "no manifest given: pass -f FILE (or -f DIR), or pipe one in (cat app.yaml | kubectl pmem inject)"},
		{[]string{"pmem-inject"}, "(cat app.yaml | pmem-inject)"},
		{[]string{"pmem-inject", "--memkind-image", "x"}, "pass -f FILE"},
		{[]string{"kubectl-pmem", "inject", "-f", "-"}, ""},
		{[]string{"kubectl-pmem", "inject", "-f", manifest}, ""},
	} {
		in, err := os.Open(manifest)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		err = run(tc.argv, in, &out, io.Discard)
		in.Close()
		switch {
		case tc.wantErr == "" && (err != nil || !strings.Contains(out.String(), "status: injected")):
			t.Errorf("%q: err %v, output not injected:\n%s", tc.argv, err, out.String())
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%q: err = %v, want %q", tc.argv, err, tc.wantErr)
		}
	}
	// The real check: a pseudo-terminal is one; a pipe, a file, /dev/null
	// (a character device too) or a reader is not.
	if pty, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0); err != nil {
		t.Logf("no pseudo-terminal to check with: %v", err)
	} else {
		if !isTerminal(pty) {
			t.Error("/dev/ptmx is not taken for a terminal")
		}
		pty.Close()
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	f, err := os.Open(manifest)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, in := range []io.Reader{r, f, null, strings.NewReader("")} {
		if isTerminal(in) {
			t.Errorf("%T is taken for a terminal", in)
		}
	}
}
