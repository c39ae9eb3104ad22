package clients_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
)

const (
	// envClientsBin holds helm and kustomize as `make tools` builds them from tools/go.mod;
	// default <repo>/bin/tools. kubectl comes from the control-plane directory (build.sh).
	envClientsBin = "PMEM_CLIENTS_BIN_DIR"
	// envRequire turns missing binaries into a failure instead of a skip (make test-clients).
	envRequire = "PMEM_E2E_REQUIRE"

	installSection    = "## Installing on a cluster"
	quickStartSection = "## Quick start"
	// The chart's message for a cluster below its minimum (deploy/helm/.../_helpers.tpl).
	kubeVersionMessage = "pmem-webhook needs Kubernetes 1.30 or newer, this cluster is "
	commandTimeout     = 3 * time.Minute
)

var selfSignedValues = map[string]any{"certs": map[string]any{"mode": "selfSigned"}}

// env is where the real clients are and how to run a command line as a user would.
type env struct {
	root    string // repository root: the README's commands run there
	path    string // PATH: the plugin dir, the clients, then the system's
	k8sBin  string // the control-plane binaries and kubectl
	helmDir string // HELM_*_HOME: nothing of the developer's own helm setup leaks in
}

func setup(t *testing.T) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the real clients (-short)")
	}
	skipOrFail := func(err error) {
		t.Helper()
		if os.Getenv(envRequire) == "" {
			t.Skipf("%v; `make test-clients` builds them", err)
		}
		t.Fatal(err)
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bins, err := cluster.FindBinaries("")
	if err != nil {
		if errors.Is(err, cluster.ErrBinariesMissing) {
			skipOrFail(err)
		}
		t.Fatal(err)
	}
	toolsDir := os.Getenv(envClientsBin)
	if toolsDir == "" {
		toolsDir = filepath.Join(root, "bin", "tools")
	}
	for _, p := range []string{filepath.Join(bins.Dir, "kubectl"), filepath.Join(toolsDir, "helm"), filepath.Join(toolsDir, "kustomize")} {
		if _, err := os.Stat(p); err != nil {
			skipOrFail(fmt.Errorf("client %s not built: %w", p, err))
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go (for make install-plugin): %v", err)
	}
	return &env{
		root:    root,
		k8sBin:  bins.Dir,
		path:    strings.Join([]string{toolsDir, bins.Dir, filepath.Dir(goBin), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, ":"),
		helmDir: t.TempDir(),
	}
}

// result is what one command line did.
type result struct {
	stdout, stderr string
	err            error
}

// shell runs line with bash -o pipefail in the repository root, the way a user types it. Only
// the real clients, kubectl-pmem's pluginDir and the system's directories are on PATH, and
// KUBECONFIG is the given file (a path that does not exist for the commands that need no
// cluster, so that none uses one by accident).
func (e *env) shell(t *testing.T, kubeconfig, pluginDir, line string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c", line)
	cmd.Dir = e.root
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		// The parent make's flags would change how `make install-plugin` runs.
		if !slices.Contains([]string{"PATH", "KUBECONFIG", "PLUGIN_DIR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}, k) && !strings.HasPrefix(k, "HELM_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env,
		"PATH="+pluginDir+":"+e.path,
		"KUBECONFIG="+kubeconfig,
		"PLUGIN_DIR="+pluginDir, // where `make install-plugin` puts kubectl-pmem
		"HELM_CACHE_HOME="+filepath.Join(e.helmDir, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(e.helmDir, "config"),
		"HELM_DATA_HOME="+filepath.Join(e.helmDir, "data"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("$ %s   (%s)", line, time.Since(start).Round(time.Millisecond))
	if err != nil {
		err = fmt.Errorf("%s: %w\nstderr:\n%s", line, err, stderr.String())
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
			func() ([]byte, error) { return deploy.RenderHelm("pmem-webhook", deploy.Namespace, selfSignedValues) }},
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

func keys(m map[string]*unstructured.Unstructured) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// TestHelmKubeVersion: the real helm renders without a cluster (its built-in default version)
// and refuses a Kubernetes version below the chart's minimum with the chart's message. The
// chart also passes `helm lint --strict`.
func TestHelmKubeVersion(t *testing.T) {
	e := setup(t)
	for _, tc := range []struct {
		line    string
		wantErr string // in stderr; "" succeeds
	}{
		{"helm template pmem-webhook deploy/helm/pmem-webhook -n pmem-system", ""},
		{"helm template pmem-webhook deploy/helm/pmem-webhook -n pmem-system --kube-version 1.30.0", ""},
		{"helm template pmem-webhook deploy/helm/pmem-webhook -n pmem-system --kube-version 1.29.0", kubeVersionMessage + "v1.29.0"},
		{"helm template pmem-webhook deploy/helm/pmem-webhook -n pmem-system --kube-version 1.27.3 --set certs.mode=selfSigned", kubeVersionMessage + "v1.27.3"},
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
}

// scenario is one documented way to install, as its README lines.
type scenario struct {
	name    string
	section string   // the README section that shows lines
	lines   []string // run in order on one fresh control plane
	cluster bool     // needs a control plane (with cert-manager's CRDs)
	// want is the in-process rendering whose every object, as written, must then be stored by
	// the API server; nil for the plugin lines, which check checks.
	want  func() ([]byte, error)
	check func(t *testing.T, cp *cluster.ControlPlane, pluginDir string, out result)
}

var scenarios = []scenario{
	{
		name: "kubectl apply -k", section: installSection, cluster: true,
		lines: []string{"kubectl apply -k deploy/default"},
		want:  deploy.RenderDefault,
	},
	{
		name: "helm install, cert-manager", section: installSection, cluster: true,
		lines: []string{"helm install pmem-webhook deploy/helm/pmem-webhook -n pmem-system --create-namespace"},
		want:  func() ([]byte, error) { return deploy.RenderHelm("pmem-webhook", deploy.Namespace, nil) },
	},
	{
		name: "helm install, self-signed", section: installSection, cluster: true,
		lines: []string{"helm install pmem-webhook deploy/helm/pmem-webhook -n pmem-system --create-namespace --set certs.mode=selfSigned"},
		want:  func() ([]byte, error) { return deploy.RenderHelm("pmem-webhook", deploy.Namespace, selfSignedValues) },
	},
	{
		name: "kustomize build | kubectl apply", section: installSection, cluster: true,
		lines: []string{"kustomize build deploy/default | kubectl apply -f -"},
		want:  deploy.RenderDefault,
	},
	{
		name: "helm template | kubectl apply", section: installSection, cluster: true,
		lines: []string{
			"kubectl create namespace pmem-system",
			"helm template pmem-webhook deploy/helm/pmem-webhook -n pmem-system | kubectl apply -f -",
		},
		want: func() ([]byte, error) { return deploy.RenderHelm("pmem-webhook", deploy.Namespace, nil) },
	},
	{
		name: "kubectl plugin list", section: installSection,
		lines: []string{"make install-plugin && kubectl plugin list"},
		check: func(t *testing.T, _ *cluster.ControlPlane, pluginDir string, out result) {
			if want := filepath.Join(pluginDir, "kubectl-pmem"); !slices.Contains(strings.Fields(out.stdout), want) {
				t.Errorf("kubectl plugin list does not list %s:\n%s%s", want, out.stdout, out.stderr)
			}
		},
	},
	{
		name: "kubectl pmem inject | kubectl apply", section: quickStartSection, cluster: true,
		lines: []string{"make install-plugin && kubectl pmem inject -f deploy/examples/redis-pmem.yaml | kubectl apply -f -"},
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

// TestREADMEInstall runs each install line of the README, as written, with the real clients
// against a real kube-apiserver (one fresh control plane per scenario, with cert-manager's CRDs
// so that its Certificate and Issuer are validated; its controller does not run), and checks
// that the API server stored every object of the in-process rendering with every field as
// written. Every command line of the README's install section must belong to a scenario.
func TestREADMEInstall(t *testing.T) {
	e := setup(t)
	readme, err := os.ReadFile(filepath.Join(e.root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string][]string{}
	for _, section := range []string{installSection, quickStartSection} {
		if documented[section], err = clients.Commands(readme, section); err != nil {
			t.Fatalf("README.md: %v", err)
		}
	}
	covered := map[string]bool{}
	for _, s := range scenarios {
		for _, l := range s.lines {
			if !slices.Contains(documented[s.section], l) {
				t.Errorf("scenario %q runs %q, which README.md's %q does not show", s.name, l, s.section)
			}
			covered[l] = true
		}
	}
	for _, l := range documented[installSection] {
		if !covered[l] {
			t.Errorf("README.md's %q shows %q, which no scenario runs", installSection, l)
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
				for _, l := range []string{"kubectl create -f " + crds, "kubectl wait --for=condition=Established crd --all --timeout=60s"} {
					if r := e.shell(t, kubeconfig, t.TempDir(), l); r.err != nil {
						t.Fatal(r.err)
					}
				}
			}
			pluginDir := t.TempDir()
			var last result
			for _, l := range s.lines {
				if last = e.shell(t, kubeconfig, pluginDir, l); last.err != nil {
					t.Fatal(last.err)
				}
			}
			if s.want != nil {
				checkStored(t, cp, s.want)
			}
			if s.check != nil {
				s.check(t, cp, pluginDir, last)
			}
		})
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
