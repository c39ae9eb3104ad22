package webhook

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
)

// A misspelled annotation key on an opted-in pod, or on a workload or its
// template, comes back as an admission warning (kubectl prints it) naming
// the key and the closest known one.
func TestUnknownAnnotationWarned(t *testing.T) {
	const want = "annotation pmem.alibabacloud.com/sise is unknown and has no effect (did you mean pmem.alibabacloud.com/size?)"
	t.Run("pod", func(t *testing.T) {
		h, _ := newTestHandler(t)
		body, _ := readFixture(t, "redis-single")
		body = bytes.Replace(body, []byte(`"pmem.alibabacloud.com/direct": "true"`),
			[]byte(`"pmem.alibabacloud.com/direct": "true", "pmem.alibabacloud.com/sise": "4Gi"`), 1)
		review, code := serve(t, h, body)
		if code != http.StatusOK || !review.Response.Allowed || len(review.Response.Patch) == 0 {
			t.Fatalf("code %d, response %+v; want injected", code, review.Response)
		}
		if !strings.Contains(strings.Join(review.Response.Warnings, "\n"), want) {
			t.Errorf("warnings %q lack %q", review.Response.Warnings, want)
		}
	})
	for _, tc := range []struct{ name, own, tmpl string }{
		{"workload", `{"pmem.alibabacloud.com/direct":"true","pmem.alibabacloud.com/sise":"4Gi"}`, ""},
		{"template", "", `{"pmem.alibabacloud.com/direct":"true","pmem.alibabacloud.com/sise":"4Gi"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := serveWorkload(t, workloadReview(t, admissionv1.Update, "Deployment", deployment(tc.own, tc.tmpl)))
			if !out.Response.Allowed {
				t.Fatalf("denied: %+v", out.Response.Result)
			}
			if !strings.Contains(strings.Join(out.Response.Warnings, "\n"), want) {
				t.Errorf("warnings %q lack %q", out.Response.Warnings, want)
			}
		})
	}
}
