package main

import (
	"os"
	"strings"
	"testing"
)

// Issue 14 row 8: the opt-in written as a label is not an opt-in, and the
// user hears it: the manifest comes back unchanged with a warning saying
// where the key belongs.
func TestOptInAsLabelWarns(t *testing.T) {
	stdout, stderr, err := inject(t, "-f", "testdata/opt-in-label.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile("testdata/opt-in-label.yaml")
	if stdout != string(want) {
		t.Errorf("manifest changed:\n%s", stdout)
	}
	for _, w := range []string{"warning: Deployment redis-label", `label pmem.alibabacloud.com/direct="true" has no effect`, "spec.template.metadata.annotations"} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr)
		}
	}
}
