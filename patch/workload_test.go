package patch

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

// workload builds a Deployment-shaped object (or kind's shape) from YAML
// fragments for the workload's and the template's annotations.
func workloadObj(t *testing.T, kind, own, tmpl string) map[string]any {
	t.Helper()
	template := `
metadata:
  annotations: ` + tmpl + `
spec:
  containers:
  - name: redis
    image: redis
    resources: {limits: {memory: 1Gi}}
`
	var tm map[string]any
	if err := yaml.Unmarshal([]byte(template), &tm); err != nil {
		t.Fatal(err)
	}
	if tmpl == "" {
		delete(tm["metadata"].(map[string]any), "annotations")
	}
	obj := map[string]any{"apiVersion": "apps/v1", "kind": kind, "metadata": map[string]any{"name": "redis"}}
	if own != "" {
		var ann map[string]any
		if err := yaml.Unmarshal([]byte(own), &ann); err != nil {
			t.Fatal(err)
		}
		obj["metadata"].(map[string]any)["annotations"] = ann
	}
	path, ok := WorkloadTemplatePath(kind)
	if !ok {
		path = []string{"spec", "template"}
	}
	cur := obj
	for _, k := range path[:len(path)-1] {
		next, _ := cur[k].(map[string]any)
		if next == nil {
			next = map[string]any{}
			cur[k] = next
		}
		cur = next
	}
	cur[path[len(path)-1]] = tm
	return obj
}

func templateAnnotations(obj map[string]any) map[string]string {
	kind := obj["kind"].(string)
	path, ok := WorkloadTemplatePath(kind)
	if !ok {
		path = []string{"spec", "template"}
	}
	return stringMap(NestedObject(obj, append(path, "metadata")...), "annotations")
}

func TestApplyWorkload(t *testing.T) {
	const d, s, fw = AnnotationDirect, AnnotationSize, AnnotationFromWorkload
	tests := []struct {
		name      string
		kind      string
		own, tmpl string // YAML maps; "" for none
		want      map[string]string
		changed   bool
		warning   string
		denied    string
		owned     bool // has a controller ownerReference
	}{
		{name: "a controller's child is left to its owner", kind: "ReplicaSet", owned: true,
			own: `{"pmem.alibabacloud.com/direct": "yes"}`, want: map[string]string{}},
		{name: "copied to the template", kind: "Deployment",
			own:  `{"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/size": "2Gi", "other": "x"}`,
			want: map[string]string{d: "true", s: "2Gi", fw: "direct,size"}, changed: true},
		{name: "every kind: StatefulSet", kind: "StatefulSet", own: `{"pmem.alibabacloud.com/direct": "true"}`,
			want: map[string]string{d: "true", fw: "direct"}, changed: true},
		{name: "every kind: DaemonSet", kind: "DaemonSet", own: `{"pmem.alibabacloud.com/direct": "true"}`,
			want: map[string]string{d: "true", fw: "direct"}, changed: true},
		{name: "every kind: ReplicaSet", kind: "ReplicaSet", own: `{"pmem.alibabacloud.com/direct": "true"}`,
			want: map[string]string{d: "true", fw: "direct"}, changed: true},
		{name: "every kind: Job", kind: "Job", own: `{"pmem.alibabacloud.com/direct": "true"}`,
			want: map[string]string{d: "true", fw: "direct"}, changed: true},
		{name: "every kind: CronJob jobTemplate", kind: "CronJob", own: `{"pmem.alibabacloud.com/direct": "true"}`,
			want: map[string]string{d: "true", fw: "direct"}, changed: true},
		{name: "every kind: ReplicationController", kind: "ReplicationController", own: `{"pmem.alibabacloud.com/direct": "true"}`,
			want: map[string]string{d: "true", fw: "direct"}, changed: true},
		{name: "other template annotations kept", kind: "Deployment",
			own: `{"pmem.alibabacloud.com/direct": "true"}`, tmpl: `{"prometheus.io/scrape": "true"}`,
			want: map[string]string{d: "true", fw: "direct", "prometheus.io/scrape": "true"}, changed: true},
		{name: "removal removes exactly the copies", kind: "Deployment",
			own:  `{"pmem.alibabacloud.com/direct": "true"}`,
			tmpl: `{"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/size": "2Gi", "pmem.alibabacloud.com/from-workload": "direct,size"}`,
			want: map[string]string{d: "true", fw: "direct"}, changed: true},
		{name: "removing the last key cleans the template", kind: "Deployment",
			tmpl: `{"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/from-workload": "direct", "keep": "me"}`,
			want: map[string]string{"keep": "me"}, changed: true},
		{name: "changing one overwrites the copy", kind: "Deployment",
			own:  `{"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/size": "8Gi"}`,
			tmpl: `{"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/size": "2Gi", "pmem.alibabacloud.com/from-workload": "direct,size"}`,
			want: map[string]string{d: "true", s: "8Gi", fw: "direct,size"}, changed: true},
		{name: "template written by the user wins", kind: "Deployment",
			own:  `{"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/size": "8Gi"}`,
			tmpl: `{"pmem.alibabacloud.com/size": "4Gi"}`,
			want: map[string]string{d: "true", s: "4Gi", fw: "direct"}, changed: true,
			warning: `annotation pmem.alibabacloud.com/size="8Gi" on the Deployment is not copied to the pod template, which sets "4Gi" itself`},
		{name: "user's template keys are never removed", kind: "Deployment",
			tmpl: `{"pmem.alibabacloud.com/direct": "true"}`,
			want: map[string]string{d: "true"}},
		{name: "second pass is a no-op", kind: "Deployment",
			own:  `{"pmem.alibabacloud.com/direct": "true"}`,
			tmpl: `{"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/from-workload": "direct"}`,
			want: map[string]string{d: "true", fw: "direct"}},
		{name: "status and bookkeeping on the workload are not copied", kind: "Deployment",
			own:  `{"pmem.alibabacloud.com/status": "injected", "pmem.alibabacloud.com/from-workload": "direct"}`,
			want: map[string]string{}},
		{name: "no pmem annotations: nothing", kind: "Deployment", own: `{"a": "b"}`, want: map[string]string{}},
		{name: "unknown kind is left alone", kind: "CloneSet", own: `{"pmem.alibabacloud.com/direct": "true"}`, want: map[string]string{}},
		{name: "bad opt-in value denied with the pod rule's message", kind: "Deployment",
			own:    `{"pmem.alibabacloud.com/direct": "yes"}`,
			denied: `annotation pmem.alibabacloud.com/direct="yes" is invalid: must be "true" or "false"`},
		{name: "bad size denied with the pod rule's message", kind: "Deployment",
			own:    `{"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/size": "lots"}`,
			denied: `annotation pmem.alibabacloud.com/size="lots" is invalid: must be a quantity of bytes such as 60Gi or 512Mi`},
		{name: "bad mode on the workload, template opted in", kind: "StatefulSet",
			own: `{"pmem.alibabacloud.com/mode": "dax"}`, tmpl: `{"pmem.alibabacloud.com/direct": "true"}`,
			denied: `annotation pmem.alibabacloud.com/mode="dax" is invalid: must be "fsdax" or "kmem"`},
		{name: "template-only bad value is left to the pod rule", kind: "Deployment",
			tmpl: `{"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/size": "lots"}`,
			want: map[string]string{d: "true", s: "lots"}},
		{name: "not opted in: values are not judged, as for pods", kind: "Deployment",
			own:  `{"pmem.alibabacloud.com/size": "lots"}`,
			want: map[string]string{s: "lots", fw: "size"}, changed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := workloadObj(t, tt.kind, tt.own, tt.tmpl)
			if tt.owned {
				obj["metadata"].(map[string]any)["ownerReferences"] = []any{map[string]any{"kind": "Deployment", "name": "redis", "controller": true}}
			}
			res, err := ApplyWorkload(obj, testConfig())
			if tt.denied != "" {
				var denied *DeniedError
				if !errors.As(err, &denied) || !strings.Contains(err.Error(), tt.denied) {
					t.Fatalf("error = %v, want a denial containing %q", err, tt.denied)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, templateAnnotations(obj)); diff != "" {
				t.Errorf("template annotations (-want +got):\n%s", diff)
			}
			if res.Changed != tt.changed {
				t.Errorf("Changed = %v, want %v", res.Changed, tt.changed)
			}
			got := strings.Join(res.Warnings, "\n")
			if (tt.warning == "") != (got == "") || !strings.Contains(got, tt.warning) {
				t.Errorf("warnings = %q, want %q", got, tt.warning)
			}
		})
	}
}

// A StatefulSet's claim templates become pod volumes: one named like the
// injector's volume gets the denial the webhook gives the resulting pod.
func TestApplyWorkloadClaimTemplateCountsAsVolume(t *testing.T) {
	obj := workloadObj(t, "StatefulSet", `{"pmem.alibabacloud.com/direct": "true"}`, "")
	obj["spec"].(map[string]any)["volumeClaimTemplates"] = []any{
		map[string]any{"metadata": map[string]any{"name": "pmem"}},
	}
	_, err := ApplyWorkload(obj, testConfig())
	want := `pod already has a volume named "pmem"`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error = %v, want %q", err, want)
	}
	pod, perr := TemplatePod(obj, "StatefulSet", NestedObject(obj, "spec", "template"))
	if perr != nil {
		t.Fatal(perr)
	}
	pod.Annotations = map[string]string{AnnotationDirect: "true"}
	if _, podErr := Apply(pod, testConfig()); podErr == nil || podErr.Error() != err.Error() {
		t.Errorf("pod rule says %v, workload rule says %v: they must agree", podErr, err)
	}
}
