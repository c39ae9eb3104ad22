package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	jsonpatchapply "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
)

// FuzzServeHTTP sends arbitrary bodies to the handler: it must never panic,
// answer malformed reviews with a 400 and a message, and every patch it
// returns must apply to the object it was computed for.
func FuzzServeHTTP(f *testing.F) {
	for _, name := range []string{"redis-single", "no-annotation", "unknown-fields", "ldpreload-valuefrom", "kmem"} {
		raw, err := os.ReadFile(filepath.Join("testdata", "review-"+name+".json"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","object":{"metadata":{"annotations":{"pmem.alibabacloud.com/direct":1}}}}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"\u0000\"","kind":{"kind":"Pod"},"operation":"CREATE","object":{"metadata":{"annotations":{"pmem.alibabacloud.com/direct":"true"}},"spec":{"containers":[{"name":"a","resources":{"limits":{"memory":"1Gi"}}}]}}}}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, body []byte) {
		h, _ := newTestHandler(t)
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		done := make(chan struct{})
		go func() { h.ServeHTTP(rec, req); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("handler hangs on body %q", body)
		}
		switch rec.Code {
		case http.StatusBadRequest:
			if !bytes.Contains(rec.Body.Bytes(), []byte("malformed AdmissionReview")) {
				t.Fatalf("400 without a message: %s", rec.Body)
			}
			return
		case http.StatusOK:
		default:
			t.Fatalf("status %d for body %q", rec.Code, body)
		}
		var review admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &review); err != nil || review.Response == nil || review.Response.UID == "" {
			t.Fatalf("200 with an invalid AdmissionReview (%v): %s", err, rec.Body)
		}
		if len(review.Response.Patch) == 0 {
			return
		}
		var in admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &in); err != nil || in.Request == nil {
			return // jsonparser is more lenient than encoding/json
		}
		p, err := jsonpatchapply.DecodePatch(review.Response.Patch)
		if err != nil {
			t.Fatalf("invalid patch: %v", err)
		}
		if _, err := p.Apply(in.Request.Object.Raw); err != nil {
			t.Fatalf("patch does not apply to its object: %v\n%s", err, review.Response.Patch)
		}
	})
}

func TestServeHTTPRejects(t *testing.T) {
	h, _ := newTestHandler(t)
	cases := []struct {
		name, method, contentType string
		body                      []byte
		code                      int
	}{
		{"GET", http.MethodGet, "application/json", nil, http.StatusMethodNotAllowed},
		{"yaml", http.MethodPost, "application/yaml", []byte("{}"), http.StatusUnsupportedMediaType},
		{"too large", http.MethodPost, "application/json", bytes.Repeat([]byte(" "), MaxBodyBytes+1), http.StatusRequestEntityTooLarge},
		{"v1beta1", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"1"}}`), http.StatusBadRequest},
		{"no uid", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}`), http.StatusBadRequest},
		{"charset ok", http.MethodPost, "application/json; charset=utf-8", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1"}}`), http.StatusOK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(tc.method, Path, bytes.NewReader(tc.body))
			req.Header.Set("Content-Type", tc.contentType)
			h.ServeHTTP(rec, req)
			if rec.Code != tc.code {
				t.Errorf("status %d, want %d: %s", rec.Code, tc.code, rec.Body)
			}
		})
	}
}
