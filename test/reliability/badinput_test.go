package reliability

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/server"
	"github.com/pmem-webhook/pmem-webhook/test/cluster"
)

// webhookDenied is how the apiserver reports a denial by our webhook.
const webhookDenied = `admission webhook "pod.pmem.alibabacloud.com" denied the request`

type badInput struct {
	class       string            // the kind of bad value
	annotations map[string]string // on top of direct: "true"
	// key and value the message must name, as `key="value"`; more for
	// cases with several bad annotations (all are reported at once).
	want [][2]string
	// needsClaimCheck marks cases only the webhook's PVC existence check
	// (server.Options.Claims) can refuse.
	needsClaimCheck bool
}

func one(key, value string) [][2]string { return [][2]string{{key, value}} }

func bad(class, key, value string) badInput {
	return badInput{class: class, annotations: map[string]string{key: value}, want: one(key, value)}
}

// badInputs: every annotation with every class of bad value that applies to
// it. Values a class cannot produce for an annotation (a "negative" process
// name is a valid name) are left out rather than faked.
func badInputs() []badInput {
	huge := func(unit string) string { return strings.Repeat("9", 40) + unit }
	long := strings.Repeat("a", 300)
	cases := []badInput{
		// direct: the opt-in itself. Anything but "true"/"false" is refused,
		// so a typo never silently leaves a pod on DRAM.
		{class: "empty", annotations: map[string]string{patch.AnnotationDirect: ""}, want: one(patch.AnnotationDirect, "")},
		{class: "negative", annotations: map[string]string{patch.AnnotationDirect: "-1"}, want: one(patch.AnnotationDirect, "-1")},
		{class: "non-boolean", annotations: map[string]string{patch.AnnotationDirect: "yes"}, want: one(patch.AnnotationDirect, "yes")},
		{class: "wrong case", annotations: map[string]string{patch.AnnotationDirect: "True"}, want: one(patch.AnnotationDirect, "True")},
		{class: "huge", annotations: map[string]string{patch.AnnotationDirect: long}, want: one(patch.AnnotationDirect, long)},

		bad("empty", patch.AnnotationSize, ""),
		bad("negative", patch.AnnotationSize, "-1Gi"),
		bad("zero", patch.AnnotationSize, "0"),
		bad("below the minimum", patch.AnnotationSize, "1Mi"),
		bad("above the maximum", patch.AnnotationSize, "65Ti"),
		bad("huge", patch.AnnotationSize, huge("Gi")),
		bad("exponent overflow", patch.AnnotationSize, "1e100"),
		bad("non-numeric", patch.AnnotationSize, "lots"),
		bad("fraction of a byte", patch.AnnotationSize, "1073741824.5"),
		bad("unit typo", patch.AnnotationSize, "1GB"),

		bad("empty", patch.AnnotationStorageClass, ""),
		bad("outside the allowlist", patch.AnnotationStorageClass, "gold"),
		bad("allowlisted prefix", patch.AnnotationStorageClass, "csi-pmem-direct-2"),
		bad("not a name", patch.AnnotationStorageClass, "../hostpath"),
		bad("negative", patch.AnnotationStorageClass, "-1"),
		bad("huge", patch.AnnotationStorageClass, long),

		bad("empty", patch.AnnotationContainers, ""),
		bad("unknown container", patch.AnnotationContainers, "sidecar"),
		bad("known and unknown", patch.AnnotationContainers, "redis,ghost"),
		bad("init container name", patch.AnnotationContainers, "pmem-memkind-init"),
		bad("empty entry", patch.AnnotationContainers, "redis,"),
		bad("duplicate", patch.AnnotationContainers, "redis,redis"),
		bad("not a name", patch.AnnotationContainers, "Redis_1"),
		bad("negative", patch.AnnotationContainers, "-1"),
		bad("huge", patch.AnnotationContainers, long),

		bad("empty", patch.AnnotationMode, ""),
		bad("unknown mode", patch.AnnotationMode, "devdax"),
		bad("wrong case", patch.AnnotationMode, "FSDAX"),
		bad("negative", patch.AnnotationMode, "-1"),
		bad("huge", patch.AnnotationMode, long),

		bad("empty", patch.AnnotationDRAMRatio, ""),
		bad("negative DRAM", patch.AnnotationDRAMRatio, "-1:4"),
		bad("negative PMEM", patch.AnnotationDRAMRatio, "1:-4"),
		bad("zero", patch.AnnotationDRAMRatio, "0:4"),
		bad("huge", patch.AnnotationDRAMRatio, "1:100000"),
		bad("integer overflow", patch.AnnotationDRAMRatio, strings.Repeat("9", 30)+":1"),
		bad("non-numeric", patch.AnnotationDRAMRatio, "a:b"),
		bad("no colon", patch.AnnotationDRAMRatio, "4"),
		bad("three parts", patch.AnnotationDRAMRatio, "1:4:2"),
		bad("fraction", patch.AnnotationDRAMRatio, "0.5:1"),

		bad("empty", patch.AnnotationClaim, ""),
		bad("not a name", patch.AnnotationClaim, "Bad_Name"),
		bad("negative", patch.AnnotationClaim, "-1"),
		bad("huge", patch.AnnotationClaim, long),
		{class: "missing PVC", annotations: map[string]string{patch.AnnotationClaim: "no-such-claim"},
			want: one(patch.AnnotationClaim, "no-such-claim"), needsClaimCheck: true},
		{class: "PVC of another namespace", annotations: map[string]string{patch.AnnotationClaim: otherNamespaceClaim},
			want: one(patch.AnnotationClaim, otherNamespaceClaim), needsClaimCheck: true},

		bad("empty", patch.AnnotationProcesses, ""),
		bad("a path", patch.AnnotationProcesses, "/usr/bin/redis-server"),
		bad("longer than comm", patch.AnnotationProcesses, "redis-server-16ch"),
		bad("empty entry", patch.AnnotationProcesses, "redis-server,,"),
		bad("duplicate", patch.AnnotationProcesses, "redis-server,redis-server"),
		bad("env injection", patch.AnnotationProcesses, "redis-server,LD_PRELOAD=/tmp/x.so"),
		bad("shell metacharacters", patch.AnnotationProcesses, "redis;rm -rf /"),
		bad("huge", patch.AnnotationProcesses, long),

		// Combinations that cannot mean anything.
		{class: "kmem with a size", annotations: map[string]string{patch.AnnotationMode: "kmem", patch.AnnotationSize: "1Gi"},
			want: one(patch.AnnotationSize, "1Gi")},
		{class: "kmem with a storage class", annotations: map[string]string{patch.AnnotationMode: "kmem", patch.AnnotationStorageClass: "csi-pmem-direct"},
			want: one(patch.AnnotationStorageClass, "csi-pmem-direct")},
		{class: "kmem with a claim", annotations: map[string]string{patch.AnnotationMode: "kmem", patch.AnnotationClaim: "data"},
			want: one(patch.AnnotationClaim, "data")},
		{class: "claim with a storage class", annotations: map[string]string{patch.AnnotationClaim: "data", patch.AnnotationStorageClass: "csi-pmem-direct"},
			want: one(patch.AnnotationStorageClass, "csi-pmem-direct")},
		{class: "three bad values at once", annotations: map[string]string{patch.AnnotationMode: "turbo", patch.AnnotationSize: "lots", patch.AnnotationDRAMRatio: "x"},
			want: [][2]string{{patch.AnnotationMode, "turbo"}, {patch.AnnotationSize, "lots"}, {patch.AnnotationDRAMRatio, "x"}}},
	}
	return cases
}

// otherNamespaceClaim exists, but in another namespace than the pod's.
const otherNamespaceClaim = "claim-elsewhere"

// claimCheckAvailable reports whether the server has the PVC existence
// check (server.Options.Claims, which cluster.StartWebhook sets as deployed);
// without it the cases that need it are skipped, not failed.
func claimCheckAvailable() bool {
	t := reflect.TypeOf(server.Options{})
	_, claims := t.FieldByName("Claims")
	_, check := t.FieldByName("CheckClaims")
	return claims || check
}

// TestBadInputsRefused sends every bad annotation value through the real
// apiserver as a bare Pod create and checks that the apiserver refuses it
// with the webhook's message naming annotation and value, and what is
// allowed; nothing is created.
func TestBadInputsRefused(t *testing.T) {
	env := Setup(t)
	ctx := context.Background()
	wh, err := env.CP.StartWebhook(ctx, cluster.WebhookOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wh.Stop() })
	cs := clientset(t, env)
	ns := namespace(t, env, "bad-input")
	other := namespace(t, env, "bad-input-other")
	for _, n := range []struct{ ns, name string }{{other, otherNamespaceClaim}, {ns, "existing-claim"}} {
		pvc := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Namespace: n.ns, Name: n.name},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			},
		}
		if _, err := cs.CoreV1().PersistentVolumeClaims(n.ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// The control: a pod with valid annotations, including a claim that
	// exists, is admitted and injected; otherwise "refused" would prove
	// nothing.
	good := AnnotatedPod(ns, "good")
	good.Annotations[patch.AnnotationSize] = "2Gi"
	good.Annotations[patch.AnnotationProcesses] = "redis-server,keydb-server"
	good.Annotations[patch.AnnotationDRAMRatio] = "1:4"
	good.Annotations[patch.AnnotationContainers] = "redis"
	got, err := cs.CoreV1().Pods(ns).Create(ctx, good, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil || got.Annotations[patch.AnnotationStatus] != patch.StatusInjected {
		t.Fatalf("valid annotated pod: err %v, status %q; want it injected", err, got.Annotations[patch.AnnotationStatus])
	}
	claimed := AnnotatedPod(ns, "claimed")
	delete(claimed.Annotations, patch.AnnotationSize)
	claimed.Annotations[patch.AnnotationClaim] = "existing-claim"
	if got, err := cs.CoreV1().Pods(ns).Create(ctx, claimed, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil || got.Annotations[patch.AnnotationStatus] != patch.StatusInjected {
		t.Fatalf("pod claiming an existing PVC: err %v; want it injected", err)
	}

	var tried, refused, pending int
	for i, tc := range badInputs() {
		var keys []string
		for k := range tc.annotations {
			keys = append(keys, strings.TrimPrefix(k, patch.Prefix))
		}
		name := fmt.Sprintf("%s: %s", strings.Join(keys, "+"), tc.class)
		t.Run(name, func(t *testing.T) {
			tried++
			pod := AnnotatedPod(ns, fmt.Sprintf("bad-%d", i))
			delete(pod.Annotations, patch.AnnotationSize)
			for k, v := range tc.annotations {
				pod.Annotations[k] = v
			}
			_, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
			if err == nil {
				_ = cs.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{})
				if tc.needsClaimCheck && !claimCheckAvailable() {
					pending++
					t.Skipf("admitted: the webhook has no PVC existence check yet (server.Options.Claims); "+
						"this case must be refused once it has: %v", tc.annotations)
				}
				t.Fatalf("pod with %v was admitted, want it refused", tc.annotations)
			}
			if !apierrors.IsForbidden(err) {
				t.Errorf("status %v, want 403 Forbidden (a denial, not a webhook failure): %v", apierrors.ReasonForError(err), err)
			}
			msg := err.Error()
			for _, w := range tc.want {
				if kv := fmt.Sprintf("%s=%q", w[0], w[1]); !strings.Contains(msg, kv) {
					t.Errorf("message does not name %s:\n%s", kv, msg)
				}
			}
			if !strings.Contains(msg, webhookDenied) {
				t.Errorf("message lacks %q:\n%s", webhookDenied, msg)
			}
			// After the value comes what is allowed, or why the value cannot work.
			if _, why, _ := strings.Cut(msg, "is invalid: "); len(why) < 15 {
				t.Errorf("message does not say what is allowed:\n%s", msg)
			}
			if _, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("get refused pod: %v, want NotFound", err)
			}
			if !t.Failed() {
				refused++
			}
			t.Logf("%s", shorten(msg, 300))
		})
	}
	t.Logf("bad inputs tried: %d, refused with the webhook's message: %d, pending the claim check: %d", tried, refused, pending)
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("... (%d bytes)", len(s))
}
