package deploy

import (
	"strings"
	"testing"

	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// The webhook pods pass the "restricted" Pod Security Standard, checked by the same evaluator the
// API server's PodSecurity admission uses, for every rendering a user can install.
func TestWebhookPodIsRestricted(t *testing.T) {
	eval, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	restricted := psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}
	k, err := RenderDefault()
	if err != nil {
		t.Fatal(err)
	}
	renderings := map[string][]byte{"kustomize": k}
	for name, values := range map[string]map[string]any{"helm certManager": nil, "helm selfSigned": SelfSignedValues()} {
		if renderings[name], err = RenderHelm("pmem-webhook", Namespace, values); err != nil {
			t.Fatal(err)
		}
	}
	for name, m := range renderings {
		t.Run(name, func(t *testing.T) {
			r := decodeAll(t, m)
			tmpl := r.deployment.Spec.Template
			res := policy.AggregateCheckResults(eval.EvaluatePod(restricted, &tmpl.ObjectMeta, &tmpl.Spec))
			if !res.Allowed {
				t.Errorf("webhook pod violates PodSecurity restricted: %s", strings.Join(res.ForbiddenReasons, "; "))
			}
		})
	}

	// The check is not vacuous: a root container with a writable root FS is rejected.
	r := decodeAll(t, k)
	tmpl := r.deployment.Spec.Template.DeepCopy()
	tmpl.Spec.SecurityContext.RunAsNonRoot = nil
	tmpl.Spec.Containers[0].SecurityContext.RunAsNonRoot = nil
	tmpl.Spec.Containers[0].SecurityContext.Capabilities = nil
	if res := policy.AggregateCheckResults(eval.EvaluatePod(restricted, &tmpl.ObjectMeta, &tmpl.Spec)); res.Allowed {
		t.Errorf("evaluator allowed a pod without runAsNonRoot and capabilities drop ALL")
	}
}
