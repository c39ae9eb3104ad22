package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/client-go/rest"

	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/test/cluster"
	"github.com/pmem-webhook/pmem-webhook/test/images"
	"github.com/pmem-webhook/pmem-webhook/test/kubelet"
)

// ProviderKubelet runs the control plane plus a real node on this machine (test/kubelet):
// containerd + runc + CNI from Debian, kubelet and kube-scheduler from source, images built
// from deploy/images without Docker, the webhook deployed from deploy/ as two pods.
const ProviderKubelet = "kubelet"

// EnvWebhookInstall chooses how the kubelet provider installs the webhook: helm-self-signed
// (default: deploy/helm, certs.mode=selfSigned, the certs/bootstrap path) or
// kustomize-secret (deploy/default with cert-manager's part done by the test).
const EnvWebhookInstall = "PMEM_E2E_WEBHOOK_INSTALL"

// EnvImageCache is where the kubelet provider keeps the Debian tree and the Redis image
// between runs (default <repo>/bin/node-e2e/cache).
const EnvImageCache = "PMEM_E2E_IMAGE_CACHE"

func init() {
	providers[ProviderKubelet] = provider{
		start:       startKubeletProvider,
		unavailable: []error{cluster.ErrBinariesMissing, kubelet.ErrPrerequisites},
	}
}

func startKubeletProvider(ctx context.Context, logf func(string, ...any)) (cfg *rest.Config, env *Env, penv *PodEnv, stop func() error, err error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	bins, err := cluster.FindBinaries("")
	if err != nil {
		return nil, nil, nil, nil, err
	}
	// The logs of the last run stay in bin/node-e2e/logs (the working dirs are removed).
	logs := filepath.Join(root, "bin", "node-e2e", "logs")
	_ = os.RemoveAll(logs)
	node, err := kubelet.New(kubelet.Options{BinDir: bins.Dir, Logf: logf, SaveLogsTo: logs})
	if err != nil {
		return nil, nil, nil, nil, err
	}
	var (
		cp      *cluster.ControlPlane
		storage *kubelet.Storage
		once    sync.Once
		stopErr error
	)
	stop = func() error {
		once.Do(func() {
			if storage != nil {
				for _, e := range storage.Errors() {
					logf("stand-in PMEM provisioner error: %s", e)
				}
			}
			storage.Stop()
			var apiCfg *rest.Config
			if cp != nil {
				apiCfg = cp.Config
			}
			stopErr = node.Stop(apiCfg)
			if cp != nil {
				_ = kubelet.SaveLogs(cp.Dir, logs)
			}
			cp.Stop()
		})
		return stopErr
	}
	defer func() {
		if err != nil {
			if cp != nil {
				err = fmt.Errorf("%w (logs: %s, %s)", err, cp.Dir, node.Dir)
			}
			_ = stop()
		}
	}()

	start := time.Now()
	cache := os.Getenv(EnvImageCache)
	if cache == "" {
		cache = filepath.Join(root, "bin", "node-e2e", "cache")
	}
	work := filepath.Join(node.Dir, "images")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, nil, nil, stop, err
	}
	built, err := images.BuildSet(ctx, images.SetOptions{RepoRoot: root, CacheDir: cache, WorkDir: work, Logf: logf})
	if err != nil {
		return nil, nil, nil, stop, fmt.Errorf("build images: %w", err)
	}
	logf("images built in %s", time.Since(start).Round(time.Millisecond))

	cp, err = cluster.Start(ctx, cluster.Options{
		BinDir:             bins.Dir,
		Logf:               logf,
		ExtraAPIServerArgs: node.ControlPlaneArgs(),
		ExtraControllers:   node.ControlPlaneControllers(),
	})
	if err != nil {
		return nil, nil, nil, stop, err
	}
	if err := node.Start(ctx, kubelet.StartOptions{Config: cp.Config, KubeconfigFile: cp.KubeconfigFile, Images: built}); err != nil {
		return nil, nil, nil, stop, err
	}
	injection := patch.DefaultConfig()
	if storage, err = node.StartStorage(ctx, cp.Config, injection.DefaultStorageClass); err != nil {
		return nil, nil, nil, stop, err
	}
	// In-cluster clients (the webhook's self-signed bootstrap and claim checks) dial the
	// kubernetes Service.
	if err := node.RouteAPIServer(ctx, cp.Config); err != nil {
		return nil, nil, nil, stop, err
	}
	start = time.Now()
	webhookDeployment := "pmem-webhook"
	switch install := kubelet.Install(os.Getenv(EnvWebhookInstall)); install {
	case "", kubelet.InstallHelmSelfSigned:
		if webhookDeployment, err = kubelet.DeployWebhookHelmSelfSigned(ctx, cp.Config, 3*time.Minute); err != nil {
			return nil, nil, nil, stop, fmt.Errorf("install the webhook from deploy/helm (certs.mode=selfSigned): %w", err)
		}
		logf("webhook installed from deploy/helm with self-signed certificates, both replicas serving (%s)", time.Since(start).Round(time.Millisecond))
	case kubelet.InstallKustomizeSecret:
		if err := kubelet.DeployWebhook(ctx, cp.Config, 3*time.Minute); err != nil {
			return nil, nil, nil, stop, fmt.Errorf("deploy the webhook from deploy/default: %w", err)
		}
		logf("webhook deployed from deploy/default with a certs.Generate Secret, both replicas serving (%s)", time.Since(start).Round(time.Millisecond))
	default:
		return nil, nil, nil, stop, fmt.Errorf("%s=%q: want %s or %s", EnvWebhookInstall, install, kubelet.InstallHelmSelfSigned, kubelet.InstallKustomizeSecret)
	}

	env = &Env{
		// deploy/webhook/deployment.yaml sets the defaults with its flags.
		Injection: injection,
		ServeWebhook: func(_ context.Context, h http.Handler) (admissionregistrationv1.WebhookClientConfig, func(), error) {
			srv, err := cluster.ServeTLS(h)
			if err != nil {
				return admissionregistrationv1.WebhookClientConfig{}, nil, err
			}
			url := srv.URL + "/mutate"
			return admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: srv.CAPEM}, func() { _ = srv.Close() }, nil
		},
	}
	penv = &PodEnv{
		RedisImage:        images.RedisRef,
		WebhookNamespace:  "pmem-system",
		WebhookDeployment: webhookDeployment,
		ContainerRootIsRO: node.ContainerRootReadOnly,
	}
	return cp.Config, env, penv, stop, nil
}
