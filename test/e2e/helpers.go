package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/pkg/envconf"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// Bounds on every wait. The controller-manager reacts within a second here;
// the margins are for loaded CI machines. CronJobs fire on the minute.
const (
	pollInterval   = 200 * time.Millisecond
	defaultTimeout = 60 * time.Second
	cronTimeout    = 100 * time.Second
)

// webhookDenied is how the apiserver prefixes a denial by our webhook.
var webhookDenied = `admission webhook "pod.pmem.alibabacloud.com" denied the request`

type nsKey struct{}

// kube returns a controller-runtime client for the cluster under test.
func kube(t *testing.T, cfg *envconf.Config) client.Client {
	t.Helper()
	c, err := client.New(cfg.Client().RESTConfig(), client.Options{})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return c
}

// createNamespace makes a fresh namespace (with labels) and waits for its
// default service account, without which the ServiceAccount admission plugin
// refuses every pod. The name is stored in the returned context.
func createNamespace(ctx context.Context, t *testing.T, cfg *envconf.Config, labels map[string]string) context.Context {
	t.Helper()
	c := kube(t, cfg)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "pmem-e2e-", Labels: labels}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	waitFor(ctx, t, defaultTimeout, "default service account in "+ns.Name, func(ctx context.Context) (bool, error) {
		err := c.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: "default"}, &corev1.ServiceAccount{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
	return context.WithValue(ctx, nsKey{}, ns.Name)
}

// namespace returns the namespace stored by createNamespace.
func namespace(ctx context.Context, t *testing.T) string {
	t.Helper()
	ns, ok := ctx.Value(nsKey{}).(string)
	if !ok {
		t.Fatal("no namespace in context: the feature's Setup must call createNamespace")
	}
	return ns
}

// deleteNamespace removes the feature's namespace; the namespace controller
// deletes what is in it. It does not wait: nothing reuses the name.
func deleteNamespace(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
	t.Helper()
	ns := namespace(ctx, t)
	err := kube(t, cfg).Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete namespace %s: %v", ns, err)
	}
	return ctx
}

// waitFor polls cond until it is true, failing the test after timeout with
// what was awaited and the last error.
func waitFor(ctx context.Context, t *testing.T, timeout time.Duration, what string, cond func(context.Context) (bool, error)) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(ctx, pollInterval, timeout, true, func(ctx context.Context) (bool, error) {
		ok, err := cond(ctx)
		if err != nil {
			last = err
			return false, nil
		}
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v (last error: %v)", what, err, last)
	}
}

// podsWith lists the pods in ns with the given labels.
func podsWith(ctx context.Context, c client.Client, ns string, labels map[string]string) ([]corev1.Pod, error) {
	var list corev1.PodList
	if err := c.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels(labels)); err != nil {
		return nil, err
	}
	return list.Items, nil
}

// waitForPod waits for a pod with the labels for which match returns true.
func waitForPod(ctx context.Context, t *testing.T, c client.Client, ns string, labels map[string]string, timeout time.Duration, what string, match func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var found *corev1.Pod
	waitFor(ctx, t, timeout, what, func(ctx context.Context) (bool, error) {
		pods, err := podsWith(ctx, c, ns, labels)
		if err != nil {
			return false, err
		}
		for i := range pods {
			if match(&pods[i]) {
				found = &pods[i]
				return true, nil
			}
		}
		return false, nil
	})
	return found
}

func injected(p *corev1.Pod) bool {
	return p.Annotations[patch.AnnotationStatus] == patch.StatusInjected
}

func anyPod(*corev1.Pod) bool { return true }

// redisContainer is a plain Redis container; images are never pulled here
// (there is no kubelet in the local provider), the spec is what matters.
func redisContainer(memory string) corev1.Container {
	return corev1.Container{
		Name:    "redis",
		Image:   "redis:7.2",
		Command: []string{"redis-server", "--save", "", "--appendonly", "no"},
		Resources: corev1.ResourceRequirements{
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(memory)},
		},
	}
}

// restrictedContainer complies with the "restricted" Pod Security Standard.
func restrictedContainer(memory string) corev1.Container {
	c := redisContainer(memory)
	c.SecurityContext = &corev1.SecurityContext{
		RunAsNonRoot:             ptr(true),
		RunAsUser:                ptr(int64(999)),
		AllowPrivilegeEscalation: ptr(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
	return c
}

func ptr[T any](v T) *T { return &v }

// wantInjection is what assertInjected checks an injected pod against.
type wantInjection struct {
	size    string   // PVC request, e.g. "1Gi"
	targets []string // containers that must carry mounts and env
}

// assertInjected checks that pod carries exactly one copy of everything the
// webhook adds in fsdax mode with a generated PVC, as the contract describes
// it. Exactly one: a double injection (reinvocation) must fail here.
func assertInjected(t *testing.T, env *Env, pod *corev1.Pod, want wantInjection) {
	t.Helper()
	cfg := env.Injection
	if got := pod.Annotations[patch.AnnotationStatus]; got != patch.StatusInjected {
		t.Errorf("pod %s: annotation %s = %q, want %q", pod.Name, patch.AnnotationStatus, got, patch.StatusInjected)
	}

	vols := map[string][]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = append(vols[v.Name], v)
	}
	if n := len(vols[patch.PMEMVolumeName]); n != 1 {
		t.Errorf("pod %s: %d volumes named %q, want 1", pod.Name, n, patch.PMEMVolumeName)
	} else if eph := vols[patch.PMEMVolumeName][0].Ephemeral; eph == nil || eph.VolumeClaimTemplate == nil {
		t.Errorf("pod %s: volume %q is not a generic ephemeral volume: %+v", pod.Name, patch.PMEMVolumeName, vols[patch.PMEMVolumeName][0].VolumeSource)
	} else {
		spec := eph.VolumeClaimTemplate.Spec
		if sc := spec.StorageClassName; sc == nil || *sc != cfg.DefaultStorageClass {
			t.Errorf("pod %s: PVC template storageClassName = %v, want %q", pod.Name, deref(sc), cfg.DefaultStorageClass)
		}
		if got := spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(resource.MustParse(want.size)) != 0 {
			t.Errorf("pod %s: PVC template requests.storage = %s, want %s", pod.Name, got.String(), want.size)
		}
		if len(spec.AccessModes) != 1 || spec.AccessModes[0] != corev1.ReadWriteOnce {
			t.Errorf("pod %s: PVC template accessModes = %v, want [ReadWriteOnce]", pod.Name, spec.AccessModes)
		}
	}
	if n := len(vols[patch.LibVolumeName]); n != 1 || vols[patch.LibVolumeName][0].EmptyDir == nil {
		t.Errorf("pod %s: want exactly one emptyDir volume %q, have %d", pod.Name, patch.LibVolumeName, n)
	}

	var inits []corev1.Container
	for _, c := range pod.Spec.InitContainers {
		if c.Name == patch.InitContainerName {
			inits = append(inits, c)
		}
	}
	if len(inits) != 1 {
		t.Errorf("pod %s: %d init containers named %q, want 1", pod.Name, len(inits), patch.InitContainerName)
	} else {
		ic := inits[0]
		if ic.Image != cfg.MemkindImage {
			t.Errorf("pod %s: init container image = %q, want %q", pod.Name, ic.Image, cfg.MemkindImage)
		}
		if len(ic.Command) != 1 || ic.Command[0] != patch.InitProgram {
			t.Errorf("pod %s: init container command = %q, want [%s]", pod.Name, ic.Command, patch.InitProgram)
		}
		if sc := ic.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("pod %s: init container securityContext is not locked down: %+v", pod.Name, sc)
		}
	}

	preload := cfg.LibDir + "/" + patch.PreloadLibrary
	for _, name := range want.targets {
		c := container(pod, name)
		if c == nil {
			t.Errorf("pod %s: no container %q", pod.Name, name)
			continue
		}
		mounts := map[string][]corev1.VolumeMount{}
		for _, m := range c.VolumeMounts {
			mounts[m.Name] = append(mounts[m.Name], m)
		}
		if m := mounts[patch.PMEMVolumeName]; len(m) != 1 || m[0].MountPath != patch.PMEMMountPath || m[0].ReadOnly {
			t.Errorf("pod %s container %s: want one rw mount of %q at %s, have %+v", pod.Name, name, patch.PMEMVolumeName, patch.PMEMMountPath, m)
		}
		if m := mounts[patch.LibVolumeName]; len(m) != 1 || m[0].MountPath != cfg.LibDir || !m[0].ReadOnly {
			t.Errorf("pod %s container %s: want one read-only mount of %q at %s, have %+v", pod.Name, name, patch.LibVolumeName, cfg.LibDir, m)
		}
		envs := map[string][]string{}
		for _, e := range c.Env {
			envs[e.Name] = append(envs[e.Name], e.Value)
		}
		if v := envs[patch.EnvLDPreload]; len(v) != 1 || strings.Count(v[0], preload) != 1 {
			t.Errorf("pod %s container %s: %s = %q, want one entry containing %s exactly once", pod.Name, name, patch.EnvLDPreload, v, preload)
		}
		if v := envs[patch.EnvMemTiers]; len(v) != 1 {
			t.Errorf("pod %s container %s: %d %s variables, want 1", pod.Name, name, len(v), patch.EnvMemTiers)
		} else if err := checkMemTiers(v[0], resource.MustParse(want.size)); err != nil {
			t.Errorf("pod %s container %s: %v", pod.Name, name, err)
		}
		if v := envs[patch.EnvTargetProcesses]; len(v) != 1 || v[0] != strings.Join(cfg.TargetProcesses, ",") {
			t.Errorf("pod %s container %s: %s = %q, want %q", pod.Name, name, patch.EnvTargetProcesses, v, strings.Join(cfg.TargetProcesses, ","))
		}
		if v := envs[patch.EnvContainerName]; len(v) != 1 || v[0] != name {
			t.Errorf("pod %s container %s: %s = %q, want the container's name", pod.Name, name, patch.EnvContainerName, v)
		}
	}
}

// checkMemTiers checks the fsdax MEMKIND_MEM_TIERS value: a PMEM tier on the
// mount with a byte limit that fits in the PVC.
func checkMemTiers(v string, size resource.Quantity) error {
	prefix := "KIND:FS_DAX,PATH:" + patch.PMEMMountPath + ",PMEM_SIZE_LIMIT:"
	suffix := ",RATIO:1;POLICY:STATIC_RATIO"
	if !strings.HasPrefix(v, prefix) || !strings.HasSuffix(v, suffix) {
		return fmt.Errorf("%s = %q, want %s<bytes>%s", patch.EnvMemTiers, v, prefix, suffix)
	}
	limit, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(v, prefix), suffix), 10, 64)
	if err != nil || limit <= 0 || limit > size.Value() {
		return fmt.Errorf("%s = %q: PMEM_SIZE_LIMIT must be a byte count in (0, %d]", patch.EnvMemTiers, v, size.Value())
	}
	return nil
}

// assertNotInjected checks that nothing of the injection is on the pod.
func assertNotInjected(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	if v, ok := pod.Annotations[patch.AnnotationStatus]; ok {
		t.Errorf("pod %s: has %s=%q, want no injection", pod.Name, patch.AnnotationStatus, v)
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == patch.PMEMVolumeName || v.Name == patch.LibVolumeName {
			t.Errorf("pod %s: has volume %q, want no injection", pod.Name, v.Name)
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == patch.InitContainerName {
			t.Errorf("pod %s: has init container %q, want no injection", pod.Name, c.Name)
		}
	}
}

func container(pod *corev1.Pod, name string) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			return &pod.Spec.Containers[i]
		}
	}
	return nil
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// assertPVC checks the PVC the ephemeral-volume controller generated for pod:
// name <pod>-pmem, storage class, size, owned by the pod.
func assertPVC(ctx context.Context, t *testing.T, env *Env, c client.Client, pod *corev1.Pod, size string) *corev1.PersistentVolumeClaim {
	t.Helper()
	pvc := &corev1.PersistentVolumeClaim{}
	key := client.ObjectKey{Namespace: pod.Namespace, Name: pod.Name + "-" + patch.PMEMVolumeName}
	waitFor(ctx, t, defaultTimeout, "PVC "+key.String(), func(ctx context.Context) (bool, error) {
		err := c.Get(ctx, key, pvc)
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
	if sc := pvc.Spec.StorageClassName; sc == nil || *sc != env.Injection.DefaultStorageClass {
		t.Errorf("PVC %s: storageClassName = %v, want %q", key, deref(sc), env.Injection.DefaultStorageClass)
	}
	if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(resource.MustParse(size)) != 0 {
		t.Errorf("PVC %s: requests.storage = %s, want %s", key, got.String(), size)
	}
	if got := pvc.Labels[patch.LabelManagedBy]; got != patch.ManagedByValue {
		t.Errorf("PVC %s: label %s = %q, want %q", key, patch.LabelManagedBy, got, patch.ManagedByValue)
	}
	owned := false
	for _, ref := range pvc.OwnerReferences {
		if ref.Kind == "Pod" && ref.UID == pod.UID && ref.Controller != nil && *ref.Controller {
			owned = true
		}
	}
	if !owned {
		t.Errorf("PVC %s: ownerReferences %+v, want the pod %s (uid %s) as controller", key, pvc.OwnerReferences, pod.Name, pod.UID)
	}
	return pvc
}
