package kubelet

import (
	"context"
	"encoding/base64"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
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
		return err
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
