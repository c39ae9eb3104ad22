package patch

import (
	"encoding/json"
	"strings"
	"testing"

	jsonpatchapply "github.com/evanphx/json-patch/v5"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// dropOptIn returns pod without the opt-in annotation (what a user does to
// go back to DRAM), and without an empty annotations map.
func dropOptIn(pod *corev1.Pod) *corev1.Pod {
	out := pod.DeepCopy()
	delete(out.Annotations, AnnotationDirect)
	if len(out.Annotations) == 0 {
		out.Annotations = nil
	}
	return out
}

// checkUninjectOperations applies UninjectOperations to orig's JSON and
// compares the result with Uninject's pod: what pmem-inject writes is what
// Uninject decided.
func checkUninjectOperations(t *testing.T, orig, want *corev1.Pod) {
	t.Helper()
	ops, err := UninjectOperations(orig, want)
	if err != nil {
		t.Fatalf("UninjectOperations: %v", err)
	}
	opsJSON, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatchapply.DecodePatch(opsJSON)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := json.Marshal(orig)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("apply %s: %v", opsJSON, err)
	}
	got := &corev1.Pod{}
	if err := json.Unmarshal(patched, got); err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(want, got) {
		t.Errorf("operations %s give a pod other than Uninject's (-want +got):\n%s", opsJSON, cmp.Diff(want, got))
	}
}

// TestUninjectRoundTrip: every pod the golden table injects, with the
// opt-in then dropped, un-injects to the input with the opt-in dropped.
func TestUninjectRoundTrip(t *testing.T) {
	for _, name := range []string{
		"redis-single", "redis-exporter", "existing-ldpreload", "claim", "kmem", "dram-ratio", "forking-redis",
		"envfrom-ldpreload", "native-sidecar-redis", "native-sidecar-after-init", "stale-status",
	} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig()
			orig := loadPod(t, name+".yaml")
			res := mustInject(t, orig, cfg)
			injected := dropOptIn(res.Pod)
			before := injected.DeepCopy()
			un, err := Uninject(injected, cfg)
			if err != nil {
				t.Fatalf("Uninject: %v", err)
			}
			if !un.Removed {
				t.Fatal("Uninject removed nothing")
			}
			if !equality.Semantic.DeepEqual(before, injected) {
				t.Errorf("Uninject modified its input:\n%s", cmp.Diff(before, injected))
			}
			want := dropOptIn(orig)
			// A stale status annotation on the input was this project's too.
			delete(want.Annotations, AnnotationStatus)
			if len(want.Annotations) == 0 {
				want.Annotations = nil
			}
			if name == "kmem" {
				// The node selector mode kmem adds is kept, with a note:
				// it may be the user's own.
				if want.Spec.NodeSelector == nil {
					want.Spec.NodeSelector = map[string]string{}
				}
				for k, v := range cfg.KMEMNodeSelector {
					want.Spec.NodeSelector[k] = v
				}
				if len(un.Notes) != 1 || !strings.Contains(un.Notes[0], `nodeSelector pmem.alibabacloud.com/kmem="true", which mode kmem adds, is kept`) {
					t.Errorf("notes = %q", un.Notes)
				}
			} else if len(un.Notes) > 0 {
				t.Errorf("unexpected notes %q", un.Notes)
			}
			if !equality.Semantic.DeepEqual(want, un.Pod) {
				t.Errorf("un-injected pod differs from the input without the opt-in (-want +got):\n%s", cmp.Diff(want, un.Pod))
			}
			checkUninjectOperations(t, injected, un.Pod)

			// Un-injected is plain: nothing left to remove.
			again, err := Uninject(un.Pod, cfg)
			if err != nil || again.Removed || again.Pod != un.Pod {
				t.Errorf("second Uninject = %+v, %v; want a no-op", again, err)
			}
		})
	}
}

func TestUninjectGolden(t *testing.T) {
	for _, name := range []string{"user-ldpreload-edited", "status-only", "claim-kmem-unmarked"} {
		t.Run(name, func(t *testing.T) {
			pod := loadPod(t, "uninject/"+name+".yaml")
			un, err := Uninject(pod, testConfig())
			if err != nil {
				t.Fatalf("Uninject: %v", err)
			}
			if !un.Removed {
				t.Fatal("Uninject removed nothing")
			}
			comparePod(t, "uninject/"+name+".golden.yaml", un.Pod)
			checkUninjectOperations(t, pod, un.Pod)
		})
	}
}

// TestUninjectLeaves: pods that opt in, or carry nothing of ours, are
// returned as they are.
func TestUninjectLeaves(t *testing.T) {
	cases := []struct {
		file   string
		mutate func(*corev1.Pod)
	}{
		{file: "redis-single.golden.yaml"}, {file: "redis-single.yaml"}, {file: "no-annotation.yaml"}, {file: "direct-false.yaml"},
		// Never injected, unmarked: a volume of the user's own named pmem,
		// memkind's own env (by hand), mounted where ours would be.
		{file: "volume-collision.yaml", mutate: func(p *corev1.Pod) { delete(p.Annotations, AnnotationDirect) }},
		{file: "no-annotation.yaml", mutate: func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env,
				corev1.EnvVar{Name: EnvLDPreload, Value: "/usr/lib/libmemtier.so"},
				corev1.EnvVar{Name: EnvMemTiers, Value: "KIND:FS_DAX,PATH:/mnt/pmem,RATIO:1;POLICY:STATIC_RATIO"})
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: PMEMVolumeName, VolumeSource: corev1.VolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: "/mnt/pmem0"}}})
			p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: PMEMVolumeName, MountPath: PMEMMountPath})
		}},
	}
	for _, tc := range cases {
		name := tc.file
		if tc.mutate != nil {
			name += " edited"
		}
		t.Run(name, func(t *testing.T) {
			pod := loadPod(t, tc.file)
			if tc.mutate != nil {
				tc.mutate(pod)
			}
			un, err := Uninject(pod, testConfig())
			if err != nil || un.Removed || un.Pod != pod || len(un.Notes) > 0 {
				t.Errorf("Uninject = %+v, %v; want the input pod untouched", un, err)
			}
		})
	}
}

// TestUninjectRefusesForeignPieces: a piece with one of our names that is
// not what the injector generates is never removed; the refusal names the
// field.
func TestUninjectRefusesForeignPieces(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*corev1.Pod)
		want   string
	}{
		{"user's pmem volume", func(p *corev1.Pod) {
			p.Spec.Volumes[0].VolumeSource = corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/mnt/pmem0"}}
		}, `spec.volumes[0] ("pmem") differs from what the PMEM injector generates`},
		{"lib volume resized", func(p *corev1.Pod) {
			p.Spec.Volumes[1].EmptyDir.SizeLimit = nil
		}, `spec.volumes[1] ("pmem-memkind") differs`},
		{"ephemeral claim edited", func(p *corev1.Pod) {
			p.Spec.Volumes[0].Ephemeral.VolumeClaimTemplate.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}
		}, `spec.volumes[0] ("pmem") differs`},
		{"init container command", func(p *corev1.Pod) {
			p.Spec.InitContainers[0].Command = []string{"/bin/sh", "-c", "cp -r /lib /opt"}
		}, `spec.initContainers[0] ("pmem-memkind-init") differs`},
		{"pmem mount read-only", func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts[0].ReadOnly = true
		}, `spec.containers[0].volumeMounts[0] ("pmem", container "redis") differs`},
		{"lib mount elsewhere", func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts[1].MountPath = "/usr/lib/pmem"
		}, `spec.containers[0].volumeMounts[1] ("pmem-memkind", container "redis") differs`},
		{"tiers edited", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env[1].Value = "KIND:FS_DAX,PATH:/data,RATIO:1;POLICY:STATIC_RATIO"
		}, `spec.containers[0].env[1] (MEMKIND_MEM_TIERS, container "redis") differs`},
		{"processes from a secret", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env[2].ValueFrom = &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{Key: "p"}}
		}, `spec.containers[0].env[2] (PMEM_TARGET_PROCESSES, container "redis") differs`},
		{"container name of another container", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env[3].Value = "exporter"
		}, `spec.containers[0].env[3] (PMEM_CONTAINER_NAME, container "redis") differs from what the PMEM injector generates (the container's own name "redis")`},
		{"status of someone else", func(p *corev1.Pod) {
			p.Annotations[AnnotationStatus] = "pending"
		}, `metadata.annotations pmem.alibabacloud.com/status="pending" differs`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := dropOptIn(loadPod(t, "redis-single.golden.yaml"))
			tc.mutate(pod)
			_, err := Uninject(pod, testConfig())
			assertDenied(t, err, []string{tc.want, "so it is not removed"})
		})
	}
}
