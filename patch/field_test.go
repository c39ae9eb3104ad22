package patch

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Issue 14 row 8: the opt-in written as a label injects nothing but warns,
// with what to do.
func TestOptInAsLabel(t *testing.T) {
	cases := []struct {
		name        string
		labels      map[string]string
		annotations map[string]string
		warn        bool
	}{
		{name: "label only", labels: map[string]string{AnnotationDirect: "true"}, warn: true},
		{name: "label and annotation false", labels: map[string]string{AnnotationDirect: "true"}, annotations: map[string]string{AnnotationDirect: "false"}},
		{name: "neither", labels: map[string]string{"app": "redis"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := loadPod(t, "no-annotation.yaml")
			pod.Labels, pod.Annotations = tc.labels, tc.annotations
			res, err := Apply(pod, testConfig())
			if err != nil || res.Decision != NotRequested || res.Pod != pod {
				t.Fatalf("Apply = %+v, %v; want not-requested pass-through", res, err)
			}
			if !tc.warn {
				if len(res.Warnings) > 0 {
					t.Errorf("unexpected warnings %q", res.Warnings)
				}
				return
			}
			if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], `label pmem.alibabacloud.com/direct="true" has no effect`) ||
				!strings.Contains(res.Warnings[0], "move it to metadata.annotations") {
				t.Errorf("warnings = %q", res.Warnings)
			}
		})
	}
}

// Issue 14 row 4: LD_PRELOAD from envFrom cannot be seen at admission and
// the injected env entry would win over it: warn, naming the source, unless
// the source cannot produce LD_PRELOAD.
func TestEnvFromLDPreload(t *testing.T) {
	cm := func(name, prefix string) corev1.EnvFromSource {
		return corev1.EnvFromSource{Prefix: prefix, ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: name}}}
	}
	secret := corev1.EnvFromSource{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}}}
	cases := []struct {
		name    string
		envFrom []corev1.EnvFromSource
		env     []corev1.EnvVar
		want    []string // "" entries: no warning expected
	}{
		{name: "configMap", envFrom: []corev1.EnvFromSource{cm("rt", "")}, want: []string{`envFrom configMapRef "rt" may set LD_PRELOAD`}},
		{name: "secret", envFrom: []corev1.EnvFromSource{secret}, want: []string{`envFrom secretRef "creds" may set LD_PRELOAD`}},
		{name: "prefix that can produce it", envFrom: []corev1.EnvFromSource{cm("rt", "LD_")}, want: []string{`configMapRef "rt" (prefix "LD_") may set LD_PRELOAD`}},
		{name: "harmless prefix", envFrom: []corev1.EnvFromSource{cm("rt", "APP_")}},
		{name: "explicit env wins anyway", envFrom: []corev1.EnvFromSource{cm("rt", "")}, env: []corev1.EnvVar{{Name: EnvLDPreload, Value: "/lib/x.so"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := loadPod(t, "redis-single.yaml")
			pod.Spec.Containers[0].EnvFrom = tc.envFrom
			pod.Spec.Containers[0].Env = tc.env
			res, err := Apply(pod, testConfig())
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range res.Warnings {
				if strings.Contains(w, "envFrom") {
					got = append(got, w)
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("envFrom warnings = %q, want %q", got, tc.want)
			}
			for k, w := range tc.want {
				if !strings.Contains(got[k], w) || !strings.Contains(got[k], "set LD_PRELOAD in env instead") {
					t.Errorf("warning %q lacks %q", got[k], w)
				}
			}
		})
	}
}

// Issue 14 row 1: every way a pod says it is Windows is refused with the
// field and value that said so.
func TestWindowsRefused(t *testing.T) {
	windowsOnly := func(op corev1.NodeSelectorOperator, values ...string) *corev1.Affinity {
		return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: LabelOS, Operator: op, Values: values}}}},
		}}}
	}
	user := "ContainerUser"
	win := &corev1.WindowsSecurityContextOptions{RunAsUserName: &user}
	cases := []struct {
		name   string
		mutate func(*corev1.Pod)
		want   string // "" : injected
	}{
		{"spec.os", func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: corev1.Windows} }, `spec.os.name="windows"`},
		{"nodeSelector", func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{LabelOS: "windows"} }, `spec.nodeSelector kubernetes.io/os="windows"`},
		{"affinity In windows", func(p *corev1.Pod) { p.Spec.Affinity = windowsOnly(corev1.NodeSelectorOpIn, "windows") }, `every term requires kubernetes.io/os="windows"`},
		{"affinity NotIn linux", func(p *corev1.Pod) { p.Spec.Affinity = windowsOnly(corev1.NodeSelectorOpNotIn, "linux") }, "requiredDuringSchedulingIgnoredDuringExecution"},
		{"pod windowsOptions", func(p *corev1.Pod) { p.Spec.SecurityContext = &corev1.PodSecurityContext{WindowsOptions: win} }, "spec.securityContext.windowsOptions"},
		{"container windowsOptions", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{WindowsOptions: win}
		}, `spec.containers[0].securityContext.windowsOptions (set, container "redis")`},
		{"init container windowsOptions", func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "setup", SecurityContext: &corev1.SecurityContext{WindowsOptions: win}}}
		}, `spec.initContainers[0].securityContext.windowsOptions`},
		{"linux os", func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: corev1.Linux} }, ""},
		{"linux nodeSelector", func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{LabelOS: "linux"} }, ""},
		{"affinity allows both", func(p *corev1.Pod) { p.Spec.Affinity = windowsOnly(corev1.NodeSelectorOpIn, "windows", "linux") }, ""},
		{"affinity one term windows, one any", func(p *corev1.Pod) {
			p.Spec.Affinity = windowsOnly(corev1.NodeSelectorOpIn, "windows")
			terms := &p.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
			*terms = append(*terms, corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "zone", Operator: corev1.NodeSelectorOpExists}}})
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := loadPod(t, "redis-single.yaml")
			tc.mutate(pod)
			res, err := Apply(pod, testConfig())
			if tc.want == "" {
				if err != nil || res.Decision != Injected {
					t.Fatalf("Apply = %+v, %v; want injected", res, err)
				}
				return
			}
			assertDenied(t, err, []string{tc.want, "PMEM injection is Linux-only", "remove the annotation " + AnnotationDirect})
		})
	}
}

// Issue 14 row 3: which containers are targets, by name and by default.
func TestNativeSidecarTargets(t *testing.T) {
	always := ptr(corev1.ContainerRestartPolicyAlways)
	redisSidecar := corev1.Container{Name: "redis", Image: "redis:7", RestartPolicy: always,
		Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}}}
	app := corev1.Container{Name: "app", Image: "example.com/app:1",
		Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}}}
	appRedis := corev1.Container{Name: "cache", Image: "example.com/base:1", Command: []string{"/usr/bin/redis-server"},
		Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}}}
	plainInit := corev1.Container{Name: "setup", Image: "redis:7"}
	shipper := corev1.Container{Name: "shipper", Image: "example.com/shipper:1", RestartPolicy: always}
	cases := []struct {
		name       string
		annotation string
		init, apps []corev1.Container
		want       []string // target names; nil: denied
		denial     string
	}{
		{name: "no sidecar: all app containers", apps: []corev1.Container{app, appRedis}, want: []string{"app", "cache"}},
		{name: "redis sidecar: only it", init: []corev1.Container{redisSidecar}, apps: []corev1.Container{app}, want: []string{"redis"}},
		{name: "redis sidecar and redis app container", init: []corev1.Container{redisSidecar}, apps: []corev1.Container{app, appRedis}, want: []string{"redis", "cache"}},
		{name: "sidecar without target process: app containers", init: []corev1.Container{shipper}, apps: []corev1.Container{app}, want: []string{"app"}},
		{name: "sidecar by name", annotation: "redis", init: []corev1.Container{redisSidecar}, apps: []corev1.Container{app}, want: []string{"redis"}},
		{name: "sidecar and app by name", annotation: "app,redis", init: []corev1.Container{redisSidecar}, apps: []corev1.Container{app}, want: []string{"redis", "app"}},
		{name: "plain init container by name", annotation: "setup", init: []corev1.Container{plainInit}, apps: []corev1.Container{app},
			denial: `names "setup" (it is an init container that runs to completion before the app starts; only app containers and native sidecars (restartPolicy: Always) can run on PMEM)`},
		{name: "unknown name lists sidecars", annotation: "nope", init: []corev1.Container{redisSidecar}, apps: []corev1.Container{app},
			denial: `can run on PMEM are: redis (native sidecar), app`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{}
			pod.Annotations = map[string]string{AnnotationDirect: "true", AnnotationSize: "4Gi"}
			if tc.annotation != "" {
				pod.Annotations[AnnotationContainers] = tc.annotation
			}
			pod.Spec.InitContainers, pod.Spec.Containers = tc.init, tc.apps
			res, err := Apply(pod, testConfig())
			if tc.denial != "" {
				assertDenied(t, err, []string{tc.denial})
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range append(slices.Clip(res.Pod.Spec.InitContainers), res.Pod.Spec.Containers...) {
				if slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == EnvMemTiers }) {
					got = append(got, c.Name)
					if len(c.VolumeMounts) != 2 {
						t.Errorf("container %q mounts = %v", c.Name, c.VolumeMounts)
					}
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("targets = %q, want %q", got, tc.want)
			}
			// The PMEM init container starts before every targeted sidecar.
			initAt := slices.IndexFunc(res.Pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == InitContainerName })
			for k, c := range res.Pod.Spec.InitContainers {
				if slices.Contains(got, c.Name) && k < initAt {
					t.Errorf("sidecar %q starts before %s", c.Name, InitContainerName)
				}
			}
		})
	}
}

// Issue 14 row 5: the status annotation is never trusted alone. An injected
// pod is a no-op only if its pieces are what the current annotations and
// configuration give; otherwise it is denied with the difference.
func TestStatusAnnotationNotTrustedAlone(t *testing.T) {
	injected := func(t *testing.T, file string) *corev1.Pod {
		return mustInject(t, loadPod(t, file), testConfig()).Pod.DeepCopy()
	}
	cases := []struct {
		name   string
		file   string
		mutate func(*corev1.Pod)
		want   []string // nil: already injected (no-op)
	}{
		{name: "truly injected", file: "redis-single.yaml", mutate: func(*corev1.Pod) {}},
		{name: "truly injected native sidecar", file: "native-sidecar-after-init.yaml", mutate: func(*corev1.Pod) {}},
		{name: "truly injected kmem", file: "kmem.yaml", mutate: func(*corev1.Pod) {}},
		{name: "fsdax then mode kmem", file: "redis-single.yaml", mutate: func(p *corev1.Pod) { p.Annotations[AnnotationMode] = "kmem" },
			want: []string{`pod is marked pmem.alibabacloud.com/status=injected, but container "redis" has MEMKIND_MEM_TIERS="KIND:FS_DAX`, `where the current annotations, resources and injector settings give "KIND:KMEM_DAX`, "inject again", `set pmem.alibabacloud.com/direct to "false"`}},
		{name: "size changed", file: "redis-single.yaml", mutate: func(p *corev1.Pod) { p.Annotations[AnnotationSize] = "8Gi" },
			want: []string{"PMEM_SIZE_LIMIT"}},
		{name: "env lost", file: "redis-single.yaml", mutate: func(p *corev1.Pod) { p.Spec.Containers[0].Env = nil },
			want: []string{`container "redis" lacks LD_PRELOAD`}},
		{name: "init container lost", file: "redis-single.yaml", mutate: func(p *corev1.Pod) { p.Spec.InitContainers = nil },
			want: []string{`init container "pmem-memkind-init" is missing`}},
		{name: "memkind image changed", file: "redis-single.yaml", mutate: func(p *corev1.Pod) { p.Spec.InitContainers[0].Image = "old:1" },
			want: []string{`init container "pmem-memkind-init" has image "old:1"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := injected(t, tc.file)
			tc.mutate(pod)
			res, err := Apply(pod, testConfig())
			if tc.want == nil {
				if err != nil || res.Decision != AlreadyInjected || res.Pod != pod {
					t.Fatalf("Apply = %+v, %v; want an already-injected no-op", res, err)
				}
				return
			}
			assertDenied(t, err, tc.want)
		})
	}
}

// A non-root server on a fresh PMEM volume (root:root 0755) cannot create its
// heap file unless fsGroup hands the volume to the pod's group: found by
// re-running the uid-999 field case as a pod would start it (no root process
// to make PATH/heap). Only an explicit runAsUser is known at admission.
func TestNonRootWithoutFSGroupWarns(t *testing.T) {
	uid := func(v int64) *int64 { return &v }
	cases := []struct {
		name         string
		podUser      *int64
		fsGroup      *int64
		containerUID *int64
		mode         string
		want         string // "" = no such warning
	}{
		{name: "pod runAsUser 999, no fsGroup", podUser: uid(999), want: `container "redis" runs as uid 999 with no pod securityContext.fsGroup`},
		{name: "container runAsUser 999", containerUID: uid(999), want: `runs as uid 999`},
		{name: "with fsGroup", podUser: uid(999), fsGroup: uid(999)},
		{name: "container root overrides the pod's uid", podUser: uid(999), containerUID: uid(0)},
		{name: "no runAsUser: the image's USER is unknown"},
		{name: "kmem has no volume", podUser: uid(999), mode: "kmem"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := loadPod(t, "redis-single.yaml")
			if tc.podUser != nil || tc.fsGroup != nil {
				pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: tc.podUser, FSGroup: tc.fsGroup}
			}
			if tc.containerUID != nil {
				pod.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: tc.containerUID}
			}
			if tc.mode != "" {
				pod.Annotations[AnnotationMode] = tc.mode
			}
			res, err := Apply(pod, testConfig())
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range res.Warnings {
				if strings.Contains(w, "fsGroup") {
					got = append(got, w)
				}
			}
			switch {
			case tc.want == "" && len(got) != 0:
				t.Errorf("unexpected warning %q", got)
			case tc.want != "" && (len(got) != 1 || !strings.Contains(got[0], tc.want) || !strings.Contains(got[0], "set fsGroup (e.g.")):
				t.Errorf("warnings %q, want one containing %q and what to set", got, tc.want)
			}
		})
	}
}
