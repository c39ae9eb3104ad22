package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// WorkloadPath is where the server mounts the workload handler; the second
// entry of the MutatingWebhookConfiguration points at it.
const WorkloadPath = "/mutate-workloads"

// WorkloadHandler applies the workload rule (patch.ApplyWorkload) to
// Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and
// ReplicationControllers at CREATE and UPDATE: pmem annotations written on
// the workload reach its pod template, so the controller rolls the pods.
// It makes no API calls.
type WorkloadHandler struct {
	Config *patch.Config
	Log    logr.Logger
}

var _ admission.Handler = (*WorkloadHandler)(nil)

// prefixKey is searched for in the raw object before decoding: a workload
// without any pmem key, on its metadata or its template, has nothing to add
// and nothing of ours to remove.
var prefixKey = []byte(`"` + patch.Prefix)

// NewWorkloadWebhook serves h with controller-runtime's admission plumbing.
// Workload admissions are rare (deploys, scaling, annotate) next to pod
// admissions, so the generic decode is fine here.
func NewWorkloadWebhook(h *WorkloadHandler) http.Handler {
	return &admission.Webhook{Handler: h}
}

// Handle implements admission.Handler.
func (h *WorkloadHandler) Handle(_ context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return allowed
	}
	if _, ok := patch.WorkloadTemplatePath(req.Kind.Kind); !ok {
		return allowed
	}
	if !bytes.Contains(req.Object.Raw, prefixKey) {
		return allowed
	}
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(req.Object.Raw))
	// Numbers stay as written: the patch is a diff of the re-encoded
	// object, and float64 would round large integers.
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil {
		return admission.Errored(http.StatusBadRequest, errors.New("request object is not a JSON object: "+err.Error()))
	}
	// The request's kind is authoritative; an object that omits it must
	// not get it from the diff.
	kind, hadKind := obj["kind"]
	obj["kind"] = req.Kind.Kind
	log := h.Log.WithValues("kind", req.Kind.Kind, "namespace", req.Namespace, "name", req.Name, "operation", req.Operation)

	res, err := patch.ApplyWorkload(obj, h.Config)
	if hadKind {
		obj["kind"] = kind
	} else {
		delete(obj, "kind")
	}
	var denied *patch.DeniedError
	switch {
	case errors.As(err, &denied):
		log.Info("denied", "reason", err.Error())
		return admission.Denied("pmem-webhook: " + err.Error())
	case err != nil:
		log.Error(err, "workload rule failed")
		return admission.Errored(http.StatusInternalServerError, err)
	case !res.Changed:
		resp := allowed
		resp.Warnings = res.Warnings
		return resp
	}
	out, err := json.Marshal(obj)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	resp := admission.PatchResponseFromRaw(req.Object.Raw, out)
	resp.Warnings = res.Warnings
	log.Info("pod template annotations updated", "operations", len(resp.Patches))
	return resp
}
