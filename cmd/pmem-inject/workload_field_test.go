package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Issue 14 rows 6 and 7: every document that carries a pod template is
// handled, and offline gives the webhook's answer.
func TestInjectFieldCases(t *testing.T) {
	tests := []struct {
		file        string
		wantErr     string // a refusal: no output at all
		wantWarning string
	}{
		{file: "list.yaml"},
		{file: "replicationcontroller.yaml"},
		{file: "cloneset.yaml",
			wantWarning: "warning: CloneSet redis-clone (document 1): kind CloneSet is not a built-in workload; its spec.template was injected as a pod template"},
		{file: "sts-claim-template-named-pmem.yaml",
			// The webhook's denial of the resulting pod, word for word.
			wantErr: `StatefulSet redis (document 1): pod already has a volume named "pmem" (a StatefulSet volumeClaimTemplate of that name becomes one); the PMEM injector needs that name: rename the volume, or recreate the StatefulSet with the claim template renamed`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			stdout, stderr, err := inject(t, "-f", filepath.Join("testdata", "field", tt.file))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				if stdout != "" {
					t.Errorf("wrote output despite the refusal:\n%s", stdout)
				}
				return
			}
			if err != nil {
				t.Fatalf("pmem-inject: %v\n%s", err, stderr)
			}
			if !strings.Contains(stderr, tt.wantWarning) {
				t.Errorf("stderr lacks %q:\n%s", tt.wantWarning, stderr)
			}
			golden := filepath.Join("testdata", "field", strings.TrimSuffix(tt.file, ".yaml")+".golden.yaml")
			if *update {
				if err := os.WriteFile(golden, []byte(stdout), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := documents(t, stdout), documents(t, string(want)); !reflect.DeepEqual(got, want) {
				t.Errorf("output differs from %s:\n%s", golden, cmp.Diff(want, got))
			}
			if !strings.Contains(stdout, "pmem.alibabacloud.com/status: injected") {
				t.Errorf("%s: nothing injected:\n%s", tt.file, stdout)
			}
		})
	}
}
