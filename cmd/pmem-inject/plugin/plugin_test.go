package plugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

func TestParseWorkload(t *testing.T) {
	tests := []struct {
		in, kind, name, err string
	}{
		{in: "deployment/redis", kind: "Deployment", name: "redis"},
		{in: "deploy/redis", kind: "Deployment", name: "redis"},
		{in: "deployments.apps/redis", kind: "Deployment", name: "redis"},
		{in: "sts/db", kind: "StatefulSet", name: "db"},
		{in: "cj/snap", kind: "CronJob", name: "snap"},
		{in: "rc/old", kind: "ReplicationController", name: "old"},
		{in: "redis", err: `want TYPE/NAME`},
		{in: "pod/redis", err: `workload type "pod" is not one the webhook copies annotations for`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, kind, name, err := parseWorkload(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || kind != tt.kind || name != tt.name {
				t.Errorf("= %s %s %v, want %s %s", kind, name, err, tt.kind, tt.name)
			}
		})
	}
}

func TestPodStatus(t *testing.T) {
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a-pmem"}, Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}}
	cs := fake.NewSimpleClientset(pvc)
	pod := func(name string, ann map[string]string, vols ...corev1.Volume) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: ann}, Spec: corev1.PodSpec{Volumes: vols}}
	}
	eph := corev1.Volume{Name: patch.PMEMVolumeName, VolumeSource: corev1.VolumeSource{Ephemeral: &corev1.EphemeralVolumeSource{}}}
	tests := []struct {
		pod  *corev1.Pod
		want PodStatus
	}{
		{pod("a", map[string]string{patch.AnnotationDirect: "true", patch.AnnotationStatus: patch.StatusInjected}, eph),
			PodStatus{Pod: "a", Injected: true, Mode: "fsdax", PVC: "a-pmem", PVCPhase: "Bound"}},
		{pod("b", map[string]string{patch.AnnotationDirect: "true", patch.AnnotationStatus: patch.StatusInjected, patch.AnnotationMode: "kmem"}),
			PodStatus{Pod: "b", Injected: true, Mode: "kmem"}},
		{pod("c", map[string]string{patch.AnnotationDirect: "true", patch.AnnotationStatus: patch.StatusInjected}, eph),
			PodStatus{Pod: "c", Injected: true, Mode: "fsdax", PVC: "c-pmem", PVCPhase: "NotFound"}},
		{pod("d", nil), PodStatus{Pod: "d", Reason: "not requested"}},
		{pod("e", map[string]string{patch.AnnotationDirect: "false"}), PodStatus{Pod: "e", Reason: `is "false"`}},
		{pod("f", map[string]string{patch.AnnotationDirect: "true"}), PodStatus{Pod: "f", Reason: "requested but not injected"}},
	}
	for _, tt := range tests {
		t.Run(tt.pod.Name, func(t *testing.T) {
			got := podStatus(context.Background(), cs, nil, tt.pod)
			if !strings.Contains(got.Reason, tt.want.Reason) || (tt.want.Reason == "") != (got.Reason == "") {
				t.Errorf("reason %q, want one containing %q", got.Reason, tt.want.Reason)
			}
			got.Reason, tt.want.Reason = "", ""
			// No pod here is running: placement says why it is not read.
			if got.Injected && got.Mode == "fsdax" && got.Placement != "not available (pod is -)" {
				t.Errorf("placement %q: want not available (pod is -)", got.Placement)
			}
			if got.Mode == "kmem" && !strings.HasPrefix(got.Placement, "kmem: no record") {
				t.Errorf("placement %q: want the kmem explanation", got.Placement)
			}
			got.Placement = ""
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("= %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRunUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"enable"}, "usage: kubectl pmem enable WORKLOAD"},
		{[]string{"status", "a/b", "c/d"}, "usage: kubectl pmem status [WORKLOAD]"},
		{[]string{"status", "-o", "wide"}, `--output "wide" is not supported`},
	} {
		if err := Run(context.Background(), tc.args, &out, &errOut); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
	}
}

// TestNoCluster: with nothing naming a server, client-go would dial
// http://localhost:8080; every subcommand that talks to the API server says
// what is missing instead, naming the kubeconfig it read, and a flag that
// names a server gets past it.
func TestNoCluster(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("HOME", dir) // no ~/.kube/config
	t.Setenv("KUBECONFIG", "")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	write := func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	const cluster = "clusters:\n- name: k\n  cluster: {server: \"https://127.0.0.1:1\"}\n"
	noCurrent := write("nocurrent", "apiVersion: v1\nkind: Config\n"+cluster)
	empty := write("empty", "apiVersion: v1\nkind: Config\n")
	lostCluster := write("lostcluster", "apiVersion: v1\nkind: Config\ncontexts:\n- name: c\n  context: {cluster: gone}\ncurrent-context: c\n")
	ghost := write("ghost", "apiVersion: v1\nkind: Config\n"+cluster+"current-context: ghost\n")
	const missing = "no kubeconfig found (--kubeconfig, $KUBECONFIG or ~/.kube/config) and no --server"
	for _, tc := range []struct {
		name       string
		kubeconfig string
		args       []string
		want       string
		notWant    string
	}{
		{name: "none enable", args: []string{"enable", "deployment/redis"}, want: missing},
		{name: "none disable", args: []string{"disable", "deploy/redis"}, want: missing},
		{name: "none status", args: []string{"status"}, want: missing},
		{name: "none status workload", args: []string{"status", "sts/db"}, want: missing},
		{name: "no current-context", kubeconfig: noCurrent, args: []string{"status"},
			want: "kubeconfig " + noCurrent + " has no current-context"},
		{name: "empty file", kubeconfig: empty, args: []string{"enable", "deploy/x"},
			want: "kubeconfig " + empty + " has no current-context"},
		{name: "context's cluster missing", kubeconfig: lostCluster, args: []string{"status"},
			want: `context "c" names cluster "gone", which kubeconfig ` + lostCluster + " does not define"},
		// client-go's own message is clear in these two.
		{name: "current-context not there", kubeconfig: ghost, args: []string{"status"},
			want: `context was not found for specified context: ghost`},
		{name: "--context not there", kubeconfig: noCurrent, args: []string{"status", "--context", "nope"},
			want: `context was not found for specified context: nope`},
		// 127.0.0.1:1: nothing listens there; the error is then the dial's.
		{name: "--server", args: []string{"status", "--server", "http://127.0.0.1:1"}, want: "127.0.0.1:1", notWant: "no cluster to talk to"},
		{name: "--cluster", kubeconfig: noCurrent, args: []string{"status", "--cluster", "k"}, want: "127.0.0.1:1", notWant: "no cluster to talk to"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KUBECONFIG", tc.kubeconfig)
			var out, errOut bytes.Buffer
			err := Run(context.Background(), tc.args, &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			if tc.notWant != "" && strings.Contains(err.Error(), tc.notWant) {
				t.Errorf("err = %v, should not contain %q", err, tc.notWant)
			}
			if strings.Contains(err.Error(), "localhost:8080") {
				t.Errorf("err = %v: the fallback server the user never named", err)
			}
			if out.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", out.String())
			}
		})
	}
}

// TestPlacementRecords: the preload's status files (padded with spaces,
// several processes) become one line per process.
func TestPlacementRecords(t *testing.T) {
	out := "pid=7\ncomm=redis-server\nmode=fsdax\nbytes_resident_pmem=252706816\nbytes_fallback_dram=0\nheap_shared=1\n      \n\n" +
		"pid=9\ncomm=valkey-server\nbytes_resident_pmem=1048576\nbytes_fallback_dram=2097152\nheap_shared=0 (private copy-on-write since a fork)\n   \n"
	records := parseRecords(out)
	if len(records) != 2 || records[0]["comm"] != "redis-server" || records[1]["pid"] != "9" {
		t.Fatalf("records = %v", records)
	}
	want := "redis-server[7]: 241 MiB on PMEM, 0 MiB fallback to DRAM, heap shared; " +
		"valkey-server[9]: 1 MiB on PMEM, 2 MiB fallback to DRAM, heap private since a fork (pages written since are on DRAM)"
	if got := summarize(records, false); got != want {
		t.Errorf("summarize = %q\nwant        %q", got, want)
	}
	if got := parseRecords("sh: cat: not found\n"); len(got) != 0 {
		t.Errorf("no pid= line must give no record, got %v", got)
	}
}

// TestPlacementScriptPerContainer runs the status script (sh) on a volume
// that two containers share: both servers are pid 1 in their own pid
// namespace, so each container's records are pmem-status.<container>.<pid>
// and each container reads its own. A container without
// PMEM_CONTAINER_NAME (injected before it) reads the old
// pmem-status.<pid> names only. Dead pids (an earlier restart) are skipped.
func TestPlacementScriptPerContainer(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "heap"), 0o755); err != nil {
		t.Fatal(err)
	}
	live, dead := os.Getpid(), 999999999 // above any pid_max
	write := func(name, comm string) {
		t.Helper()
		rec := fmt.Sprintf("pid=%d\ncomm=%s\nmode=fsdax\nbytes_resident_pmem=1048576\nbytes_fallback_dram=0\nheap_shared=1\n    ", live, comm)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(rec), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(fmt.Sprintf("pmem-status.redis.%d", live), "redis-a")
	write(fmt.Sprintf("heap/pmem-status.redis.%d", live), "redis-heap")
	write(fmt.Sprintf("pmem-status.redis.%d", dead), "redis-dead")
	write(fmt.Sprintf("pmem-status.cache.%d", live), "cache-b")
	write(fmt.Sprintf("pmem-status.redis-2.%d", live), "redis-2")
	write(fmt.Sprintf("pmem-status.1x.%d", live), "digit-name")
	write(fmt.Sprintf("pmem-status.%d", live), "old")
	write(fmt.Sprintf("pmem-status.%d", dead), "old-dead")
	run := func(name string) []string {
		t.Helper()
		out, err := exec.Command("sh", "-c", placementCommand(dir, name)).CombinedOutput()
		if err != nil {
			t.Fatalf("script for %q: %v\n%s", name, err, out)
		}
		var comms []string
		for _, r := range parseRecords(string(out)) {
			comms = append(comms, r["comm"])
		}
		sort.Strings(comms)
		return comms
	}
	for name, want := range map[string][]string{
		"redis": {"redis-a", "redis-heap"},
		"cache": {"cache-b"},
		"1x":    {"digit-name"},
		"":      {"old"},
		"none":  nil,
	} {
		if got := run(name); !reflect.DeepEqual(got, want) {
			t.Errorf("container %q reads %q, want %q", name, got, want)
		}
	}

	// The targets: every container mounting the volume, named by its
	// PMEM_CONTAINER_NAME when that is a DNS label.
	always := corev1.ContainerRestartPolicyAlways
	mount := []corev1.VolumeMount{{Name: patch.PMEMVolumeName, MountPath: "/mnt/pmem"}}
	pod := &corev1.Pod{Spec: corev1.PodSpec{
		InitContainers: []corev1.Container{{Name: "pmem-memkind-init"}, {Name: "side", RestartPolicy: &always, VolumeMounts: mount,
			Env: []corev1.EnvVar{{Name: patch.EnvContainerName, Value: "side"}}}},
		Containers: []corev1.Container{
			{Name: "redis", VolumeMounts: mount, Env: []corev1.EnvVar{{Name: patch.EnvContainerName, Value: "redis"}}},
			{Name: "old", VolumeMounts: mount},
			{Name: "odd", VolumeMounts: mount, Env: []corev1.EnvVar{{Name: patch.EnvContainerName, Value: "A/../x"}}},
			{Name: "plain"},
		}}}
	wantTargets := []placementTarget{{"side", "/mnt/pmem", "side"}, {"redis", "/mnt/pmem", "redis"}, {"old", "/mnt/pmem", ""}, {"odd", "/mnt/pmem", ""}}
	if got := placementTargets(pod); !reflect.DeepEqual(got, wantTargets) {
		t.Errorf("placementTargets = %+v, want %+v", got, wantTargets)
	}

	// The summary: one container as before; several name theirs.
	rec := func(comm string) string {
		return "pid=1\ncomm=" + comm + "\nbytes_resident_pmem=2097152\nbytes_fallback_dram=0\nheap_shared=1\n   \n"
	}
	one := []placementTarget{{"redis", "/mnt/pmem", "redis"}}
	if got, records := placementSummary(one, []string{rec("redis-server")}, []error{nil}); got != "redis-server[1]: 2 MiB on PMEM, 0 MiB fallback to DRAM, heap shared" ||
		len(records) != 1 || records[0]["container"] != "redis" {
		t.Errorf("one container: %q, %v", got, records)
	}
	two := []placementTarget{{"redis", "/mnt/pmem", "redis"}, {"cache", "/mnt/pmem", "cache"}, {"old", "/mnt/pmem", ""}, {"gone", "/mnt/pmem", "gone"}}
	got, records := placementSummary(two, []string{rec("redis-server"), rec("redis-server"), "", ""}, []error{nil, nil, nil, errors.New("no sh")})
	want := "redis/redis-server[1]: 2 MiB on PMEM, 0 MiB fallback to DRAM, heap shared; cache/redis-server[1]: 2 MiB on PMEM, 0 MiB fallback to DRAM, heap shared; " +
		"not available (exec into gone failed: no sh); old: none"
	if got != want || len(records) != 2 || records[0]["container"] != "redis" || records[1]["container"] != "cache" {
		t.Errorf("two containers:\n got %q, %v\nwant %q", got, records, want)
	}
	if got, _ := placementSummary(two[:2], []string{"", ""}, []error{nil, nil}); !strings.HasPrefix(got, "none: ") {
		t.Errorf("no records: %q", got)
	}
}
