package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/pkg/features"
	e2etypes "sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// secondEnv is what the second webhook adds to every container.
const secondEnv = "E2E_SECOND_WEBHOOK"

// envAdder is a second mutating webhook: it adds secondEnv to each container
// that lacks it and records whether the pmem injection was already there
// when it was called.
type envAdder struct {
	mu          sync.Mutex
	calls       int
	sawInjected bool
}

func (a *envAdder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var review admissionv1.AdmissionReview
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err == nil {
		err = json.Unmarshal(body, &review)
	}
	if err != nil || review.Request == nil {
		http.Error(w, fmt.Sprintf("bad AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	var pod corev1.Pod
	if err := json.Unmarshal(review.Request.Object.Raw, &pod); err != nil {
		http.Error(w, fmt.Sprintf("decode pod: %v", err), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	a.calls++
	a.sawInjected = a.sawInjected || injected(&pod)
	a.mu.Unlock()

	var ops []map[string]any
	for i, c := range pod.Spec.Containers {
		has := false
		for _, e := range c.Env {
			has = has || e.Name == secondEnv
		}
		switch {
		case has:
		case len(c.Env) == 0:
			ops = append(ops, map[string]any{"op": "add", "path": fmt.Sprintf("/spec/containers/%d/env", i),
				"value": []corev1.EnvVar{{Name: secondEnv, Value: "1"}}})
		default:
			ops = append(ops, map[string]any{"op": "add", "path": fmt.Sprintf("/spec/containers/%d/env/-", i),
				"value": corev1.EnvVar{Name: secondEnv, Value: "1"}})
		}
	}
	resp := &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
	if len(ops) > 0 {
		p, _ := json.Marshal(ops)
		pt := admissionv1.PatchTypeJSONPatch
		resp.Patch, resp.PatchType = p, &pt
	}
	review.Response, review.Request = resp, nil
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&review)
}

func (a *envAdder) state() (int, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls, a.sawInjected
}

// ReinvocationInjectsOnce: a second mutating webhook that runs after ours
// (configurations are called in name order) edits the pod, so the apiserver
// calls ours again (reinvocationPolicy IfNeeded); the pod still carries one
// injection and the other webhook's change.
func ReinvocationInjectsOnce(env *Env) e2etypes.Feature {
	type stopKey struct{}
	adder := &envAdder{}
	const configName = "zz-pmem-e2e-second-webhook" // sorts after "pmem-webhook"
	return features.New("with a second mutating webhook the pod is injected exactly once").
		WithLabel("tier", "controlplane").
		Setup(setupNamespace(nil)).
		Setup(func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			if env.ServeWebhook == nil {
				t.Skip("provider cannot serve a second webhook")
			}
			cc, stop, err := env.ServeWebhook(ctx, adder)
			if err != nil {
				t.Fatalf("serve second webhook: %v", err)
			}
			ns := namespace(ctx, t)
			mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
				ObjectMeta: metav1.ObjectMeta{Name: configName + "-" + ns},
				Webhooks: []admissionregistrationv1.MutatingWebhook{{
					Name:                    "env.e2e.pmem.alibabacloud.com",
					AdmissionReviewVersions: []string{"v1"},
					SideEffects:             ptr(admissionregistrationv1.SideEffectClassNone),
					FailurePolicy:           ptr(admissionregistrationv1.Fail),
					ReinvocationPolicy:      ptr(admissionregistrationv1.IfNeededReinvocationPolicy),
					ClientConfig:            cc,
					Rules: []admissionregistrationv1.RuleWithOperations{{
						Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
						Rule: admissionregistrationv1.Rule{
							APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"},
						},
					}},
					// Only this feature's namespace: other features run in parallel.
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
				}},
			}
			if err := kube(t, cfg).Create(ctx, mwc); err != nil {
				stop()
				t.Fatalf("register second webhook: %v", err)
			}
			return context.WithValue(ctx, stopKey{}, func() {
				_ = kube(t, cfg).Delete(context.Background(), mwc)
				stop()
			})
		}).
		Assess("the pod carries one injection and the second webhook's env", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			// The new configuration reaches the apiserver asynchronously:
			// dry-run until the second webhook has been called.
			probe := barePod(ns, "probe", redisContainer("512Mi"), nil)
			waitFor(ctx, t, defaultTimeout, "the second webhook to be called", func(ctx context.Context) (bool, error) {
				p := probe.DeepCopy()
				if err := c.Create(ctx, p, client.DryRunAll); err != nil {
					return false, err
				}
				calls, _ := adder.state()
				return calls > 0, nil
			})

			pod := barePod(ns, "twice", redisContainer("512Mi"), map[string]string{patch.AnnotationDirect: "true"})
			if err := c.Create(ctx, pod); err != nil {
				t.Fatalf("create annotated pod: %v", err)
			}
			assertInjected(t, env, pod, wantInjection{size: "1Gi", targets: []string{"redis"}})
			n := 0
			for _, e := range container(pod, "redis").Env {
				if e.Name == secondEnv {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%d %s variables on the pod, want 1 (the second webhook's change must survive)", n, secondEnv)
			}
			if _, saw := adder.state(); !saw {
				t.Errorf("the second webhook never saw an injected pod: it did not run after ours, so ours was not reinvoked")
			}
			return ctx
		}).
		Teardown(func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			if stop, ok := ctx.Value(stopKey{}).(func()); ok {
				stop()
			}
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}
