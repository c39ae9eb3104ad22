package webhook

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// ClaimLookup tells whether a PersistentVolumeClaim exists. The webhook
// uses it for the claim annotation: Kubernetes itself would admit the pod
// and leave it Pending with an event nobody reads; refusing it names the
// mistake where the user sees it.
type ClaimLookup interface {
	ClaimExists(ctx context.Context, namespace, name string) (bool, error)
}

// claimLookupTimeout keeps a slow apiserver from eating the webhook's
// own timeout (deploy/ sets 5s).
const claimLookupTimeout = 2 * time.Second

// APIClaimLookup asks the apiserver (RBAC: get persistentvolumeclaims).
type APIClaimLookup struct{ Client kubernetes.Interface }

// ClaimExists implements ClaimLookup.
func (l APIClaimLookup) ClaimExists(ctx context.Context, namespace, name string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, claimLookupTimeout)
	defer cancel()
	_, err := l.Client.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	}
	return false, err
}

// checkClaim returns a denial for a claim that does not exist, a warning
// when existence could not be verified (fail open: the pod would merely
// stay Pending), or neither.
func (h *Handler) checkClaim(ctx context.Context, namespace, claim string) (denial error, warning string) {
	if h.Claims == nil || claim == "" {
		return nil, ""
	}
	ok, err := h.Claims.ClaimExists(ctx, namespace, claim)
	switch {
	case err != nil:
		return nil, fmt.Sprintf("could not verify that PersistentVolumeClaim %q exists in namespace %q (%v); the pod stays Pending if it does not", patch.Abbreviate(claim, 40), namespace, patch.Abbreviate(err.Error(), 60))
	case !ok:
		return &patch.InvalidAnnotationError{Key: patch.AnnotationClaim, Value: claim,
			Allowed: fmt.Sprintf("PersistentVolumeClaim %q not found in namespace %q: create it first, or remove the annotation to get a generated PMEM volume", claim, namespace)}, ""
	}
	return nil, ""
}

// ClaimLookupFunc adapts a function to ClaimLookup.
type ClaimLookupFunc func(ctx context.Context, namespace, name string) (bool, error)

// ClaimExists implements ClaimLookup.
func (f ClaimLookupFunc) ClaimExists(ctx context.Context, namespace, name string) (bool, error) {
	return f(ctx, namespace, name)
}
