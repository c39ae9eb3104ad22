// Package webhook is the admission side of pmem-webhook: it reads the
// AdmissionReview envelope (review.go), hands the pod to patch (DecodePartial,
// Apply, Operations) and answers with a JSON patch, warnings, or a denial the
// user can act on (response.go).
package webhook

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/buger/jsonparser"
	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// Path is where the server mounts the handler; deploy/ points the
// MutatingWebhookConfiguration at it.
const Path = "/mutate-v1-pod"

// Handler admits pods. It sees every pod created in the cluster that the
// webhook configuration's selectors let through, so the pass-through path
// does no decoding at all.
type Handler struct {
	Config  *patch.Config
	Metrics *Metrics
	Log     logr.Logger
	// Claims, when set, refuses pods whose claim annotation names a
	// PersistentVolumeClaim that does not exist.
	Claims ClaimLookup

	initOnce sync.Once
	initJSON []byte
	initErr  error
	// now is replaceable so tests never depend on the clock.
	now func() time.Time
}

var _ admission.Handler = (*Handler)(nil)

// allowed is the answer for everything the webhook leaves alone.
var allowed = admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: true}}

// optInKey is searched for in the raw object before anything is decoded.
var optInKey = []byte(`"` + patch.AnnotationDirect + `"`)

// Handle implements admission.Handler.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := h.clock()
	resp, decision := h.handle(ctx, req)
	h.Metrics.observe(decision, h.clock().Sub(start).Seconds())
	return resp
}

func (h *Handler) clock() time.Time {
	if h.now != nil {
		return h.now()
	}
	return time.Now()
}

func (h *Handler) handle(ctx context.Context, req admission.Request) (admission.Response, string) {
	if req.Operation != admissionv1.Create || req.Kind.Kind != "Pod" || req.Kind.Group != "" {
		return allowed, DecisionSkipped
	}
	// Fast path: a pod whose JSON does not even contain the opt-in key
	// cannot have opted in. No decode, no allocation of a Pod.
	if !bytes.Contains(req.Object.Raw, optInKey) {
		return allowed, DecisionSkipped
	}

	// Still without decoding the pod: read the opt-in annotation and apply
	// the opt-in rule (patch.NeedsAdmission; TestOptInFastPath). Pods
	// that opted out stop here. Pods marked injected (reinvocation,
	// offline injection) do not: the status annotation is copied along
	// with manifests without what it describes, so patch.Apply checks
	// that the injected pieces are there and current (a no-op if so).
	direct, derr := jsonparser.GetString(req.Object.Raw, "metadata", "annotations", patch.AnnotationDirect)
	if errors.Is(derr, jsonparser.KeyPathNotFoundError) {
		// The key is somewhere else: as a label it is a mistaken opt-in
		// the user should hear about (patch.Apply says the same offline).
		if v, err := jsonparser.GetString(req.Object.Raw, "metadata", "labels", patch.AnnotationDirect); err == nil {
			resp := allowed
			resp.Warnings = []string{patch.LabelOptInWarning(v)}
			return resp, DecisionSkipped
		}
		return allowed, DecisionSkipped
	}
	if derr == nil && !patch.DirectValueNeedsAdmission(direct) {
		return allowed, DecisionSkipped
	}

	pod, err := patch.DecodePartial(req.Object.Raw)
	if err != nil {
		h.Log.Error(err, "cannot decode pod", "namespace", req.Namespace, "uid", req.UID)
		return admission.Errored(http.StatusBadRequest, errors.New("request object is not a valid v1 Pod: "+err.Error())), DecisionErrored
	}
	log := h.Log.WithValues("namespace", req.Namespace, "pod", podName(pod), "uid", req.UID, "dryRun", req.DryRun != nil && *req.DryRun)

	res, err := patch.Apply(pod, h.Config)
	var denied *patch.DeniedError
	switch {
	case errors.As(err, &denied):
		log.Info("denied", "reason", err.Error())
		return admission.Denied("pmem-webhook: " + err.Error()), DecisionDenied
	case err != nil:
		log.Error(err, "injection failed")
		return admission.Errored(http.StatusInternalServerError, err), DecisionErrored
	case res.Decision != patch.Injected:
		log.V(1).Info("skipped", "reason", string(res.Decision))
		return allowed, DecisionSkipped
	}

	denial, warning := h.checkClaim(ctx, req.Namespace, res.Options.Claim)
	if denial != nil {
		log.Info("denied", "reason", denial.Error())
		return admission.Denied("pmem-webhook: " + denial.Error()), DecisionDenied
	}
	if warning != "" {
		res.Warnings = append(res.Warnings, warning)
	}

	ops, err := patch.Operations(pod, res.Pod)
	if err != nil {
		log.Error(err, "cannot build JSON patch")
		return admission.Errored(http.StatusInternalServerError, err), DecisionErrored
	}
	log.Info("injected", "operations", len(ops), "warnings", len(res.Warnings))
	resp := admission.Patched("", ops...)
	resp.Warnings = res.Warnings
	return resp, DecisionInjected
}

// podName is the best name available at admission: pods of workloads have
// only generateName until the apiserver assigns one.
func podName(p *corev1.Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.GenerateName + "*"
}
