package webhook

import (
	"bytes"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"sync"

	"github.com/buger/jsonparser"
	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// MaxBodyBytes bounds an AdmissionReview body. The apiserver refuses
// objects over 3 MiB (etcd's request limit) and the review wraps one
// object plus metadata; anything larger is not from an apiserver.
const MaxBodyBytes = 7 << 20

// The envelope fields read from an AdmissionReview. jsonparser finds them
// in one pass over the body without decoding anything else: for the pods
// that did not opt in (nearly all of them) that pass is the whole cost.
var reviewPaths = [][]string{
	{"apiVersion"},
	{"kind"},
	{"request", "uid"},
	{"request", "kind", "group"},
	{"request", "kind", "kind"},
	{"request", "operation"},
	{"request", "namespace"},
	{"request", "dryRun"},
	{"request", "object"},
}

const (
	pathAPIVersion = iota
	pathKind
	pathUID
	pathGroup
	pathObjectKind
	pathOperation
	pathNamespace
	pathDryRun
	pathObject
	pathCount
)

var jsonContentType = []string{"application/json"}

func isJSONMediaType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// ServeHTTP answers AdmissionReview v1 requests. It replaces
// controller-runtime's generic plumbing, which decodes the whole review
// and re-encodes the whole response for every pod in the cluster.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.clock()
	decision := DecisionErrored
	defer func() { h.Metrics.observe(decision, h.clock().Sub(start).Seconds()) }()

	if r.Method != http.MethodPost {
		http.Error(w, "pmem-webhook: only POST is accepted", http.StatusMethodNotAllowed)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" && !isJSONMediaType(ct) {
		http.Error(w, fmt.Sprintf("pmem-webhook: Content-Type %q is not accepted: send application/json", r.Header.Get("Content-Type")), http.StatusUnsupportedMediaType)
		return
	}
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer bufPool.Put(buf)
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, MaxBodyBytes)); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("pmem-webhook: request body exceeds %d bytes", MaxBodyBytes), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "pmem-webhook: reading request body: "+err.Error(), http.StatusBadRequest)
		return
	}

	req, err := parseReview(buf.Bytes())
	if err != nil {
		http.Error(w, "pmem-webhook: malformed AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	var resp admission.Response
	resp, decision = h.handle(r.Context(), req)
	// Direct assignment of a shared slice: Header.Set allocates one per call.
	w.Header()["Content-Type"] = jsonContentType
	if resp.Allowed && (resp.Result == nil || resp.Result.Message == "") {
		err = h.writeAllowed(w, req.UID, resp)
	} else {
		err = writeReview(w, req.UID, resp)
	}
	if err != nil {
		decision = DecisionErrored
		h.Log.Error(err, "cannot encode AdmissionReview response", "uid", req.UID)
	}
}

// parseReview extracts what the handler needs. The object stays raw: it
// is only decoded when it contains the opt-in key.
func parseReview(body []byte) (admission.Request, error) {
	var (
		req      admission.Request
		fields   [pathCount]bool
		parseErr error
	)
	jsonparser.EachKey(body, func(idx int, value []byte, vt jsonparser.ValueType, err error) {
		if err != nil {
			parseErr = err
			return
		}
		fields[idx] = true
		str := func() string {
			if vt != jsonparser.String {
				parseErr = fmt.Errorf("%s must be a string", pathName(idx))
				return ""
			}
			s, err := jsonparser.ParseString(value)
			if err != nil {
				parseErr = fmt.Errorf("%s: %w", pathName(idx), err)
			}
			return s
		}
		switch idx {
		case pathAPIVersion:
			if vt != jsonparser.String || string(value) != reviewAPIVersion {
				parseErr = fmt.Errorf("apiVersion %s is not supported: only admission.k8s.io/v1 (set admissionReviewVersions: [v1])", quoteBounded(value))
			}
		case pathKind:
			if vt != jsonparser.String || string(value) != "AdmissionReview" {
				parseErr = fmt.Errorf("kind %s is not AdmissionReview", quoteBounded(value))
			}
		case pathUID:
			req.UID = types.UID(str())
		case pathGroup:
			// Constants for the common values: no allocation per request.
			if vt == jsonparser.String && len(value) == 0 {
				req.Kind.Group = ""
			} else {
				req.Kind.Group = str()
			}
		case pathObjectKind:
			if vt == jsonparser.String && string(value) == "Pod" {
				req.Kind.Kind = "Pod"
			} else {
				req.Kind.Kind = str()
			}
		case pathOperation:
			if vt == jsonparser.String && string(value) == string(admissionv1.Create) {
				req.Operation = admissionv1.Create
			} else {
				req.Operation = admissionv1.Operation(str())
			}
		case pathNamespace:
			req.Namespace = str()
		case pathDryRun:
			if vt == jsonparser.Boolean {
				b, _ := jsonparser.ParseBoolean(value)
				req.DryRun = &b
			}
		case pathObject:
			if vt == jsonparser.Object {
				req.Object.Raw = value
			}
		}
	}, reviewPaths...)
	if parseErr != nil {
		return req, parseErr
	}
	for _, idx := range []int{pathAPIVersion, pathKind, pathUID} {
		if !fields[idx] {
			return req, fmt.Errorf("%s is missing", pathName(idx))
		}
	}
	if req.UID == "" {
		return req, errors.New("request.uid is empty")
	}
	req.Kind.Version = "v1"
	return req, nil
}

const reviewAPIVersion = "admission.k8s.io/v1"

// quoteBounded quotes a raw JSON value for an error message, bounded so a
// hostile body cannot make the answer large.
func quoteBounded(v []byte) string { return strconv.Quote(patch.Abbreviate(string(v), 64)) }

func pathName(idx int) string {
	name := ""
	for i, p := range reviewPaths[idx] {
		if i > 0 {
			name += "."
		}
		name += p
	}
	return name
}
