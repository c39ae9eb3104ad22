package e2e

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/pkg/features"
	e2etypes "sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// WorkloadFeatures are the workload rule's features (issue 13): users
// annotate the workload itself, as `kubectl annotate` does. Their names
// start with "workload annotation" so `-run 'TestControlPlane/workload_annotation'`
// selects them.
func WorkloadFeatures(env *Env) []e2etypes.Feature {
	return []e2etypes.Feature{
		WorkloadAnnotateDeployment(env),
		WorkloadAnnotateStatefulSet(env),
		WorkloadAnnotateCronJob(env),
		WorkloadAnnotateRefused(env),
		KubectlPmemEnableStatusDisable(env),
	}
}

// annotate patches metadata.annotations of a workload exactly as
// `kubectl annotate` does (a merge patch; null removes a key).
func annotate(ctx context.Context, c client.Client, obj client.Object, kv map[string]*string) error {
	var parts []string
	for k, v := range kv {
		if v == nil {
			parts = append(parts, fmt.Sprintf("%q:null", k))
		} else {
			parts = append(parts, fmt.Sprintf("%q:%q", k, *v))
		}
	}
	body := `{"metadata":{"annotations":{` + strings.Join(parts, ",") + `}}}`
	return c.Patch(ctx, obj, client.RawPatch(types.MergePatchType, []byte(body)))
}

func pmemKeys(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if strings.HasPrefix(k, patch.Prefix) {
			out[k] = v
		}
	}
	return out
}

// WorkloadAnnotateDeployment: annotate a running Deployment → the template
// gets the annotations, a new ReplicaSet rolls out injected pods with PVCs
// <pod>-pmem; remove → the template is clean and the pods are plain again.
func WorkloadAnnotateDeployment(env *Env) e2etypes.Feature {
	const name = "redis"
	return features.New("workload annotation on a running Deployment rolls pods to PMEM and back").
		WithLabel("tier", "controlplane").
		Setup(setupNamespace(nil)).
		Assess("kubectl annotate deployment/redis direct=true", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			d := deployment(ns, name, redisContainer("512Mi"), map[string]string{"prometheus.io/scrape": "true"})
			// Recreate: without a kubelet no pod becomes available, and a
			// rolling update would keep the old pod forever.
			d.Spec.Strategy = appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}
			if err := c.Create(ctx, d); err != nil {
				t.Fatalf("create Deployment: %v", err)
			}
			assertNotInjected(t, waitForPod(ctx, t, c, ns, labelsOf(name), defaultTimeout, "a plain pod", anyPod))

			if err := annotate(ctx, c, d, map[string]*string{patch.AnnotationDirect: ptr("true")}); err != nil {
				t.Fatalf("annotate: %v", err)
			}
			if err := c.Get(ctx, client.ObjectKeyFromObject(d), d); err != nil {
				t.Fatal(err)
			}
			want := map[string]string{patch.AnnotationDirect: "true", patch.AnnotationFromWorkload: "direct"}
			if got := pmemKeys(d.Spec.Template.Annotations); !maps.Equal(got, want) || d.Spec.Template.Annotations["prometheus.io/scrape"] != "true" {
				t.Fatalf("template annotations %v, want %v plus the user's own", d.Spec.Template.Annotations, want)
			}
			waitAllPods(ctx, t, c, ns, name, "every pod injected", injected)
			pods, _ := podsWith(ctx, c, ns, labelsOf(name))
			assertInjected(t, env, &pods[0], wantInjection{size: "1Gi", targets: []string{"redis"}})
			assertPVC(ctx, t, env, c, &pods[0], "1Gi")
			var rss appsv1.ReplicaSetList
			if err := c.List(ctx, &rss, client.InNamespace(ns)); err != nil || len(rss.Items) < 2 {
				t.Errorf("ReplicaSets %d (err %v): want a new one for the annotated template", len(rss.Items), err)
			}
			return ctx
		}).
		Assess("kubectl annotate deployment/redis direct- rolls back to plain pods", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
			if err := annotate(ctx, c, d, map[string]*string{patch.AnnotationDirect: nil}); err != nil {
				t.Fatalf("annotate direct-: %v", err)
			}
			if err := c.Get(ctx, client.ObjectKeyFromObject(d), d); err != nil {
				t.Fatal(err)
			}
			if got := pmemKeys(d.Spec.Template.Annotations); len(got) != 0 || d.Spec.Template.Annotations["prometheus.io/scrape"] != "true" {
				t.Fatalf("template annotations after removal %v: want no pmem keys, the user's own kept", d.Spec.Template.Annotations)
			}
			waitAllPods(ctx, t, c, ns, name, "every pod plain", func(p *corev1.Pod) bool { return !injected(p) })
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}

// waitAllPods waits until the workload has pods and every one matches.
func waitAllPods(ctx context.Context, t *testing.T, c client.Client, ns, app, what string, match func(*corev1.Pod) bool) {
	t.Helper()
	waitFor(ctx, t, defaultTimeout, what+" ("+app+")", func(ctx context.Context) (bool, error) {
		pods, err := podsWith(ctx, c, ns, labelsOf(app))
		if err != nil || len(pods) == 0 {
			return false, err
		}
		for i := range pods {
			if pods[i].DeletionTimestamp != nil || !match(&pods[i]) {
				return false, nil
			}
		}
		return true, nil
	})
}

// WorkloadAnnotateStatefulSet: the same for a StatefulSet; its pod is
// recreated from the annotated template.
func WorkloadAnnotateStatefulSet(env *Env) e2etypes.Feature {
	const name = "db"
	return features.New("workload annotation on a StatefulSet").
		WithLabel("tier", "controlplane").
		Setup(setupNamespace(nil)).
		Assess("kubectl annotate statefulset/db direct=true size=2Gi", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			sts := &appsv1.StatefulSet{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec: appsv1.StatefulSetSpec{
					Replicas:            ptr(int32(1)),
					ServiceName:         name,
					PodManagementPolicy: appsv1.ParallelPodManagement,
					Selector:            &metav1.LabelSelector{MatchLabels: labelsOf(name)},
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: labelsOf(name)},
						Spec:       corev1.PodSpec{Containers: []corev1.Container{redisContainer("512Mi")}},
					},
				},
			}
			if err := c.Create(ctx, sts); err != nil {
				t.Fatalf("create StatefulSet: %v", err)
			}
			assertNotInjected(t, waitForPod(ctx, t, c, ns, labelsOf(name), defaultTimeout, "pod db-0", anyPod))
			if err := annotate(ctx, c, sts, map[string]*string{patch.AnnotationDirect: ptr("true"), patch.AnnotationSize: ptr("2Gi")}); err != nil {
				t.Fatalf("annotate: %v", err)
			}
			if err := c.Get(ctx, client.ObjectKeyFromObject(sts), sts); err != nil {
				t.Fatal(err)
			}
			if got := sts.Spec.Template.Annotations[patch.AnnotationFromWorkload]; got != "direct,size" {
				t.Fatalf("template annotations %v: want from-workload direct,size", sts.Spec.Template.Annotations)
			}
			// Without a kubelet the pod never becomes ready, which a
			// rolling update may wait for: delete it, as a user would
			// under OnDelete; the controller recreates it from the new
			// template.
			recreateUntil(ctx, t, c, ns, name, injected)
			pods, _ := podsWith(ctx, c, ns, labelsOf(name))
			assertInjected(t, env, &pods[0], wantInjection{size: "2Gi", targets: []string{"redis"}})
			assertPVC(ctx, t, env, c, &pods[0], "2Gi")

			if err := annotate(ctx, c, sts, map[string]*string{patch.AnnotationDirect: nil, patch.AnnotationSize: nil}); err != nil {
				t.Fatalf("annotate direct- size-: %v", err)
			}
			recreateUntil(ctx, t, c, ns, name, func(p *corev1.Pod) bool { return !injected(p) })
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}

// recreateUntil deletes the workload's pods that do not match until a
// recreated one does.
func recreateUntil(ctx context.Context, t *testing.T, c client.Client, ns, app string, match func(*corev1.Pod) bool) {
	t.Helper()
	waitFor(ctx, t, defaultTimeout, "a recreated pod of "+app, func(ctx context.Context) (bool, error) {
		pods, err := podsWith(ctx, c, ns, labelsOf(app))
		if err != nil {
			return false, err
		}
		for i := range pods {
			if match(&pods[i]) && pods[i].DeletionTimestamp == nil {
				return true, nil
			}
			if pods[i].DeletionTimestamp == nil {
				_ = c.Delete(ctx, &pods[i], client.GracePeriodSeconds(0))
			}
		}
		return false, nil
	})
}

// WorkloadAnnotateCronJob: annotating a CronJob reaches
// spec.jobTemplate.spec.template, and the next run's pod is injected.
func WorkloadAnnotateCronJob(env *Env) e2etypes.Feature {
	const name = "snapshot"
	return features.New("workload annotation on a CronJob").
		WithLabel("tier", "controlplane").
		Setup(setupNamespace(nil)).
		Assess("kubectl annotate cronjob/snapshot direct=true", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			cj := &batchv1.CronJob{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec: batchv1.CronJobSpec{
					Schedule:          "* * * * *",
					ConcurrencyPolicy: batchv1.ForbidConcurrent,
					JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{
						Template: corev1.PodTemplateSpec{
							ObjectMeta: metav1.ObjectMeta{Labels: labelsOf(name)},
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
			if err := annotate(ctx, c, cj, map[string]*string{patch.AnnotationDirect: ptr("true")}); err != nil {
				t.Fatalf("annotate: %v", err)
			}
			if err := c.Get(ctx, client.ObjectKeyFromObject(cj), cj); err != nil {
				t.Fatal(err)
			}
			tmpl := cj.Spec.JobTemplate.Spec.Template.Annotations
			if tmpl[patch.AnnotationDirect] != "true" || tmpl[patch.AnnotationFromWorkload] != "direct" {
				t.Fatalf("jobTemplate.spec.template annotations %v: want direct copied", tmpl)
			}
			pod := waitForPod(ctx, t, c, ns, labelsOf(name), cronTimeout, "a pod of CronJob snapshot", anyPod)
			assertInjected(t, env, pod, wantInjection{size: "512Mi", targets: []string{"redis"}})
			assertPVC(ctx, t, env, c, pod, "512Mi")

			if err := annotate(ctx, c, cj, map[string]*string{patch.AnnotationDirect: nil}); err != nil {
				t.Fatalf("annotate direct-: %v", err)
			}
			if err := c.Get(ctx, client.ObjectKeyFromObject(cj), cj); err != nil {
				t.Fatal(err)
			}
			if got := pmemKeys(cj.Spec.JobTemplate.Spec.Template.Annotations); len(got) != 0 {
				t.Errorf("jobTemplate annotations after removal %v: want none", got)
			}
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}

// WorkloadAnnotateRefused: a bad value makes `kubectl annotate` itself
// fail with the pod rule's message, and the workload stays as it was.
func WorkloadAnnotateRefused(env *Env) e2etypes.Feature {
	return features.New("workload annotation with a bad value is refused").
		WithLabel("tier", "controlplane").
		Setup(setupNamespace(nil)).
		Assess("kubectl annotate deployment/redis size=lots is refused", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			d := deployment(ns, "redis", redisContainer("512Mi"), nil)
			if err := c.Create(ctx, d); err != nil {
				t.Fatalf("create Deployment: %v", err)
			}
			for _, tc := range []struct {
				kv   map[string]*string
				want string
			}{
				{map[string]*string{patch.AnnotationDirect: ptr("true"), patch.AnnotationSize: ptr("lots")},
					`annotation pmem.alibabacloud.com/size="lots" is invalid: must be a quantity of bytes such as 60Gi or 512Mi`},
				{map[string]*string{patch.AnnotationDirect: ptr("yes")},
					`annotation pmem.alibabacloud.com/direct="yes" is invalid: must be "true" or "false"`},
			} {
				err := annotate(ctx, c, d, tc.kv)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("annotate %v: err = %v, want a refusal containing %q", tc.kv, err, tc.want)
				}
			}
			if err := c.Get(ctx, client.ObjectKeyFromObject(d), d); err != nil {
				t.Fatal(err)
			}
			if len(pmemKeys(d.Annotations)) != 0 || len(pmemKeys(d.Spec.Template.Annotations)) != 0 {
				t.Errorf("refused annotate changed the Deployment: %v / %v", d.Annotations, d.Spec.Template.Annotations)
			}
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}
