package plugin

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
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
	if got := summarize(records); got != want {
		t.Errorf("summarize = %q\nwant        %q", got, want)
	}
	if got := parseRecords("sh: cat: not found\n"); len(got) != 0 {
		t.Errorf("no pid= line must give no record, got %v", got)
	}
}
