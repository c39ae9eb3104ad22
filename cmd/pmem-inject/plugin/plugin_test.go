package plugin

import (
	"bytes"
	"context"
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
			got := podStatus(context.Background(), cs, tt.pod)
			if !strings.Contains(got.Reason, tt.want.Reason) || (tt.want.Reason == "") != (got.Reason == "") {
				t.Errorf("reason %q, want one containing %q", got.Reason, tt.want.Reason)
			}
			got.Reason, tt.want.Reason = "", ""
			if got.Injected {
				if !strings.HasPrefix(got.Placement, "not available") {
					t.Errorf("placement %q: want it to say not available", got.Placement)
				}
			}
			got.Placement = ""
			if got != tt.want {
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
