package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pmem-webhook/pmem-webhook/deploy"
)

// TestVersionsAgree guards the rule that the control plane is built at the
// Kubernetes release matching the product's k8s.io/api, with every staging
// repository at the matching v0 tag.
func TestVersionsAgree(t *testing.T) {
	want, err := KubernetesVersion()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join("..", "controlplane", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	staging := "v0." + strings.TrimPrefix(want, "v1.")
	var sawKubernetes bool
	replaces := 0
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		switch {
		case len(fields) >= 2 && fields[0] == "k8s.io/kubernetes":
			sawKubernetes = true
			if fields[1] != want {
				t.Errorf("test/controlplane/go.mod requires k8s.io/kubernetes %s, want %s (k8s.io/api of the main module)", fields[1], want)
			}
		case len(fields) == 4 && fields[1] == "=>" && strings.HasPrefix(fields[0], "k8s.io/"):
			replaces++
			if fields[0] != fields[2] || fields[3] != staging {
				t.Errorf("test/controlplane/go.mod: replace %s => %s %s, want %s => %s %s", fields[0], fields[2], fields[3], fields[0], fields[0], staging)
			}
		}
	}
	if !sawKubernetes {
		t.Error("test/controlplane/go.mod does not require k8s.io/kubernetes")
	}
	if replaces < 20 {
		t.Errorf("test/controlplane/go.mod replaces %d staging repositories; k8s.io/kubernetes needs all of them (about 30)", replaces)
	}
}

func TestFindBinariesMissing(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, BinEtcd), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, BinAPIServer), []byte("not executable"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := FindBinaries(dir)
	if !errors.Is(err, ErrBinariesMissing) {
		t.Fatalf("FindBinaries(%s) = %v, want ErrBinariesMissing", dir, err)
	}
	for _, want := range []string{BinAPIServer, BinControllerManager, dir} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if strings.Contains(err.Error(), BinEtcd+",") || strings.HasSuffix(err.Error(), ": "+BinEtcd) {
		t.Errorf("error %q names etcd, which is present", err)
	}
}

func TestStartStop(t *testing.T) {
	RequireBinaries(t, "test-controlplane")
	ctx := context.Background()
	cp, err := Start(ctx, Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)

	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := KubernetesVersion(); v.GitVersion != want {
		t.Errorf("apiserver reports %s, want %s", v.GitVersion, want)
	}
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "harness-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The controller-manager runs: it gives the new namespace its account.
	if err := WaitForDefaultServiceAccount(ctx, cp.Config, ns.Name, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	pids := cp.pids()
	dir := cp.Dir
	cp.Stop()
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d still running after Stop", pid)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("working directory %s not removed: %v", dir, err)
	}
}

func (cp *ControlPlane) pids() []int {
	var pids []int
	for _, p := range cp.procs {
		pids = append(pids, p.Cmd.Process.Pid)
	}
	return pids
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Field 3, after "(comm)", is the state.
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+1:])
	return !strings.HasPrefix(strings.TrimSpace(rest), "Z")
}

const helperEnv = "PMEM_CLUSTER_HELPER"

// TestNoOrphansWhenKilled starts a control plane in a child test process,
// SIGKILLs that process (no cleanup code runs, as on a go test timeout or a
// killed CI job) and checks that etcd, the apiserver and the
// controller-manager die with it.
func TestNoOrphansWhenKilled(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		helperStartAndBlock()
		return
	}
	RequireBinaries(t, "test-controlplane")
	cmd := exec.Command(os.Args[0], "-test.run=^TestNoOrphansWhenKilled$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	var pids []int
	var dir string
	lines := bufio.NewScanner(out)
	for lines.Scan() {
		if rest, ok := strings.CutPrefix(lines.Text(), "PIDS "); ok {
			fields := strings.Fields(rest)
			dir = fields[0]
			for _, f := range fields[1:] {
				pid, err := strconv.Atoi(f)
				if err != nil {
					t.Fatal(err)
				}
				pids = append(pids, pid)
			}
			break
		}
	}
	if len(pids) != 3 {
		t.Fatalf("helper reported pids %v, want 3", pids)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) }) // SIGKILL leaves the directory
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if alive(pid) {
			t.Errorf("process %d survived its parent's SIGKILL", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func helperStartAndBlock() {
	cp, err := Start(context.Background(), Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	fmt.Printf("PIDS %s", cp.Dir)
	for _, pid := range cp.pids() {
		fmt.Printf(" %d", pid)
	}
	fmt.Println()
	time.Sleep(2 * time.Minute) // until the parent kills us
	cp.Stop()
	os.Exit(1)
}

// TestStartFailureCleansUp: a binary that dies at start-up makes Start fail
// with the binary's own output in the error, and leaves no directory behind.
func TestStartFailureCleansUp(t *testing.T) {
	bins := t.TempDir()
	script := "#!/bin/sh\necho 'etcdmain: listen tcp: address already in use' >&2\nexit 3\n"
	for _, name := range []string{BinEtcd, BinAPIServer, BinControllerManager} {
		if err := os.WriteFile(filepath.Join(bins, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)

	cp, err := Start(context.Background(), Options{BinDir: bins, Timeout: 20 * time.Second})
	if err == nil {
		cp.Stop()
		t.Fatal("Start succeeded with an etcd that exits at once")
	}
	for _, want := range []string{"etcd exited before it became ready", "exit status 3", "address already in use"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	left, _ := os.ReadDir(tmp)
	if len(left) != 0 {
		t.Errorf("Start left %d entries in $TMPDIR: %v", len(left), left)
	}
}

// TestWebhookRegisteredFromDeploy: what the apiserver stores is deploy/'s
// configuration with only clientConfig changed (URL + test CA), and the
// apiserver calls the in-process server through it.
func TestWebhookRegisteredFromDeploy(t *testing.T) {
	RequireBinaries(t, "test-controlplane")
	ctx := context.Background()
	cp, err := Start(ctx, Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	wh, err := cp.StartWebhook(ctx, WebhookOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := wh.Stop(); err != nil {
			t.Error(err)
		}
	})

	shipped, err := deploy.DefaultWebhookConfiguration()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, shipped.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(stored.Webhooks) != len(shipped.Webhooks) {
		t.Fatalf("stored %d webhooks, deploy/ ships %d", len(stored.Webhooks), len(shipped.Webhooks))
	}
	for i := range shipped.Webhooks {
		got, want := stored.Webhooks[i].DeepCopy(), shipped.Webhooks[i].DeepCopy()
		url := got.ClientConfig.URL
		// Each webhook keeps its own path (pods, workloads) on the test URL.
		wantURL := wh.URL + *want.ClientConfig.Service.Path
		if url == nil || *url != wantURL {
			t.Errorf("webhook %s: clientConfig.url = %v, want %s", got.Name, ptrString(url), wantURL)
		}
		if string(got.ClientConfig.CABundle) != string(wh.CAPEM) {
			t.Errorf("webhook %s: caBundle is not the webhook's test CA", got.Name)
		}
		got.ClientConfig, want.ClientConfig = admissionregistrationv1.WebhookClientConfig{}, admissionregistrationv1.WebhookClientConfig{}
		if !equality.Semantic.DeepEqual(got, want) {
			t.Errorf("webhook %s differs from deploy/ beyond clientConfig:\n stored:  %+v\n shipped: %+v", got.Name, got, want)
		}
	}
}

// TestDeployedInjectionConfig: the harness runs the webhook with the
// injection flags deploy/ sets (which today spell out the defaults).
func TestDeployedInjectionConfig(t *testing.T) {
	got, err := DeployedInjectionConfig()
	if err != nil {
		t.Fatal(err)
	}
	if got.MemkindImage == "" || got.DefaultStorageClass == "" || got.SizeFactor <= 0 {
		t.Fatalf("incomplete configuration from deploy/: %+v", got)
	}
	if want := "csi-pmem-direct"; got.DefaultStorageClass != want {
		t.Errorf("defaultStorageClass = %q, want %q (deploy/webhook/deployment.yaml --default-storage-class)", got.DefaultStorageClass, want)
	}
}

func ptrString(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}
