package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/pkg/features"
	e2etypes "sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// Features returns every feature of the e2e suite, bound to env.
func Features(env *Env) []e2etypes.Feature {
	return append([]e2etypes.Feature{
		AnnotateRunningDeployment(env),
		UnannotatedUnchanged(env),
		InvalidAnnotationsRefused(env),
		DryRunCreatesNothing(env),
		ReinvocationInjectsOnce(env),
		PodSecurityRestricted(env),
		StatefulSetAndCronJob(env),
	}, WorkloadFeatures(env)...)
}

func setupNamespace(labels map[string]string) features.Func {
	return func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
		return createNamespace(ctx, t, cfg, labels)
	}
}

func labelsOf(app string) map[string]string { return map[string]string{"app": app} }

func deployment(ns, name string, c corev1.Container, annotations map[string]string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: labelsOf(name)},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labelsOf(name), Annotations: annotations},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{c}},
			},
		},
	}
}

func barePod(ns, name string, c corev1.Container, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labelsOf(name), Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{c}},
	}
}

// AnnotateRunningDeployment: annotating the pod template of an existing
// Deployment (what `kubectl patch` does) rolls out injected pods, the
// controller-manager generates PVC <pod>-pmem, and deleting the pod deletes
// the PVC through its ownerReference.
func AnnotateRunningDeployment(env *Env) e2etypes.Feature {
	type podKey struct{}
	return features.New("annotating a running Deployment rolls out PMEM pods").
		WithLabel("tier", "controlplane").
		Setup(setupNamespace(nil)).
		Assess("the unannotated Deployment runs plain pods", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			if err := c.Create(ctx, deployment(ns, "redis", redisContainer("512Mi"), nil)); err != nil {
				t.Fatalf("create Deployment: %v", err)
			}
			pod := waitForPod(ctx, t, c, ns, labelsOf("redis"), defaultTimeout, "a pod of Deployment redis", anyPod)
			assertNotInjected(t, pod)
			return ctx
		}).
		Assess("patching the template annotation rolls out injected pods", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			body := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{%q:"true"}}}}}`, patch.AnnotationDirect)
			d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "redis"}}
			if err := c.Patch(ctx, d, client.RawPatch(types.StrategicMergePatchType, []byte(body))); err != nil {
				t.Fatalf("patch Deployment: %v", err)
			}
			pod := waitForPod(ctx, t, c, ns, labelsOf("redis"), defaultTimeout, "an injected pod of Deployment redis", injected)
			// 2 x the 512Mi memory limit (the default size factor).
			assertInjected(t, env, pod, wantInjection{size: "1Gi", targets: []string{"redis"}})
			assertPVC(ctx, t, env, c, pod, "1Gi")
			return context.WithValue(ctx, podKey{}, pod)
		}).
		Assess("deleting the pod deletes its PVC", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c := kube(t, cfg)
			pod, ok := ctx.Value(podKey{}).(*corev1.Pod)
			if !ok {
				t.Skip("no injected pod from the previous step")
			}
			if err := c.Delete(ctx, pod); err != nil {
				t.Fatalf("delete pod: %v", err)
			}
			key := client.ObjectKey{Namespace: pod.Namespace, Name: pod.Name + "-" + patch.PMEMVolumeName}
			waitFor(ctx, t, defaultTimeout, "PVC "+key.String()+" to be deleted with its pod", func(ctx context.Context) (bool, error) {
				err := c.Get(ctx, key, &corev1.PersistentVolumeClaim{})
				if apierrors.IsNotFound(err) {
					return true, nil
				}
				return false, err
			})
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}

// UnannotatedUnchanged: pods without the opt-in, and with direct: "false",
// come out exactly as they do where the webhook is never called (a namespace
// labelled injection=disabled, which the namespaceSelector excludes).
func UnannotatedUnchanged(env *Env) e2etypes.Feature {
	type otherNS struct{}
	return features.New("unannotated pods are left alone").
		WithLabel("tier", "controlplane").
		Setup(setupNamespace(nil)).
		Setup(func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			inner := createNamespace(ctx, t, cfg, map[string]string{patch.LabelInjection: "disabled"})
			return context.WithValue(ctx, otherNS{}, namespace(inner, t))
		}).
		Assess("Deployment pods and direct=false pods equal those without the webhook", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c := kube(t, cfg)
			withWebhook, without := namespace(ctx, t), ctx.Value(otherNS{}).(string)
			got := map[string]*corev1.Pod{}
			for _, ns := range []string{withWebhook, without} {
				if err := c.Create(ctx, deployment(ns, "plain", redisContainer("512Mi"), nil)); err != nil {
					t.Fatalf("create Deployment in %s: %v", ns, err)
				}
				off := barePod(ns, "opted-out", redisContainer("512Mi"), map[string]string{patch.AnnotationDirect: "false"})
				if err := c.Create(ctx, off); err != nil {
					t.Fatalf("create pod with %s=false in %s: %v", patch.AnnotationDirect, ns, err)
				}
				got[ns+"/plain"] = waitForPod(ctx, t, c, ns, labelsOf("plain"), defaultTimeout, "a pod of Deployment plain in "+ns, anyPod)
				got[ns+"/opted-out"] = off
			}
			for _, name := range []string{"plain", "opted-out"} {
				a, b := got[withWebhook+"/"+name], got[without+"/"+name]
				assertNotInjected(t, a)
				if ja, jb := normalizedPod(t, a), normalizedPod(t, b); ja != jb {
					t.Errorf("pod %s differs with the webhook registered:\n with:    %s\n without: %s", name, ja, jb)
				}
			}
			var pvcs corev1.PersistentVolumeClaimList
			if err := c.List(ctx, &pvcs, client.InNamespace(withWebhook)); err != nil {
				t.Fatal(err)
			}
			if len(pvcs.Items) != 0 {
				t.Errorf("%d PVCs in %s, want none", len(pvcs.Items), withWebhook)
			}
			return ctx
		}).
		Teardown(deleteNamespace).
		Teardown(func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			if ns, ok := ctx.Value(otherNS{}).(string); ok {
				_ = kube(t, cfg).Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
			}
			return ctx
		}).
		Feature()
}

// Generated names differ between two otherwise equal pods.
var generatedNames = regexp.MustCompile(`kube-api-access-[a-z0-9]{5}`)

// normalizedPod is the part of a pod the webhook could change (labels,
// annotations, spec) as JSON, with generated names replaced.
func normalizedPod(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	spec := *p.Spec.DeepCopy()
	// Set by the scheduler, not by admission, whenever a provider runs one (kubelet, kind).
	spec.NodeName = ""
	b, err := json.Marshal(struct {
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
		Spec        corev1.PodSpec    `json:"spec"`
	}{p.Labels, p.Annotations, spec})
	if err != nil {
		t.Fatal(err)
	}
	return generatedNames.ReplaceAllString(string(b), "GENERATED")
}

// InvalidAnnotationsRefused: every malformed annotation value is refused by
// the apiserver with the webhook's message naming annotation and value; for
// a Deployment the ReplicaSet's FailedCreate event carries it.
func InvalidAnnotationsRefused(env *Env) e2etypes.Feature {
	cases := []struct {
		name        string
		annotations map[string]string
		key, value  string // what the message must name
	}{
		{"direct not a bool", map[string]string{patch.AnnotationDirect: "yes"}, patch.AnnotationDirect, "yes"},
		{"size not a quantity", map[string]string{patch.AnnotationSize: "lots"}, patch.AnnotationSize, "lots"},
		{"size too small", map[string]string{patch.AnnotationSize: "1Mi"}, patch.AnnotationSize, "1Mi"},
		{"storage class not allowed", map[string]string{patch.AnnotationStorageClass: "gold"}, patch.AnnotationStorageClass, "gold"},
		{"unknown mode", map[string]string{patch.AnnotationMode: "turbo"}, patch.AnnotationMode, "turbo"},
		{"ratio without colon", map[string]string{patch.AnnotationDRAMRatio: "4"}, patch.AnnotationDRAMRatio, "4"},
		{"unknown container", map[string]string{patch.AnnotationContainers: "sidecar"}, patch.AnnotationContainers, "sidecar"},
		{"claim not a name", map[string]string{patch.AnnotationClaim: "Bad_Name"}, patch.AnnotationClaim, "Bad_Name"},
		{"process with a path", map[string]string{patch.AnnotationProcesses: "/usr/bin/redis-server"}, patch.AnnotationProcesses, "/usr/bin/redis-server"},
		{"kmem with a size", map[string]string{patch.AnnotationMode: "kmem", patch.AnnotationSize: "1Gi"}, patch.AnnotationSize, "1Gi"},
	}
	b := features.New("invalid annotation values are refused with the webhook's message").
		WithLabel("tier", "controlplane").
		Setup(setupNamespace(nil))
	for i, tc := range cases {
		b = b.Assess("bare pod: "+tc.name, func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			ann := map[string]string{patch.AnnotationDirect: "true"}
			for k, v := range tc.annotations {
				ann[k] = v
			}
			err := c.Create(ctx, barePod(ns, fmt.Sprintf("invalid-%d", i), redisContainer("512Mi"), ann))
			if err == nil {
				t.Fatalf("pod with %v was admitted, want it refused", tc.annotations)
			}
			for _, want := range []string{webhookDenied, tc.key, tc.value} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			return ctx
		})
	}
	return b.Assess("Deployment: the ReplicaSet reports the refusal", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
		c, ns := kube(t, cfg), namespace(ctx, t)
		ann := map[string]string{patch.AnnotationDirect: "true", patch.AnnotationSize: "lots"}
		if err := c.Create(ctx, deployment(ns, "bad-size", redisContainer("512Mi"), ann)); err != nil {
			t.Fatalf("create Deployment (the Deployment itself must be accepted): %v", err)
		}
		var msg string
		waitFor(ctx, t, defaultTimeout, "a FailedCreate event on the ReplicaSet of Deployment bad-size", func(ctx context.Context) (bool, error) {
			var events corev1.EventList
			if err := c.List(ctx, &events, client.InNamespace(ns)); err != nil {
				return false, err
			}
			for _, e := range events.Items {
				if e.InvolvedObject.Kind == "ReplicaSet" && strings.HasPrefix(e.InvolvedObject.Name, "bad-size-") &&
					e.Reason == "FailedCreate" && strings.Contains(e.Message, webhookDenied) {
					msg = e.Message
					return true, nil
				}
			}
			return false, nil
		})
		if !strings.Contains(msg, patch.AnnotationSize) || !strings.Contains(msg, "lots") {
			t.Errorf("event message %q does not name %s and its value", msg, patch.AnnotationSize)
		}
		pods, err := podsWith(ctx, c, ns, labelsOf("bad-size"))
		if err != nil {
			t.Fatal(err)
		}
		if len(pods) != 0 {
			t.Errorf("%d pods of Deployment bad-size exist, want none", len(pods))
		}
		return ctx
	}).
		Teardown(deleteNamespace).
		Feature()
}

// DryRunCreatesNothing: a server-side dry-run create returns the mutated pod
// and leaves neither pod nor PVC behind (the webhook has no side effects).
func DryRunCreatesNothing(env *Env) e2etypes.Feature {
	return features.New("server-side dry-run returns the mutated pod and creates nothing").
		WithLabel("tier", "controlplane").
		Setup(setupNamespace(nil)).
		Assess("dry-run create", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			pod := barePod(ns, "dry", redisContainer("1Gi"), map[string]string{patch.AnnotationDirect: "true"})
			if err := c.Create(ctx, pod, client.DryRunAll); err != nil {
				t.Fatalf("dry-run create: %v", err)
			}
			assertInjected(t, env, pod, wantInjection{size: "2Gi", targets: []string{"redis"}})
			err := c.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{})
			if !apierrors.IsNotFound(err) {
				t.Errorf("get pod after dry-run: %v, want NotFound", err)
			}
			var pvcs corev1.PersistentVolumeClaimList
			if err := c.List(ctx, &pvcs, client.InNamespace(ns)); err != nil {
				t.Fatal(err)
			}
			if len(pvcs.Items) != 0 {
				t.Errorf("%d PVCs after a dry-run, want none", len(pvcs.Items))
			}
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}

// PodSecurityRestricted: in a namespace enforcing the "restricted" Pod
// Security Standard, the apiserver's PodSecurity admission (which runs after
// the mutating webhooks) admits an injected pod, so the injected init
// container complies; a non-compliant pod is refused there, which shows the
// standard is really enforced.
func PodSecurityRestricted(env *Env) e2etypes.Feature {
	return features.New("injected pods pass PodSecurity restricted").
		WithLabel("tier", "controlplane").
		Setup(setupNamespace(map[string]string{
			"pod-security.kubernetes.io/enforce":         "restricted",
			"pod-security.kubernetes.io/enforce-version": "latest",
		})).
		Assess("a non-compliant pod is refused (the standard is enforced)", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			err := c.Create(ctx, barePod(ns, "lax", redisContainer("512Mi"), nil))
			if err == nil || !strings.Contains(err.Error(), "violates PodSecurity") {
				t.Fatalf("create non-compliant pod: %v, want a PodSecurity violation", err)
			}
			return ctx
		}).
		Assess("an annotated compliant pod is admitted after injection", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			pod := barePod(ns, "strict", restrictedContainer("512Mi"), map[string]string{patch.AnnotationDirect: "true"})
			if err := c.Create(ctx, pod); err != nil {
				t.Fatalf("create annotated restricted pod: %v", err)
			}
			assertInjected(t, env, pod, wantInjection{size: "1Gi", targets: []string{"redis"}})
			return ctx
		}).
		Assess("a Deployment's injected pods are admitted too", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			d := deployment(ns, "strict-deploy", restrictedContainer("512Mi"), map[string]string{patch.AnnotationDirect: "true"})
			if err := c.Create(ctx, d); err != nil {
				t.Fatalf("create Deployment: %v", err)
			}
			pod := waitForPod(ctx, t, c, ns, labelsOf("strict-deploy"), defaultTimeout, "an injected pod of Deployment strict-deploy", injected)
			assertInjected(t, env, pod, wantInjection{size: "1Gi", targets: []string{"redis"}})
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}

// StatefulSetAndCronJob: pods of a StatefulSet (which has PVCs of its own
// from volumeClaimTemplates) and of a CronJob are injected too.
func StatefulSetAndCronJob(env *Env) e2etypes.Feature {
	ann := map[string]string{patch.AnnotationDirect: "true"}
	return features.New("StatefulSet and CronJob pods are injected").
		WithLabel("tier", "controlplane").
		Setup(setupNamespace(nil)).
		Assess("StatefulSet with volumeClaimTemplates", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			ctr := redisContainer("512Mi")
			ctr.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
			sts := &appsv1.StatefulSet{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db"},
				Spec: appsv1.StatefulSetSpec{
					Replicas:    ptr(int32(1)),
					ServiceName: "db",
					Selector:    &metav1.LabelSelector{MatchLabels: labelsOf("db")},
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: labelsOf("db"), Annotations: ann},
						Spec:       corev1.PodSpec{Containers: []corev1.Container{ctr}},
					},
					VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
						ObjectMeta: metav1.ObjectMeta{Name: "data"},
						Spec: corev1.PersistentVolumeClaimSpec{
							AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
							Resources: corev1.VolumeResourceRequirements{
								Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
							},
						},
					}},
				},
			}
			if err := c.Create(ctx, sts); err != nil {
				t.Fatalf("create StatefulSet: %v", err)
			}
			pod := waitForPod(ctx, t, c, ns, labelsOf("db"), defaultTimeout, "pod db-0", anyPod)
			assertInjected(t, env, pod, wantInjection{size: "1Gi", targets: []string{"redis"}})
			assertPVC(ctx, t, env, c, pod, "1Gi")
			// The StatefulSet's own claim is untouched and still mounted.
			if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "data-db-0"}, &corev1.PersistentVolumeClaim{}); err != nil {
				t.Errorf("StatefulSet PVC data-db-0: %v", err)
			}
			if m := container(pod, "redis").VolumeMounts; len(m) == 0 || m[0].Name != "data" || m[0].MountPath != "/data" {
				t.Errorf("redis mounts %+v: want the StatefulSet's data mount kept first", m)
			}
			return ctx
		}).
		Assess("CronJob", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			cj := &batchv1.CronJob{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "snapshot"},
				Spec: batchv1.CronJobSpec{
					// The controller fires on the minute: at most ~60 s here.
					Schedule:          "* * * * *",
					ConcurrencyPolicy: batchv1.ForbidConcurrent,
					JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{
						Template: corev1.PodTemplateSpec{
							ObjectMeta: metav1.ObjectMeta{Labels: labelsOf("snapshot"), Annotations: ann},
							Spec: corev1.PodSpec{
								RestartPolicy: corev1.RestartPolicyNever,
								Containers:    []corev1.Container{redisContainer("256Mi")},
							},
						},
					}},
				},
			}
			if err := c.Create(ctx, cj); err != nil {
				t.Fatalf("create CronJob: %v", err)
			}
			pod := waitForPod(ctx, t, c, ns, labelsOf("snapshot"), cronTimeout, "a pod of CronJob snapshot", anyPod)
			assertInjected(t, env, pod, wantInjection{size: "512Mi", targets: []string{"redis"}})
			assertPVC(ctx, t, env, c, pod, "512Mi")
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}
