package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jsonpatchapply "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	"sigs.k8s.io/yaml"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// testConfig matches the one patch's golden files were made with.
func testConfig() *patch.Config {
	cfg := patch.DefaultConfig()
	cfg.AllowedStorageClasses = append(cfg.AllowedStorageClasses, "csi-pmem-direct-xfs")
	cfg.KMEMNodeSelector = map[string]string{"pmem.alibabacloud.com/kmem": "true"}
	return &cfg
}

func newTestHandler(t *testing.T) (*Handler, *Metrics) {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return &Handler{Config: testConfig(), Metrics: m, Log: logr.Discard()}, m
}

// serve sends a fixture through controller-runtime's HTTP admission
// plumbing, exactly as the apiserver would, and returns the response.
func serve(t *testing.T, h *Handler, body []byte) (*admissionv1.AdmissionReview, int) {
	t.Helper()
	var wh http.Handler = h
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	wh.ServeHTTP(rec, req)
	out := &admissionv1.AdmissionReview{}
	if rec.Code == http.StatusOK {
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			t.Fatalf("response is not an AdmissionReview: %v\n%s", err, rec.Body)
		}
	}
	return out, rec.Code
}

func readFixture(t *testing.T, name string) (raw []byte, object json.RawMessage) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "review-"+name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(raw, &review); err != nil {
		t.Fatal(err)
	}
	return raw, review.Request.Object.Raw
}

func TestHandlerInjectsGolden(t *testing.T) {
	for _, name := range []string{"redis-single", "redis-exporter", "existing-ldpreload", "kmem", "claim"} {
		t.Run(name, func(t *testing.T) {
			h, m := newTestHandler(t)
			body, object := readFixture(t, name)
			review, code := serve(t, h, body)
			if code != http.StatusOK || review.Response == nil || !review.Response.Allowed {
				t.Fatalf("code %d, response %+v; want allowed", code, review.Response)
			}
			if review.Response.UID == "" || *review.Response.PatchType != admissionv1.PatchTypeJSONPatch {
				t.Fatalf("response lacks UID or JSONPatch type: %+v", review.Response)
			}
			got := applyPatch(t, object, review.Response.Patch)
			want := &corev1.Pod{}
			golden, err := os.ReadFile(filepath.Join("..", "patch", "testdata", name+".golden.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if err := yaml.UnmarshalStrict(golden, want); err != nil {
				t.Fatal(err)
			}
			if !equality.Semantic.DeepEqual(want, got) {
				t.Errorf("patched pod differs from golden (-want +got):\n%s", cmp.Diff(want, got))
			}
			if v := testutil.ToFloat64(m.admissions.WithLabelValues(DecisionInjected)); v != 1 {
				t.Errorf("injected counter = %v, want 1", v)
			}
		})
	}
}

func applyPatch(t *testing.T, object, patchJSON []byte) *corev1.Pod {
	t.Helper()
	p, err := jsonpatchapply.DecodePatch(patchJSON)
	if err != nil {
		t.Fatalf("patch is not RFC 6902: %v\n%s", err, patchJSON)
	}
	patched, err := p.Apply(object)
	if err != nil {
		t.Fatalf("patch does not apply: %v\n%s", err, patchJSON)
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(patched, pod); err != nil {
		t.Fatal(err)
	}
	return pod
}

func TestHandlerPassThrough(t *testing.T) {
	h, m := newTestHandler(t)
	body, _ := readFixture(t, "no-annotation")
	review, code := serve(t, h, body)
	if code != http.StatusOK || !review.Response.Allowed {
		t.Fatalf("code %d, response %+v; want allowed", code, review.Response)
	}
	if review.Response.Patch != nil || review.Response.PatchType != nil || len(review.Response.Warnings) > 0 {
		t.Errorf("pass-through carries a patch or warnings: %+v", review.Response)
	}
	if v := testutil.ToFloat64(m.admissions.WithLabelValues(DecisionSkipped)); v != 1 {
		t.Errorf("skipped counter = %v, want 1", v)
	}
}

func TestHandlerDenies(t *testing.T) {
	h, m := newTestHandler(t)
	body, _ := readFixture(t, "ldpreload-valuefrom")
	review, code := serve(t, h, body)
	if code != http.StatusOK || review.Response.Allowed {
		t.Fatalf("code %d, response %+v; want denied", code, review.Response)
	}
	res := review.Response.Result
	if res == nil || res.Code < 400 || res.Code >= 500 || !strings.Contains(res.Message, `container "redis" sets LD_PRELOAD with valueFrom`) {
		t.Errorf("denial result = %+v; want a 4xx naming the container and LD_PRELOAD", res)
	}
	if review.Response.Patch != nil {
		t.Error("denial carries a patch")
	}
	if v := testutil.ToFloat64(m.admissions.WithLabelValues(DecisionDenied)); v != 1 {
		t.Errorf("denied counter = %v, want 1", v)
	}
}

// Fields these Go types do not know survive: the patch never removes.
func TestHandlerKeepsUnknownFields(t *testing.T) {
	h, _ := newTestHandler(t)
	body, object := readFixture(t, "unknown-fields")
	review, _ := serve(t, h, body)
	if !review.Response.Allowed {
		t.Fatalf("denied: %+v", review.Response.Result)
	}
	var ops []map[string]any
	if err := json.Unmarshal(review.Response.Patch, &ops); err != nil {
		t.Fatal(err)
	}
	for _, op := range ops {
		if op["op"] == "remove" {
			t.Errorf("patch removes %v", op["path"])
		}
	}
	p, _ := jsonpatchapply.DecodePatch(review.Response.Patch)
	patched, err := p.Apply(object)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"futureSchedulingHints"`, `"futureResizePolicy"`, `"a/b~c":"kept"`, `"pmem.alibabacloud.com/status":"injected"`} {
		if !bytes.Contains(patched, []byte(want)) {
			t.Errorf("patched object lacks %s:\n%s", want, patched)
		}
	}
}

func TestHandlerMalformedObject(t *testing.T) {
	h, m := newTestHandler(t)
	body := []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{"metadata":{"annotations":{"pmem.alibabacloud.com/direct":"true"}},"spec":{"containers":"not-a-list"}}}}`)
	review, code := serve(t, h, body)
	if code != http.StatusOK || review.Response.Allowed || review.Response.Result.Code != http.StatusBadRequest {
		t.Fatalf("code %d, response %+v; want a 400 result", code, review.Response)
	}
	if v := testutil.ToFloat64(m.admissions.WithLabelValues(DecisionErrored)); v != 1 {
		t.Errorf("errored counter = %v, want 1", v)
	}
}

func TestHandlerIgnoresOtherOperations(t *testing.T) {
	h, _ := newTestHandler(t)
	for _, req := range []admission.Request{
		{AdmissionRequest: admissionv1.AdmissionRequest{Operation: admissionv1.Update, Kind: podKind}},
		{AdmissionRequest: admissionv1.AdmissionRequest{Operation: admissionv1.Create, Kind: metaKind("apps", "Deployment")}},
	} {
		resp := h.Handle(t.Context(), req)
		if !resp.Allowed || len(resp.Patches) > 0 {
			t.Errorf("%s %s: got %+v, want allowed without patch", req.Operation, req.Kind.Kind, resp)
		}
	}
}
