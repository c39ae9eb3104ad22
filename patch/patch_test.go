package patch

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/pmem-webhook/pmem-webhook/preload"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.yaml from the current output")

func loadPod(t *testing.T, file string) *corev1.Pod {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{}
	if err := yaml.UnmarshalStrict(raw, pod); err != nil {
		t.Fatalf("decode %s: %v", file, err)
	}
	return pod
}

func testConfig() *Config {
	cfg := DefaultConfig()
	cfg.AllowedStorageClasses = append(cfg.AllowedStorageClasses, "csi-pmem-direct-xfs")
	cfg.KMEMNodeSelector = map[string]string{"pmem.alibabacloud.com/kmem": "true"}
	return &cfg
}

// comparePod compares pods as objects (semantic quantities), not bytes.
func comparePod(t *testing.T, golden string, got *corev1.Pod) {
	t.Helper()
	path := filepath.Join("testdata", golden)
	if *update {
		out, err := yaml.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := loadPod(t, golden)
	if !equality.Semantic.DeepEqual(want, got) {
		t.Errorf("patched pod differs from %s (-want +got):\n%s", path, cmp.Diff(want, got))
	}
}

// mustInject applies cfg to pod and fails the test unless it is injected.
func mustInject(t *testing.T, pod *corev1.Pod, cfg *Config) *Result {
	t.Helper()
	res, err := Apply(pod, cfg)
	if err != nil || res.Decision != Injected {
		t.Fatalf("Apply(%s) = %+v, %v; want injected", pod.Name, res, err)
	}
	return res
}

func TestApplyGolden(t *testing.T) {
	cases := []struct {
		name         string
		decision     Decision
		wantWarnings []string
	}{
		{name: "redis-single", decision: Injected},
		{name: "redis-exporter", decision: Injected, wantWarnings: []string{`container "redis": Redis forks to save`}},
		{name: "existing-ldpreload", decision: Injected, wantWarnings: []string{`already sets LD_PRELOAD="/usr/lib/libtrace.so"`}},
		{name: "claim", decision: Injected},
		{name: "kmem", decision: Injected, wantWarnings: []string{`added nodeSelector pmem.alibabacloud.com/kmem="true"`}},
		{name: "fsdax-kmem-selector", decision: Injected, wantWarnings: []string{`mode fsdax, but the pod keeps nodeSelector pmem.alibabacloud.com/kmem="true"`}},
		{name: "dram-ratio", decision: Injected, wantWarnings: []string{"on DRAM until written back"}},
		{name: "forking-redis", decision: Injected, wantWarnings: []string{
			`container "redis" has no memory limit`, `container "exporter" has no memory limit`,
			`container "redis": Redis forks to save`, "memory written or allocated during a save is on DRAM until written back"}},
		{name: "envfrom-ldpreload", decision: Injected, wantWarnings: []string{`container "redis": envFrom configMapRef "redis-runtime-env" may set LD_PRELOAD`, "set LD_PRELOAD in env instead"}},
		{name: "native-sidecar-redis", decision: Injected},
		{name: "native-sidecar-after-init", decision: Injected, wantWarnings: []string{`container "cache" already sets LD_PRELOAD`}},
		{name: "stale-status", decision: Injected},
		{name: "no-annotation", decision: NotRequested},
		{name: "direct-false", decision: NotRequested},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := loadPod(t, tc.name+".yaml")
			before := pod.DeepCopy()
			res, err := Apply(pod, testConfig())
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if res.Decision != tc.decision {
				t.Fatalf("decision = %s, want %s", res.Decision, tc.decision)
			}
			if !equality.Semantic.DeepEqual(before, pod) {
				t.Errorf("Apply modified its input:\n%s", cmp.Diff(before, pod))
			}
			if tc.decision != Injected {
				if res.Pod != pod || len(res.Warnings) != 0 {
					t.Errorf("pass-through must return the input pod untouched and warn nothing; warnings %q", res.Warnings)
				}
				return
			}
			comparePod(t, tc.name+".golden.yaml", res.Pod)
			all := strings.Join(res.Warnings, "\n")
			for _, w := range tc.wantWarnings {
				if !strings.Contains(all, w) {
					t.Errorf("warnings %q lack %q", res.Warnings, w)
				}
			}
			for _, w := range res.Warnings {
				// The apiserver truncates longer warnings.
				if len(w) > 256 {
					t.Errorf("warning longer than 256 characters (%d): %q", len(w), w)
				}
			}
			if len(tc.wantWarnings) == 0 && len(res.Warnings) > 0 {
				t.Errorf("unexpected warnings %q", res.Warnings)
			}

			// Idempotent: a second pass (reinvocation) is a no-op.
			again, err := Apply(res.Pod, testConfig())
			if err != nil || again.Decision != AlreadyInjected || again.Pod != res.Pod {
				t.Errorf("second Apply = %+v, %v; want already-injected no-op", again, err)
			}
		})
	}
}

func TestApplyDenied(t *testing.T) {
	cases := []struct {
		file string
		want []string
	}{
		{"ldpreload-valuefrom.yaml", []string{`container "redis" sets LD_PRELOAD with valueFrom`}},
		{"volume-collision.yaml", []string{`pod already has a volume named "pmem"`}},
		{"no-memory-limit.yaml", []string{`annotation pmem.alibabacloud.com/size is not set and container "redis" has no memory limit`}},
		{"huge-memory-limit.yaml", []string{`memory limit 5Ei times the size factor 2 exceeds the maximum PMEM size 64Ti`}},
		{"windows-pod.yaml", []string{`spec.os.name="windows" says this is a Windows pod, and PMEM injection is Linux-only`, "remove the annotation pmem.alibabacloud.com/direct"}},
		{"init-collision.yaml", []string{`container named "pmem-memkind-init"`, `container "redis" already mounts volume "data" at /mnt/pmem`}},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			_, err := Apply(loadPod(t, tc.file), testConfig())
			assertDenied(t, err, tc.want)
		})
	}
}

func assertDenied(t *testing.T, err error, want []string) {
	t.Helper()
	var denied *DeniedError
	if !errors.As(err, &denied) {
		t.Fatalf("err = %v, want a *DeniedError", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

// Every annotation with every class of bad value is refused with a message
// naming the annotation and the value.
func TestInvalidAnnotations(t *testing.T) {
	cases := []struct {
		key, value string
		allowed    string
		extra      map[string]string
	}{
		{AnnotationDirect, "yes", `must be "true" or "false"`, nil},
		{AnnotationDirect, "", `must be "true" or "false"`, nil},
		{AnnotationDirect, "TRUE", `must be "true" or "false"`, nil},
		{AnnotationSize, "", "must be a quantity of bytes", nil},
		{AnnotationSize, "lots", "must be a quantity of bytes", nil},
		{AnnotationSize, "-1Gi", "must be at least 256Mi", nil},
		{AnnotationSize, "0", "must be at least 256Mi", nil},
		{AnnotationSize, "1Mi", "must be at least 256Mi", nil},
		{AnnotationSize, "100Pi", "must be at most 64Ti", nil},
		{AnnotationSize, "9999999999999999999999E", "must be", nil},
		{AnnotationSize, "1073741824500m", "must be a quantity of bytes", nil},
		{AnnotationSize, "1e999999999", "must be a quantity of bytes", nil},
		{AnnotationSize, "60 Gi", "must be a quantity of bytes", nil},
		{AnnotationStorageClass, "", "allows: csi-pmem-direct, csi-pmem-direct-xfs", nil},
		{AnnotationStorageClass, "standard", "allows: csi-pmem-direct, csi-pmem-direct-xfs", nil},
		{AnnotationStorageClass, "Bad_Name", "allows:", nil},
		{AnnotationContainers, "", "entries must not be empty", nil},
		{AnnotationContainers, "redis,,x", "entries must not be empty", nil},
		{AnnotationContainers, "redis,redis", `"redis" is listed twice`, nil},
		{AnnotationContainers, "Redis", "DNS labels", nil},
		{AnnotationContainers, "sentinel", `names "sentinel" (no such container); the pod's containers that can run on PMEM are: redis`, nil},
		{AnnotationMode, "", `must be "fsdax" or "kmem"`, nil},
		{AnnotationMode, "devdax", `must be "fsdax" or "kmem"`, nil},
		{AnnotationMode, "FSDAX", `must be "fsdax" or "kmem"`, nil},
		{AnnotationDRAMRatio, "", "must be DRAM:PMEM", nil},
		{AnnotationDRAMRatio, "1/4", "must be DRAM:PMEM", nil},
		{AnnotationDRAMRatio, "0:1", "must be DRAM:PMEM", nil},
		{AnnotationDRAMRatio, "-1:4", "must be DRAM:PMEM", nil},
		{AnnotationDRAMRatio, "1:100000", "from 1 to 1000", nil},
		{AnnotationDRAMRatio, "a:b", "must be DRAM:PMEM", nil},
		{AnnotationClaim, "", "must be the name of an existing PersistentVolumeClaim", nil},
		{AnnotationClaim, "My_Claim", "must be the name of an existing PersistentVolumeClaim", nil},
		{AnnotationClaim, strings.Repeat("a", 300), "must be the name of an existing PersistentVolumeClaim", nil},
		{AnnotationProcesses, "", "entries must not be empty", nil},
		{AnnotationProcesses, "/usr/bin/redis-server", "no path", nil},
		{AnnotationProcesses, "a-very-long-process-name", "at most 15 characters", nil},
		{AnnotationStorageClass, "csi-pmem-direct", "must not be set together with pmem.alibabacloud.com/claim", map[string]string{AnnotationClaim: "data"}},
		{AnnotationSize, "8Gi", "applies only to mode fsdax", map[string]string{AnnotationMode: "kmem"}},
		{AnnotationClaim, "data", "applies only to mode fsdax", map[string]string{AnnotationMode: "kmem"}},
	}
	for _, tc := range cases {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			pod := loadPod(t, "redis-single.yaml")
			pod.Annotations[tc.key] = tc.value
			for k, v := range tc.extra {
				pod.Annotations[k] = v
			}
			_, err := Apply(pod, testConfig())
			assertDenied(t, err, []string{"annotation " + tc.key + "=", tc.allowed})
			var iae *InvalidAnnotationError
			if !errors.As(err, &iae) || iae.Key != tc.key || iae.Value != tc.value {
				t.Errorf("error %v does not carry key %s and value %q", err, tc.key, tc.value)
			}
		})
	}
}

// All problems are reported in one answer.
func TestInvalidAnnotationsAreAllReported(t *testing.T) {
	pod := loadPod(t, "redis-single.yaml")
	pod.Annotations[AnnotationMode] = "dax"
	pod.Annotations[AnnotationSize] = "big"
	_, err := Apply(pod, testConfig())
	assertDenied(t, err, []string{AnnotationMode + `="dax"`, AnnotationSize + `="big"`})
}

func TestSizeDerivation(t *testing.T) {
	cases := []struct {
		name      string
		limit     string
		factor    float64
		size      string
		wantPVC   string
		wantLimit string
	}{
		{name: "30Gi DRAM becomes 60Gi PMEM", limit: "30Gi", factor: 2, wantPVC: "60Gi", wantLimit: "PMEM_SIZE_LIMIT:61847109632,"},
		{name: "factor 1.5", limit: "1Gi", factor: 1.5, wantPVC: "1536Mi", wantLimit: "PMEM_SIZE_LIMIT:1543503872,"},
		{name: "small size keeps 64Mi headroom", limit: "1Gi", factor: 2, size: "512Mi", wantPVC: "512Mi", wantLimit: "PMEM_SIZE_LIMIT:469762048,"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := loadPod(t, "redis-single.yaml")
			pod.Spec.Containers[0].Resources.Limits[corev1.ResourceMemory] = mustQuantity(t, tc.limit)
			if tc.size != "" {
				pod.Annotations[AnnotationSize] = tc.size
			}
			cfg := testConfig()
			cfg.SizeFactor = tc.factor
			res, err := Apply(pod, cfg)
			if err != nil {
				t.Fatal(err)
			}
			req := res.Pod.Spec.Volumes[0].Ephemeral.VolumeClaimTemplate.Spec.Resources.Requests[corev1.ResourceStorage]
			if want := mustQuantity(t, tc.wantPVC); req.Cmp(want) != 0 {
				t.Errorf("PVC request = %s, want %s", req.String(), tc.wantPVC)
			}
			tiers := envValue(res.Pod.Spec.Containers[0].Env, EnvMemTiers)
			if !strings.Contains(tiers, tc.wantLimit) {
				t.Errorf("%s = %q, want it to contain %q", EnvMemTiers, tiers, tc.wantLimit)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	if err := good.Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
	cases := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"empty image", func(c *Config) { c.MemkindImage = "" }, "memkindImage"},
		{"zero factor", func(c *Config) { c.SizeFactor = 0 }, "sizeFactor 0"},
		{"relative lib dir", func(c *Config) { c.LibDir = "opt/lib" }, `libDir "opt/lib"`},
		{"lib dir on pmem", func(c *Config) { c.LibDir = PMEMMountPath }, `libDir "/mnt/pmem"`},
		{"bad storage class", func(c *Config) { c.AllowedStorageClasses = []string{"Bad_Class"} }, `allowedStorageClasses entry "Bad_Class"`},
		{"bad selector", func(c *Config) { c.KMEMNodeSelector = map[string]string{"bad key!": "x"} }, `kmemNodeSelector key "bad key!"`},
		{"no processes", func(c *Config) { c.TargetProcesses = nil }, "targetProcesses"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mutate(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestKMEMNodeSelectorConflict(t *testing.T) {
	pod := loadPod(t, "kmem.yaml")
	pod.Spec.NodeSelector["pmem.alibabacloud.com/kmem"] = "false"
	_, err := Apply(pod, testConfig())
	assertDenied(t, err, []string{`nodeSelector pmem.alibabacloud.com/kmem="false" conflicts`})
}

func envValue(env []corev1.EnvVar, name string) string {
	for _, e := range env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func mustQuantity(t *testing.T, s string) resource.Quantity {
	t.Helper()
	q, err := resource.ParseQuantity(s)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestForkWarning(t *testing.T) {
	cases := []struct {
		name      string
		image     string
		command   []string
		args      []string
		processes []string
		want      bool
	}{
		{"redis image, default config", "redis:7.0-bookworm", nil, nil, nil, true},
		{"registry path", "registry.example/cache/redis-debian:7.0", nil, nil, nil, true},
		{"persistence off", "redis:7", nil, []string{"--save", "", "--appendonly", "no"}, nil, false},
		{"persistence off in a shell line", "redis:7", []string{"sh", "-c"}, []string{`exec redis-server --save "" --appendonly no`}, nil, false},
		{"save off but AOF on", "redis:7", nil, []string{"--save", "", "--appendonly", "yes"}, nil, true},
		{"exporter image", "oliver006/redis_exporter:v1.62.0", nil, nil, nil, false},
		{"other image running redis-server", "debian:bookworm", []string{"redis-server"}, nil, nil, true},
		{"not a target process", "redis:7", nil, nil, []string{"memcached"}, false},
		{"unrelated image", "nginx:1.27", nil, nil, nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := corev1.Container{Image: tc.image, Command: tc.command, Args: tc.args}
			procs := tc.processes
			if procs == nil {
				procs = DefaultTargetProcesses
			}
			if got := runsForkingRedis(&c, procs); got != tc.want {
				t.Errorf("runsForkingRedis = %v, want %v", got, tc.want)
			}
		})
	}
	pod := loadPod(t, "redis-single.yaml")
	pod.Spec.Containers[0].Args = []string{"redis-server", "--save", "", "--appendonly", "no", "--daemonize", "yes"}
	res, err := Apply(pod, testConfig())
	if err != nil || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "--daemonize yes") {
		t.Errorf("daemonize: warnings %q, err %v; want one --daemonize warning", res.Warnings, err)
	}
}

// Derived sizes obey the size annotation's bounds, with arithmetic that
// cannot overflow, and messages never show an impossible figure (issue 14
// row 2: a 5Ei limit gave "storage: -8796093022207Mi").
func TestDerivedSizeBounds(t *testing.T) {
	cases := []struct {
		name    string
		limits  []string
		factor  float64
		wantPVC string   // "" : denied
		want    []string // parts of the denial
	}{
		{name: "normal", limits: []string{"1Gi"}, factor: 2, wantPVC: "2Gi"},
		{name: "exactly the cap", limits: []string{"32Ti"}, factor: 2, wantPVC: "64Ti"},
		{name: "5Ei overflows int64 when doubled", limits: []string{"5Ei"}, factor: 2,
			want: []string{`container "redis" memory limit 5Ei times the size factor 2 exceeds the maximum PMEM size 64Ti`, "at most 64Ti"}},
		{name: "64Ti limit gives 128Ti", limits: []string{"64Ti"}, factor: 2,
			want: []string{"memory limit 64Ti", "exceeds the maximum PMEM size 64Ti"}},
		{name: "sum of containers above the cap", limits: []string{"20Ti", "20Ti"}, factor: 2,
			want: []string{"exceeds the maximum 64Ti", "at container \"exporter\""}},
		{name: "1500m is 1.5 bytes", limits: []string{"1500m"}, factor: 2,
			want: []string{`memory limit 1500m is a fraction of a byte count`, "1500Mi"}},
		{name: "below the minimum", limits: []string{"64Mi"}, factor: 2,
			want: []string{"is 128Mi, below the minimum 256Mi", "at least 256Mi"}},
		{name: "huge exponent", limits: []string{"1e30"}, factor: 2,
			want: []string{"exceeds the maximum PMEM size 64Ti"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := loadPod(t, "redis-single.yaml")
			if len(tc.limits) == 2 {
				pod = loadPod(t, "redis-exporter.yaml")
				pod.Annotations[AnnotationContainers] = "redis,exporter"
			}
			for k, l := range tc.limits {
				pod.Spec.Containers[k].Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: mustQuantity(t, l)}
			}
			cfg := testConfig()
			cfg.SizeFactor = tc.factor
			res, err := Apply(pod, cfg)
			if tc.wantPVC == "" {
				assertDenied(t, err, tc.want)
				if strings.Contains(err.Error(), "-") && strings.Contains(err.Error(), " -") {
					t.Errorf("message shows a negative figure: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			req := res.Pod.Spec.Volumes[0].Ephemeral.VolumeClaimTemplate.Spec.Resources.Requests[corev1.ResourceStorage]
			if want := mustQuantity(t, tc.wantPVC); req.Cmp(want) != 0 {
				t.Errorf("PVC request = %s, want %s", req.String(), tc.wantPVC)
			}
		})
	}
}

// The webhook names the preload in LD_PRELOAD; the init image ships it
// under preload.FileName. patch keeps its own constant (it stays free of
// the preload's build code), tied here.
func TestPreloadLibraryIsThePreload(t *testing.T) {
	if PreloadLibrary != preload.FileName {
		t.Errorf("patch.PreloadLibrary = %q, preload.FileName = %q", PreloadLibrary, preload.FileName)
	}
}
