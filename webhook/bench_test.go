package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// referenceDefaulter is the same mutation written the way kubebuilder
// scaffolds it: controller-runtime decodes the object, we mutate it in
// place, controller-runtime marshals it and diffs the two documents.
type referenceDefaulter struct{ cfg *patch.Config }

func (d referenceDefaulter) Default(_ context.Context, obj runtime.Object) error {
	pod := obj.(*corev1.Pod)
	res, err := patch.Apply(pod, d.cfg)
	if err != nil {
		return err
	}
	*pod = *res.Pod
	return nil
}

// benchBodies returns the AdmissionReview bodies of the benchmark cases:
// (a) pass-through, (b) annotated Redis, (c) Redis + sidecar with 1,500
// env vars, (d) already injected.
func benchBodies(b *testing.B) map[string][]byte {
	b.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "review-redis-single.json"))
	if err != nil {
		b.Fatal(err)
	}
	var base admissionv1.AdmissionReview
	if err := json.Unmarshal(raw, &base); err != nil {
		b.Fatal(err)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(base.Request.Object.Raw, &pod); err != nil {
		b.Fatal(err)
	}
	body := func(p *corev1.Pod) []byte {
		review := base.DeepCopy()
		review.Request.Object.Raw, _ = json.Marshal(p)
		out, _ := json.Marshal(review)
		return out
	}

	plain := pod.DeepCopy()
	delete(plain.Annotations, patch.AnnotationDirect)

	big := pod.DeepCopy()
	sidecar := corev1.Container{Name: "exporter", Image: "oliver006/redis_exporter:v1.62.0"}
	for i := range 1500 {
		big.Spec.Containers[0].Env = append(big.Spec.Containers[0].Env, corev1.EnvVar{Name: fmt.Sprintf("CONFIG_%04d", i), Value: fmt.Sprintf("value-%d-of-a-realistic-length", i)})
	}
	big.Spec.Containers = append(big.Spec.Containers, sidecar)

	res, err := patch.Apply(pod.DeepCopy(), testConfig())
	if err != nil {
		b.Fatal(err)
	}
	return map[string][]byte{
		"a-passthrough": body(plain),
		"b-redis":       body(&pod),
		"c-1500env":     body(big),
		"d-injected":    body(res.Pod),
	}
}

func BenchmarkAdmission(b *testing.B) {
	bodies := benchBodies(b)
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		b.Fatal(err)
	}
	m, err := NewMetrics(newDiscardRegistry())
	if err != nil {
		b.Fatal(err)
	}
	impls := map[string]http.Handler{
		"impl=pmem":      &Handler{Config: testConfig(), Metrics: m, Log: logr.Discard()},
		"impl=defaulter": admission.WithCustomDefaulter(scheme, &corev1.Pod{}, referenceDefaulter{cfg: testConfig()}),
	}
	for _, name := range []string{"a-passthrough", "b-redis", "c-1500env", "d-injected"} {
		for _, impl := range []string{"impl=pmem", "impl=defaulter"} {
			b.Run("case="+name+"/"+impl, func(b *testing.B) {
				h, body := impls[impl], bodies[name]
				// One request and one response writer, reset each round,
				// so the numbers are the handler's and not the harness's.
				rd := bytes.NewReader(body)
				req, _ := http.NewRequest(http.MethodPost, Path, nil)
				req.Header.Set("Content-Type", "application/json")
				w := &benchWriter{header: http.Header{}}
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					rd.Reset(body)
					req.Body = io.NopCloser(rd)
					w.reset()
					h.ServeHTTP(w, req)
					if w.code != http.StatusOK {
						b.Fatalf("status %d: %s", w.code, w.body.String())
					}
				}
			})
		}
	}
}

func newDiscardRegistry() *prometheus.Registry { return prometheus.NewRegistry() }

// benchWriter is a reusable http.ResponseWriter.
type benchWriter struct {
	header http.Header
	body   bytes.Buffer
	code   int
}

func (w *benchWriter) reset() {
	clear(w.header)
	w.body.Reset()
	w.code = http.StatusOK
}
func (w *benchWriter) Header() http.Header         { return w.header }
func (w *benchWriter) Write(p []byte) (int, error) { return w.body.Write(p) }
func (w *benchWriter) WriteHeader(code int)        { w.code = code }
