package deploy

import (
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

func renderHelm(t *testing.T, release, namespace string, values map[string]any) *rendered {
	t.Helper()
	m, err := RenderHelm(release, namespace, values)
	if err != nil {
		t.Fatal(err)
	}
	return decodeAll(t, m)
}

func TestHelmGolden(t *testing.T) {
	for name, values := range map[string]map[string]any{
		"helm-certmanager.golden.yaml": nil,
		"helm-selfsigned.golden.yaml":  SelfSignedValues(),
	} {
		m, err := RenderHelm("pmem-webhook", Namespace, values)
		if err != nil {
			t.Fatal(err)
		}
		golden(t, name, m)
	}
}

func TestHelmCertManager(t *testing.T) {
	for _, tc := range []struct{ release, namespace, wantName string }{
		{"pmem-webhook", Namespace, "pmem-webhook"},
		{"prod", "pmem", "prod-pmem-webhook"},
	} {
		t.Run(tc.release, func(t *testing.T) {
			r := renderHelm(t, tc.release, tc.namespace, nil)
			if r.webhook.Name != tc.wantName || r.service.Name != tc.wantName || r.service.Namespace != tc.namespace {
				t.Fatalf("webhook configuration %q, Service %s/%s; want both named %q in %s", r.webhook.Name, r.service.Namespace, r.service.Name, tc.wantName, tc.namespace)
			}
			// checkWebhook expects the kustomize base's configuration name.
			r.webhook.Name = WebhookConfigName
			checkCertManagerWiring(t, r)
			checkWebhook(t, r, admissionregistrationv1.Fail)
			checkDeployment(t, r, 2)
			checkClaimsRBAC(t, r, tc.wantName+"-claims")
			if len(r.roles)+len(r.clusterRoles) > 0 {
				t.Errorf("certManager mode needs no RBAC beyond the claim check, got %d more roles", len(r.roles)+len(r.clusterRoles))
			}
		})
	}
}

// The self-signed mode: no cert-manager objects, the webhook writes the caBundle and keeps the
// certificate in one Secret, with RBAC restricted to exactly those two objects.
func TestHelmSelfSigned(t *testing.T) {
	m, err := RenderHelm("pmem-webhook", Namespace, SelfSignedValues())
	if err != nil {
		t.Fatal(err)
	}
	r := decodeAll(t, m)
	if len(r.certificates)+len(r.issuers) > 0 {
		t.Errorf("selfSigned mode renders cert-manager objects %v %v", keys(r.certificates), keys(r.issuers))
	}
	if _, ok := r.webhook.Annotations["cert-manager.io/inject-ca-from"]; ok {
		t.Errorf("selfSigned mode keeps the cert-manager CA injection annotation")
	}
	checkWebhook(t, r, admissionregistrationv1.Fail)
	checkDeployment(t, r, 2)

	ps := r.deployment.Spec.Template.Spec
	if ps.AutomountServiceAccountToken == nil || !*ps.AutomountServiceAccountToken {
		t.Errorf("selfSigned mode needs the service account token")
	}
	args := map[string]string{}
	for _, a := range ps.Containers[0].Args {
		k, v, _ := strings.Cut(a, "=")
		args[k] = v
	}
	secretName := "pmem-webhook-serving-cert"
	for flag, want := range map[string]string{
		"--self-signed":         "",
		"--webhook-config-name": r.webhook.Name,
		"--service-name":        r.service.Name,
		"--namespace":           r.service.Namespace,
		"--cert-secret-name":    secretName,
		"--cert-validity":       "8760h",
	} {
		if got, ok := args[flag]; !ok || got != want {
			t.Errorf("flag %s = %q (present %v), want %q", flag, got, ok, want)
		}
	}
	var certVol bool
	for _, v := range ps.Volumes {
		if v.Name == "serving-cert" {
			certVol = v.EmptyDir != nil && v.Secret == nil
		}
	}
	if !certVol {
		t.Errorf("selfSigned mode: the cert dir must be a writable emptyDir (the webhook writes it), volumes %+v", ps.Volumes)
	}
	secret, err := Find(r.objs, "Secret", secretName)
	if err != nil {
		t.Fatal(err)
	}
	if secret.GetNamespace() != Namespace {
		t.Errorf("Secret %s in namespace %q, want %s", secretName, secret.GetNamespace(), Namespace)
	}

	// RBAC: exactly get/list/watch/update/patch on the one webhook configuration and the one Secret.
	wantVerbs := []string{"get", "list", "watch", "update", "patch"}
	checkRules := func(kind, name string, rules []rbacv1.PolicyRule, group, resource, resourceName string) {
		t.Helper()
		if len(rules) != 1 {
			t.Fatalf("%s %s: %d rules, want 1", kind, name, len(rules))
		}
		ru := rules[0]
		if !slices.Equal(ru.APIGroups, []string{group}) || !slices.Equal(ru.Resources, []string{resource}) ||
			!slices.Equal(ru.ResourceNames, []string{resourceName}) || !slices.Equal(ru.Verbs, wantVerbs) {
			t.Errorf("%s %s rule %+v, want %v on %s %q only", kind, name, ru, wantVerbs, resource, resourceName)
		}
	}
	checkClaimsRBAC(t, r, r.webhook.Name+"-claims")
	if len(r.clusterRoles) != 1 || len(r.roles) != 1 {
		t.Fatalf("got %d ClusterRoles and %d Roles besides the claim check's, want 1 each", len(r.clusterRoles), len(r.roles))
	}
	checkRules("ClusterRole", r.clusterRoles[0].Name, r.clusterRoles[0].Rules, "admissionregistration.k8s.io", "mutatingwebhookconfigurations", r.webhook.Name)
	checkRules("Role", r.roles[0].Name, r.roles[0].Rules, "", "secrets", secretName)
	for _, kind := range []string{"ClusterRoleBinding", "RoleBinding"} {
		b, err := Find(r.objs, kind, "")
		if err != nil {
			t.Fatal(err)
		}
		var rb rbacv1.RoleBinding // same shape as a ClusterRoleBinding for roleRef/subjects
		if err := DecodeStrict(b, &rb); err != nil {
			t.Fatal(err)
		}
		if len(rb.Subjects) != 1 || rb.Subjects[0].Kind != "ServiceAccount" || rb.Subjects[0].Name != r.serviceAccount.Name || rb.Subjects[0].Namespace != Namespace {
			t.Errorf("%s %s subjects %+v, want the webhook's ServiceAccount", kind, rb.Name, rb.Subjects)
		}
		wantRole := r.roles[0].Name
		if kind == "ClusterRoleBinding" {
			wantRole = r.clusterRoles[0].Name
		}
		if rb.RoleRef.Name != wantRole {
			t.Errorf("%s %s binds %q, want %q", kind, rb.Name, rb.RoleRef.Name, wantRole)
		}
	}
}

// The chart and the kustomize base install the same webhook: same configuration (up to labels)
// and the same server container.
func TestRenderingsAgree(t *testing.T) {
	k, err := RenderDefault()
	if err != nil {
		t.Fatal(err)
	}
	kr := decodeAll(t, k)
	hr := renderHelm(t, "pmem-webhook", Namespace, nil)

	if !equalJSON(t, kr.webhook.Webhooks, hr.webhook.Webhooks) {
		t.Errorf("webhooks differ:\nkustomize: %+v\nhelm:      %+v", kr.webhook.Webhooks, hr.webhook.Webhooks)
	}
	if !equalJSON(t, kr.webhook.Annotations, hr.webhook.Annotations) || kr.webhook.Name != hr.webhook.Name {
		t.Errorf("webhook configuration metadata differs: %s %v vs %s %v", kr.webhook.Name, kr.webhook.Annotations, hr.webhook.Name, hr.webhook.Annotations)
	}
	kc, hc := kr.deployment.Spec.Template.Spec.Containers, hr.deployment.Spec.Template.Spec.Containers
	if !equalJSON(t, kc, hc) {
		t.Errorf("webhook containers differ:\nkustomize: %+v\nhelm:      %+v", kc, hc)
	}
	kp, hp := kr.deployment.Spec.Template.Spec, hr.deployment.Spec.Template.Spec
	for what, pair := range map[string][2]any{
		"pod securityContext":  {kp.SecurityContext, hp.SecurityContext},
		"volumes":              {kp.Volumes, hp.Volumes},
		"grace period":         {kp.TerminationGracePeriodSeconds, hp.TerminationGracePeriodSeconds},
		"automount token":      {kp.AutomountServiceAccountToken, hp.AutomountServiceAccountToken},
		"replicas":             {kr.deployment.Spec.Replicas, hr.deployment.Spec.Replicas},
		"strategy":             {kr.deployment.Spec.Strategy, hr.deployment.Spec.Strategy},
		"service ports":        {kr.service.Spec.Ports, hr.service.Spec.Ports},
		"PDB minAvailable":     {kr.pdb.Spec.MinAvailable, hr.pdb.Spec.MinAvailable},
		"certificate names":    {keys(kr.certificates), keys(hr.certificates)},
		"issuer names":         {keys(kr.issuers), keys(hr.issuers)},
		"serving cert spec":    {kr.certificates[ServingCertName].Spec, hr.certificates[ServingCertName].Spec},
		"CA cert spec":         {kr.certificates["pmem-webhook-ca"].Spec, hr.certificates["pmem-webhook-ca"].Spec},
		"CA issuer spec":       {kr.issuers["pmem-webhook-ca"].Spec, hr.issuers["pmem-webhook-ca"].Spec},
		"self-signed issuer":   {kr.issuers["pmem-webhook-selfsigned"].Spec, hr.issuers["pmem-webhook-selfsigned"].Spec},
		"service account name": {kr.serviceAccount.Name, hr.serviceAccount.Name},
	} {
		if !equalJSON(t, pair[0], pair[1]) {
			t.Errorf("%s differs: kustomize %s, helm %s", what, asJSON(t, pair[0]), asJSON(t, pair[1]))
		}
	}
}

func TestHelmValues(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		check  func(t *testing.T, r *rendered, args []string)
	}{{
		name:   "failurePolicy Ignore",
		values: map[string]any{"webhook": map[string]any{"failurePolicy": "Ignore", "timeoutSeconds": 3}},
		check: func(t *testing.T, r *rendered, _ []string) {
			w := r.webhook.Webhooks[0]
			if *w.FailurePolicy != admissionregistrationv1.Ignore || *w.TimeoutSeconds != 3 {
				t.Errorf("failurePolicy %s timeoutSeconds %d, want Ignore 3", *w.FailurePolicy, *w.TimeoutSeconds)
			}
		},
	}, {
		name: "injection settings",
		values: map[string]any{
			"memkindImage": "registry.example/memkind@sha256:0123",
			"injection": map[string]any{
				"defaultStorageClass":   "b",
				"allowedStorageClasses": []any{"a", "b"},
				"sizeFactor":            1.5,
				"kmemNodeSelector":      map[string]any{"z": "1", "a.example/pmem": "kmem"},
				"targetProcesses":       []any{"redis-server", "keydb-server"},
			},
		},
		check: func(t *testing.T, _ *rendered, args []string) {
			for _, want := range []string{
				"--memkind-image=registry.example/memkind@sha256:0123",
				"--default-storage-class=b", "--allowed-storage-classes=a,b", "--size-factor=1.5",
				"--kmem-node-selector=a.example/pmem=kmem,z=1", "--target-processes=redis-server,keydb-server",
			} {
				if !slices.Contains(args, want) {
					t.Errorf("args %v lack %s", args, want)
				}
			}
		},
	}, {
		name:   "image digest, replicas, excluded namespaces",
		values: map[string]any{"replicas": 3, "image": map[string]any{"repository": "r.example/webhook", "tag": "v1", "digest": "sha256:" + strings.Repeat("a", 64)}, "webhook": map[string]any{"excludedNamespaces": []any{"monitoring", "kube-system"}}},
		check: func(t *testing.T, r *rendered, _ []string) {
			if img := r.deployment.Spec.Template.Spec.Containers[0].Image; img != "r.example/webhook@sha256:"+strings.Repeat("a", 64) {
				t.Errorf("image %q, want the digest reference", img)
			}
			if *r.deployment.Spec.Replicas != 3 {
				t.Errorf("replicas %d, want 3", *r.deployment.Spec.Replicas)
			}
			got := r.webhook.Webhooks[0].NamespaceSelector.MatchExpressions[0].Values
			if want := []string{"kube-system", "kube-public", "kube-node-lease", Namespace, "monitoring"}; !slices.Equal(got, want) {
				t.Errorf("excluded namespaces %v, want %v", got, want)
			}
		},
	}, {
		name:   "one replica has no PDB",
		values: map[string]any{"replicas": 1},
		check: func(t *testing.T, r *rendered, _ []string) {
			if r.pdb != nil {
				t.Errorf("a PDB with minAvailable 1 over one replica would block every node drain")
			}
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := RenderHelm("pmem-webhook", Namespace, tc.values)
			if err != nil {
				t.Fatal(err)
			}
			r := decodeAll(t, m)
			tc.check(t, r, r.deployment.Spec.Template.Spec.Containers[0].Args)
		})
	}
}

// Bad values fail with a message naming the field, the value and what is allowed.
func TestHelmBadValues(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   []string
	}{
		{"unknown failurePolicy", map[string]any{"webhook": map[string]any{"failurePolicy": "Sometimes"}}, []string{"failurePolicy", "Sometimes", "Fail", "Ignore"}},
		{"unknown certs mode", map[string]any{"certs": map[string]any{"mode": "letsencrypt"}}, []string{"mode", "letsencrypt", "certManager", "selfSigned"}},
		{"misspelt key", map[string]any{"replica": 3}, []string{"replica"}},
		{"zero replicas", map[string]any{"replicas": 0}, []string{"replicas"}},
		{"size factor 0", map[string]any{"injection": map[string]any{"sizeFactor": 0}}, []string{"sizeFactor"}},
		{"timeout above the API server maximum", map[string]any{"webhook": map[string]any{"timeoutSeconds": 31}}, []string{"timeoutSeconds"}},
		{"default class not allowed", map[string]any{"injection": map[string]any{"defaultStorageClass": "fast", "allowedStorageClasses": []any{"csi-pmem-direct"}}}, []string{"injection.defaultStorageClass", "fast", "allowedStorageClasses", "csi-pmem-direct"}},
		{"comma in a kmem node selector key", map[string]any{"injection": map[string]any{"kmemNodeSelector": map[string]any{"a,b": "x"}}}, []string{"kmemNodeSelector"}},
		{"comma in a class name", map[string]any{"injection": map[string]any{"allowedStorageClasses": []any{"a,b"}}}, []string{"allowedStorageClasses"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := RenderHelm("pmem-webhook", Namespace, tc.values)
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// helm lint, in-process: chart metadata, template syntax, YAML validity, schema, and Kubernetes
// object checks, for both certificate modes. Info-level notes (such as "icon is recommended") pass.
func TestHelmLint(t *testing.T) {
	for name, values := range map[string]map[string]any{"certManager": nil, "selfSigned": SelfSignedValues()} {
		t.Run(name, func(t *testing.T) {
			linter := lint.All(ChartDir, values, Namespace, false)
			for _, msg := range linter.Messages {
				if msg.Severity > support.InfoSev {
					t.Errorf("helm lint: %s", msg)
				}
			}
			if len(linter.Messages) > 0 {
				t.Logf("helm lint: %d info messages, e.g. %s", len(linter.Messages), linter.Messages[0])
			}
		})
	}
}
