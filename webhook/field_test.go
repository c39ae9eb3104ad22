package webhook

import (
	"net/http"
	"strings"
	"testing"
)

// review wraps a pod object (JSON) in a CREATE AdmissionReview.
func review(object string) []byte {
	return []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"default","object":` + object + `}}`)
}

// Issue 14 row 8: a pod sent with the opt-in as a label is allowed
// unchanged, with a warning saying where the key belongs.
func TestHandlerWarnsOptInAsLabel(t *testing.T) {
	h, _ := newTestHandler(t)
	body := review(`{"metadata":{"name":"r","labels":{"pmem.alibabacloud.com/direct":"true"},"annotations":{"pmem.alibabacloud.com/size":"1Gi"}},"spec":{"containers":[{"name":"redis","image":"redis"}]}}`)
	resp, code := serve(t, h, body)
	if code != http.StatusOK || !resp.Response.Allowed || resp.Response.Patch != nil {
		t.Fatalf("code %d, response %+v; want allowed without a patch", code, resp.Response)
	}
	if len(resp.Response.Warnings) != 1 || !strings.Contains(resp.Response.Warnings[0], "move it to metadata.annotations") {
		t.Errorf("warnings = %q", resp.Response.Warnings)
	}
}

// Issue 14 row 4 through the partial decoder: envFrom is read, so the
// webhook warns as pmem-inject does.
func TestHandlerWarnsEnvFrom(t *testing.T) {
	h, _ := newTestHandler(t)
	body := review(`{"metadata":{"name":"r","annotations":{"pmem.alibabacloud.com/direct":"true"}},"spec":{"containers":[{"name":"redis","image":"redis","command":["redis-server","--save","","--appendonly","no"],"envFrom":[{"secretRef":{"name":"rt"}}],"resources":{"limits":{"memory":"1Gi"}}}]}}`)
	resp, code := serve(t, h, body)
	if code != http.StatusOK || !resp.Response.Allowed || resp.Response.Patch == nil {
		t.Fatalf("code %d, response %+v; want injected", code, resp.Response)
	}
	if len(resp.Response.Warnings) != 1 || !strings.Contains(resp.Response.Warnings[0], `envFrom secretRef "rt" may set LD_PRELOAD`) {
		t.Errorf("warnings = %q", resp.Response.Warnings)
	}
}
