package patch

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// maxWarningLength is where admission warnings stop being safe: the
// AdmissionResponse API says warnings over 256 characters may be truncated.
const maxWarningLength = 256

// TestWarningsFitWithLongestNames re-runs the warning-producing golden pods
// with every container named at the 63-character maximum of a DNS label, the
// largest uid, and a RuntimeDefault seccomp profile, so that each warning the
// injector can give is checked at its longest; the golden table's short names
// would hide a warning the apiserver cuts off.
func TestWarningsFitWithLongestNames(t *testing.T) {
	cases := []struct {
		file string
		edit func(*corev1.Pod)
	}{
		{file: "redis-exporter.yaml"}, {file: "existing-ldpreload.yaml"}, {file: "kmem.yaml"},
		{file: "dram-ratio.yaml"}, {file: "forking-redis.yaml"}, {file: "envfrom-ldpreload.yaml"},
		{file: "native-sidecar-after-init.yaml"},
		{file: "redis-single.yaml", edit: func(p *corev1.Pod) {
			p.Spec.Containers[0].Args = []string{"redis-server", "--daemonize", "yes"}
		}},
		// Unknown annotation keys: the longest name, and a suggestion.
		{file: "redis-single.yaml", edit: func(p *corev1.Pod) {
			p.Annotations[Prefix+strings.Repeat("x", 63)] = "1"
			p.Annotations[Prefix+"storage-clas"] = "1"
		}},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			pod := loadPod(t, tc.file)
			if tc.edit != nil {
				tc.edit(pod)
			}
			longestNames(pod)
			uid := int64(2147483647)
			pod.Spec.SecurityContext = &corev1.PodSecurityContext{
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
				RunAsUser:      &uid,
			}
			res, err := Apply(pod, testConfig())
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if len(res.Warnings) == 0 {
				t.Fatal("no warnings: the case no longer exercises them")
			}
			for _, w := range res.Warnings {
				if len(w) > maxWarningLength {
					t.Errorf("warning of %d characters (max %d): %q", len(w), maxWarningLength, w)
				}
			}
		})
	}
}

// longestNames pads every container name to 63 characters and rewrites the
// containers annotation to match.
func longestNames(pod *corev1.Pod) {
	renamed := map[string]string{}
	pad := func(cs []corev1.Container) {
		for i := range cs {
			long := cs[i].Name + "-" + strings.Repeat("x", 62-len(cs[i].Name))
			renamed[cs[i].Name] = long
			cs[i].Name = long
		}
	}
	pad(pod.Spec.InitContainers)
	pad(pod.Spec.Containers)
	if v, ok := pod.Annotations[AnnotationContainers]; ok {
		names := strings.Split(v, ",")
		for i, n := range names {
			if long, ok := renamed[strings.TrimSpace(n)]; ok {
				names[i] = long
			}
		}
		pod.Annotations[AnnotationContainers] = strings.Join(names, ",")
	}
}
