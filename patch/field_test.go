package patch

import (
	"strings"
	"testing"
)

// Issue 14 row 8: the opt-in written as a label injects nothing but warns,
// with what to do.
func TestOptInAsLabel(t *testing.T) {
	cases := []struct {
		name        string
		labels      map[string]string
		annotations map[string]string
		warn        bool
	}{
		{name: "label only", labels: map[string]string{AnnotationDirect: "true"}, warn: true},
		{name: "label and annotation false", labels: map[string]string{AnnotationDirect: "true"}, annotations: map[string]string{AnnotationDirect: "false"}},
		{name: "neither", labels: map[string]string{"app": "redis"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := loadPod(t, "no-annotation.yaml")
			pod.Labels, pod.Annotations = tc.labels, tc.annotations
			res, err := Apply(pod, testConfig())
			if err != nil || res.Decision != NotRequested || res.Pod != pod {
				t.Fatalf("Apply = %+v, %v; want not-requested pass-through", res, err)
			}
			if !tc.warn {
				if len(res.Warnings) > 0 {
					t.Errorf("unexpected warnings %q", res.Warnings)
				}
				return
			}
			if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], `label pmem.alibabacloud.com/direct="true" has no effect`) ||
				!strings.Contains(res.Warnings[0], "move it to metadata.annotations") {
				t.Errorf("warnings = %q", res.Warnings)
			}
		})
	}
}
