// Package patchtest holds test data about patch's contract that the tests
// of several packages share (like net/http/httptest, it is imported by
// tests only).
package patchtest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// OptInCase is one row of patch/testdata/opt-in.yaml: a pod and whether
// the opt-in rule (patch.NeedsAdmission) sends it to the webhook.
type OptInCase struct {
	Name           string
	NeedsAdmission bool
	// JSON is the pod exactly as written (an empty annotation map stays
	// there), Pod the same decoded.
	JSON []byte
	Pod  corev1.Pod
}

// OptInCases reads the opt-in table, failing t when it cannot.
func OptInCases(t testing.TB) []OptInCase {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	file := filepath.Join(filepath.Dir(self), "..", "testdata", "opt-in.yaml")
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Name           string          `json:"name"`
		NeedsAdmission bool            `json:"needsAdmission"`
		Pod            json.RawMessage `json:"pod"`
	}
	if err := yaml.UnmarshalStrict(raw, &rows); err != nil || len(rows) < 10 {
		t.Fatalf("%s: %v (%d rows)", file, err, len(rows))
	}
	cases := make([]OptInCase, len(rows))
	for i, r := range rows {
		cases[i] = OptInCase{Name: r.Name, NeedsAdmission: r.NeedsAdmission, JSON: r.Pod}
		if err := json.Unmarshal(r.Pod, &cases[i].Pod); err != nil {
			t.Fatalf("%s: %s: %v", file, r.Name, err)
		}
	}
	return cases
}
