package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	jsonpatchapply "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func workloadReview(t *testing.T, op admissionv1.Operation, kind, object string) []byte {
	t.Helper()
	group := "apps"
	switch kind {
	case "Job", "CronJob":
		group = "batch"
	case "ReplicationController":
		group = ""
	}
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID("uid-1"),
			Kind:      metav1.GroupVersionKind{Group: group, Version: "v1", Kind: kind},
			Operation: op,
			Namespace: "default",
			Name:      "redis",
		},
	}
	review.Request.Object.Raw = []byte(object)
	b, err := json.Marshal(review)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func serveWorkload(t *testing.T, body []byte) *admissionv1.AdmissionReview {
	t.Helper()
	wh := NewWorkloadWebhook(&WorkloadHandler{Config: testConfig(), Log: logr.Discard()})
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, WorkloadPath, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	wh.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	out := &admissionv1.AdmissionReview{}
	if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
		t.Fatal(err)
	}
	return out
}

const deploymentTmpl = `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"redis"%s},
 "spec":{"replicas":1,"selector":{"matchLabels":{"app":"redis"}},"template":{"metadata":{"labels":{"app":"redis"}%s},
 "spec":{"containers":[{"name":"redis","image":"redis","resources":{"limits":{"memory":"1Gi"}}}]}}}}`

func deployment(own, tmpl string) string {
	a, b := "", ""
	if own != "" {
		a = `,"annotations":` + own
	}
	if tmpl != "" {
		b = `,"annotations":` + tmpl
	}
	return strings.Replace(strings.Replace(deploymentTmpl, "%s", a, 1), "%s", b, 1)
}

func TestWorkloadHandler(t *testing.T) {
	tests := []struct {
		name     string
		op       admissionv1.Operation
		kind     string
		object   string
		wantTmpl map[string]any // template annotations after the patch; nil: none
		noPatch  bool
		denied   string
	}{
		{name: "create copies", op: admissionv1.Create, kind: "Deployment",
			object:   deployment(`{"pmem.alibabacloud.com/direct":"true"}`, ""),
			wantTmpl: map[string]any{"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/from-workload": "direct"}},
		{name: "update that removes the last key cleans the template", op: admissionv1.Update, kind: "Deployment",
			object:   deployment("", `{"pmem.alibabacloud.com/direct":"true","pmem.alibabacloud.com/from-workload":"direct"}`),
			wantTmpl: nil},
		{name: "no pmem key: untouched", op: admissionv1.Update, kind: "Deployment",
			object: deployment(`{"a":"b"}`, ""), noPatch: true},
		{name: "already in sync: no patch", op: admissionv1.Update, kind: "Deployment",
			object:  deployment(`{"pmem.alibabacloud.com/direct":"true"}`, `{"pmem.alibabacloud.com/direct":"true","pmem.alibabacloud.com/from-workload":"direct"}`),
			noPatch: true},
		{name: "delete is not judged", op: admissionv1.Delete, kind: "Deployment",
			object: deployment(`{"pmem.alibabacloud.com/direct":"yes"}`, ""), noPatch: true},
		{name: "bad value denied with the pod rule's message", op: admissionv1.Update, kind: "Deployment",
			object: deployment(`{"pmem.alibabacloud.com/direct":"true","pmem.alibabacloud.com/size":"1Ki"}`, ""),
			denied: `pmem-webhook: annotation pmem.alibabacloud.com/size="1Ki" is invalid: must be at least 256Mi`},
		{name: "statefulset claim template named pmem", op: admissionv1.Create, kind: "StatefulSet",
			object: `{"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{"name":"redis","annotations":{"pmem.alibabacloud.com/direct":"true"}},
			 "spec":{"template":{"spec":{"containers":[{"name":"redis","image":"redis"}]}},"volumeClaimTemplates":[{"metadata":{"name":"pmem"}}]}}`,
			denied: `pod already has a volume named "pmem"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := serveWorkload(t, workloadReview(t, tt.op, tt.kind, tt.object))
			resp := out.Response
			if tt.denied != "" {
				if resp.Allowed || resp.Result == nil || !strings.Contains(resp.Result.Message, tt.denied) {
					t.Fatalf("response %+v, want a denial containing %q", resp, tt.denied)
				}
				return
			}
			if !resp.Allowed {
				t.Fatalf("denied: %+v", resp.Result)
			}
			if tt.noPatch {
				if len(resp.Patch) != 0 {
					t.Fatalf("unexpected patch %s", resp.Patch)
				}
				return
			}
			p, err := jsonpatchapply.DecodePatch(resp.Patch)
			if err != nil {
				t.Fatal(err)
			}
			patched, err := p.Apply([]byte(tt.object))
			if err != nil {
				t.Fatalf("patch %s: %v", resp.Patch, err)
			}
			var got struct {
				Spec struct {
					Replicas json.Number `json:"replicas"`
					Template struct {
						Metadata struct {
							Annotations map[string]any `json:"annotations"`
						} `json:"metadata"`
					} `json:"template"`
				} `json:"spec"`
			}
			if err := json.Unmarshal(patched, &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantTmpl, got.Spec.Template.Metadata.Annotations); diff != "" {
				t.Errorf("template annotations (-want +got):\n%s\npatch: %s", diff, resp.Patch)
			}
			if got.Spec.Replicas != "1" {
				t.Errorf("replicas = %q: the patch touched fields outside the template annotations: %s", got.Spec.Replicas, resp.Patch)
			}
		})
	}
}
