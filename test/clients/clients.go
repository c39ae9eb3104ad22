// Package clients runs the install commands of the README with the real clients users run —
// helm and kustomize built from tools/go.mod, kubectl built from the Kubernetes source of
// test/controlplane, the kubectl-pmem plugin installed by `make install-plugin` — and compares
// what they render and what a real kube-apiserver stores with the in-process rendering of
// package deploy that every other tier uses. `make test-clients` runs it (docs/deploy.md).
package clients

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Blocks returns the command lines of the section of a Markdown document whose heading is
// heading, one slice per fenced block, in the document's order: every line of a fenced block that
// starts with "$ ", without the prompt and without a trailing "   # comment" (a '#' preceded by
// two spaces, which no command here uses). A block without such a line is left out. The README
// shows each install path as one block, its lines in the order a user types them.
func Blocks(markdown []byte, heading string) ([][]string, error) {
	level := headingLevel(heading)
	title := strings.TrimSpace(heading[level:])
	var blocks [][]string
	var block []string
	var inSection, found, inFence bool
	s := bufio.NewScanner(bytes.NewReader(markdown))
	for s.Scan() {
		line := s.Text()
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
			if !inFence && len(block) > 0 {
				blocks, block = append(blocks, block), nil
			}
			continue
		}
		if l := headingLevel(line); l > 0 && !inFence {
			if inSection && l <= level {
				break
			}
			if l == level && strings.TrimSpace(line[l:]) == title {
				inSection, found = true, true
			}
			continue
		}
		cmd, ok := strings.CutPrefix(line, "$ ")
		if !inSection || !inFence || !ok {
			continue
		}
		if i := strings.Index(cmd, "  #"); i >= 0 {
			cmd = cmd[:i]
		}
		block = append(block, strings.TrimSpace(cmd))
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("read markdown: %w", err)
	}
	if !found {
		return nil, fmt.Errorf("no section %q", heading)
	}
	return blocks, nil
}

// headingLevel is the number of leading '#' of a Markdown heading line ("## x" is 2), or 0.
func headingLevel(line string) int {
	n := len(line) - len(strings.TrimLeft(line, "#"))
	if n == 0 || n == len(line) || line[n] != ' ' {
		return 0
	}
	return n
}

// Key names an object the way the API server identifies it: "apiVersion Kind namespace/name".
func Key(o *unstructured.Unstructured) string {
	return fmt.Sprintf("%s %s %s/%s", o.GetAPIVersion(), o.GetKind(), o.GetNamespace(), o.GetName())
}

// ByKey indexes objects by Key and fails on a repeated one: two objects of one name would make
// a client's rendering ambiguous to apply.
func ByKey(objs []*unstructured.Unstructured) (map[string]*unstructured.Unstructured, error) {
	m := make(map[string]*unstructured.Unstructured, len(objs))
	for _, o := range objs {
		k := Key(o)
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("%s rendered twice", k)
		}
		m[k] = o
	}
	return m, nil
}

// Missing lists where got lacks or differs from a field of want: got may have more (what the API
// server defaults, what kubectl and helm annotate), but every field a manifest sets must come
// back as written. A field an API server does not know is dropped or pruned, and shows up here.
// Both sides are compared in their JSON form, so YAML's and the API's number types agree.
func Missing(want, got map[string]any) ([]string, error) {
	w, err := jsonRoundTrip(want)
	if err != nil {
		return nil, err
	}
	g, err := jsonRoundTrip(got)
	if err != nil {
		return nil, err
	}
	var diffs []string
	missing(w, g, "", &diffs)
	return diffs, nil
}

func missing(want, got any, path string, diffs *[]string) {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			*diffs = append(*diffs, fmt.Sprintf("%s: want an object, got %v", path, got))
			return
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok {
				*diffs = append(*diffs, fmt.Sprintf("%s.%s: missing (want %v)", path, k, wv))
				continue
			}
			missing(wv, gv, path+"."+k, diffs)
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			*diffs = append(*diffs, fmt.Sprintf("%s: want %v, got %v", path, want, got))
			return
		}
		for i := range w {
			missing(w[i], g[i], fmt.Sprintf("%s[%d]", path, i), diffs)
		}
	default:
		if !reflect.DeepEqual(want, got) {
			*diffs = append(*diffs, fmt.Sprintf("%s: want %v, got %v", path, want, got))
		}
	}
}

func jsonRoundTrip(v map[string]any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("unmarshal: %w", err)
	}
	return out, nil
}
