package patch

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// FuzzParseOptions: any annotation values either parse or are refused
// with an error naming the annotation; nothing panics.
func FuzzParseOptions(f *testing.F) {
	f.Add("fsdax", "60Gi", "csi-pmem-direct", "redis", "1:4", "", "redis-server")
	f.Add("kmem", "", "", "", "", "", "")
	f.Add("x", "-1", "Bad", ",,", "0:0", "A_B", "/bin/sh")
	f.Add("fsdax", "1e400", "a", "a,a", "99999999999999999999:1", "c", "p,p")
	cfg := DefaultConfig()
	f.Fuzz(func(t *testing.T, mode, size, sc, containers, ratio, claim, procs string) {
		ann := map[string]string{}
		for k, v := range map[string]string{AnnotationMode: mode, AnnotationSize: size, AnnotationStorageClass: sc,
			AnnotationContainers: containers, AnnotationDRAMRatio: ratio, AnnotationClaim: claim, AnnotationProcesses: procs} {
			if v != "" {
				ann[k] = v
			}
		}
		opts, err := ParseOptions(ann, &cfg)
		if err != nil {
			var iae *InvalidAnnotationError
			if !errors.As(err, &iae) || iae.Key == "" {
				t.Fatalf("error %v does not name an annotation", err)
			}
			return
		}
		if opts.Mode != ModeFSDAX && opts.Mode != ModeKMEM {
			t.Fatalf("accepted mode %q", opts.Mode)
		}
		if opts.Size != nil && (opts.Size.Cmp(minSize) < 0 || opts.Size.Cmp(maxSize) > 0) {
			t.Fatalf("accepted size %s", opts.Size)
		}
	})
}

// FuzzApply feeds arbitrary pods through Apply and checks the injector's
// promises: it never panics, never touches a pod that did not opt in,
// never injects twice, and never modifies its input.
func FuzzApply(f *testing.F) {
	f.Add([]byte(`{"metadata":{"annotations":{"pmem.alibabacloud.com/direct":"true"}},"spec":{"containers":[{"name":"redis","resources":{"limits":{"memory":"1Gi"}}}]}}`))
	f.Add([]byte(`{"metadata":{"annotations":{"pmem.alibabacloud.com/direct":"true","pmem.alibabacloud.com/mode":"kmem"}},"spec":{"containers":[{"name":"a","env":[{"name":"LD_PRELOAD","value":"x.so"}]}]}}`))
	f.Add([]byte(`{"metadata":{"annotations":{"pmem.alibabacloud.com/direct":"true","pmem.alibabacloud.com/size":"1Gi"}},"spec":{"volumes":[{"name":"pmem"}],"containers":[{"name":"a"},{"name":"b"}]}}`))
	f.Add([]byte(`{"metadata":{"annotations":{"other":"x"}},"spec":{"containers":[{"name":"a"}]}}`))
	f.Add([]byte(`{"spec":{}}`))
	cfg := DefaultConfig()
	cfg.KMEMNodeSelector = map[string]string{"pmem/kmem": "true"}
	f.Fuzz(func(t *testing.T, raw []byte) {
		pod := &corev1.Pod{}
		if json.Unmarshal(raw, pod) != nil {
			return
		}
		before, _ := json.Marshal(pod)
		res, err := Apply(pod, &cfg)
		after, _ := json.Marshal(pod)
		if string(before) != string(after) {
			t.Fatalf("Apply modified its input")
		}
		if err != nil {
			var denied *DeniedError
			if !errors.As(err, &denied) {
				t.Fatalf("error is not a denial: %v", err)
			}
			return
		}
		if pod.Annotations[AnnotationDirect] != "true" || pod.Annotations[AnnotationStatus] == StatusInjected {
			if res.Decision == Injected || res.Pod != pod {
				t.Fatalf("changed a pod that did not opt in, or was injected already: %s", raw)
			}
			return
		}
		if res.Decision != Injected {
			t.Fatalf("decision %s for an opted-in pod", res.Decision)
		}
		again, err := Apply(res.Pod, &cfg)
		if err != nil || again.Decision != AlreadyInjected || again.Pod != res.Pod {
			t.Fatalf("second pass was not a no-op: %+v %v", again, err)
		}

		// The way back: without the opt-in, Uninject gives the input
		// without the opt-in. Not exactly for an LD_PRELOAD that was
		// empty or already named the preload (the same to the loader),
		// and the kmem node selector is kept.
		for _, c := range append(slices.Clip(pod.Spec.InitContainers), pod.Spec.Containers...) {
			if v, ok := envOf(c.Env, EnvLDPreload); ok && (strings.TrimSpace(v) == "" || strings.Contains(v, PreloadLibrary)) {
				return
			}
		}
		off := dropOptIn(res.Pod)
		un, err := Uninject(off, &cfg)
		if err != nil || !un.Removed {
			t.Fatalf("Uninject of an injected pod = %+v, %v", un, err)
		}
		want := dropOptIn(pod)
		if res.Options.Mode == ModeKMEM {
			want.Spec.NodeSelector = un.Pod.Spec.NodeSelector
		}
		if !equality.Semantic.DeepEqual(want, un.Pod) {
			t.Fatalf("un-injected pod differs from the input:\n%s", cmp.Diff(want, un.Pod))
		}
		checkUninjectOperations(t, off, un.Pod)
	})
}
