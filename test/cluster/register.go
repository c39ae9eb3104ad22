package cluster

import (
	"context"
	"fmt"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pmem-webhook/pmem-webhook/deploy"
	"github.com/pmem-webhook/pmem-webhook/patch"
)

// RegisterWebhook creates (or replaces) the MutatingWebhookConfiguration that
// deploy/default ships, rewritten only to call baseURL with caBundle instead
// of the in-cluster Service (deploy.PointAt), and waits until the apiserver
// actually calls the webhook.
func RegisterWebhook(ctx context.Context, cfg *rest.Config, baseURL string, caBundle []byte) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	shipped, err := deploy.DefaultWebhookConfiguration()
	if err != nil {
		return nil, fmt.Errorf("render the webhook configuration from deploy/: %w", err)
	}
	mwc, err := deploy.PointAt(shipped, baseURL, caBundle)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	api := cs.AdmissionregistrationV1().MutatingWebhookConfigurations()
	created, err := api.Create(ctx, mwc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var old *admissionregistrationv1.MutatingWebhookConfiguration
		if old, err = api.Get(ctx, mwc.Name, metav1.GetOptions{}); err == nil {
			mwc.ResourceVersion = old.ResourceVersion
			created, err = api.Update(ctx, mwc, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("register MutatingWebhookConfiguration %s: %w", mwc.Name, err)
	}
	if err := WaitForInjection(ctx, cfg, 30*time.Second); err != nil {
		return nil, err
	}
	return created, nil
}

// WaitForInjection polls with a server-side dry-run create of an annotated pod
// in the default namespace until the apiserver returns it mutated: the
// apiserver picks up a new webhook configuration asynchronously, so a test
// that starts right after registration could otherwise race it.
func WaitForInjection(ctx context.Context, cfg *rest.Config, timeout time.Duration) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	probe := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        "pmem-webhook-probe",
			Annotations: map[string]string{patch.AnnotationDirect: "true", patch.AnnotationSize: "1Gi"},
		},
		// A memory limit, so the webhook has no reason to warn about the probe.
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "probe", Image: "probe", Resources: corev1.ResourceRequirements{
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
		}}}},
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		got, err := cs.CoreV1().Pods(metav1.NamespaceDefault).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		switch {
		case err != nil:
			last = err
		case got.Annotations[patch.AnnotationStatus] == "":
			last = fmt.Errorf("dry-run pod came back without annotation %s", patch.AnnotationStatus)
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the apiserver does not call the webhook within %s: %w", timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
