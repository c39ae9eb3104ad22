package deploy

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	cmv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.yaml from the current rendering")

// golden compares got with testdata/name, or rewrites it under -update. The golden files make every
// change to what users install visible in review.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read golden file (run `go test ./deploy -update` to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("rendering differs from %s (run `go test ./deploy -update` and review the diff):\n%s", p, got)
	}
}

// rendered holds the typed objects of one rendering, each decoded strictly.
type rendered struct {
	objs           []*unstructured.Unstructured
	namespace      *corev1.Namespace
	serviceAccount *corev1.ServiceAccount
	service        *corev1.Service
	deployment     *appsv1.Deployment
	pdb            *policyv1.PodDisruptionBudget
	webhook        *admissionregistrationv1.MutatingWebhookConfiguration
	issuers        map[string]*cmv1.Issuer
	certificates   map[string]*cmv1.Certificate
	clusterRoles   []*rbacv1.ClusterRole
	roles          []*rbacv1.Role
}

var clusterScoped = map[string]bool{"Namespace": true, "MutatingWebhookConfiguration": true, "ClusterRole": true, "ClusterRoleBinding": true}

// checkClaimsRBAC checks the claim check's permission - get on PVCs, nothing else - and that it is
// bound to the webhook's ServiceAccount, whose token the Deployment mounts; then it removes the
// role and its binding from r so callers can assert on the rest.
func checkClaimsRBAC(t *testing.T, r *rendered, name string) {
	t.Helper()
	i := slices.IndexFunc(r.clusterRoles, func(cr *rbacv1.ClusterRole) bool { return cr.Name == name })
	if i < 0 {
		t.Fatalf("no ClusterRole %s for the claim check", name)
	}
	want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"persistentvolumeclaims"}, Verbs: []string{"get"}}}
	if !reflect.DeepEqual(r.clusterRoles[i].Rules, want) {
		t.Errorf("ClusterRole %s rules %+v, want only get on persistentvolumeclaims", name, r.clusterRoles[i].Rules)
	}
	r.clusterRoles = slices.Delete(r.clusterRoles, i, i+1)
	b, err := Find(r.objs, "ClusterRoleBinding", name)
	if err != nil {
		t.Fatal(err)
	}
	var rb rbacv1.ClusterRoleBinding
	if err := DecodeStrict(b, &rb); err != nil {
		t.Fatal(err)
	}
	if rb.RoleRef.Name != name || len(rb.Subjects) != 1 || rb.Subjects[0].Kind != "ServiceAccount" ||
		rb.Subjects[0].Name != r.serviceAccount.Name || rb.Subjects[0].Namespace != r.serviceAccount.Namespace {
		t.Errorf("ClusterRoleBinding %s = %+v, want %s bound to ServiceAccount %s/%s", name, rb, name, r.serviceAccount.Namespace, r.serviceAccount.Name)
	}
	r.objs = slices.DeleteFunc(r.objs, func(o *unstructured.Unstructured) bool {
		return o.GetKind() == "ClusterRoleBinding" && o.GetName() == name
	})
	if m := r.deployment.Spec.Template.Spec.AutomountServiceAccountToken; m == nil || !*m {
		t.Errorf("Deployment: want automountServiceAccountToken true (the claim check calls the API server)")
	}
	if !slices.Contains(r.deployment.Spec.Template.Spec.Containers[0].Args, "--check-claims=true") {
		t.Errorf("Deployment args %v lack --check-claims=true", r.deployment.Spec.Template.Spec.Containers[0].Args)
	}
}

// decodeAll decodes every object into its API type; an object of a kind the add-on is not expected
// to ship fails the test, as does any field the type does not know.
func decodeAll(t *testing.T, manifests []byte) *rendered {
	t.Helper()
	objs, err := Objects(manifests)
	if err != nil {
		t.Fatal(err)
	}
	r := &rendered{objs: objs, issuers: map[string]*cmv1.Issuer{}, certificates: map[string]*cmv1.Certificate{}}
	once := func(already bool, o *unstructured.Unstructured) {
		if already {
			t.Fatalf("more than one %s (second: %s)", o.GetKind(), o.GetName())
		}
	}
	for _, o := range objs {
		var err error
		switch o.GetAPIVersion() + "/" + o.GetKind() {
		case "v1/Namespace":
			once(r.namespace != nil, o)
			r.namespace = &corev1.Namespace{}
			err = DecodeStrict(o, r.namespace)
		case "v1/ServiceAccount":
			once(r.serviceAccount != nil, o)
			r.serviceAccount = &corev1.ServiceAccount{}
			err = DecodeStrict(o, r.serviceAccount)
		case "v1/Service":
			once(r.service != nil, o)
			r.service = &corev1.Service{}
			err = DecodeStrict(o, r.service)
		case "apps/v1/Deployment":
			once(r.deployment != nil, o)
			r.deployment = &appsv1.Deployment{}
			err = DecodeStrict(o, r.deployment)
		case "v1/Secret":
			err = DecodeStrict(o, &corev1.Secret{})
		case "policy/v1/PodDisruptionBudget":
			once(r.pdb != nil, o)
			r.pdb = &policyv1.PodDisruptionBudget{}
			err = DecodeStrict(o, r.pdb)
		case "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration":
			once(r.webhook != nil, o)
			r.webhook = &admissionregistrationv1.MutatingWebhookConfiguration{}
			err = DecodeStrict(o, r.webhook)
		case "cert-manager.io/v1/Issuer":
			is := &cmv1.Issuer{}
			err = DecodeStrict(o, is)
			r.issuers[o.GetName()] = is
		case "cert-manager.io/v1/Certificate":
			c := &cmv1.Certificate{}
			err = DecodeStrict(o, c)
			r.certificates[o.GetName()] = c
		case "rbac.authorization.k8s.io/v1/ClusterRole":
			cr := &rbacv1.ClusterRole{}
			err = DecodeStrict(o, cr)
			r.clusterRoles = append(r.clusterRoles, cr)
		case "rbac.authorization.k8s.io/v1/Role":
			ro := &rbacv1.Role{}
			err = DecodeStrict(o, ro)
			r.roles = append(r.roles, ro)
		case "rbac.authorization.k8s.io/v1/ClusterRoleBinding", "rbac.authorization.k8s.io/v1/RoleBinding":
			// Checked by the Helm self-signed test through the unstructured objects.
		default:
			t.Fatalf("unexpected object %s %s/%s in the rendering", o.GetObjectKind().GroupVersionKind(), o.GetNamespace(), o.GetName())
		}
		if err != nil {
			t.Fatalf("strict decode: %v", err)
		}
	}
	for what, missing := range map[string]bool{
		"Service": r.service == nil, "Deployment": r.deployment == nil, "ServiceAccount": r.serviceAccount == nil,
		"MutatingWebhookConfiguration": r.webhook == nil,
	} {
		if missing {
			t.Fatalf("rendering has no %s", what)
		}
	}
	return r
}

func TestRenderDefaultGolden(t *testing.T) {
	m, err := RenderDefault()
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "default.golden.yaml", m)
}

// checkCertManagerWiring: the Certificate covers the names the API server dials, the Deployment
// mounts the Secret that Certificate writes, and the CA injection names that Certificate.
func checkCertManagerWiring(t *testing.T, r *rendered) {
	t.Helper()
	ns := r.service.Namespace
	wantDNS := []string{r.service.Name + "." + ns + ".svc", r.service.Name + "." + ns + ".svc.cluster.local"}

	inject := r.webhook.Annotations["cert-manager.io/inject-ca-from"]
	certNS, certName, ok := strings.Cut(inject, "/")
	if !ok {
		t.Fatalf("cert-manager.io/inject-ca-from = %q, want <namespace>/<certificate>", inject)
	}
	cert := r.certificates[certName]
	if cert == nil || cert.Namespace != certNS {
		t.Fatalf("cert-manager.io/inject-ca-from = %q names no Certificate in the rendering (have %v)", inject, keys(r.certificates))
	}
	if !slices.Equal(cert.Spec.DNSNames, wantDNS) {
		t.Errorf("Certificate %s dnsNames = %v, want %v (the Service's names)", cert.Name, cert.Spec.DNSNames, wantDNS)
	}
	if cert.Spec.IsCA {
		t.Errorf("serving Certificate %s must not be a CA", cert.Name)
	}
	if !slices.Contains(cert.Spec.Usages, cmv1.UsageServerAuth) {
		t.Errorf("Certificate %s usages = %v, want server auth", cert.Name, cert.Spec.Usages)
	}
	if cert.Spec.PrivateKey == nil || cert.Spec.PrivateKey.RotationPolicy != cmv1.RotationPolicyAlways {
		t.Errorf("Certificate %s: want privateKey.rotationPolicy Always", cert.Name)
	}

	// The serving certificate's issuer must be a CA issuer backed by a CA Certificate, so the
	// injected caBundle (the CA) survives serving-certificate renewals.
	iss := r.issuers[cert.Spec.IssuerRef.Name]
	if cert.Spec.IssuerRef.Kind != "Issuer" || iss == nil || iss.Namespace != ns {
		t.Fatalf("Certificate %s issuerRef %+v: no such Issuer in namespace %s", cert.Name, cert.Spec.IssuerRef, ns)
	}
	if iss.Spec.CA == nil {
		t.Fatalf("Issuer %s: want a CA issuer", iss.Name)
	}
	var caCert *cmv1.Certificate
	for _, c := range r.certificates {
		if c.Spec.SecretName == iss.Spec.CA.SecretName {
			caCert = c
		}
	}
	if caCert == nil || !caCert.Spec.IsCA {
		t.Fatalf("Issuer %s uses Secret %s, which no isCA Certificate writes", iss.Name, iss.Spec.CA.SecretName)
	}
	if caCert.Spec.PrivateKey == nil || caCert.Spec.PrivateKey.RotationPolicy != cmv1.RotationPolicyNever {
		t.Errorf("CA Certificate %s: want privateKey.rotationPolicy Never, so a renewed CA still verifies the serving certificate", caCert.Name)
	}
	root := r.issuers[caCert.Spec.IssuerRef.Name]
	if root == nil || root.Spec.SelfSigned == nil {
		t.Fatalf("CA Certificate %s: issuer %q is not a selfSigned Issuer in the rendering", caCert.Name, caCert.Spec.IssuerRef.Name)
	}

	var mounted string
	for _, v := range r.deployment.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			mounted = v.Secret.SecretName
		}
	}
	if mounted != cert.Spec.SecretName {
		t.Errorf("Deployment mounts Secret %q, Certificate %s writes %q", mounted, cert.Name, cert.Spec.SecretName)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// checkWebhook checks the properties the issue asks for, whatever the renderer.
func checkWebhook(t *testing.T, r *rendered, wantFailurePolicy admissionregistrationv1.FailurePolicyType) {
	t.Helper()
	cfg := r.webhook
	if cfg.Name != WebhookConfigName || len(cfg.Webhooks) != 2 {
		t.Fatalf("webhook configuration %q with %d webhooks, want %q with 2 (pods, workloads)", cfg.Name, len(cfg.Webhooks), WebhookConfigName)
	}
	checkWorkloadWebhook(t, r)
	w := cfg.Webhooks[0]
	ns := r.service.Namespace
	if w.Name != WebhookName {
		t.Errorf("webhook name %q, want %q", w.Name, WebhookName)
	}
	svc := w.ClientConfig.Service
	if svc == nil || svc.Name != r.service.Name || svc.Namespace != ns || svc.Path == nil || *svc.Path != WebhookPath || svc.Port == nil || *svc.Port != 443 {
		t.Errorf("clientConfig.service = %+v, want %s/%s:443%s", svc, ns, r.service.Name, WebhookPath)
	}
	var port *corev1.ServicePort
	for i := range r.service.Spec.Ports {
		if r.service.Spec.Ports[i].Port == 443 {
			port = &r.service.Spec.Ports[i]
		}
	}
	if port == nil {
		t.Fatalf("Service %s has no port 443", r.service.Name)
	}
	c := r.deployment.Spec.Template.Spec.Containers[0]
	if cp := containerPort(c, port.TargetPort.String()); cp != 9443 {
		t.Errorf("Service port 443 targets %q, which is container port %d, want 9443", port.TargetPort.String(), cp)
	}
	if w.FailurePolicy == nil || *w.FailurePolicy != wantFailurePolicy {
		t.Errorf("failurePolicy = %v, want %s", deref(w.FailurePolicy), wantFailurePolicy)
	}
	if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone {
		t.Errorf("sideEffects = %v, want None", deref(w.SideEffects))
	}
	if !slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
		t.Errorf("admissionReviewVersions = %v, want [v1]", w.AdmissionReviewVersions)
	}
	// Explicit and short: the mutation makes at most one GET (the claim check); a long timeout only delays pod creation.
	if w.TimeoutSeconds == nil || *w.TimeoutSeconds < 1 || *w.TimeoutSeconds > 10 {
		t.Errorf("timeoutSeconds = %v, want explicit 1..10", deref(w.TimeoutSeconds))
	}
	if w.ReinvocationPolicy == nil || *w.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy {
		t.Errorf("reinvocationPolicy = %v, want IfNeeded", deref(w.ReinvocationPolicy))
	}
	wantRules := []admissionregistrationv1.RuleWithOperations{{
		Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
		Rule: admissionregistrationv1.Rule{
			APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"},
			Scope: ptr(admissionregistrationv1.NamespacedScope),
		},
	}}
	if !equalJSON(t, w.Rules, wantRules) {
		t.Errorf("rules = %+v, want Pod CREATE only", w.Rules)
	}
	if w.ObjectSelector != nil && (len(w.ObjectSelector.MatchLabels) > 0 || len(w.ObjectSelector.MatchExpressions) > 0) {
		t.Errorf("objectSelector = %+v, want none (the opt-in is an annotation, filtered by matchConditions)", w.ObjectSelector)
	}
	if w.NamespaceSelector == nil || len(w.NamespaceSelector.MatchLabels) > 0 {
		t.Fatalf("namespaceSelector = %+v, want matchExpressions only", w.NamespaceSelector)
	}
	excluded := map[string][]string{}
	for _, e := range w.NamespaceSelector.MatchExpressions {
		if e.Operator != "NotIn" {
			t.Errorf("namespaceSelector expression %+v: want NotIn", e)
		}
		excluded[e.Key] = e.Values
	}
	names := excluded["kubernetes.io/metadata.name"]
	for _, n := range []string{"kube-system", "kube-public", "kube-node-lease", ns} {
		if !slices.Contains(names, n) {
			t.Errorf("namespaceSelector does not exclude namespace %q (kubernetes.io/metadata.name NotIn %v)", n, names)
		}
	}
	if !slices.Equal(excluded["pmem.alibabacloud.com/injection"], []string{"disabled"}) {
		t.Errorf("namespaceSelector: want pmem.alibabacloud.com/injection NotIn [disabled], got %v", excluded["pmem.alibabacloud.com/injection"])
	}
	if len(w.MatchConditions) != 1 {
		t.Fatalf("matchConditions = %+v, want the one annotation filter", w.MatchConditions)
	}
	if got, want := w.MatchConditions[0].Expression, patch.OptInCEL; got != want { // evaluated against patch.NeedsAdmission in TestMatchConditionIsOptInRule
		t.Errorf("matchConditions[0].expression = %q, want %q", got, want)
	}
}

func containerPort(c corev1.Container, nameOrNumber string) int32 {
	for _, p := range c.Ports {
		if p.Name == nameOrNumber || nameOrNumber == strconv.Itoa(int(p.ContainerPort)) {
			return p.ContainerPort
		}
	}
	return 0
}

// equalJSON compares two API values by their JSON form (nil and empty slices alike).
func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	return asJSON(t, a) == asJSON(t, b)
}

// asJSON is v as JSON: a value's fields, where %v of a pointer would print its address.
func asJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %T: %v", v, err)
	}
	return string(b)
}

func ptr[T any](v T) *T { return &v }

func deref[T any](p *T) any {
	if p == nil {
		return "<unset>"
	}
	return *p
}

// checkDeployment checks the availability and hardening properties of the webhook Deployment.
func checkDeployment(t *testing.T, r *rendered, wantReplicas int32) {
	t.Helper()
	d := r.deployment
	ps := d.Spec.Template.Spec
	if d.Spec.Replicas == nil || *d.Spec.Replicas != wantReplicas {
		t.Errorf("replicas = %v, want %d", deref(d.Spec.Replicas), wantReplicas)
	}
	if ps.ServiceAccountName != r.serviceAccount.Name {
		t.Errorf("serviceAccountName = %q, want %q", ps.ServiceAccountName, r.serviceAccount.Name)
	}
	for k, v := range r.service.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("Service selector %s=%s does not match the pod template labels %v", k, v, d.Spec.Template.Labels)
		}
	}
	if r.pdb == nil {
		t.Fatalf("no PodDisruptionBudget for %d replicas", wantReplicas)
	}
	for k, v := range r.pdb.Spec.Selector.MatchLabels {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("PDB selector %s=%s does not match the pod template labels", k, v)
		}
	}
	if r.pdb.Spec.MinAvailable == nil || r.pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("PDB minAvailable = %v, want 1", r.pdb.Spec.MinAvailable)
	}
	if ps.Affinity == nil || ps.Affinity.PodAntiAffinity == nil || len(ps.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Errorf("want preferred pod anti-affinity")
	} else if term := ps.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm; term.TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("anti-affinity topologyKey = %q, want kubernetes.io/hostname", term.TopologyKey)
	}
	if len(ps.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(ps.Containers))
	}
	c := ps.Containers[0]
	if !slices.Equal(c.Command, []string{"/pmem-webhook"}) {
		t.Errorf("command = %v, want [/pmem-webhook]", c.Command)
	}
	args := map[string]string{}
	for _, a := range c.Args {
		k, v, _ := strings.Cut(a, "=")
		args[k] = v
	}
	for flag, want := range map[string]string{
		"--port": "9443", "--cert-dir": "/tmp/k8s-webhook-server/serving-certs",
		"--health-addr": ":8081", "--metrics-addr": ":8080",
	} {
		if args[flag] != want {
			t.Errorf("arg %s = %q, want %q (args %v)", flag, args[flag], want, c.Args)
		}
	}
	for _, flag := range []string{"--memkind-image", "--default-storage-class", "--allowed-storage-classes", "--size-factor"} {
		if args[flag] == "" {
			t.Errorf("arg %s missing (args %v)", flag, c.Args)
		}
	}
	var certMounted bool
	for _, m := range c.VolumeMounts {
		if m.MountPath == args["--cert-dir"] {
			certMounted = true
		}
	}
	if !certMounted {
		t.Errorf("nothing mounted at --cert-dir %s", args["--cert-dir"])
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" ||
		containerPort(c, c.ReadinessProbe.HTTPGet.Port.String()) != 8081 {
		t.Errorf("readinessProbe = %+v, want GET /readyz on 8081", c.ReadinessProbe)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" ||
		containerPort(c, c.LivenessProbe.HTTPGet.Port.String()) != 8081 {
		t.Errorf("livenessProbe = %+v, want GET /healthz on 8081", c.LivenessProbe)
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds < 1 {
		t.Errorf("want a preStop sleep action (the image has no shell), got %+v", c.Lifecycle)
	} else {
		need := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
		for _, flag := range []string{"--shutdown-delay", "--shutdown-timeout"} {
			d, err := time.ParseDuration(args[flag])
			if err != nil {
				t.Errorf("%s %q: %v", flag, args[flag], err)
			}
			need += d
		}
		if grace := ps.TerminationGracePeriodSeconds; grace == nil || time.Duration(*grace)*time.Second <= need {
			t.Errorf("terminationGracePeriodSeconds %v must exceed preStop sleep + --shutdown-delay + --shutdown-timeout = %s", deref(grace), need)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources = %+v, want cpu+memory requests and a memory limit", c.Resources)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatalf("container has no securityContext")
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
		t.Errorf("want runAsNonRoot")
	case sc.RunAsUser == nil || *sc.RunAsUser == 0:
		t.Errorf("want a non-zero runAsUser")
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Errorf("want readOnlyRootFilesystem")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("want allowPrivilegeEscalation false")
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
		t.Errorf("want capabilities drop [ALL], add none")
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("want seccompProfile RuntimeDefault")
	}
}

func TestDefault(t *testing.T) {
	m, err := RenderDefault()
	if err != nil {
		t.Fatal(err)
	}
	r := decodeAll(t, m)
	if r.namespace == nil || r.namespace.Name != Namespace {
		t.Fatalf("want Namespace %s in the rendering", Namespace)
	}
	if got := r.namespace.Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
		t.Errorf("Namespace %s pod-security enforce = %q, want restricted", Namespace, got)
	}
	for _, o := range r.objs {
		if clusterScoped[o.GetKind()] {
			continue
		}
		if o.GetNamespace() != Namespace {
			t.Errorf("%s %s in namespace %q, want %s", o.GetKind(), o.GetName(), o.GetNamespace(), Namespace)
		}
	}
	checkClaimsRBAC(t, r, "pmem-webhook-claims")
	if len(r.clusterRoles)+len(r.roles) != 0 {
		t.Errorf("the cert-manager install needs no RBAC beyond the claim check, got %d more roles", len(r.clusterRoles)+len(r.roles))
	}
	if r.serviceAccount.AutomountServiceAccountToken == nil || *r.serviceAccount.AutomountServiceAccountToken {
		t.Errorf("ServiceAccount: want automountServiceAccountToken false (only the webhook's own pods mount the token)")
	}
	checkCertManagerWiring(t, r)
	checkWebhook(t, r, admissionregistrationv1.Fail)
	checkDeployment(t, r, 2)
}

// An overlay that changes the namespace must keep certificate, CA injection and self-exclusion
// consistent: default's replacements derive them from the Service and the Certificate.
func TestDefaultInAnotherNamespace(t *testing.T) {
	k, err := files.ReadFile("default/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(k), "\nnamespace: pmem-system\n", "\nnamespace: pmem-other\n", 1)
	if s == string(k) {
		t.Fatal("default/kustomization.yaml has no `namespace: pmem-system` line to replace")
	}
	m, err := Kustomize("moved", map[string]string{"moved/kustomization.yaml": s})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(m, []byte("pmem-system")) {
		t.Errorf("rendering in namespace pmem-other still mentions pmem-system:\n%s", m)
	}
	r := decodeAll(t, m)
	if r.service.Namespace != "pmem-other" {
		t.Fatalf("Service namespace %q, want pmem-other", r.service.Namespace)
	}
	checkCertManagerWiring(t, r)
	checkWebhook(t, r, admissionregistrationv1.Fail)
}

func TestComponents(t *testing.T) {
	for _, tc := range []struct {
		component      string
		failurePolicy  admissionregistrationv1.FailurePolicyType
		matchCondition bool
	}{
		{"failure-policy-ignore", admissionregistrationv1.Ignore, true},
		{"without-match-conditions", admissionregistrationv1.Ignore, false},
	} {
		t.Run(tc.component, func(t *testing.T) {
			m, err := Kustomize("overlay", map[string]string{"overlay/kustomization.yaml": "resources: [../default]\ncomponents: [../components/" + tc.component + "]\n"})
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := WebhookConfiguration(m)
			if err != nil {
				t.Fatal(err)
			}
			w := cfg.Webhooks[0]
			if w.FailurePolicy == nil || *w.FailurePolicy != tc.failurePolicy {
				t.Errorf("failurePolicy = %v, want %s", deref(w.FailurePolicy), tc.failurePolicy)
			}
			if got := len(w.MatchConditions) == 1; got != tc.matchCondition {
				t.Errorf("matchConditions = %+v, want present=%v", w.MatchConditions, tc.matchCondition)
			}
			// Everything else is untouched.
			base, err := DefaultWebhookConfiguration()
			if err != nil {
				t.Fatal(err)
			}
			w.FailurePolicy, base.Webhooks[0].FailurePolicy = nil, nil
			w.MatchConditions, base.Webhooks[0].MatchConditions = nil, nil
			if !equalJSON(t, w, base.Webhooks[0]) {
				t.Errorf("component %s changed more than failurePolicy/matchConditions:\n%+v\nvs\n%+v", tc.component, w, base.Webhooks[0])
			}
		})
	}
}

func TestPointAt(t *testing.T) {
	cfg, err := DefaultWebhookConfiguration()
	if err != nil {
		t.Fatal(err)
	}
	got, err := PointAt(cfg, "https://127.0.0.1:34567", []byte("CA"))
	if err != nil {
		t.Fatal(err)
	}
	w := got.Webhooks[0]
	if w.ClientConfig.Service != nil || w.ClientConfig.URL == nil || *w.ClientConfig.URL != "https://127.0.0.1:34567/mutate-v1-pod" || string(w.ClientConfig.CABundle) != "CA" {
		t.Errorf("clientConfig = %+v, want url https://127.0.0.1:34567/mutate-v1-pod with the CA", w.ClientConfig)
	}
	if _, ok := got.Annotations["cert-manager.io/inject-ca-from"]; ok {
		t.Errorf("PointAt kept the cert-manager injection annotation")
	}
	if cfg.Webhooks[0].ClientConfig.Service == nil {
		t.Errorf("PointAt modified its input")
	}
	for _, bad := range []string{"http://127.0.0.1:1", "127.0.0.1:1", "https://"} {
		if _, err := PointAt(cfg, bad, nil); err == nil {
			t.Errorf("PointAt(%q): want an error", bad)
		}
	}
}

func TestStorageClassExample(t *testing.T) {
	b, err := files.ReadFile("examples/storageclass-ack.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Objects(b)
	if err != nil {
		t.Fatal(err)
	}
	u, err := Find(objs, "StorageClass", "csi-pmem-direct")
	if err != nil {
		t.Fatal(err)
	}
	var sc storagev1.StorageClass
	if err := DecodeStrict(u, &sc); err != nil {
		t.Fatal(err)
	}
	if sc.Provisioner != "localplugin.csi.alibabacloud.com" || sc.Parameters["volumeType"] != "PMEM" || sc.Parameters["pmemType"] != "direct" ||
		!slices.Equal(sc.MountOptions, []string{"dax"}) || sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer {
		t.Errorf("StorageClass = %+v, want the ACK PMEM direct class", sc)
	}
	// The class name is what the Deployment defaults to.
	m, err := RenderDefault()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(m, []byte("--default-storage-class="+sc.Name)) {
		t.Errorf("deploy/default does not default to StorageClass %s", sc.Name)
	}
}

// deploy/examples/overlay is what docs/deploy.md tells users to copy: it must build, change exactly
// the images and flags it claims to, and keep the rest of the installation intact.
func TestExampleOverlay(t *testing.T) {
	m, err := Kustomize("examples/overlay", nil)
	if err != nil {
		t.Fatal(err)
	}
	r := decodeAll(t, m)
	c := r.deployment.Spec.Template.Spec.Containers[0]
	if c.Image != "registry.example.com/pmem-webhook/webhook:v0.1.0" {
		t.Errorf("image %q", c.Image)
	}
	for _, want := range []string{"--memkind-image=registry.example.com/pmem-webhook/memkind:v0.1.0", "--allowed-storage-classes=csi-pmem-direct,csi-pmem-direct-ssd"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("args %v lack %s", c.Args, want)
		}
	}
	checkCertManagerWiring(t, r)
	checkWebhook(t, r, admissionregistrationv1.Fail)
	checkDeployment(t, r, 2)

	// The overlay's `test` operations guard the argument indexes: if the base's argument order
	// changes, the build fails instead of replacing the wrong flag.
	dep, err := files.ReadFile("webhook/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	moved := strings.Replace(string(dep), "        - --port=9443\n", "", 1)
	if moved == string(dep) {
		t.Fatal("deploy/webhook/deployment.yaml has no --port=9443 argument line")
	}
	if _, err := Kustomize("examples/overlay", map[string]string{"webhook/deployment.yaml": moved}); err == nil {
		t.Errorf("overlay built although the base's arguments moved")
	}
}
