package patch

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// withoutContainerName returns pod as an injector from before
// PMEM_CONTAINER_NAME left it.
func withoutContainerName(pod *corev1.Pod) *corev1.Pod {
	out := pod.DeepCopy()
	for _, cs := range [][]corev1.Container{out.Spec.InitContainers, out.Spec.Containers} {
		for i := range cs {
			cs[i].Env = slices.DeleteFunc(cs[i].Env, func(e corev1.EnvVar) bool { return e.Name == EnvContainerName })
		}
	}
	return out
}

// TestContainerNameEnv: every injected container carries its own name,
// which the preload puts in its status file's name (two containers of a
// pod are both pid 1).
func TestContainerNameEnv(t *testing.T) {
	res := mustInject(t, loadPod(t, "forking-redis.yaml"), testConfig())
	n := 0
	for _, c := range res.Pod.Spec.Containers {
		if v, ok := envOf(c.Env, EnvContainerName); ok {
			n++
			if v != c.Name {
				t.Errorf("container %q: %s=%q, want its name", c.Name, EnvContainerName, v)
			}
		}
	}
	if n != 2 {
		t.Errorf("%d containers carry %s, want 2", n, EnvContainerName)
	}
}

// TestOlderInjectionWithoutContainerName: a pod injected before
// PMEM_CONTAINER_NAME existed is still already injected (a no-op), through
// the full decode (pmem-inject) and the webhook's partial one; un-injected
// whole; a PMEM_CONTAINER_NAME naming another container is denied.
func TestOlderInjectionWithoutContainerName(t *testing.T) {
	for _, name := range []string{"redis-single", "forking-redis", "native-sidecar-redis"} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig()
			orig := loadPod(t, name+".yaml")
			res := mustInject(t, orig, cfg)
			old := withoutContainerName(res.Pod)
			if equality.Semantic.DeepEqual(old, res.Pod) {
				t.Fatalf("injected pod carries no %s", EnvContainerName)
			}
			again, err := Apply(old, cfg)
			if err != nil || again.Decision != AlreadyInjected || again.Pod != old {
				t.Errorf("Apply on an older injection = %+v, %v; want already-injected no-op", again, err)
			}
			raw, err := json.Marshal(old)
			if err != nil {
				t.Fatal(err)
			}
			partial, err := DecodePartial(raw)
			if err != nil {
				t.Fatal(err)
			}
			if again, err := Apply(partial, cfg); err != nil || again.Decision != AlreadyInjected {
				t.Errorf("Apply on the partially decoded older injection = %+v, %v; want already-injected", again, err)
			}

			un, err := Uninject(dropOptIn(old), cfg)
			if err != nil || !un.Removed {
				t.Fatalf("Uninject of an older injection = %+v, %v", un, err)
			}
			want := dropOptIn(orig)
			delete(want.Annotations, AnnotationStatus)
			if len(want.Annotations) == 0 {
				want.Annotations = nil
			}
			if !equality.Semantic.DeepEqual(want, un.Pod) {
				t.Errorf("un-injected older pod differs (-want +got):\n%s", cmp.Diff(want, un.Pod))
			}

			other := res.Pod.DeepCopy()
			edited := false
			for _, cs := range [][]corev1.Container{other.Spec.InitContainers, other.Spec.Containers} {
				for _, c := range cs {
					for i, e := range c.Env {
						if e.Name == EnvContainerName && !edited {
							c.Env[i].Value = "someone-else"
							edited = true
						}
					}
				}
			}
			_, err = Apply(other, cfg)
			assertDenied(t, err, []string{`has PMEM_CONTAINER_NAME="someone-else" where the current annotations, resources and injector settings give`})
			raw, err = json.Marshal(other)
			if err != nil {
				t.Fatal(err)
			}
			if partial, err = DecodePartial(raw); err != nil {
				t.Fatal(err)
			}
			_, err = Apply(partial, cfg)
			assertDenied(t, err, []string{`has PMEM_CONTAINER_NAME="someone-else"`})
		})
	}
}

// TestOwnedEnvInNonTarget: a container the injector does not target that
// sets one of the injector's variables is refused up front. Accepted, the
// injected pod was then refused when checked again (reinvocation,
// pmem-inject on its own output) and un-injection dropped the user's value.
func TestOwnedEnvInNonTarget(t *testing.T) {
	for _, name := range []string{EnvMemTiers, EnvTargetProcesses, EnvContainerName} {
		t.Run(name, func(t *testing.T) {
			pod := loadPod(t, "redis-exporter.yaml")
			exporter := &pod.Spec.Containers[1]
			if exporter.Name != "exporter" {
				t.Fatalf("container 1 is %q, want exporter (a non-target)", exporter.Name)
			}
			exporter.Env = append(exporter.Env, corev1.EnvVar{Name: name, Value: "x"})
			_, err := Apply(pod, testConfig())
			assertDenied(t, err, []string{`container "exporter" already sets ` + name + ", which the PMEM injector owns"})
		})
	}
}
