package e2e

import "testing"

// TestPods runs the features that need running pods, on providers that run them (kubelet,
// kind). It runs after TestControlPlane (file order) and, unlike it, one feature at a time:
// two cores run every pod, and the webhook-replica feature must not disturb the others.
func TestPods(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if podEnv == nil {
		t.Skipf("provider %q runs no pods (E2E_PROVIDER=kubelet or kind do)", providerName())
	}
	testenv.Test(t, PodFeatures(featureEnv, podEnv)...)
}
