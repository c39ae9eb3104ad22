package deploy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/pmem-webhook/pmem-webhook/deploy"
	"github.com/pmem-webhook/pmem-webhook/test/cluster"
)

// resources maps the kinds the kustomize base ships (minus cert-manager's, whose CRDs this
// control plane lacks) to their API resources.
var resources = map[string]schema.GroupVersionResource{
	"Namespace":                    {Version: "v1", Resource: "namespaces"},
	"ServiceAccount":               {Version: "v1", Resource: "serviceaccounts"},
	"ClusterRole":                  {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding":           {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"Service":                      {Version: "v1", Resource: "services"},
	"Deployment":                   {Group: "apps", Version: "v1", Resource: "deployments"},
	"PodDisruptionBudget":          {Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"},
	"MutatingWebhookConfiguration": {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "mutatingwebhookconfigurations"},
}

// TestApplyToAPIServer creates what `kubectl apply -k deploy/default` creates on a real
// kube-apiserver + kube-controller-manager (test/cluster), with no webhook replica able to answer
// (no scheduler, no kubelet): the API server validates every object, including the CEL
// matchCondition, and then shows the failure policy's blast radius. Under failurePolicy Fail,
// only annotated pods outside the excluded namespaces are rejected; every other pod is created.
func TestApplyToAPIServer(t *testing.T) {
	cluster.RequireBinaries(t, "controlplane-bins")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := cluster.Start(ctx, cluster.Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	dyn, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}

	m, err := deploy.RenderDefault()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := deploy.Objects(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GroupVersionKind().Group == "cert-manager.io" {
			continue
		}
		gvr, ok := resources[o.GetKind()]
		if !ok {
			t.Fatalf("no API resource known for %s %s", o.GetKind(), o.GetName())
		}
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if o.GetNamespace() != "" {
			ri = dyn.Resource(gvr).Namespace(o.GetNamespace())
		}
		// Strict field validation: a field the API server does not know fails the create.
		if _, err := ri.Create(ctx, o, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
			t.Fatalf("create %s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}

	// The Deployment's pods pass PodSecurity "restricted", enforced on pmem-system by its label:
	// the ReplicaSet controller gets both replicas created.
	deadline := time.Now().Add(60 * time.Second)
	for {
		pods, err := cs.CoreV1().Pods(deploy.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=pmem-webhook"})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) == 2 {
			break
		}
		if time.Now().After(deadline) {
			rs, _ := cs.AppsV1().ReplicaSets(deploy.Namespace).List(ctx, metav1.ListOptions{})
			t.Fatalf("%d webhook pods after 60s, want 2 (PodSecurity rejection?); replicasets: %+v", len(pods.Items), rs.Items)
		}
		time.Sleep(500 * time.Millisecond)
	}

	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "apps"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "opted-out", Labels: map[string]string{"pmem.alibabacloud.com/injection": "disabled"}}},
	} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := cluster.WaitForDefaultServiceAccount(ctx, cp.Config, ns.Name, 60*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		namespace   string
		annotations map[string]string
		wantReject  bool
	}{
		{"apps", nil, false},
		{"apps", map[string]string{"other": "x"}, false},
		{"apps", map[string]string{"pmem.alibabacloud.com/direct": "true"}, true},
		{"apps", map[string]string{"pmem.alibabacloud.com/direct": "false"}, false}, // opted out: never sent
		{"apps", map[string]string{"pmem.alibabacloud.com/direct": "yes"}, true},    // the webhook judges other values
		{"opted-out", map[string]string{"pmem.alibabacloud.com/direct": "true"}, false},
		{"kube-system", map[string]string{"pmem.alibabacloud.com/direct": "true"}, false},
		{deploy.Namespace, map[string]string{"pmem.alibabacloud.com/direct": "true"}, false},
	} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-", Annotations: tc.annotations},
			Spec: corev1.PodSpec{
				AutomountServiceAccountToken: new(bool),
				Containers: []corev1.Container{{
					Name: "c", Image: "registry.invalid/none:1",
					SecurityContext: &corev1.SecurityContext{
						RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(1000)), AllowPrivilegeEscalation: new(bool),
						Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
				}},
			},
		}
		// Server-side dry run: admission runs in full, nothing is stored.
		_, err := cs.CoreV1().Pods(tc.namespace).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		rejected := err != nil && strings.Contains(err.Error(), `failed calling webhook "pod.pmem.alibabacloud.com"`)
		if err != nil && !rejected {
			t.Errorf("pod in %s with %v: unexpected error %v", tc.namespace, tc.annotations, err)
			continue
		}
		if rejected != tc.wantReject {
			t.Errorf("pod in %s with annotations %v: rejected by the unreachable webhook = %v, want %v (err %v)", tc.namespace, tc.annotations, rejected, tc.wantReject, err)
		}
	}
}

func ptr[T any](v T) *T { return &v }
