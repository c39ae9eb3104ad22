package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	jsonpatchapply "github.com/evanphx/json-patch/v5"
	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// injector rewrites a stream of manifests.
type injector struct {
	cfg      *patch.Config
	warnings io.Writer
	// warned holds the warnings already printed: the workload rule and
	// the pod rule both warn about an unknown annotation on a template.
	warned map[string]bool
}

// warn prints a warning about the object header once.
func (in *injector) warn(header, w string) {
	line := fmt.Sprintf("warning: %s: %s\n", header, w)
	if in.warned[line] {
		return
	}
	if in.warned == nil {
		in.warned = map[string]bool{}
	}
	in.warned[line] = true
	fmt.Fprint(in.warnings, line)
}

// document is one YAML document of the input and what became of it.
type document struct {
	raw    []byte
	out    []byte
	header string // "Deployment redis (document 2)" for messages
}

// Run reads every document first and writes nothing unless all of them are
// valid: a half-injected stream piped into kubectl apply is worse than none.
func (in *injector) Run(r io.Reader, w io.Writer) error {
	docs, err := split(r)
	if err != nil {
		return err
	}
	var errs []error
	for i, d := range docs {
		if err := in.document(i+1, d); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for i, d := range docs {
		if i > 0 {
			if _, err := io.WriteString(w, "---\n"); err != nil {
				return err
			}
		}
		if _, err := w.Write(d.out); err != nil {
			return err
		}
	}
	return nil
}

func split(r io.Reader) ([]*document, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var docs []*document
	for {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read manifests: %w", err)
		}
		// The reader keeps the "---" separators' surroundings; blank
		// documents (a leading "---") carry nothing worth keeping.
		if len(bytes.TrimSpace(stripComments(raw))) == 0 && len(docs) == 0 {
			continue
		}
		docs = append(docs, &document{raw: raw, out: raw})
	}
}

func stripComments(b []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
		}
	}
	return out
}

func (in *injector) document(n int, d *document) error {
	js, err := yaml.YAMLToJSON(d.raw)
	if err != nil {
		return fmt.Errorf("document %d: not valid YAML: %w", n, err)
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil
	}
	obj, err := decodeObject(js)
	if err != nil {
		return fmt.Errorf("document %d: not a Kubernetes object: %w", n, err)
	}
	changed, err := in.object(obj, fmt.Sprintf("(document %d)", n))
	if err != nil || !changed {
		return err
	}
	// Only changed documents are re-encoded: the others keep their bytes,
	// comments included.
	patched, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	if d.out, err = yaml.JSONToYAML(patched); err != nil {
		return fmt.Errorf("document %d: %w", n, err)
	}
	return nil
}

// decodeObject keeps numbers as written (json.Number): float64 would
// round large integers in fields the injector never looks at.
func decodeObject(js []byte) (map[string]any, error) {
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil {
		return nil, err
	}
	if obj == nil {
		return nil, errors.New("not a JSON object")
	}
	return obj, nil
}

// object injects one object in place, the way admission would treat it:
// the workload rule first (as the workload webhook does at the workload's
// admission), then the pod rule on the template (as the pod webhook does
// for every pod created from it). where locates it for messages.
func (in *injector) object(obj map[string]any, where string) (bool, error) {
	kind, _ := obj["kind"].(string)
	name, _ := patch.NestedObject(obj, "metadata")["name"].(string)
	header := fmt.Sprintf("%s %s %s", kind, name, where)

	if kind == "List" || strings.HasSuffix(kind, "List") && obj["items"] != nil {
		// `kubectl get -o yaml` of several objects, generators: the items
		// are objects of their own.
		items, _ := obj["items"].([]any)
		changed := false
		var errs []error
		for i, it := range items {
			m, ok := it.(map[string]any)
			if !ok {
				continue
			}
			c, err := in.object(m, fmt.Sprintf("(item %d of %s)", i, strings.TrimSpace(kind+" "+name+" "+where)))
			if err != nil {
				errs = append(errs, err)
			}
			changed = changed || c
		}
		return changed, errors.Join(errs...)
	}

	if kind == "Pod" {
		return in.template(obj, header, obj)
	}
	path, known := patch.WorkloadTemplatePath(kind)
	if !known {
		// Unknown kinds that carry a pod template (OpenKruise CloneSet,
		// Argo Rollout, ...): the pod webhook injects their pods at
		// creation, so offline injects the template the same way; the
		// workload rule (annotations on the object's own metadata) is
		// only for the built-in kinds, which the user should know.
		tmpl := patch.NestedObject(obj, "spec", "template")
		if tmpl == nil || patch.NestedObject(tmpl, "spec")["containers"] == nil {
			return false, nil
		}
		for k := range stringKeys(patch.NestedObject(obj, "metadata"), "annotations") {
			if strings.HasPrefix(k, patch.Prefix) {
				fmt.Fprintf(in.warnings, "warning: %s: annotation %s on the %s's own metadata is not copied to its pod template (only built-in workload kinds are); put it on spec.template.metadata.annotations\n", header, k, kind)
			}
		}
		direct, isString := patch.NestedObject(tmpl, "metadata", "annotations")[patch.AnnotationDirect].(string)
		optedIn := isString && patch.DirectValueNeedsAdmission(direct)
		changed, err := in.template(tmpl, header, nil)
		if changed && optedIn {
			fmt.Fprintf(in.warnings, "warning: %s: kind %s is not a built-in workload; its spec.template was injected as a pod template\n", header, kind)
		}
		return changed, err
	}

	res, err := patch.ApplyWorkload(obj, in.cfg)
	if err != nil {
		return false, fmt.Errorf("%s: %w", header, err)
	}
	for _, w := range res.Warnings {
		in.warn(header, w)
	}
	tmpl := patch.NestedObject(obj, path...)
	if tmpl == nil {
		return res.Changed, nil
	}
	changed, err := in.template(tmpl, header, obj)
	return res.Changed || changed, err
}

// template runs the pod rule on a pod or pod template in place. owner is
// the workload (nil for a pod or an unknown kind), whose StatefulSet claim
// templates count as the pod's volumes, as they will at pod creation.
func (in *injector) template(tmpl map[string]any, header string, owner map[string]any) (bool, error) {
	js, err := json.Marshal(tmpl)
	if err != nil {
		return false, err
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(js, pod); err != nil {
		return false, fmt.Errorf("%s: pod template does not decode: %w", header, err)
	}
	if owner != nil && owner["kind"] == "StatefulSet" {
		// The same check the workload webhook makes (patch.TemplatePod);
		// injection itself works on the template as written.
		full, err := patch.TemplatePod(owner, "StatefulSet", tmpl)
		if err != nil {
			return false, fmt.Errorf("%s: %w", header, err)
		}
		if _, err := patch.Apply(full, in.cfg); err != nil {
			return false, fmt.Errorf("%s: %w", header, err)
		}
	}
	res, err := patch.Apply(pod, in.cfg)
	if err != nil {
		return false, fmt.Errorf("%s: %w", header, err)
	}
	// Warnings first: a pod that was not injected can carry one too (the
	// opt-in written as a label).
	for _, w := range res.Warnings {
		in.warn(header, w)
	}
	var ops []jsonpatch.Operation
	switch res.Decision {
	case patch.Injected:
		if ops, err = patch.Operations(pod, res.Pod); err != nil {
			return false, fmt.Errorf("%s: %w", header, err)
		}
	case patch.NotRequested:
		// The way back to DRAM for a manifest injected offline: the
		// template itself carries the pieces, and the webhook never
		// touches a pod without the opt-in.
		un, err := patch.Uninject(pod, in.cfg)
		if err != nil {
			return false, fmt.Errorf("%s: %w", header, err)
		}
		if !un.Removed {
			return false, nil
		}
		if ops, err = patch.UninjectOperations(pod, un.Pod); err != nil {
			return false, fmt.Errorf("%s: %w", header, err)
		}
		fmt.Fprintf(in.warnings, "note: %s: no %s: \"true\": removed the PMEM injection (back to DRAM)\n", header, patch.AnnotationDirect)
		for _, n := range un.Notes {
			fmt.Fprintf(in.warnings, "note: %s: %s\n", header, n)
		}
	default:
		return false, nil
	}
	opsJSON, err := json.Marshal(ops)
	if err != nil {
		return false, err
	}
	p, err := jsonpatchapply.DecodePatch(opsJSON)
	if err != nil {
		return false, fmt.Errorf("%s: %w", header, err)
	}
	// Patching the template's own JSON keeps every field the Go types do
	// not know as it was.
	patched, err := p.Apply(js)
	if err != nil {
		return false, fmt.Errorf("%s: apply patch: %w", header, err)
	}
	out, err := decodeObject(patched)
	if err != nil {
		return false, err
	}
	clear(tmpl)
	for k, v := range out {
		tmpl[k] = v
	}
	return true, nil
}

func stringKeys(obj map[string]any, key string) map[string]bool {
	out := map[string]bool{}
	m, _ := obj[key].(map[string]any)
	for k := range m {
		out[k] = true
	}
	return out
}
