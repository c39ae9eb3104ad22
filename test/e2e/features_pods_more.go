package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/pkg/features"
	e2etypes "sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// entrypointScript is what many images run before Redis: ordinary tools under the
// container-wide LD_PRELOAD. libmemtier's malloc(0) == NULL made grep fail with "memory
// exhausted"; the preload only tiers the target processes, so these must just work.
const entrypointScript = `set -eu
grep -q '^redis:' /etc/passwd
test "$(find /var/lib/redis -maxdepth 0 -type d)" = /var/lib/redis
ls /opt/pmem-memkind | grep -q libpmem-preload.so
exec redis-server --save '' --appendonly no --protected-mode no`

// ShellEntrypointStarts: a shell entrypoint that runs grep and find before `exec
// redis-server` starts, and redis-server (PID 1 after the exec) still gets its heap on PMEM.
func ShellEntrypointStarts(env *Env, penv *PodEnv) e2etypes.Feature {
	return features.New("a shell entrypoint with grep and find still starts Redis on PMEM").
		WithLabel("tier", "pods").
		Setup(setupNamespace(nil)).
		Assess("the pod becomes Ready and redis-server's heap is under /mnt/pmem", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			ctr := debianRedis(penv, "256Mi")
			ctr.Command = []string{"/bin/sh", "-c", entrypointScript}
			ctr.Args = nil
			if err := c.Create(ctx, deployment(ns, "redis-sh", ctr, map[string]string{patch.AnnotationDirect: "true"})); err != nil {
				t.Fatalf("create Deployment: %v", err)
			}
			pods := waitDeploymentRolledOut(ctx, t, c, ns, "redis-sh", podTimeout)
			pod := &pods[0]
			assertInjected(t, env, pod, wantInjection{size: "512Mi", targets: []string{"redis"}})
			rc := cfg.Client().RESTConfig()
			assertRedisServerIsPID1(ctx, t, rc, pod)
			roundTrip(ctx, t, rc, pod, 16, redisValueSize)
			rss, maps, err := pmemRss(ctx, rc, pod, "redis", "1")
			if err != nil {
				t.Fatalf("read smaps: %v", err)
			}
			if rss < 16*1024*9/10 {
				t.Errorf("redis-server started by a shell script: %d KiB under /mnt/pmem after 16 MiB of SETs, want >= %d; mappings %q", rss, 16*1024*9/10, maps)
			}
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}

// RemovingAnnotationRollsBackToDRAM: removing the annotation from a PMEM Deployment's
// template rolls out plain pods of the same image; Redis works on DRAM (no /mnt/pmem
// mapping); the old pods' generated PVCs are deleted with them.
func RemovingAnnotationRollsBackToDRAM(env *Env, penv *PodEnv) e2etypes.Feature {
	return features.New("removing the annotation rolls back to DRAM").
		WithLabel("tier", "pods").
		Setup(setupNamespace(nil)).
		Assess("a PMEM Deployment runs", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			if err := c.Create(ctx, deployment(ns, "redis", debianRedis(penv, "256Mi"), map[string]string{patch.AnnotationDirect: "true"})); err != nil {
				t.Fatalf("create Deployment: %v", err)
			}
			pods := waitDeploymentRolledOut(ctx, t, c, ns, "redis", podTimeout)
			assertPVC(ctx, t, env, c, &pods[0], "512Mi")
			return context.WithValue(ctx, podKey{}, &pods[0])
		}).
		Assess("without the annotation: DRAM pods, same image, old PVC gone", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			old := podFrom(ctx, t)
			body := fmt.Sprintf(`[{"op":"remove","path":"/spec/template/metadata/annotations/%s"}]`, strings.ReplaceAll(patch.AnnotationDirect, "/", "~1"))
			d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "redis"}}
			if err := c.Patch(ctx, d, client.RawPatch(types.JSONPatchType, []byte(body))); err != nil {
				t.Fatalf("remove the annotation: %v", err)
			}
			pods := waitDeploymentRolledOut(ctx, t, c, ns, "redis", podTimeout)
			pod := &pods[0]
			if pod.UID == old.UID {
				t.Fatalf("pod %s was not replaced", pod.Name)
			}
			assertNotInjected(t, pod)
			if got, want := container(pod, "redis").Image, container(old, "redis").Image; got != want {
				t.Errorf("image after rollback %q, want the same %q", got, want)
			}
			key := client.ObjectKey{Namespace: ns, Name: old.Name + "-" + patch.PMEMVolumeName}
			waitFor(ctx, t, defaultTimeout, "PVC "+key.String()+" deleted with its pod", func(ctx context.Context) (bool, error) {
				err := c.Get(ctx, key, &corev1.PersistentVolumeClaim{})
				if apierrors.IsNotFound(err) {
					return true, nil
				}
				return false, err
			})
			rc := cfg.Client().RESTConfig()
			assertRedisServerIsPID1(ctx, t, rc, pod)
			roundTrip(ctx, t, rc, pod, 16, redisValueSize)
			rss, maps, err := pmemRss(ctx, rc, pod, "redis", "1")
			if err != nil {
				t.Fatalf("read smaps: %v", err)
			}
			if rss != 0 || len(maps) != 0 {
				t.Errorf("DRAM pod %s: %d KiB in mappings under /mnt/pmem %q, want none", pod.Name, rss, maps)
			}
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}

// WebhookReplicaLossDuringRollout: while an annotated Deployment rolls out and annotated
// pods are being created (dry-run, every 100ms), one of the webhook's two replicas is
// deleted. No creation fails: the Service's other endpoint answers, the deleted replica keeps
// serving through its preStop delay, and the rollout completes with injected pods.
func WebhookReplicaLossDuringRollout(env *Env, penv *PodEnv) e2etypes.Feature {
	return features.New("losing a webhook replica during a rollout fails no pod creation").
		WithLabel("tier", "pods").
		Setup(setupNamespace(nil)).
		Assess("rollout + admissions while a webhook pod is deleted", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			d := deployment(ns, "redis", debianRedis(penv, "128Mi"), map[string]string{patch.AnnotationDirect: "true"})
			d.Spec.Replicas = ptr(int32(2))
			if err := c.Create(ctx, d); err != nil {
				t.Fatalf("create Deployment: %v", err)
			}
			waitDeploymentRolledOut(ctx, t, c, ns, "redis", podTimeout)
			hooks := webhookPods(ctx, t, c, penv)
			if len(hooks) != 2 {
				t.Fatalf("want 2 webhook pods before the test, have %d", len(hooks))
			}

			// Admissions in the background, all through the one failure window.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var mu sync.Mutex
			var failures []string
			admitted := 0
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-time.After(100 * time.Millisecond):
					}
					p := barePod(ns, fmt.Sprintf("probe-%d", i), redisContainer("128Mi"), map[string]string{patch.AnnotationDirect: "true"})
					err := c.Create(ctx, p, client.DryRunAll)
					mu.Lock()
					switch {
					case err != nil:
						failures = append(failures, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
					case p.Annotations[patch.AnnotationStatus] != patch.StatusInjected:
						failures = append(failures, fmt.Sprintf("%s: admitted without injection", p.Name))
					default:
						admitted++
					}
					mu.Unlock()
				}
			}()

			// The rollout: a template change replaces both pods one by one.
			body := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"e2e/restarted":%q}}}}}`, time.Now().Format(time.RFC3339Nano))
			if err := c.Patch(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "redis"}}, client.RawPatch(types.StrategicMergePatchType, []byte(body))); err != nil {
				t.Fatalf("start the rollout: %v", err)
			}
			time.Sleep(time.Second)
			victim := hooks[0]
			if err := c.Delete(ctx, &victim); err != nil {
				t.Fatalf("delete webhook pod %s: %v", victim.Name, err)
			}
			t.Logf("deleted webhook pod %s during the rollout", victim.Name)
			pods := waitDeploymentRolledOut(ctx, t, c, ns, "redis", podTimeout)
			// Keep admitting until the replacement replica serves, so the window after the
			// deleted replica stops is covered too.
			waitWebhookReplicas(ctx, t, c, penv, 2, podTimeout)
			time.Sleep(2 * time.Second)
			close(stop)
			wg.Wait()

			for i := range pods {
				assertInjected(t, env, &pods[i], wantInjection{size: "256Mi", targets: []string{"redis"}})
			}
			mu.Lock()
			defer mu.Unlock()
			t.Logf("%d dry-run annotated pod creations admitted and injected during the replica loss", admitted)
			if len(failures) > 0 {
				t.Errorf("%d pod creations failed while a webhook replica went away:\n%s", len(failures), strings.Join(failures, "\n"))
			}
			if admitted < 20 {
				t.Errorf("only %d admissions during the window, want >= 20 for the check to mean anything", admitted)
			}
			var events corev1.EventList
			if err := c.List(ctx, &events, client.InNamespace(ns)); err != nil {
				t.Fatalf("list events: %v", err)
			}
			for _, e := range events.Items {
				if e.Reason == "FailedCreate" {
					t.Errorf("%s %s: %s: %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
				}
			}
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}

func webhookPods(ctx context.Context, t *testing.T, c client.Client, penv *PodEnv) []corev1.Pod {
	t.Helper()
	var d appsv1.Deployment
	if err := c.Get(ctx, client.ObjectKey{Namespace: penv.WebhookNamespace, Name: penv.WebhookDeployment}, &d); err != nil {
		t.Fatalf("get webhook Deployment: %v", err)
	}
	pods, err := podsWith(ctx, c, penv.WebhookNamespace, d.Spec.Selector.MatchLabels)
	if err != nil {
		t.Fatalf("list webhook pods: %v", err)
	}
	var live []corev1.Pod
	for _, p := range pods {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	return live
}

func waitWebhookReplicas(ctx context.Context, t *testing.T, c client.Client, penv *PodEnv, want int32, timeout time.Duration) {
	t.Helper()
	waitFor(ctx, t, timeout, fmt.Sprintf("%d ready webhook replicas", want), func(ctx context.Context) (bool, error) {
		var d appsv1.Deployment
		if err := c.Get(ctx, client.ObjectKey{Namespace: penv.WebhookNamespace, Name: penv.WebhookDeployment}, &d); err != nil {
			return false, err
		}
		return d.Status.ReadyReplicas == want && d.Status.Replicas == want && d.Status.UpdatedReplicas == want, nil
	})
}

// InitContainerRestricted: in a namespace enforcing the "restricted" Pod Security Standard,
// an annotated Redis whose own container complies is admitted and runs: the injected init
// container complies too, ran as uid 65532 with a read-only root filesystem (as the runtime
// applied it, where the provider can see the runtime), and what it installed is owned by
// that uid.
func InitContainerRestricted(env *Env, penv *PodEnv) e2etypes.Feature {
	return features.New("the init container runs restricted, non-root, read-only root").
		WithLabel("tier", "pods").
		Setup(setupNamespace(map[string]string{
			"pod-security.kubernetes.io/enforce": "restricted",
			"pod-security.kubernetes.io/warn":    "restricted",
		})).
		Assess("an annotated restricted Redis runs", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			ctr := debianRedis(penv, "256Mi")
			ctr.SecurityContext = &corev1.SecurityContext{
				RunAsNonRoot:             ptr(true),
				RunAsUser:                ptr(int64(999)),
				AllowPrivilegeEscalation: ptr(false),
				ReadOnlyRootFilesystem:   ptr(true),
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			}
			if err := c.Create(ctx, deployment(ns, "redis", ctr, map[string]string{patch.AnnotationDirect: "true"})); err != nil {
				t.Fatalf("create Deployment in a restricted namespace: %v", err)
			}
			pods := waitDeploymentRolledOut(ctx, t, c, ns, "redis", podTimeout)
			pod := &pods[0]
			assertInjected(t, env, pod, wantInjection{size: "512Mi", targets: []string{"redis"}})

			var st *corev1.ContainerStatus
			for i := range pod.Status.InitContainerStatuses {
				if pod.Status.InitContainerStatuses[i].Name == patch.InitContainerName {
					st = &pod.Status.InitContainerStatuses[i]
				}
			}
			if st == nil || st.State.Terminated == nil || st.State.Terminated.ExitCode != 0 {
				t.Fatalf("init container %s did not complete successfully: %+v", patch.InitContainerName, st)
			}
			rc := cfg.Client().RESTConfig()
			logs, err := podLogs(ctx, rc, pod, patch.InitContainerName)
			if err != nil {
				t.Errorf("init container logs: %v", err)
			} else if !strings.Contains(logs, "installed and verified") {
				t.Errorf("init container log %q does not report the verified install", logs)
			}
			var ic *corev1.Container
			for i := range pod.Spec.InitContainers {
				if pod.Spec.InitContainers[i].Name == patch.InitContainerName {
					ic = &pod.Spec.InitContainers[i]
				}
			}
			if sc := ic.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
				t.Errorf("init container securityContext %+v: want readOnlyRootFilesystem and a non-zero runAsUser", sc)
			}
			if penv.ContainerRootIsRO != nil {
				ro, uid, err := penv.ContainerRootIsRO(ctx, st.ContainerID)
				switch {
				case err != nil:
					t.Errorf("inspect init container %s in the runtime: %v", st.ContainerID, err)
				case !ro || uid == 0:
					t.Errorf("runtime ran the init container with readonly root=%v as uid %d, want read-only and non-root", ro, uid)
				default:
					t.Logf("runtime: init container ran as uid %d with a read-only root filesystem", uid)
				}
			}
			out, err := execIn(ctx, rc, pod, "redis", "stat", "-c", "%u %a", cfgLibFile(env))
			if err != nil {
				t.Fatalf("stat the installed preload: %v", err)
			}
			if f := strings.Fields(out); len(f) != 2 || f[0] != fmt.Sprint(*ic.SecurityContext.RunAsUser) {
				t.Errorf("installed preload: owner and mode %q, want owned by the init container's uid %d", strings.TrimSpace(out), *ic.SecurityContext.RunAsUser)
			}
			// The app is restricted too and still tiers: heap on PMEM.
			roundTrip(ctx, t, rc, pod, 8, redisValueSize)
			if rss, maps, err := pmemRss(ctx, rc, pod, "redis", "1"); err != nil || rss == 0 {
				t.Errorf("restricted redis-server: %d KiB under /mnt/pmem (%q), err %v; want its heap there", rss, maps, err)
			}
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}

func cfgLibFile(env *Env) string { return env.Injection.LibDir + "/" + patch.PreloadLibrary }
