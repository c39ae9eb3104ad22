package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// TestHelmNotes: what `helm install` prints tells users how to opt in the way the README does,
// with `kubectl annotate` on the workload (the workload webhook) or on the pod template.
func TestHelmNotes(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	const annotate = "kubectl annotate deployment/redis pmem.alibabacloud.com/direct=true"
	if !bytes.Contains(readme, []byte("$ "+annotate)) {
		t.Fatalf("README.md no longer shows `%s`: update NOTES.txt and this test with it", annotate)
	}
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   []string
	}{
		{"cert-manager", nil, []string{annotate, "spec:\n    template:\n      metadata:\n        annotations:\n          pmem.alibabacloud.com/direct: \"true\"", "get certificate pmem-webhook-serving-cert"}},
		{"self-signed", SelfSignedValues(), []string{annotate, "selfSigned certificates"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			notes, err := renderHelmNotes("pmem-webhook", Namespace, tc.values)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(notes, w) {
					t.Errorf("NOTES.txt does not say %q:\n%s", w, notes)
				}
			}
			// Issue 13 made annotations on the workload itself work.
			if strings.Contains(notes, "not on the Deployment") {
				t.Errorf("NOTES.txt still says annotations on the Deployment do not work:\n%s", notes)
			}
		})
	}
}

// TestDocsHelmValuesTable: every default in docs/deploy.md's Helm values table is the chart's
// values.yaml default. A row names keys in its first column and their defaults, in the same order,
// in its second; a row with fewer defaults than keys gives the defaults of its first keys.
func TestDocsHelmValuesTable(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(ChartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatalf("values.yaml: %v", err)
	}
	code := regexp.MustCompile("`([^`]*)`")
	checked := 0
	s := bufio.NewScanner(bytes.NewReader(doc))
	inTable := false
	for s.Scan() {
		line := s.Text()
		if line == "| value | default | meaning |" {
			inTable = true
			continue
		}
		if inTable && !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(line, "|")
		if !inTable || len(cells) < 4 || strings.HasPrefix(cells[1], "---") {
			continue
		}
		keys, defaults := code.FindAllStringSubmatch(cells[1], -1), code.FindAllStringSubmatch(cells[2], -1)
		for i := 0; i < len(defaults) && i < len(keys); i++ {
			key, doc := keys[i][1], defaults[i][1]
			got, ok, _ := unstructured.NestedFieldNoCopy(values, strings.Split(key, ".")...)
			if !ok {
				t.Errorf("docs/deploy.md: %s is not in values.yaml", key)
				continue
			}
			var want any
			if err := yaml.Unmarshal([]byte(doc), &want); err != nil {
				t.Errorf("docs/deploy.md: %s default %q: %v", key, doc, err)
				continue
			}
			if !equalJSON(t, want, got) {
				t.Errorf("docs/deploy.md says %s defaults to %s, values.yaml has %s", key, asJSON(t, want), asJSON(t, got))
			}
			checked++
		}
	}
	if checked < 10 {
		t.Fatalf("checked %d defaults of docs/deploy.md's Helm values table: table not found or its format changed", checked)
	}
}

// TestDocsMatchCondition: docs/deploy.md quotes the pod webhook's matchConditions expression as
// deploy/webhook has it.
func TestDocsMatchCondition(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(filepath.Join("webhook", "mutatingwebhookconfiguration.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*expression: "(.*)"$`).FindSubmatch(cfg)
	if m == nil {
		t.Fatal("deploy/webhook/mutatingwebhookconfiguration.yaml: no quoted expression (the pod webhook's)")
	}
	if !bytes.Contains(doc, []byte("`"+string(m[1])+"`")) {
		t.Errorf("docs/deploy.md does not quote the pod webhook's matchConditions expression:\n%s", m[1])
	}
}

// renderHelmNotes renders the chart's NOTES.txt, what `helm install` prints after installing, for
// Helm's default capabilities.
func renderHelmNotes(release, namespace string, values map[string]any) (string, error) {
	out, err := renderChart(release, namespace, values, chartutil.DefaultCapabilities)
	if err != nil {
		return "", err
	}
	for name, content := range out {
		if path.Base(name) == "NOTES.txt" {
			return content, nil
		}
	}
	return "", fmt.Errorf("helm render %s: no NOTES.txt", ChartDir)
}
