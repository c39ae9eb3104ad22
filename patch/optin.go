package patch

// The opt-in rule, in one place. Three parts of the product apply it: the
// webhook configuration's matchCondition (CEL, evaluated by the apiserver:
// which pods are sent at all), the handler's fast path (webhook/handler.go:
// which pods are answered without decoding) and Requested (which pods are
// injected). The first two must send on exactly NeedsAdmission; Requested
// then splits those into injected and denied. The pods in
// testdata/opt-in.yaml hold all three to it: TestOptInTable here,
// TestOptInFastPath in webhook/ and TestMatchConditionIsOptInRule in
// deploy/, which evaluates the CEL text of the rendered manifests.

// OptOutValue is the only value of AnnotationDirect that a pod is admitted
// untouched with; any other value opts in ("true") or is denied as invalid.
const OptOutValue = "false"

// NeedsAdmission reports whether a pod with these annotations must reach
// the webhook: it opted in, or wrote an opt-in value that must be denied
// with a message rather than silently ignored.
func NeedsAdmission(annotations map[string]string) bool {
	v, ok := annotations[AnnotationDirect]
	return ok && DirectValueNeedsAdmission(v)
}

// DirectValueNeedsAdmission is NeedsAdmission for a pod whose
// AnnotationDirect is present with this value (the handler reads it from
// the raw JSON without building a map).
func DirectValueNeedsAdmission(v string) bool { return v != OptOutValue }

// OptInCEL is NeedsAdmission as the CEL expression of the webhook
// configuration's matchCondition (deploy/webhook and the Helm chart carry
// this text; deploy's tests compare and evaluate it). object is never null:
// the rule is CREATE-only.
const OptInCEL = "has(object.metadata.annotations) && '" + AnnotationDirect + "' in object.metadata.annotations && object.metadata.annotations['" + AnnotationDirect + "'] != '" + OptOutValue + "'"
