package patch_test

import (
	"testing"

	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/patch/patchtest"
)

func TestOptInTable(t *testing.T) {
	for _, tc := range patchtest.OptInCases(t) {
		t.Run(tc.Name, func(t *testing.T) {
			if got := patch.NeedsAdmission(tc.Pod.Annotations); got != tc.NeedsAdmission {
				t.Errorf("NeedsAdmission = %v, want %v", got, tc.NeedsAdmission)
			}
			// Requested splits what reaches the webhook into injected and
			// denied; everything else is not requested, without an error.
			requested, err := patch.Requested(tc.Pod.Annotations)
			if !tc.NeedsAdmission && (requested || err != nil) {
				t.Errorf("Requested = %v, %v; want false, nil for a pod the webhook never sees", requested, err)
			}
			if tc.NeedsAdmission && !requested && err == nil {
				t.Errorf("Requested = false, nil for a pod sent to the webhook: it must be injected or denied")
			}
		})
	}
}
