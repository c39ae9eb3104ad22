package patch

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSeccompRuntimeDefaultWarns: a forking Redis on fsdax whose effective seccomp profile
// (the container's, else the pod's) is RuntimeDefault gets a warning that the write-back
// cannot pre-copy (userfaultfd refused: measured in pods, TestPods/fork_write-back in
// test/e2e); other profiles, a Redis that never forks, and kmem get none.
func TestSeccompRuntimeDefaultWarns(t *testing.T) {
	rd := &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
	un := &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}
	for _, tc := range []struct {
		name           string
		pod, container *corev1.SeccompProfile
		args           []string
		mode           string
		container63    bool // a 63-character container name: the warning still fits 256 characters
		warn           bool
	}{
		{name: "none"},
		{name: "pod RuntimeDefault", pod: rd, warn: true},
		{name: "container RuntimeDefault", container: rd, warn: true},
		{name: "pod Unconfined, container RuntimeDefault", pod: un, container: rd, warn: true},
		{name: "pod RuntimeDefault, container Unconfined", pod: rd, container: un},
		{name: "pod Unconfined", pod: un},
		{name: "RuntimeDefault, no save, no AOF", pod: rd, args: []string{"--save", "", "--appendonly", "no"}},
		{name: "RuntimeDefault, kmem", pod: rd, mode: "kmem"},
		{name: "RuntimeDefault, 63-character container name", pod: rd, container63: true, warn: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "redis", Annotations: map[string]string{AnnotationDirect: "true"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "redis", Image: "redis:7.0-bookworm", Command: []string{"redis-server"}, Args: tc.args,
					Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}},
				}}},
			}
			if tc.container63 {
				pod.Spec.Containers[0].Name = strings.Repeat("r", 63)
			}
			want := fmt.Sprintf("container %q: seccompProfile RuntimeDefault refuses userfaultfd", pod.Spec.Containers[0].Name)
			if tc.mode != "" {
				pod.Annotations[AnnotationMode] = tc.mode
			}
			if tc.pod != nil {
				pod.Spec.SecurityContext = &corev1.PodSecurityContext{SeccompProfile: tc.pod}
			}
			if tc.container != nil {
				pod.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{SeccompProfile: tc.container}
			}
			res, err := Apply(pod, testConfig())
			if err != nil || res.Decision != Injected {
				t.Fatalf("Apply: %v, %v", res, err)
			}
			got := false
			for _, w := range res.Warnings {
				if strings.HasPrefix(w, want) {
					got = true
					if len(w) > 256 { // the apiserver truncates longer warnings
						t.Errorf("warning longer than 256 characters (%d): %q", len(w), w)
					}
				}
			}
			if got != tc.warn {
				t.Errorf("warnings %q: RuntimeDefault warning %v, want %v", res.Warnings, got, tc.warn)
			}
		})
	}
}
