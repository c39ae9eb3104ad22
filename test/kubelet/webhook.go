package kubelet

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/pmem-webhook/pmem-webhook/certs"
	"github.com/pmem-webhook/pmem-webhook/deploy"
	"github.com/pmem-webhook/pmem-webhook/test/cluster"
)

// certManagerKinds are the objects of deploy/default that only cert-manager serves; this
// cluster has no cert-manager (its binaries cannot be built here), so the serving certificate
// comes from the certs package instead (see DeployWebhook).
var certManagerKinds = map[string]bool{"Issuer": true, "ClusterIssuer": true, "Certificate": true}

// DeployWebhook installs the webhook as a cluster add-on from deploy/default (kustomize,
// rendered in-process): Namespace, ServiceAccount, Service, the two-replica Deployment running
// the webhook image, PodDisruptionBudget and the MutatingWebhookConfiguration calling the
// Service. cert-manager's part is done here instead: the Secret the Deployment mounts holds a
// serving certificate from certs.Generate for the Service's DNS names, and its CA goes into
// the configuration's caBundle (what cert-manager's cainjector would write).
//
// It returns once both replicas are ready, the Service has both endpoints, and the apiserver
// gets a dry-run annotated pod mutated through the Service.
func DeployWebhook(ctx context.Context, cfg *rest.Config, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		return err
	}
	manifests, err := deploy.RenderDefault()
	if err != nil {
		return err
	}
	objs, err := deploy.Objects(manifests)
	if err != nil {
		return err
	}
	svc, err := deploy.Find(objs, "Service", deploy.ServiceName)
	if err != nil {
		return err
	}
	ns := svc.GetNamespace()
	bundle, err := certs.Generate([]string{
		deploy.ServiceName + "." + ns + ".svc",
		deploy.ServiceName + "." + ns + ".svc.cluster.local",
	}, nil, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("webhook serving certificate: %w", err)
	}

	// Namespace first: everything else lives in it.
	var rest []*unstructured.Unstructured
	for _, o := range objs {
		switch {
		case certManagerKinds[o.GetKind()]:
			continue
		case o.GetKind() == "Namespace":
			if err := c.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create %s %s: %w", o.GetKind(), o.GetName(), err)
			}
		default:
			rest = append(rest, o)
		}
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: deploy.ServingCertName},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"tls.crt": bundle.CertPEM, "tls.key": bundle.KeyPEM, "ca.crt": bundle.CAPEM},
	}
	if err := c.Create(ctx, secret); err != nil {
		return fmt.Errorf("create Secret %s/%s: %w", ns, secret.Name, err)
	}
	for _, o := range rest {
		if o.GetKind() == "MutatingWebhookConfiguration" {
			if err := setCABundle(o, bundle.CAPEM); err != nil {
				return err
			}
		}
		if err := c.Create(ctx, o); err != nil {
			return fmt.Errorf("create %s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}

	dep, err := deploy.Find(objs, "Deployment", "")
	if err != nil {
		return err
	}
	if err := WaitWebhookReady(ctx, c, dep.GetNamespace(), dep.GetName()); err != nil {
		return fmt.Errorf("%w; events in %s:\n%s\nlogs:\n%s", err, ns, Events(c, ns), Logs(cfg, ns))
	}
	remaining := time.Until(deadline(ctx))
	return cluster.WaitForInjection(ctx, cfg, remaining)
}

func deadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(time.Minute)
}

func setCABundle(o *unstructured.Unstructured, ca []byte) error {
	hooks, _, err := unstructured.NestedSlice(o.Object, "webhooks")
	if err != nil {
		return fmt.Errorf("%s webhooks: %w", o.GetName(), err)
	}
	for i := range hooks {
		h, ok := hooks[i].(map[string]any)
		if !ok {
			return fmt.Errorf("%s webhooks[%d] is not an object", o.GetName(), i)
		}
		cc, _ := h["clientConfig"].(map[string]any)
		if cc == nil {
			return fmt.Errorf("%s webhooks[%d] has no clientConfig", o.GetName(), i)
		}
		cc["caBundle"] = base64.StdEncoding.EncodeToString(ca)
		hooks[i] = h
	}
	return unstructured.SetNestedSlice(o.Object, hooks, "webhooks")
}

// WaitWebhookReady waits until every replica of the webhook Deployment is ready and its
// Service's EndpointSlices list them all as ready (what the apiserver routes to).
func WaitWebhookReady(ctx context.Context, c client.Client, ns, name string) error {
	var last string
	for {
		var d appsv1.Deployment
		err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &d)
		if err == nil {
			want := int32(1)
			if d.Spec.Replicas != nil {
				want = *d.Spec.Replicas
			}
			ready := 0
			var slices discoveryv1.EndpointSliceList
			if err = c.List(ctx, &slices, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: deploy.ServiceName}); err == nil {
				for _, s := range slices.Items {
					for _, e := range s.Endpoints {
						if e.Conditions.Ready != nil && *e.Conditions.Ready {
							ready++
						}
					}
				}
			}
			if d.Status.ReadyReplicas == want && d.Status.UpdatedReplicas == want && ready == int(want) {
				return nil
			}
			last = fmt.Sprintf("%d/%d replicas ready, %d ready endpoints", d.Status.ReadyReplicas, want, ready)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("webhook Deployment %s/%s not ready: %s", ns, name, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Events returns the events of namespace ns, one line each, for error messages.
func Events(c client.Client, ns string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var list corev1.EventList
	if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return "(list events: " + err.Error() + ")"
	}
	var b strings.Builder
	for _, e := range list.Items {
		fmt.Fprintf(&b, "  %s %s/%s %s: %s (x%d)\n", e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message, e.Count)
	}
	return b.String()
}

// Install says how DeployWebhook installs the webhook.
type Install string

const (
	// InstallHelmSelfSigned renders deploy/helm with certs.mode=selfSigned: the replicas make
	// and share their certificate through the certs/bootstrap path and write the caBundle
	// themselves (they reach the apiserver through Node.RouteAPIServer).
	InstallHelmSelfSigned Install = "helm-self-signed"
	// InstallKustomizeSecret renders deploy/default and does cert-manager's part from here
	// (DeployWebhook).
	InstallKustomizeSecret Install = "kustomize-secret"
)

// DeployWebhookHelmSelfSigned installs the chart under deploy/helm the way
// `helm install pmem-webhook deploy/helm/pmem-webhook -n pmem-system --set certs.mode=selfSigned`
// does (rendered in-process, objects created in Helm's install order), into the namespace
// deploy/default declares (restricted PodSecurity, injection disabled). Nothing is given to
// the webhook: its replicas fill the pre-created empty Secret and the caBundle themselves.
// Returns the Deployment's name once both replicas serve and the apiserver gets a pod mutated.
func DeployWebhookHelmSelfSigned(ctx context.Context, cfg *rest.Config, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		return "", err
	}
	kustomized, err := deploy.RenderDefault()
	if err != nil {
		return "", err
	}
	kobjs, err := deploy.Objects(kustomized)
	if err != nil {
		return "", err
	}
	ns, err := deploy.Find(kobjs, "Namespace", deploy.Namespace)
	if err != nil {
		return "", err
	}
	if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create Namespace %s: %w", ns.GetName(), err)
	}
	manifests, err := deploy.RenderHelm("pmem-webhook", deploy.Namespace, deploy.SelfSignedValues())
	if err != nil {
		return "", err
	}
	objs, err := deploy.Objects(manifests)
	if err != nil {
		return "", err
	}
	for _, o := range objs {
		if o.GetNamespace() == "" && o.GetKind() != "MutatingWebhookConfiguration" && o.GetKind() != "ClusterRole" && o.GetKind() != "ClusterRoleBinding" {
			o.SetNamespace(deploy.Namespace)
		}
		if err := c.Create(ctx, o); err != nil {
			return "", fmt.Errorf("create %s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	dep, err := deploy.Find(objs, "Deployment", "")
	if err != nil {
		return "", err
	}
	if err := WaitWebhookReady(ctx, c, dep.GetNamespace(), dep.GetName()); err != nil {
		return "", fmt.Errorf("%w; events in %s:\n%s\nlogs:\n%s", err, dep.GetNamespace(), Events(c, dep.GetNamespace()), Logs(cfg, dep.GetNamespace()))
	}
	if err := cluster.WaitForInjection(ctx, cfg, time.Until(deadline(ctx))); err != nil {
		return "", err
	}
	return dep.GetName(), nil
}

// Logs returns the last lines of every container log in namespace ns, for error messages.
func Logs(cfg *rest.Config, ns string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err.Error()
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "(list pods: " + err.Error() + ")"
	}
	var b strings.Builder
	tail := int64(30)
	for _, p := range pods.Items {
		for _, c := range p.Spec.Containers {
			out, err := cs.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: c.Name, TailLines: &tail}).DoRaw(ctx)
			if err != nil {
				out = []byte("(" + err.Error() + ")")
			}
			fmt.Fprintf(&b, "--- %s/%s:\n%s\n", p.Name, c.Name, out)
		}
	}
	return b.String()
}
