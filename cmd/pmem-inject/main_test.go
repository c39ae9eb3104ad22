package main

import (
	"bytes"
	"errors"
	"flag"
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
