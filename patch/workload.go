package patch

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// AnnotationFromWorkload, on a pod template, lists (comma-separated, without
// the prefix) the pmem annotations the workload rule copied there from the
// workload's own metadata. It is how the rule tells its own copies from
// annotations the user wrote on the template: only listed keys are ever
// overwritten or removed.
const AnnotationFromWorkload = Prefix + "from-workload"

// workloadTemplates maps the kinds whose pods come from a template to the
// path of that template. Users annotate these objects
// (`kubectl annotate deployment/redis pmem.alibabacloud.com/direct=true`),
// but the controllers copy only spec.template.metadata to the pods.
var workloadTemplates = map[string][]string{
	"Deployment":            {"spec", "template"},
	"StatefulSet":           {"spec", "template"},
	"DaemonSet":             {"spec", "template"},
	"ReplicaSet":            {"spec", "template"},
	"Job":                   {"spec", "template"},
	"ReplicationController": {"spec", "template"},
	"CronJob":               {"spec", "jobTemplate", "spec", "template"},
}

// WorkloadTemplatePath returns the path of kind's pod template, or false for
// kinds the workload rule does not know.
func WorkloadTemplatePath(kind string) ([]string, bool) {
	p, ok := workloadTemplates[kind]
	return p, ok
}

// WorkloadKinds lists the kinds of WorkloadTemplatePath, sorted.
func WorkloadKinds() []string {
	var out []string
	for k := range workloadTemplates {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// WorkloadResult is what ApplyWorkload did.
type WorkloadResult struct {
	// Changed is true when the template's annotations were rewritten.
	Changed bool
	// Warnings are for the user (AdmissionResponse warnings, stderr).
	Warnings []string
}

// ApplyWorkload applies the workload rule to obj, a decoded JSON object
// (map[string]any as encoding/json produces) of a kind WorkloadTemplatePath
// knows; other kinds are left alone. It edits obj in place:
//
//   - pmem annotations on the workload's metadata are copied into the pod
//     template, and their keys recorded in AnnotationFromWorkload;
//   - keys recorded there that the workload no longer carries are removed
//     from the template (so `kubectl annotate ... direct-` rolls back);
//   - keys the user wrote on the template themselves win and are never
//     touched.
//
// When the workload carries pmem annotations, the resulting template is
// then checked as the pod rule will check its pods (same parser, same
// messages, the StatefulSet's claim templates counted as volumes), so a bad
// value is refused at the workload, where `kubectl annotate` shows it,
// instead of at every pod creation.
func ApplyWorkload(obj map[string]any, cfg *Config) (*WorkloadResult, error) {
	kind, _ := obj["kind"].(string)
	path, ok := workloadTemplates[kind]
	if !ok {
		return &WorkloadResult{}, nil
	}
	res := &WorkloadResult{}
	// A ReplicaSet of a Deployment or a Job of a CronJob gets its template
	// from its owner, where the rule already ran; changing it here would
	// make the owner's controller no longer recognise its own child.
	if refs, _ := NestedObject(obj, "metadata")["ownerReferences"].([]any); len(refs) > 0 {
		for _, r := range refs {
			if c, _ := asMap(r)["controller"].(bool); c {
				return res, nil
			}
		}
	}

	own := map[string]string{}
	for k, v := range stringMap(NestedObject(obj, "metadata"), "annotations") {
		// The status and bookkeeping keys describe a template, never a
		// workload: copying them would mark pods injected or lie about
		// ownership.
		if strings.HasPrefix(k, Prefix) && k != AnnotationStatus && k != AnnotationFromWorkload {
			own[k] = v
		}
	}

	tmpl := NestedObject(obj, path...)
	if tmpl == nil {
		if len(own) == 0 {
			return res, nil
		}
		return nil, &DeniedError{Err: fmt.Errorf("%s has pmem.alibabacloud.com annotations but no %s to copy them to", kind, strings.Join(path, "."))}
	}
	meta, _ := tmpl["metadata"].(map[string]any)
	var tAnn map[string]any
	if meta != nil {
		tAnn, _ = meta["annotations"].(map[string]any)
	}
	current := map[string]string{}
	for k, v := range tAnn {
		if s, ok := v.(string); ok {
			current[k] = s
		}
	}

	copied := map[string]bool{}
	if v := current[AnnotationFromWorkload]; v != "" {
		for _, short := range strings.Split(v, ",") {
			if short = strings.TrimSpace(short); short != "" {
				copied[Prefix+short] = true
			}
		}
	}

	want := map[string]string{}
	for k, v := range current {
		if k != AnnotationFromWorkload {
			want[k] = v
		}
	}
	// Our earlier copies that the workload dropped go away.
	for k := range copied {
		if _, still := own[k]; !still {
			delete(want, k)
		}
	}
	var ours []string
	for k, v := range own {
		if cur, onTemplate := current[k]; onTemplate && !copied[k] {
			if cur != v {
				res.Warnings = append(res.Warnings, fmt.Sprintf("annotation %s=%q on the %s is not copied to the pod template, which sets %q itself; the template's value wins: remove one of them", k, Abbreviate(v, 40), kind, Abbreviate(cur, 40)))
			}
			continue
		}
		want[k] = v
		ours = append(ours, strings.TrimPrefix(k, Prefix))
	}
	sort.Strings(res.Warnings)
	// Misspelled keys, on the workload or its template: the pod rule says
	// the same at pod creation, but nobody sees the warnings of pods a
	// controller creates.
	keys := maps.Clone(current)
	maps.Copy(keys, own)
	res.Warnings = append(res.Warnings, UnknownAnnotationWarnings(keys)...)
	if len(ours) > 0 {
		sort.Strings(ours)
		want[AnnotationFromWorkload] = strings.Join(ours, ",")
	}

	// Judged only when the workload itself carries pmem annotations (the
	// rule is acting for it, e.g. `kubectl annotate`). A template the user
	// annotated directly is left to the pod rule at pod creation, where the
	// refusal shows on the ReplicaSet: a Deployment with such a template
	// was always accepted, and this rule does not change that.
	if len(own) > 0 {
		if err := checkTemplate(obj, kind, tmpl, want, cfg); err != nil {
			return nil, err
		}
	}

	if maps.Equal(current, want) {
		return res, nil
	}
	res.Changed = true
	if meta == nil {
		meta = map[string]any{}
		tmpl["metadata"] = meta
	}
	out := map[string]any{}
	// Keep non-string values (invalid, but not ours to judge) as they were.
	for k, v := range tAnn {
		if _, isString := v.(string); !isString {
			out[k] = v
		}
	}
	for k, v := range want {
		out[k] = v
	}
	if len(out) == 0 {
		delete(meta, "annotations")
	} else {
		meta["annotations"] = out
	}
	return res, nil
}

// checkTemplate runs the pod rule on the pod the workload's controller will
// create, with the annotations the template is about to carry, and keeps
// only its refusals.
func checkTemplate(obj map[string]any, kind string, tmpl map[string]any, ann map[string]string, cfg *Config) error {
	if _, err := Requested(ann); err != nil {
		return &DeniedError{Err: err}
	}
	if on, _ := Requested(ann); !on {
		return nil
	}
	pod, err := TemplatePod(obj, kind, tmpl)
	if err != nil {
		return &DeniedError{Err: err}
	}
	pod.Annotations = ann
	_, err = Apply(pod, cfg)
	var denied *DeniedError
	if errors.As(err, &denied) {
		return err
	}
	// Anything else (a template that does not decode as a pod) is the
	// apiserver's to report, with its own validation.
	return nil
}

// TemplatePod builds the pod a workload's controller creates from tmpl, as
// far as the pod rule can tell: the template's metadata and spec, plus, for
// a StatefulSet, one volume per volumeClaimTemplate (the controller adds
// them, replacing template volumes of the same name).
func TemplatePod(obj map[string]any, kind string, tmpl map[string]any) (*corev1.Pod, error) {
	js, err := json.Marshal(tmpl)
	if err != nil {
		return nil, err
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(js, pod); err != nil {
		return nil, fmt.Errorf("the pod template does not decode as a pod: %w", err)
	}
	if kind != "StatefulSet" {
		return pod, nil
	}
	claims, _ := NestedObject(obj, "spec")["volumeClaimTemplates"].([]any)
	for _, c := range claims {
		name, _ := NestedObject(asMap(c), "metadata")["name"].(string)
		if name == "" {
			continue
		}
		pod.Spec.Volumes = slices.DeleteFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == name })
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name},
		}})
	}
	return pod, nil
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// NestedObject walks nested JSON objects (as decoded into map[string]any);
// nil when any step is missing or not an object.
func NestedObject(obj map[string]any, path ...string) map[string]any {
	cur := obj
	for _, k := range path {
		if cur == nil {
			return nil
		}
		cur, _ = cur[k].(map[string]any)
	}
	return cur
}

func stringMap(obj map[string]any, key string) map[string]string {
	out := map[string]string{}
	if obj == nil {
		return out
	}
	m, _ := obj[key].(map[string]any)
	for k, v := range m {
		if s, ok := v.(string); ok {
			out[k] = s
		}
	}
	return out
}
