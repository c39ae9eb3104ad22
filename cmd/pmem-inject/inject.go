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
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/webhook"
)

// templatePaths maps the kinds that carry a pod (template) to the JSON
// pointer of its metadata+spec. Other kinds pass through.
var templatePaths = map[string]string{
	"Pod":         "",
	"Deployment":  "/spec/template",
	"StatefulSet": "/spec/template",
	"DaemonSet":   "/spec/template",
	"ReplicaSet":  "/spec/template",
	"Job":         "/spec/template",
	"CronJob":     "/spec/jobTemplate/spec/template",
}

// injector rewrites a stream of manifests.
type injector struct {
	cfg      *patch.Config
	warnings io.Writer
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
	var head struct {
		Kind     string            `json:"kind"`
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return fmt.Errorf("document %d: not a Kubernetes object: %w", n, err)
	}
	d.header = fmt.Sprintf("%s %s (document %d)", head.Kind, head.Metadata.Name, n)
	path, ok := templatePaths[head.Kind]
	if !ok {
		return nil
	}
	if path != "" {
		for k := range head.Metadata.Annotations {
			if strings.HasPrefix(k, patch.Prefix) {
				fmt.Fprintf(in.warnings, "warning: %s: annotation %s is on the %s's own metadata, where it has no effect; put it on %s.metadata.annotations\n",
					d.header, k, head.Kind, strings.ReplaceAll(strings.TrimPrefix(path, "/"), "/", "."))
			}
		}
	}

	tmplJSON, err := subtree(js, path)
	if err != nil {
		return fmt.Errorf("%s: %w", d.header, err)
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(tmplJSON, pod); err != nil {
		return fmt.Errorf("%s: pod template does not decode: %w", d.header, err)
	}
	res, err := patch.Apply(pod, in.cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", d.header, err)
	}
	// Warnings first: a pod that was not injected can carry one too (the
	// opt-in written as a label).
	for _, w := range res.Warnings {
		fmt.Fprintf(in.warnings, "warning: %s: %s\n", d.header, w)
	}
	if res.Decision != patch.Injected {
		return nil
	}
	ops, err := webhook.BuildPatch(pod, res.Pod)
	if err != nil {
		return fmt.Errorf("%s: %w", d.header, err)
	}
	for i := range ops {
		ops[i].Path = path + ops[i].Path
	}
	opsJSON, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	p, err := jsonpatchapply.DecodePatch(opsJSON)
	if err != nil {
		return fmt.Errorf("%s: %w", d.header, err)
	}
	// Patching the document's own JSON keeps every field the Go types
	// do not know and every field outside the pod template as it was.
	patched, err := p.Apply(js)
	if err != nil {
		return fmt.Errorf("%s: apply patch: %w", d.header, err)
	}
	if d.out, err = yaml.JSONToYAML(patched); err != nil {
		return fmt.Errorf("%s: %w", d.header, err)
	}
	return nil
}

// subtree returns the JSON value at a JSON pointer made of plain keys.
func subtree(js []byte, pointer string) ([]byte, error) {
	if pointer == "" {
		return js, nil
	}
	var node any
	if err := json.Unmarshal(js, &node); err != nil {
		return nil, err
	}
	for _, key := range strings.Split(strings.TrimPrefix(pointer, "/"), "/") {
		m, ok := node.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("no %s in the object", pointer)
		}
		if node, ok = m[key]; !ok {
			return nil, fmt.Errorf("no %s in the object", pointer)
		}
	}
	return json.Marshal(node)
}
