package webhook

// Everything the webhook writes back to the apiserver: the AdmissionReview
// response and the JSON patch inside it. Allowed responses (every pod that
// is not denied) are written without reflection; denials and errors go
// through encoding/json.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// appendJSONString quotes s for JSON; UIDs are UUIDs, so the loop is the
// path taken, and json.Marshal covers anything else correctly.
func appendJSONString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			q, _ := json.Marshal(s)
			return append(buf, q...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}

// writeAllowed writes an allowed response, with its patch and warnings if
// any, without reflection: it answers every pod that is not denied.
func (h *Handler) writeAllowed(w io.Writer, uid types.UID, resp admission.Response) error {
	var p []byte
	if len(resp.Patches) > 0 {
		var err error
		if p, err = marshalPatch(resp.Patches, h.marshalValue); err != nil {
			return err
		}
	}
	buf := make([]byte, 0, 160+base64.StdEncoding.EncodedLen(len(p)))
	buf = append(buf, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":`...)
	buf = appendJSONString(buf, string(uid))
	buf = append(buf, `,"allowed":true`...)
	if len(resp.Patches) > 0 {
		buf = append(buf, `,"patchType":"JSONPatch","patch":"`...)
		buf = base64.StdEncoding.AppendEncode(buf, p)
		buf = append(buf, '"')
	}
	if len(resp.Warnings) > 0 {
		warnings, err := json.Marshal(resp.Warnings)
		if err != nil {
			return err
		}
		buf = append(buf, `,"warnings":`...)
		buf = append(buf, warnings...)
	}
	buf = append(buf, "}}\n"...)
	_, err := w.Write(buf)
	return err
}

// marshalValue encodes one patch value. The init container depends only on
// the configuration, so its encoding is computed once.
func (h *Handler) marshalValue(v any) ([]byte, error) {
	switch c := v.(type) {
	case corev1.Container:
		if patch.IsInitContainer(&c, h.Config) {
			return h.initContainerJSON()
		}
	case []corev1.Container:
		if len(c) == 1 && patch.IsInitContainer(&c[0], h.Config) {
			init, err := h.initContainerJSON()
			if err != nil {
				return nil, err
			}
			return append(append([]byte{'['}, init...), ']'), nil
		}
	}
	return json.Marshal(v)
}

func (h *Handler) initContainerJSON() ([]byte, error) {
	h.initOnce.Do(func() {
		h.initJSON, h.initErr = json.Marshal(patch.InitContainer(h.Config))
	})
	return h.initJSON, h.initErr
}

func writeReview(w io.Writer, uid types.UID, resp admission.Response) error {
	out := resp.AdmissionResponse
	out.UID = uid
	if len(resp.Patches) > 0 {
		p, err := marshalPatch(resp.Patches, json.Marshal)
		if err != nil {
			return err
		}
		pt := admissionv1.PatchTypeJSONPatch
		out.Patch, out.PatchType = p, &pt
	}
	return json.NewEncoder(w).Encode(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: reviewAPIVersion, Kind: "AdmissionReview"},
		Response: &out,
	})
}

// marshalPatch encodes operations as RFC 6902 JSON. Operation's own
// MarshalJSON marshals each value and then has the outer encoder validate
// and compact it again; writing the envelope directly halves the work.
// marshalValue encodes one operation's value (json.Marshal, or the
// handler's cache of the init container).
func marshalPatch(ops []jsonpatch.Operation, marshalValue func(any) ([]byte, error)) ([]byte, error) {
	buf := make([]byte, 0, 256*len(ops))
	buf = append(buf, '[')
	for i, op := range ops {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"op":`...)
		buf = appendJSONString(buf, op.Operation)
		buf = append(buf, `,"path":`...)
		path, err := json.Marshal(op.Path)
		if err != nil {
			return nil, err
		}
		buf = append(buf, path...)
		if op.Operation != "remove" {
			value, err := marshalValue(op.Value)
			if err != nil {
				return nil, fmt.Errorf("encode value of %s %s: %w", op.Operation, op.Path, err)
			}
			buf = append(buf, `,"value":`...)
			buf = append(buf, value...)
		}
		buf = append(buf, '}')
	}
	return append(buf, ']'), nil
}
