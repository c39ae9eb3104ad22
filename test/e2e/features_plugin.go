package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/pkg/features"
	e2etypes "sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/pmem-webhook/pmem-webhook/cmd/pmem-inject/plugin"
	"github.com/pmem-webhook/pmem-webhook/patch"
)

// kubeconfigFor writes a kubeconfig with cfg's credentials, for code that
// takes kubectl's flags.
func kubeconfigFor(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["e2e"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData, CertificateAuthority: cfg.CAFile, InsecureSkipTLSVerify: cfg.Insecure}
	kc.AuthInfos["e2e"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, ClientCertificate: cfg.CertFile, ClientKey: cfg.KeyFile, Token: cfg.BearerToken}
	kc.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "e2e"}
	kc.CurrentContext = "e2e"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func kubectlPmem(ctx context.Context, t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := plugin.Run(ctx, args, &out, &errOut)
	return out.String(), errOut.String(), err
}

// KubectlPmemEnableStatusDisable: `kubectl pmem enable deployment/redis
// --size 2Gi`, `status -o json` per pod, `disable`, and a refused value.
func KubectlPmemEnableStatusDisable(env *Env) e2etypes.Feature {
	const name = "redis"
	return features.New("workload annotation through kubectl pmem enable, status, disable").
		WithLabel("tier", "controlplane").
		Setup(setupNamespace(nil)).
		Assess("enable, status, disable", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			kcfg := kubeconfigFor(t, cfg.Client().RESTConfig())
			flags := []string{"-n", ns, "--kubeconfig", kcfg, "--context", "e2e"}
			d := deployment(ns, name, redisContainer("512Mi"), nil)
			d.Spec.Strategy = appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}
			if err := c.Create(ctx, d); err != nil {
				t.Fatalf("create Deployment: %v", err)
			}
			waitForPod(ctx, t, c, ns, labelsOf(name), defaultTimeout, "a plain pod", anyPod)

			if _, _, err := kubectlPmem(ctx, t, append([]string{"enable", "deployment/" + name, "--size", "lots"}, flags...)...); err == nil ||
				!strings.Contains(err.Error(), `annotation pmem.alibabacloud.com/size="lots" is invalid`) {
				t.Errorf("enable --size lots: err = %v, want the webhook's refusal", err)
			}
			out, stderr, err := kubectlPmem(ctx, t, append([]string{"enable", "deploy/" + name, "--size", "2Gi"}, flags...)...)
			if err != nil || !strings.Contains(out, "deployment/redis enabled") {
				t.Fatalf("enable: %v\n%s%s", err, out, stderr)
			}
			waitAllPods(ctx, t, c, ns, name, "every pod injected", injected)

			var st []plugin.PodStatus
			waitFor(ctx, t, defaultTimeout, "status to show a bound-or-pending PVC", func(ctx context.Context) (bool, error) {
				out, _, err := kubectlPmem(ctx, t, append([]string{"status", "deployment/" + name, "-o", "json"}, flags...)...)
				if err != nil {
					return false, err
				}
				st = nil
				if err := json.Unmarshal([]byte(out), &st); err != nil {
					return false, err
				}
				return len(st) == 1 && st[0].PVCPhase != "" && st[0].PVCPhase != "NotFound", nil
			})
			s := st[0]
			if !s.Injected || s.Mode != "fsdax" || s.PVC != s.Pod+"-pmem" {
				t.Errorf("status %+v: want injected, fsdax, PVC <pod>-pmem", s)
			}
			// Placement is read through exec once the pod runs (a real node);
			// on the bare control plane the pod never runs and status says so.
			switch {
			case strings.HasPrefix(s.Placement, "not available ("), strings.HasPrefix(s.Placement, "none: "):
			case strings.Contains(s.Placement, " on PMEM"):
				if len(s.Records) == 0 || s.Records[0]["mode"] != "fsdax" {
					t.Errorf("placement %q without fsdax records: %v", s.Placement, s.Records)
				}
			default:
				t.Errorf("placement %q: want a record summary, none:, or not available (reason)", s.Placement)
			}
			t.Logf("kubectl pmem status placement: %s", s.Placement)
			table, _, err := kubectlPmem(ctx, t, append([]string{"status"}, flags...)...)
			if err != nil || !strings.Contains(table, "POD") || !strings.Contains(table, s.Pod) {
				t.Errorf("status table: %v\n%s", err, table)
			}

			if out, _, err := kubectlPmem(ctx, t, append([]string{"disable", "deployment/" + name}, flags...)...); err != nil || !strings.Contains(out, "disabled") {
				t.Fatalf("disable: %v\n%s", err, out)
			}
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, d); err != nil {
				t.Fatal(err)
			}
			if len(pmemKeys(d.Annotations)) != 0 || len(pmemKeys(d.Spec.Template.Annotations)) != 0 {
				t.Errorf("after disable: workload %v, template %v: want no pmem keys", d.Annotations, d.Spec.Template.Annotations)
			}
			waitAllPods(ctx, t, c, ns, name, "every pod plain", func(p *corev1.Pod) bool { return !injected(p) })
			out, _, err = kubectlPmem(ctx, t, append([]string{"status", "deployment/" + name, "-o", "yaml"}, flags...)...)
			if err != nil || !strings.Contains(out, "injected: false") || !strings.Contains(out, "not requested") {
				t.Errorf("status after disable: %v\n%s", err, out)
			}

			// Injected offline (the injector's output applied): the pieces are
			// in the template, so disable cannot undo it and must say how.
			off := deployment(ns, name+"-offline", redisContainer("512Mi"), map[string]string{patch.AnnotationDirect: "true"})
			cfgInject := patch.DefaultConfig()
			res, err := patch.Apply(&corev1.Pod{ObjectMeta: off.Spec.Template.ObjectMeta, Spec: off.Spec.Template.Spec}, &cfgInject)
			if err != nil || res.Decision != patch.Injected {
				t.Fatalf("offline injection: %v (%v)", err, res)
			}
			off.Spec.Template.ObjectMeta, off.Spec.Template.Spec = res.Pod.ObjectMeta, res.Pod.Spec
			off.Annotations = map[string]string{patch.AnnotationDirect: "true"}
			if err := c.Create(ctx, off); err != nil {
				t.Fatalf("create offline-injected Deployment: %v", err)
			}
			out, stderr, err = kubectlPmem(ctx, t, append([]string{"disable", "deployment/" + off.Name}, flags...)...)
			if err != nil || !strings.Contains(stderr, "was injected offline (kubectl pmem inject)") || !strings.Contains(stderr, "run kubectl pmem inject -f on it again") {
				t.Errorf("disable of an offline-injected Deployment: %v\nstdout: %s\nstderr: %s", err, out, stderr)
			}
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}
