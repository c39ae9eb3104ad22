package deploy

import (
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
)

// checkWorkloadWebhook checks the second webhook (the workload rule) of any rendering.
func checkWorkloadWebhook(t *testing.T, r *rendered) {
	t.Helper()
	w := r.webhook.Webhooks[1]
	pod := r.webhook.Webhooks[0]
	if w.Name != WorkloadWebhookName {
		t.Errorf("second webhook %q, want %q", w.Name, WorkloadWebhookName)
	}
	svc := w.ClientConfig.Service
	if svc == nil || pod.ClientConfig.Service == nil || svc.Name != pod.ClientConfig.Service.Name || svc.Namespace != pod.ClientConfig.Service.Namespace ||
		svc.Path == nil || *svc.Path != WorkloadWebhookPath {
		t.Errorf("workload clientConfig.service = %+v, want the pod webhook's Service at %s", svc, WorkloadWebhookPath)
	}
	if !equalJSON(t, w.NamespaceSelector, pod.NamespaceSelector) {
		t.Errorf("workload namespaceSelector %+v differs from the pod webhook's %+v", w.NamespaceSelector, pod.NamespaceSelector)
	}
	if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone {
		t.Errorf("sideEffects = %v, want None", deref(w.SideEffects))
	}
	if w.TimeoutSeconds == nil || *w.TimeoutSeconds < 1 || *w.TimeoutSeconds > 10 {
		t.Errorf("timeoutSeconds = %v, want explicit 1..10", deref(w.TimeoutSeconds))
	}
	resources := map[string][]string{}
	for _, rule := range w.Rules {
		if !slices.Equal(rule.Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update}) {
			t.Errorf("rule %+v: want CREATE and UPDATE", rule)
		}
		for _, g := range rule.APIGroups {
			resources[g] = append(resources[g], rule.Resources...)
		}
	}
	want := map[string][]string{
		"apps":  {"deployments", "statefulsets", "daemonsets", "replicasets"},
		"batch": {"jobs", "cronjobs"},
		"":      {"replicationcontrollers"},
	}
	if !equalJSON(t, resources, want) {
		t.Errorf("workload rules cover %v, want %v (and no subresources)", resources, want)
	}
	if len(w.MatchConditions) != 1 {
		t.Fatalf("workload matchConditions = %+v, want one", w.MatchConditions)
	}
	expr := w.MatchConditions[0].Expression
	// Removal of the last key must still be sent (oldObject), and the
	// template path of every kind is looked at.
	for _, part := range []string{"oldObject != null", "object.spec.template.metadata.annotations", "object.spec.jobTemplate.spec.template.metadata.annotations", "ownerReferences", "startsWith('pmem.alibabacloud.com/')"} {
		if !strings.Contains(expr, part) {
			t.Errorf("workload matchCondition %q does not contain %q", expr, part)
		}
	}
}
