package reliability

import (
	"context"
	"fmt"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pmem-webhook/pmem-webhook/deploy"
)

// Variants of the shipped webhook configuration: deploy/default as is, and
// with the component a user adds to fail open.
const (
	VariantDefault = ""
	VariantIgnore  = "components/failure-policy-ignore"
)

// WebhookConfiguration renders deploy/default, with component (relative to
// deploy/, "" for none) added through a kustomize overlay the way a user adds
// it, and points it at baseURL with caBundle.
func WebhookConfiguration(component, baseURL string, caBundle []byte) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	var manifests []byte
	var err error
	if component == "" {
		manifests, err = deploy.RenderDefault()
	} else {
		const overlay = "reliability-overlay"
		manifests, err = deploy.Kustomize(overlay, map[string]string{
			overlay + "/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n" +
				"resources: [../default]\ncomponents: [../" + component + "]\n",
		})
	}
	if err != nil {
		return nil, err
	}
	cfg, err := deploy.WebhookConfiguration(manifests)
	if err != nil {
		return nil, err
	}
	return deploy.PointAt(cfg, baseURL, caBundle)
}

// Apply creates or replaces the MutatingWebhookConfiguration. Unlike
// cluster.RegisterWebhook it does not wait for an injection: the outage tests
// register configurations pointing at a webhook that is down.
func Apply(ctx context.Context, cfg *rest.Config, mwc *admissionregistrationv1.MutatingWebhookConfiguration) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	api := cs.AdmissionregistrationV1().MutatingWebhookConfigurations()
	_, err = api.Create(ctx, mwc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var old *admissionregistrationv1.MutatingWebhookConfiguration
		if old, err = api.Get(ctx, mwc.Name, metav1.GetOptions{}); err == nil {
			mwc = mwc.DeepCopy()
			mwc.ResourceVersion = old.ResourceVersion
			_, err = api.Update(ctx, mwc, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("apply MutatingWebhookConfiguration %s: %w", mwc.Name, err)
	}
	return nil
}
