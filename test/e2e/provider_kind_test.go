//go:build kind

package e2e

// The kind provider: the same features on a kind cluster, with the webhook installed the way
// a user installs it (cert-manager, then deploy/default). It needs docker, kind (installed
// with `go install` by e2e-framework when missing) and kubectl, so it runs on developer
// machines and in CI that has Docker, never on the project's own machines (no Docker daemon
// there): CI only compiles it (`make vet-kind`).

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/support/kind"

	"github.com/pmem-webhook/pmem-webhook/deploy"
	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/test/cluster"
	"github.com/pmem-webhook/pmem-webhook/test/images"
	"github.com/pmem-webhook/pmem-webhook/test/kubelet"
)

// ProviderKind creates a kind cluster per run.
const ProviderKind = "kind"

// CertManagerVersion is the cert-manager release installed on the kind cluster: the one whose
// API types go.mod pins.
const CertManagerVersion = "v1.21.2"

// Environment overrides for the kind provider.
const (
	EnvKindCluster   = "PMEM_KIND_CLUSTER"    // cluster name (default pmem-e2e)
	EnvKindNodeImage = "PMEM_KIND_NODE_IMAGE" // kindest/node image (default: kind's)
	EnvKindKeep      = "PMEM_KIND_KEEP"       // non-empty: do not delete the cluster afterwards
)

// rancher.io/local-path is the provisioner kind ships (StorageClass "standard"); the
// csi-pmem-direct class made with it stands in for the PMEM CSI driver.
const kindLocalPathProvisioner = "rancher.io/local-path"

func init() {
	providers[ProviderKind] = provider{start: startKindProvider}
}

func startKindProvider(ctx context.Context, logf func(string, ...any)) (cfg *rest.Config, env *Env, penv *PodEnv, stop func() error, err error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	for _, tool := range []string{"docker", "kubectl", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, nil, nil, nil, fmt.Errorf("the kind provider needs %s: %w", tool, err)
		}
	}
	name := os.Getenv(EnvKindCluster)
	if name == "" {
		name = "pmem-e2e"
	}
	kc := kind.NewCluster(name)
	if img := os.Getenv(EnvKindNodeImage); img != "" {
		kc.WithOpts(kind.WithImage(img))
	}
	var once sync.Once
	var stopErr error
	stop = func() error {
		once.Do(func() {
			if os.Getenv(EnvKindKeep) != "" {
				logf("keeping kind cluster %s (%s set)", name, EnvKindKeep)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			stopErr = kc.Destroy(ctx)
		})
		return stopErr
	}
	defer func() {
		if err != nil {
			_ = stop()
		}
	}()

	start := time.Now()
	kubeconfig, err := kc.Create(ctx)
	if err != nil {
		return nil, nil, nil, stop, fmt.Errorf("create kind cluster %s: %w", name, err)
	}
	if cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
		return nil, nil, nil, stop, err
	}
	logf("kind cluster %s up (%s)", name, time.Since(start).Round(time.Second))
	kubectl := func(stdin []byte, args ...string) error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(cctx, "kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...)
		if stdin != nil {
			cmd.Stdin = bytes.NewReader(stdin)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}

	// The images, from the Dockerfiles (make images), loaded into the node.
	start = time.Now()
	build := exec.CommandContext(ctx, "make", "images")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return nil, nil, nil, stop, fmt.Errorf("make images: %w\n%s", err, out)
	}
	for _, ref := range []string{images.WebhookRef, images.MemkindRef, images.RedisRef} {
		if err := kc.LoadImage(ctx, ref); err != nil {
			return nil, nil, nil, stop, fmt.Errorf("kind load docker-image %s: %w", ref, err)
		}
	}
	logf("images built and loaded (%s)", time.Since(start).Round(time.Second))

	// cert-manager, pinned; its webhook must answer before our Issuer/Certificate apply.
	start = time.Now()
	url := "https://github.com/cert-manager/cert-manager/releases/download/" + CertManagerVersion + "/cert-manager.yaml"
	if err := kubectl(nil, "apply", "-f", url); err != nil {
		return nil, nil, nil, stop, err
	}
	if err := kubectl(nil, "-n", "cert-manager", "wait", "--for=condition=Available", "deployment", "--all", "--timeout=5m"); err != nil {
		return nil, nil, nil, stop, err
	}
	logf("cert-manager %s ready (%s)", CertManagerVersion, time.Since(start).Round(time.Second))

	// deploy/default, exactly what `kubectl apply -k deploy/default` applies. The first apply
	// can race cert-manager's webhook becoming reachable: retry a few times.
	manifests, err := deploy.RenderDefault()
	if err != nil {
		return nil, nil, nil, stop, err
	}
	for i := 0; ; i++ {
		err = kubectl(manifests, "apply", "--server-side", "-f", "-")
		if err == nil || i == 10 {
			break
		}
		time.Sleep(5 * time.Second)
	}
	if err != nil {
		return nil, nil, nil, stop, err
	}
	if err := kubectl(nil, "-n", deploy.Namespace, "wait", "--for=condition=Ready", "certificate/"+deploy.ServingCertName, "--timeout=3m"); err != nil {
		return nil, nil, nil, stop, err
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		return nil, nil, nil, stop, err
	}
	if err := waitCABundle(ctx, c, 2*time.Minute); err != nil {
		return nil, nil, nil, stop, err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := kubelet.WaitWebhookReady(wctx, c, deploy.Namespace, "pmem-webhook"); err != nil {
		return nil, nil, nil, stop, err
	}
	if err := cluster.WaitForInjection(ctx, cfg, time.Minute); err != nil {
		return nil, nil, nil, stop, err
	}

	injection := patch.DefaultConfig()
	wffc := storagev1.VolumeBindingWaitForFirstConsumer
	del := corev1.PersistentVolumeReclaimDelete
	sc := &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: injection.DefaultStorageClass},
		Provisioner:       kindLocalPathProvisioner,
		ReclaimPolicy:     &del,
		VolumeBindingMode: &wffc,
	}
	if err := c.Create(ctx, sc); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, nil, nil, stop, fmt.Errorf("create StorageClass %s: %w", sc.Name, err)
	}

	env = &Env{
		Injection: injection,
		// The apiserver runs inside a container and cannot call a server on this host's
		// loopback: the reinvocation feature skips on kind.
		ServeWebhook: nil,
	}
	penv = &PodEnv{
		RedisImage:        images.RedisRef,
		WebhookNamespace:  deploy.Namespace,
		WebhookDeployment: "pmem-webhook",
	}
	return cfg, env, penv, stop, nil
}

// waitCABundle waits until cert-manager's cainjector has written the CA into every webhook of
// the configuration: before that, the apiserver cannot verify the webhook.
func waitCABundle(ctx context.Context, c client.Client, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		err := c.Get(ctx, client.ObjectKey{Name: deploy.WebhookConfigName}, &mwc)
		if err == nil {
			injected := len(mwc.Webhooks) > 0
			for _, w := range mwc.Webhooks {
				injected = injected && len(w.ClientConfig.CABundle) > 0
			}
			if injected {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("caBundle of %s not injected by cert-manager within %s (last error: %v)", deploy.WebhookConfigName, timeout, err)
		case <-time.After(time.Second):
		}
	}
}
