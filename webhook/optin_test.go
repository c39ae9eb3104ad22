package webhook

import (
	"context"
	"encoding/json"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/pmem-webhook/pmem-webhook/patch/patchtest"
)

// The handler's fast path answers exactly the pods the opt-in rule
// (patch.NeedsAdmission) leaves alone as skipped, untouched; every other
// pod is injected or denied.
func TestOptInFastPath(t *testing.T) {
	h, _ := newTestHandler(t)
	for _, tc := range patchtest.OptInCases(t) {
		t.Run(tc.Name, func(t *testing.T) {
			var pod map[string]any
			if err := json.Unmarshal(tc.JSON, &pod); err != nil {
				t.Fatal(err)
			}
			if _, ok := pod["spec"]; !ok {
				pod["spec"] = map[string]any{"containers": []any{map[string]any{
					"name": "redis", "image": "redis", "resources": map[string]any{"limits": map[string]any{"memory": "1Gi"}},
				}}}
			}
			raw, err := json.Marshal(pod)
			if err != nil {
				t.Fatal(err)
			}
			req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
				UID: "u", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Operation: admissionv1.Create,
				Namespace: "default", Object: runtime.RawExtension{Raw: raw},
			}}
			resp, decision := h.handle(context.Background(), req)
			if skipped := decision == DecisionSkipped; skipped == tc.NeedsAdmission {
				t.Errorf("decision %s for a pod with NeedsAdmission %v", decision, tc.NeedsAdmission)
			}
			if !tc.NeedsAdmission && (!resp.Allowed || len(resp.Patches) > 0) {
				t.Errorf("response %+v; want allowed untouched", resp)
			}
		})
	}
}
