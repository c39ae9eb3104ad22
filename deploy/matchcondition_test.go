package deploy

import (
	"context"
	"encoding/json"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	celplugin "k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/webhook"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/cel/environment"

	"github.com/pmem-webhook/pmem-webhook/patch/patchtest"
)

// The pod webhook's matchConditions, as every rendering ships them, send
// exactly the pods the opt-in rule (patch.NeedsAdmission) sends: evaluated
// by the apiserver's own matcher (k8s.io/apiserver's CEL environment and
// match-condition code, what kube-apiserver runs) on the rows of
// patch/testdata/opt-in.yaml that patch and the handler are tested with.
func TestMatchConditionIsOptInRule(t *testing.T) {
	renderings := map[string][]byte{}
	var err error
	if renderings["kustomize"], err = RenderDefault(); err != nil {
		t.Fatal(err)
	}
	for name, values := range map[string]map[string]any{"helm certManager": nil, "helm selfSigned": SelfSignedValues()} {
		if renderings[name], err = RenderHelm("pmem-webhook", Namespace, values); err != nil {
			t.Fatal(err)
		}
	}
	compiler := celplugin.NewConditionCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
	gvk := schema.GroupVersionKind{Version: "v1", Kind: "Pod"}
	gvr := schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	cases := patchtest.OptInCases(t)
	for name, m := range renderings {
		t.Run(name, func(t *testing.T) {
			cfg := decodeAll(t, m).webhook
			var pods *admissionregistrationv1.MutatingWebhook
			for i, w := range cfg.Webhooks {
				if len(w.Rules) > 0 && len(w.Rules[0].Resources) > 0 && w.Rules[0].Resources[0] == "pods" {
					pods = &cfg.Webhooks[i]
				}
			}
			if pods == nil || len(pods.MatchConditions) == 0 {
				t.Fatalf("no pod webhook with matchConditions in %s", cfg.Name)
			}
			matcher := webhook.NewMutatingWebhookAccessor("uid", cfg.Name, pods).GetCompiledMatcher(compiler)
			for _, tc := range cases {
				obj := &unstructured.Unstructured{}
				if err := json.Unmarshal(tc.JSON, &obj.Object); err != nil {
					t.Fatal(err)
				}
				obj.SetGroupVersionKind(gvk)
				attr := admission.NewAttributesRecord(obj, nil, gvk, "default", obj.GetName(), gvr, "", admission.Create,
					&metav1.CreateOptions{}, false, &user.DefaultInfo{Name: "test"})
				res := matcher.Match(context.Background(), &admission.VersionedAttributes{Attributes: attr, VersionedKind: gvk, VersionedObject: admission.NewLazyObject(obj)}, nil, nil)
				if res.Error != nil {
					t.Fatalf("%s: evaluating matchConditions: %v", tc.Name, res.Error)
				}
				if res.Matches != tc.NeedsAdmission {
					t.Errorf("%s: matchConditions send the pod = %v, patch.NeedsAdmission = %v (condition %q)", tc.Name, res.Matches, tc.NeedsAdmission, res.FailedConditionName)
				}
			}
		})
	}
}
