package patch

import (
	"strings"
	"testing"
)

// A misspelled key is not silently ignored: every key under Prefix that
// the project does not define is named in a warning, with the closest
// known key when one is near, and the known keys.
func TestUnknownAnnotationWarnings(t *testing.T) {
	long := Prefix + strings.Repeat("x", 63)
	cases := []struct {
		name        string
		annotations map[string]string
		want        []string // one entry per warning, each a substring
		hint        []string // per warning: the suggested key, "" for none
	}{
		{name: "known keys only", annotations: map[string]string{
			AnnotationDirect: "true", AnnotationSize: "4Gi", AnnotationStorageClass: "x", AnnotationContainers: "redis",
			AnnotationMode: "fsdax", AnnotationDRAMRatio: "1:4", AnnotationClaim: "c", AnnotationProcesses: "redis-server",
			AnnotationStatus: StatusInjected, AnnotationFromWorkload: "direct", "other.example/sise": "4Gi",
		}},
		{name: "sise", annotations: map[string]string{AnnotationDirect: "true", Prefix + "sise": "4Gi"},
			want: []string{"annotation pmem.alibabacloud.com/sise is unknown and has no effect"}, hint: []string{AnnotationSize}},
		{name: "misspelled opt-in", annotations: map[string]string{Prefix + "direkt": "true"},
			want: []string{"pmem.alibabacloud.com/direkt is unknown"}, hint: []string{AnnotationDirect}},
		{name: "wrong case", annotations: map[string]string{Prefix + "Size": "4Gi"},
			want: []string{"pmem.alibabacloud.com/Size is unknown"}, hint: []string{AnnotationSize}},
		{name: "storage class without dash", annotations: map[string]string{Prefix + "storageclass": "x"},
			hint: []string{AnnotationStorageClass}, want: []string{"storageclass is unknown"}},
		{name: "dram ratio with underscore", annotations: map[string]string{Prefix + "dram_ratio": "1:4"},
			hint: []string{AnnotationDRAMRatio}, want: []string{"dram_ratio is unknown"}},
		{name: "far from any key: no suggestion", annotations: map[string]string{Prefix + "replicas": "3"},
			want: []string{"pmem.alibabacloud.com/replicas is unknown"}, hint: []string{""}},
		{name: "namespace label as an annotation", annotations: map[string]string{LabelInjection: "disabled"},
			want: []string{"it is a namespace label"}, hint: []string{""}},
		{name: "sorted, one per key", annotations: map[string]string{Prefix + "sise": "1", Prefix + "mod": "kmem"},
			want: []string{"/mod is unknown", "/sise is unknown"}, hint: []string{AnnotationMode, AnnotationSize}},
		{name: "longest key", annotations: map[string]string{long: "1"}, want: []string{long + " is unknown"}, hint: []string{""}},
		{name: "many keys: a summary", annotations: map[string]string{
			Prefix + "a1": "", Prefix + "a2": "", Prefix + "a3": "", Prefix + "a4": "", Prefix + "a5": "", Prefix + "a6": "", Prefix + "a7": "",
		}, want: []string{"/a1 ", "/a2 ", "/a3 ", "/a4 ", "/a5 ", "2 more annotations under pmem.alibabacloud.com/ are unknown"},
			hint: []string{"", "", "", "", "", ""}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := UnknownAnnotationWarnings(tc.annotations)
			if len(got) != len(tc.want) {
				t.Fatalf("warnings = %q, want %d", got, len(tc.want))
			}
			for k, w := range got {
				if !strings.Contains(w, tc.want[k]) {
					t.Errorf("warning %q lacks %q", w, tc.want[k])
				}
				if len(w) > maxWarningLength {
					t.Errorf("warning of %d characters (max %d): %q", len(w), maxWarningLength, w)
				}
				switch h := tc.hint[k]; {
				case h != "" && !strings.Contains(w, "(did you mean "+h+"?)"):
					t.Errorf("warning %q does not suggest %s", w, h)
				case h == "" && strings.Contains(w, "did you mean"):
					t.Errorf("warning %q suggests a key for a name far from all", w)
				}
				if strings.Contains(w, "is unknown") && !strings.Contains(w, "keys are: direct, size, storage-class, containers, mode, dram-ratio, claim, processes") {
					t.Errorf("warning %q does not list the known keys", w)
				}
			}
		})
	}
}

// The warning reaches the user through Apply, whether or not the pod is
// injected (offline, a misspelled opt-in is otherwise silently a DRAM pod).
func TestApplyWarnsUnknownAnnotations(t *testing.T) {
	for _, tc := range []struct {
		file     string
		decision Decision
	}{{"redis-single.yaml", Injected}, {"no-annotation.yaml", NotRequested}, {"redis-single.golden.yaml", AlreadyInjected}} {
		t.Run(tc.file, func(t *testing.T) {
			pod := loadPod(t, tc.file)
			if pod.Annotations == nil {
				pod.Annotations = map[string]string{}
			}
			pod.Annotations[Prefix+"sise"] = "4Gi"
			res, err := Apply(pod, testConfig())
			if err != nil || res.Decision != tc.decision {
				t.Fatalf("Apply = %+v, %v", res, err)
			}
			if len(res.Warnings) == 0 || !strings.Contains(res.Warnings[0], "pmem.alibabacloud.com/sise is unknown and has no effect (did you mean pmem.alibabacloud.com/size?)") {
				t.Errorf("warnings = %q", res.Warnings)
			}
		})
	}
}

// The workload rule warns too (the pods' warnings go to the controller,
// not the user), once per key whether it is on the workload, the template
// or both.
func TestApplyWorkloadWarnsUnknownAnnotations(t *testing.T) {
	for _, tc := range []struct{ name, own, tmpl string }{
		{"on the workload", `{"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/sise": "4Gi"}`, ""},
		{"on the template", "", `{"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/sise": "4Gi"}`},
		{"on both", `{"pmem.alibabacloud.com/sise": "4Gi"}`, `{"pmem.alibabacloud.com/sise": "4Gi"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := ApplyWorkload(workloadObj(t, "Deployment", tc.own, tc.tmpl), testConfig())
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, w := range res.Warnings {
				if strings.Contains(w, "pmem.alibabacloud.com/sise is unknown") {
					n++
				}
			}
			if n != 1 {
				t.Errorf("warnings = %q, want one about sise", res.Warnings)
			}
		})
	}
}
