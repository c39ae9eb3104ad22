package clients_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/pmem-webhook/pmem-webhook/deploy"
	"github.com/pmem-webhook/pmem-webhook/test/clients"
	"github.com/pmem-webhook/pmem-webhook/test/cluster"
	"github.com/pmem-webhook/pmem-webhook/test/gate"
)

const (
	// envClientsBin holds helm and kustomize as `make tools` builds them from tools/go.mod;
	// default <repo>/bin/tools. kubectl comes from the control-plane directory (build.sh).
	envClientsBin = "PMEM_CLIENTS_BIN_DIR"

	installSection    = "## Installing on a cluster"
	quickStartSection = "## Quick start"
	// The chart's message for a cluster below its minimum (deploy/helm/.../_helpers.tpl).
	kubeVersionMessage = "pmem-webhook needs Kubernetes 1.30 or newer; Helm renders for "
	// helm's source with the link stamps of a helm v3.14 release binary (`make tools`).
	releaseLikeHelm = "helm-v3.14-release"
	commandTimeout  = 3 * time.Minute
)

// env is where the real clients are and how to run a command line as a user would.
type env struct {
	root   string // repository root: the README's commands run there
	path   string // PATH: the clients, then the system's
	k8sBin string // the control-plane binaries and kubectl
	// The developer's Go caches: a fresh HOME and GOPATH must not mean a cold build (or, with
	// the module cache, a download) for `make install-plugin`.
	goCache, goModCache string
}

func setup(t *testing.T) *env {
	t.Helper()
	bins := cluster.RequireBinaries(t, "test-clients")
	// A skip, or a failure under make test-clients (gate.ControlPlane).
	skipOrFail := func(err error) {
		t.Helper()
		gate.Skip(t, gate.ControlPlane, fmt.Sprintf("%v; `make test-clients` builds them", err))
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	toolsDir := os.Getenv(envClientsBin)
	if toolsDir == "" {
		toolsDir = filepath.Join(root, "bin", "tools")
	}
	for _, p := range []string{filepath.Join(bins.Dir, "kubectl"), filepath.Join(toolsDir, "helm"), filepath.Join(toolsDir, releaseLikeHelm), filepath.Join(toolsDir, "kustomize")} {
		if _, err := os.Stat(p); err != nil {
			skipOrFail(fmt.Errorf("client %s not built: %w", p, err))
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go (for make install-plugin): %v", err)
	}
	out, err := exec.Command(goBin, "env", "GOCACHE", "GOMODCACHE").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	caches := strings.Fields(string(out))
	if len(caches) != 2 {
		t.Fatalf("go env GOCACHE GOMODCACHE: %q", out)
	}
	return &env{
		root:       root,
		k8sBin:     bins.Dir,
		path:       strings.Join([]string{toolsDir, bins.Dir, filepath.Dir(goBin), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, ":"),
		goCache:    caches[0],
		goModCache: caches[1],
	}
}

// result is what one command line did.
type result struct {
	stdout, stderr string
	err            error
}

// userEnv are the variables a user's shell sets that the commands must not inherit from the
// test's: where programs are found and installed, each client's configuration and caches, and the
// parent make's flags (they would change how `make install-plugin` runs).
var userEnv = []string{"PATH", "HOME", "GOPATH", "GOBIN", "GOCACHE", "GOMODCACHE", "KUBECONFIG", "KUBECACHEDIR",
	"PLUGIN_DIR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"}

// shell runs script (command lines, one a line) with bash -e -o pipefail in the repository root,
// the way a user pastes them: in one shell, in order, stopping at the first that fails. The user
// is new: HOME is home (so GOPATH is home/go, and kubectl's and helm's caches and configuration
// are under it, never the developer's ~/.kube/cache), only the real clients and the system's
// directories are on PATH, and KUBECONFIG is the given file (a path that does not exist for the
// commands that need no cluster, so that none uses one by accident).
func (e *env) shell(t *testing.T, kubeconfig, home, script string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", script)
	cmd.Dir = e.root
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(userEnv, k) && !strings.HasPrefix(k, "HELM_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env,
		"PATH="+e.path,
		"HOME="+home,
		"KUBECONFIG="+kubeconfig,
		"KUBECACHEDIR="+filepath.Join(home, ".kube", "cache"),
		"GOCACHE="+e.goCache,
		"GOMODCACHE="+e.goModCache,
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("$ %s   (%s)", strings.ReplaceAll(script, "\n", "\n$ "), time.Since(start).Round(time.Millisecond))
	if err != nil {
		err = fmt.Errorf("%s: %w\nstderr:\n%s", script, err, stderr.String())
	}
	return result{stdout.String(), stderr.String(), err}
}

// noCluster is a KUBECONFIG that does not exist.
func noCluster(t *testing.T) string { return filepath.Join(t.TempDir(), "no-cluster.kubeconfig") }

func objects(t *testing.T, what string, manifests []byte) map[string]*unstructured.Unstructured {
	t.Helper()
	objs, err := deploy.Objects(manifests)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if len(objs) == 0 {
		t.Fatalf("%s: no objects", what)
	}
	m, err := clients.ByKey(objs)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return m
}

// TestRenderingsMatchInProcess: what the real clients render without a cluster is, object for
// object and field for field, what package deploy renders in-process for every other test.
// Documents are parsed and compared by object, so their order and formatting may differ.
func TestRenderingsMatchInProcess(t *testing.T) {
	e := setup(t)
	for _, tc := range []struct {
		line string
		want func() ([]byte, error)
	}{
		{"helm template pmem-webhook deploy/helm/pmem-webhook -n pmem-system",
			func() ([]byte, error) { return deploy.RenderHelm("pmem-webhook", deploy.Namespace, nil) }},
		{"helm template pmem-webhook deploy/helm/pmem-webhook -n pmem-system --set certs.mode=selfSigned",
			func() ([]byte, error) {
				return deploy.RenderHelm("pmem-webhook", deploy.Namespace, deploy.SelfSignedValues())
			}},
		{"helm template prod deploy/helm/pmem-webhook -n pmem",
			func() ([]byte, error) { return deploy.RenderHelm("prod", "pmem", nil) }},
		{"kustomize build deploy/default", deploy.RenderDefault},
		{"kubectl kustomize deploy/default", deploy.RenderDefault},
		{"kustomize build deploy/examples/overlay",
			func() ([]byte, error) { return deploy.Kustomize("examples/overlay", nil) }},
	} {
		t.Run(tc.line, func(t *testing.T) {
			r := e.shell(t, noCluster(t), t.TempDir(), tc.line)
			if r.err != nil {
				t.Fatal(r.err)
			}
			want, err := tc.want()
			if err != nil {
				t.Fatal(err)
			}
			got, inProcess := objects(t, tc.line, []byte(r.stdout)), objects(t, "in-process", want)
			gotKeys, wantKeys := keys(got), keys(inProcess)
			if !slices.Equal(gotKeys, wantKeys) {
				t.Fatalf("objects differ:\n%s:\n  %s\nin-process:\n  %s", tc.line, strings.Join(gotKeys, "\n  "), strings.Join(wantKeys, "\n  "))
			}
			for _, k := range wantKeys {
				if d := cmp.Diff(inProcess[k].Object, got[k].Object); d != "" {
					t.Errorf("%s (-in-process +%s):\n%s", k, tc.line, d)
				}
			}
		})
	}
}

func keys(m map[string]*unstructured.Unstructured) []string { return slices.Sorted(maps.Keys(m)) }

// TestHelmKubeVersion: the real helm renders without a cluster (its built-in default version)
// and refuses a Kubernetes version below the chart's minimum with the chart's message; so does a
// helm linked like a v3.14 release binary, whose default is v1.29.0. `helm install --dry-run`
// needs a cluster. The chart passes `helm lint --strict`.
func TestHelmKubeVersion(t *testing.T) {
	e := setup(t)
	const chart = " pmem-webhook deploy/helm/pmem-webhook -n pmem-system"
	for _, tc := range []struct {
		line    string
		wantErr string // in stderr; "" succeeds
	}{
		{"helm template" + chart, ""},
		{"helm template" + chart + " --kube-version 1.30.0", ""},
		{"helm template" + chart + " --kube-version 1.29.0", kubeVersionMessage + "v1.29.0"},
		{"helm template" + chart + " --kube-version 1.27.3 --set certs.mode=selfSigned", kubeVersionMessage + "v1.27.3"},
		{releaseLikeHelm + " template" + chart, ""},
		{releaseLikeHelm + " template" + chart + " --set certs.mode=selfSigned", ""},
		{releaseLikeHelm + " template" + chart + " --kube-version 1.27.3", kubeVersionMessage + "v1.27.3"},
		{releaseLikeHelm + " lint --strict deploy/helm/pmem-webhook", ""},
		// docs/deploy.md: unlike helm template, --dry-run asks the cluster for its capabilities.
		{"helm install" + chart + " --dry-run", "Kubernetes cluster unreachable"},
		{"helm lint --strict deploy/helm/pmem-webhook", ""},
	} {
		t.Run(tc.line, func(t *testing.T) {
			r := e.shell(t, noCluster(t), t.TempDir(), tc.line)
			switch {
			case tc.wantErr == "" && r.err != nil:
				t.Fatal(r.err)
			case tc.wantErr != "" && r.err == nil:
				t.Fatalf("%s succeeded, want it to fail with %q; stdout:\n%s", tc.line, tc.wantErr, r.stdout)
			case tc.wantErr != "" && !strings.Contains(r.stderr, tc.wantErr):
				t.Fatalf("%s: stderr does not say %q:\n%s", tc.line, tc.wantErr, r.stderr)
			}
		})
	}
	// `make tools` stamps helm's module version, which docs/deploy.md's table names.
	t.Run("helm version", func(t *testing.T) {
		want, err := exec.Command("go", "list", "-C", filepath.Join(e.root, "tools"), "-m", "-f", "{{.Version}}", "helm.sh/helm/v3").Output()
		if err != nil {
			t.Fatalf("helm's version in tools/go.mod: %v", err)
		}
		r := e.shell(t, noCluster(t), t.TempDir(), "helm version --template '{{.Version}}'")
		if r.err != nil {
			t.Fatal(r.err)
		}
		if got := strings.TrimSpace(r.stdout); got != strings.TrimSpace(string(want)) {
			t.Errorf("helm version %q, want %q (tools/go.mod)", got, want)
		}
	})
}

// scenario is one documented way to install: README blocks run in order in one shell.
type scenario struct {
	name    string
	blocks  []block
	cluster bool // needs a control plane (with cert-manager's CRDs)
	// want is the in-process rendering whose every object, as written, must then be stored by
	// the API server; nil for the plugin blocks, which check checks.
	want  func() ([]byte, error)
	check func(t *testing.T, cp *cluster.ControlPlane, home string, out result)
}

// block is a README block: its section and its command lines, which must be exactly those of one
// of that section's blocks, in the README's order.
type block struct {
	section string
	lines   []string
}

var pluginBlock = block{installSection, []string{
	`export PATH="$PATH:$(go env GOPATH)/bin"`,
	"make install-plugin && kubectl plugin list",
}}

var scenarios = []scenario{
	{
		name: "kubectl apply -k", cluster: true,
		blocks: []block{{installSection, []string{"kubectl apply -k deploy/default"}}},
		want:   deploy.RenderDefault,
	},
	{
		name: "helm install, cert-manager", cluster: true,
		blocks: []block{{installSection, []string{"helm install pmem-webhook deploy/helm/pmem-webhook -n pmem-system --create-namespace"}}},
		want:   func() ([]byte, error) { return deploy.RenderHelm("pmem-webhook", deploy.Namespace, nil) },
	},
	{
		name: "helm install, self-signed", cluster: true,
		blocks: []block{{installSection, []string{"helm install pmem-webhook deploy/helm/pmem-webhook -n pmem-system --create-namespace --set certs.mode=selfSigned"}}},
		want: func() ([]byte, error) {
			return deploy.RenderHelm("pmem-webhook", deploy.Namespace, deploy.SelfSignedValues())
		},
	},
	{
		name: "kustomize build | kubectl apply", cluster: true,
		blocks: []block{{installSection, []string{"kustomize build deploy/default | kubectl apply -f -"}}},
		want:   deploy.RenderDefault,
	},
	{
		name: "helm template | kubectl apply", cluster: true,
		blocks: []block{{installSection, []string{
			"kubectl create namespace pmem-system",
			"helm template pmem-webhook deploy/helm/pmem-webhook -n pmem-system | kubectl apply -f -",
		}}},
		want: func() ([]byte, error) { return deploy.RenderHelm("pmem-webhook", deploy.Namespace, nil) },
	},
	{
		name:   "kubectl plugin list",
		blocks: []block{pluginBlock},
		check: func(t *testing.T, _ *cluster.ControlPlane, home string, out result) {
			// make install-plugin's default: GOPATH/bin, GOPATH being HOME/go.
			if want := filepath.Join(home, "go", "bin", "kubectl-pmem"); !slices.Contains(strings.Fields(out.stdout), want) {
				t.Errorf("kubectl plugin list does not list %s:\n%s%s", want, out.stdout, out.stderr)
			}
		},
	},
	{
		name: "kubectl pmem inject | kubectl apply", cluster: true,
		blocks: []block{pluginBlock, {quickStartSection, []string{"kubectl pmem inject -f deploy/examples/redis-pmem.yaml | kubectl apply -f -"}}},
		check: func(t *testing.T, cp *cluster.ControlPlane, _ string, _ result) {
			u, err := dynamicFor(t, cp).Resource(deploymentsGVR).Namespace("default").Get(context.Background(), "redis-pmem", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			status, _, _ := unstructured.NestedString(u.Object, "spec", "template", "metadata", "annotations", "pmem.alibabacloud.com/status")
			if status != "injected" {
				t.Errorf("Deployment redis-pmem stored with template annotation status %q, want injected", status)
			}
		},
	},
}

// TestREADMEInstall runs each install block of the README, as written, its lines in order in one
// shell, with the real clients against a real kube-apiserver (one fresh control plane per
// scenario that installs, with cert-manager's CRDs so that its Certificate and Issuer are
// validated; its controller does not run), and checks that the API server stored every object of
// the in-process rendering with every field as written. Every block of the README's install
// section must be a scenario's, line for line.
func TestREADMEInstall(t *testing.T) {
	e := setup(t)
	readme, err := os.ReadFile(filepath.Join(e.root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string][][]string{}
	for _, section := range []string{installSection, quickStartSection} {
		if documented[section], err = clients.Blocks(readme, section); err != nil {
			t.Fatalf("README.md: %v", err)
		}
	}
	var covered [][]string
	for _, s := range scenarios {
		for _, b := range s.blocks {
			if !slices.ContainsFunc(documented[b.section], func(d []string) bool { return slices.Equal(d, b.lines) }) {
				t.Errorf("scenario %q runs the block\n  %s\nwhich is not a block of README.md's %q, line for line in this order; its blocks:\n%s",
					s.name, strings.Join(b.lines, "\n  "), b.section, formatBlocks(documented[b.section]))
			}
			covered = append(covered, b.lines)
		}
	}
	for _, d := range documented[installSection] {
		if !slices.ContainsFunc(covered, func(c []string) bool { return slices.Equal(c, d) }) {
			t.Errorf("README.md's %q shows the block\n  %s\nwhich no scenario runs", installSection, strings.Join(d, "\n  "))
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	crds := certManagerCRDs(t)
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			kubeconfig := noCluster(t)
			var cp *cluster.ControlPlane
			if s.cluster {
				cp = startControlPlane(t)
				kubeconfig = cp.KubeconfigFile
				// What "with cert-manager installed" gives the API server. Not apply: the
				// last-applied annotation of these CRDs would exceed the size limit.
				if r := e.shell(t, kubeconfig, t.TempDir(), "kubectl create -f "+crds+"\nkubectl wait --for=condition=Established crd --all --timeout=60s"); r.err != nil {
					t.Fatal(r.err)
				}
			}
			home := t.TempDir()
			var lines []string
			for _, b := range s.blocks {
				lines = append(lines, b.lines...)
			}
			out := e.shell(t, kubeconfig, home, strings.Join(lines, "\n"))
			if out.err != nil {
				t.Fatal(out.err)
			}
			if s.want != nil {
				checkStored(t, cp, s.want)
			}
			if s.check != nil {
				s.check(t, cp, home, out)
			}
		})
	}
}

func formatBlocks(blocks [][]string) string {
	var b strings.Builder
	for _, l := range blocks {
		fmt.Fprintf(&b, "  %s\n\n", strings.Join(l, "\n  "))
	}
	return b.String()
}

// TestInstallWithoutCertManager is what the README says of `kubectl apply -k deploy/default` on a
// cluster without cert-manager: it fails on the Certificate and Issuer after it created the
// Deployment and the webhook configuration, and deleting the configuration, the README's remedy,
// works without cert-manager.
func TestInstallWithoutCertManager(t *testing.T) {
	e := setup(t)
	cp := startControlPlane(t)
	home := t.TempDir()
	r := e.shell(t, cp.KubeconfigFile, home, "kubectl apply -k deploy/default")
	if r.err == nil {
		t.Fatalf("kubectl apply -k deploy/default succeeded without cert-manager's CRDs:\n%s", r.stdout)
	}
	for _, kind := range []string{"Certificate", "Issuer"} {
		if want := fmt.Sprintf(`no matches for kind "%s"`, kind); !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not say %s:\n%s", want, r.stderr)
		}
	}
	for _, l := range []string{
		"kubectl get mutatingwebhookconfiguration pmem-webhook",
		"kubectl -n pmem-system get deployment pmem-webhook",
		"kubectl delete mutatingwebhookconfiguration pmem-webhook",
	} {
		if r := e.shell(t, cp.KubeconfigFile, home, l); r.err != nil {
			t.Fatal(r.err)
		}
	}
	r = e.shell(t, cp.KubeconfigFile, home, "kubectl get mutatingwebhookconfiguration pmem-webhook")
	if r.err == nil || !strings.Contains(r.stderr, "NotFound") {
		t.Errorf("webhook configuration still there after delete: %v\n%s", r.err, r.stdout)
	}
}

// certManagerCRDs is the directory of cert-manager's CRDs in the module cache: the
// cert-manager version the main module already requires for its API types (downloaded by
// `go mod download` if the build has not fetched it yet).
func certManagerCRDs(t *testing.T) string {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "mod", "download", "-json", "github.com/cert-manager/cert-manager")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("download the cert-manager module: %v", err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download -json: no module directory in %s (%v)", out, err)
	}
	dir := filepath.Join(mod.Dir, "deploy", "crds")
	if _, err := os.Stat(filepath.Join(dir, "cert-manager.io_certificates.yaml")); err != nil {
		t.Fatalf("cert-manager's CRDs: %v", err)
	}
	return dir
}

func startControlPlane(t *testing.T) *cluster.ControlPlane {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := cluster.Start(ctx, cluster.Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	return cp
}

var deploymentsGVR = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}

func dynamicFor(t *testing.T, cp *cluster.ControlPlane) dynamic.Interface {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	return dyn
}

// checkStored reads back every object of the rendering from the API server and compares it
// with the manifest: every field written must be stored as written (clients.Missing).
func checkStored(t *testing.T, cp *cluster.ControlPlane, render func() ([]byte, error)) {
	t.Helper()
	m, err := render()
	if err != nil {
		t.Fatal(err)
	}
	want := objects(t, "in-process", m)
	dc, err := discovery.NewDiscoveryClientForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn := dynamicFor(t, cp)
	for _, k := range keys(want) {
		o := want[k]
		gvk := o.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Errorf("%s: %v", k, err)
			continue
		}
		ns := o.GetNamespace()
		live, err := dyn.Resource(mapping.Resource).Namespace(ns).Get(context.Background(), o.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Errorf("%s not stored: %v", k, err)
			continue
		}
		diffs, err := clients.Missing(o.Object, live.Object)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range diffs {
			t.Errorf("%s stored differently: %s", k, d)
		}
	}
}

// TestInstallPlugin: `make install-plugin` installs where `go install` would (GOBIN, else
// GOPATH/bin) and says so on stderr when kubectl cannot find it there, i.e. it is not on PATH.
func TestInstallPlugin(t *testing.T) {
	e := setup(t)
	for _, tc := range []struct {
		name, script string
		dir          string // relative to HOME
		wantHint     bool
	}{
		{"GOPATH/bin, not on PATH", "make install-plugin", "go/bin", true},
		{"GOBIN, not on PATH", `export GOBIN="$HOME/gobin"` + "\nmake install-plugin", "gobin", true},
		{"GOBIN on PATH", `export GOBIN="$HOME/gobin" PATH="$PATH:$HOME/gobin"` + "\nmake install-plugin", "gobin", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			home := t.TempDir()
			r := e.shell(t, noCluster(t), home, tc.script)
			if r.err != nil {
				t.Fatal(r.err)
			}
			dir := filepath.Join(home, tc.dir)
			if _, err := os.Stat(filepath.Join(dir, "kubectl-pmem")); err != nil {
				t.Errorf("kubectl-pmem not installed in %s: %v\n%s", dir, err, r.stdout)
			}
			hint := dir + " is not on PATH"
			if got := strings.Contains(r.stderr, hint); got != tc.wantHint {
				t.Errorf("stderr says %q: %v, want %v; stderr:\n%s", hint, got, tc.wantHint, r.stderr)
			}
		})
	}
}
