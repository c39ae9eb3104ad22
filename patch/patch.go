// Package patch turns a pod that opted into PMEM into one that runs its heap
// on PMEM. It is pure: no client, no HTTP, no clock. The webhook, the offline
// injector and the tests all call Apply.
//
// It owns the whole pod contract: what Apply reads (DecodePartial decodes
// exactly that from the webhook's raw JSON), what it writes (Operations turns
// it into JSON patch operations) and the parsed options (Result.Options).
package patch

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Names the injector owns inside a pod. A pod that already uses one of them
// for something else is refused rather than silently merged.
const (
	PMEMVolumeName    = "pmem"
	LibVolumeName     = "pmem-memkind"
	InitContainerName = "pmem-memkind-init"
	PMEMMountPath     = "/mnt/pmem"
	PreloadLibrary    = "libpmem-preload.so"
	InitProgram       = "/usr/local/bin/pmem-memkind-init"

	EnvLDPreload       = "LD_PRELOAD"
	EnvMemTiers        = "MEMKIND_MEM_TIERS"
	EnvTargetProcesses = "PMEM_TARGET_PROCESSES"
	// EnvContainerName carries the container's own name to the preload,
	// which puts it in its status file's name: two containers of a pod
	// share the PMEM volume but not the pid namespace (both are pid 1),
	// so pmem-status.<pid> alone would be one file for both.
	EnvContainerName = "PMEM_CONTAINER_NAME"

	// LabelManagedBy marks the PVCs generated from the ephemeral volume
	// template, so an operator can list them.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedByValue = "pmem-webhook"
)

// libVolumeSizeLimit bounds the emptyDir holding the preload closure
// (about 12 MiB for memkind 1.14 and its libraries).
var libVolumeSizeLimit = resource.MustParse("64Mi")

// Decision says what Apply did.
type Decision string

const (
	Injected        Decision = "injected"
	NotRequested    Decision = "not-requested"
	AlreadyInjected Decision = "already-injected"
)

// Result is the outcome of Apply. Pod is the input pod itself when nothing
// was injected.
type Result struct {
	Decision Decision
	Pod      *corev1.Pod
	Warnings []string
	// Options are the pod's annotations as Apply parsed and validated
	// them; nil when the pod did not ask for PMEM. Callers read these
	// rather than the raw annotations, so there is one parser.
	Options *Options
}

// DeniedError is returned for pods that asked for PMEM but cannot get it as
// written. Its message is meant for the user who wrote the manifest.
type DeniedError struct{ Err error }

func (e *DeniedError) Error() string { return e.Err.Error() }
func (e *DeniedError) Unwrap() error { return e.Err }

func deny(format string, args ...any) error {
	return &DeniedError{Err: fmt.Errorf(format, args...)}
}

// Apply injects PMEM into pod according to its annotations and cfg.
//
// The input pod is never modified: every field that changes is rebuilt in
// the returned pod (copy on write) and everything else is shared with the
// input. That keeps the pass-through and the diff for the JSON patch cheap
// even for pods with thousands of env vars.
func Apply(pod *corev1.Pod, cfg *Config) (*Result, error) {
	requested, err := Requested(pod.Annotations)
	if err != nil {
		return nil, &DeniedError{Err: err}
	}
	if !requested {
		res := &Result{Decision: NotRequested, Pod: pod}
		if v, ok := pod.Labels[AnnotationDirect]; ok {
			if _, set := pod.Annotations[AnnotationDirect]; !set {
				res.Warnings = []string{LabelOptInWarning(v)}
			}
		}
		res.Warnings = append(res.Warnings, UnknownAnnotationWarnings(pod.Annotations)...)
		return res, nil
	}
	if marker := windowsMarker(pod); marker != "" {
		// The injected init container carries Linux-only securityContext
		// fields the apiserver forbids on Windows pods, and memkind and
		// LD_PRELOAD do not exist there: refusing here names the real
		// cause instead of a validation error about a container the user
		// never wrote.
		return nil, deny("%s says this is a Windows pod, and PMEM injection is Linux-only: remove the annotation %s, or run the pod on Linux (spec.os.name linux or unset, %s=linux)",
			marker, AnnotationDirect, LabelOS)
	}
	opts, err := ParseOptions(pod.Annotations, cfg)
	if err != nil {
		return nil, &DeniedError{Err: err}
	}
	processes := opts.Processes
	if processes == nil {
		processes = cfg.TargetProcesses
	}
	// The status annotation is never trusted alone: it is copied along
	// with manifests (kubectl get -o yaml, charts) without what it
	// describes. A pod marked injected that has none of the pieces is
	// injected as any other; one that has them is a no-op only if they are
	// exactly what the current annotations and configuration produce.
	var res *Result
	if pod.Annotations[AnnotationStatus] == StatusInjected && hasInjectedPieces(pod, cfg) {
		res, err = checkInjected(pod, cfg, opts, processes)
	} else {
		res, err = inject(pod, cfg, opts, processes)
	}
	if err != nil {
		return nil, err
	}
	// Misspelled keys first: a typo explains the rest (a default size).
	if u := UnknownAnnotationWarnings(pod.Annotations); len(u) > 0 {
		res.Warnings = append(u, res.Warnings...)
	}
	return res, nil
}

func inject(pod *corev1.Pod, cfg *Config, opts *Options, processes []string) (*Result, error) {
	targets, err := targetContainers(pod, opts, processes)
	if err != nil {
		return nil, err
	}
	if err := checkCollisions(pod, targets, cfg); err != nil {
		return nil, err
	}

	in := &injection{pod: pod, cfg: cfg, opts: opts, targets: targets}
	if err := in.plan(); err != nil {
		return nil, err
	}
	out := in.build()
	return &Result{Decision: Injected, Pod: out, Warnings: in.warnings, Options: opts}, nil
}

// hasInjectedPieces reports whether any piece the injector adds is there.
func hasInjectedPieces(pod *corev1.Pod, cfg *Config) bool {
	if slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == PMEMVolumeName || v.Name == LibVolumeName }) ||
		slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == InitContainerName }) {
		return true
	}
	for _, c := range append(slices.Clip(pod.Spec.InitContainers), pod.Spec.Containers...) {
		for _, e := range c.Env {
			if e.Name == EnvMemTiers || e.Name == EnvTargetProcesses || e.Name == EnvContainerName || e.Name == EnvLDPreload && containsPath(e.Value, cfg.LibDir+"/"+PreloadLibrary) {
				return true
			}
		}
	}
	return false
}

// checkInjected decides for a pod marked injected that carries injected
// pieces: it removes them, injects again with the current annotations and
// configuration, and compares. Equal: a no-op (reinvocation, offline then
// online injection). Different (the mode or size changed after an offline
// injection, or a piece was lost): denied, naming the difference. Not
// re-injected in place: the webhook's patch only ever adds (removing
// would need the fields it never decodes), and pieces of a manifest the
// user edited are not silently rewritten.
func checkInjected(pod *corev1.Pod, cfg *Config, opts *Options, processes []string) (*Result, error) {
	want, err := inject(stripInjected(pod, cfg), cfg, opts, processes)
	if err != nil {
		return nil, err
	}
	if diff := injectedDiff(pod, want.Pod); diff != "" {
		return nil, deny("pod is marked %s=%s, but %s: the pod carries an injection made with other annotations or configuration. "+
			"Remove the injected pieces (init container %s, volumes %s and %s, their mounts, env %s, %s and %s, the preload in %s) and the status annotation, then inject again. "+
			"The offline injector (pmem-inject, or kubectl pmem inject) does the removal itself: in the stored manifest set %s to \"false\", run it on the manifest, set it back to \"true\" and run it again",
			AnnotationStatus, StatusInjected, diff, InitContainerName, PMEMVolumeName, LibVolumeName, EnvMemTiers, EnvTargetProcesses, EnvContainerName, EnvLDPreload, AnnotationDirect)
	}
	return &Result{Decision: AlreadyInjected, Pod: pod, Options: opts}, nil
}

// stripInjected returns pod without the pieces the injector adds. It
// works on the webhook's partially decoded pods too: it goes by names.
func stripInjected(pod *corev1.Pod, cfg *Config) *corev1.Pod {
	out := *pod
	out.Annotations = copyMap(pod.Annotations)
	delete(out.Annotations, AnnotationStatus)
	out.Spec.Volumes = slices.DeleteFunc(slices.Clone(pod.Spec.Volumes), func(v corev1.Volume) bool { return v.Name == PMEMVolumeName || v.Name == LibVolumeName })
	out.Spec.InitContainers = slices.DeleteFunc(slices.Clone(pod.Spec.InitContainers), func(c corev1.Container) bool { return c.Name == InitContainerName })
	preload := cfg.LibDir + "/" + PreloadLibrary
	strip := func(cs []corev1.Container) {
		for i := range cs {
			c := &cs[i]
			c.VolumeMounts = slices.DeleteFunc(slices.Clone(c.VolumeMounts), func(m corev1.VolumeMount) bool { return m.Name == PMEMVolumeName || m.Name == LibVolumeName })
			env := slices.DeleteFunc(slices.Clone(c.Env), func(e corev1.EnvVar) bool {
				return e.Name == EnvMemTiers || e.Name == EnvTargetProcesses || e.Name == EnvContainerName || e.Name == EnvLDPreload && e.Value == preload
			})
			for k := range env {
				if env[k].Name == EnvLDPreload {
					env[k].Value = strings.TrimPrefix(env[k].Value, preload+":")
				}
			}
			c.Env = env
		}
	}
	strip(out.Spec.InitContainers)
	out.Spec.Containers = slices.Clone(pod.Spec.Containers)
	strip(out.Spec.Containers)
	return &out
}

// injectedDiff describes the first injected piece of have that differs
// from want, or returns "". It compares only what the webhook's partial
// decoder reads (names, image, command and args of the init container,
// our volumes whole, mount names and paths, the owned env values), so the
// webhook and pmem-inject decide alike.
func injectedDiff(have, want *corev1.Pod) string {
	h := slices.IndexFunc(have.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == InitContainerName })
	w := slices.IndexFunc(want.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == InitContainerName })
	switch {
	case h < 0:
		return fmt.Sprintf("init container %q is missing", InitContainerName)
	case h != w:
		return fmt.Sprintf("init container %q is at initContainers[%d], where it must be at [%d]", InitContainerName, h, w)
	case have.Spec.InitContainers[h].Image != want.Spec.InitContainers[w].Image ||
		!slices.Equal(have.Spec.InitContainers[h].Command, want.Spec.InitContainers[w].Command) ||
		!slices.Equal(have.Spec.InitContainers[h].Args, want.Spec.InitContainers[w].Args):
		return fmt.Sprintf("init container %q has image %q, command or args other than the configured %q", InitContainerName,
			have.Spec.InitContainers[h].Image, want.Spec.InitContainers[w].Image)
	}
	for _, lists := range [][2][]corev1.Container{{have.Spec.InitContainers, want.Spec.InitContainers}, {have.Spec.Containers, want.Spec.Containers}} {
		for k := range lists[1] {
			hc, wc := &lists[0][k], &lists[1][k]
			for _, name := range []string{EnvLDPreload, EnvMemTiers, EnvTargetProcesses, EnvContainerName} {
				hv, hok := envOf(hc.Env, name)
				wv, wok := envOf(wc.Env, name)
				switch {
				case !hok && wok && name == EnvContainerName:
					// An injection made before the variable existed: still
					// the same injection (its preload names the status
					// file by pid alone), accepted as it is rather than
					// denied over a piece that older version never wrote.
				case !hok && wok:
					return fmt.Sprintf("container %q lacks %s", hc.Name, name)
				case hok && !wok:
					return fmt.Sprintf("container %q has %s=%q, which the current annotations do not set", hc.Name, name, Abbreviate(hv, 100))
				case hv != wv:
					return fmt.Sprintf("container %q has %s=%q where the current annotations, resources and injector settings give %q", hc.Name, name, Abbreviate(hv, 100), Abbreviate(wv, 100))
				}
			}
			if !slices.Equal(ownMounts(hc.VolumeMounts), ownMounts(wc.VolumeMounts)) {
				return fmt.Sprintf("container %q mounts %v where the current annotations, resources and injector settings give %v", hc.Name, ownMounts(hc.VolumeMounts), ownMounts(wc.VolumeMounts))
			}
		}
	}
	for _, name := range []string{PMEMVolumeName, LibVolumeName} {
		h := slices.IndexFunc(have.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == name })
		w := slices.IndexFunc(want.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == name })
		switch {
		case h < 0 && w >= 0:
			return fmt.Sprintf("volume %q is missing", name)
		case h >= 0 && w < 0:
			return fmt.Sprintf("volume %q is not used by the current mode %s", name, modeOf(want))
		case h >= 0 && !equality.Semantic.DeepEqual(have.Spec.Volumes[h].VolumeSource, want.Spec.Volumes[w].VolumeSource):
			return fmt.Sprintf("volume %q differs from what the current annotations produce", name)
		}
	}
	for k, v := range want.Spec.NodeSelector {
		if have.Spec.NodeSelector[k] != v {
			return fmt.Sprintf("nodeSelector %s=%q is missing", k, v)
		}
	}
	return ""
}

func modeOf(pod *corev1.Pod) Mode {
	if m := Mode(pod.Annotations[AnnotationMode]); m != "" {
		return m
	}
	return ModeFSDAX
}

func envOf(env []corev1.EnvVar, name string) (string, bool) {
	for _, e := range env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// ownMounts lists the injector's mounts of a container as name:path.
func ownMounts(ms []corev1.VolumeMount) []string {
	var out []string
	for _, m := range ms {
		if m.Name == PMEMVolumeName || m.Name == LibVolumeName {
			out = append(out, m.Name+":"+m.MountPath)
		}
	}
	return out
}

// LabelOptInWarning is the warning for a pod whose opt-in was written as a
// label (the Istio habit): nothing reads it there, and without a word the
// pod silently runs on DRAM. The webhook and pmem-inject both use it.
func LabelOptInWarning(value string) string {
	return fmt.Sprintf("label %s=%q has no effect: the PMEM opt-in is an annotation; move it to metadata.annotations (for a workload: spec.template.metadata.annotations)",
		AnnotationDirect, Abbreviate(value, 40))
}

// LabelOS is the well-known node label that says a node's operating system.
const LabelOS = "kubernetes.io/os"

// windowsMarker describes the first field (with its value) by which the
// pod says it runs on Windows, or returns "" for a Linux or unspecified pod. A pod
// says so through spec.os, a node selector or a required node affinity
// that only allows Windows nodes, or windowsOptions in a security context.
func windowsMarker(pod *corev1.Pod) string {
	spec := &pod.Spec
	if spec.OS != nil && spec.OS.Name == corev1.Windows {
		return fmt.Sprintf("spec.os.name=%q", spec.OS.Name)
	}
	if v := spec.NodeSelector[LabelOS]; v == string(corev1.Windows) {
		return fmt.Sprintf("spec.nodeSelector %s=%q", LabelOS, v)
	}
	if a := spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		// Terms are ORed: the pod is Windows-only if every term is.
		terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
		if len(terms) > 0 && !slices.ContainsFunc(terms, func(t corev1.NodeSelectorTerm) bool { return !windowsOnlyTerm(t) }) {
			return fmt.Sprintf("spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution (every term requires %s=%q)", LabelOS, corev1.Windows)
		}
	}
	if sc := spec.SecurityContext; sc != nil && sc.WindowsOptions != nil {
		return "spec.securityContext.windowsOptions (set)"
	}
	for _, list := range []struct {
		field string
		cs    []corev1.Container
	}{{"spec.initContainers", spec.InitContainers}, {"spec.containers", spec.Containers}} {
		for i, c := range list.cs {
			if c.SecurityContext != nil && c.SecurityContext.WindowsOptions != nil {
				return fmt.Sprintf("%s[%d].securityContext.windowsOptions (set, container %q)", list.field, i, c.Name)
			}
		}
	}
	return ""
}

// windowsOnlyTerm reports whether a node selector term admits only
// Windows nodes through the kubernetes.io/os label.
func windowsOnlyTerm(t corev1.NodeSelectorTerm) bool {
	for _, e := range t.MatchExpressions {
		if e.Key != LabelOS {
			continue
		}
		switch e.Operator {
		case corev1.NodeSelectorOpIn:
			if len(e.Values) > 0 && !slices.ContainsFunc(e.Values, func(v string) bool { return v != string(corev1.Windows) }) {
				return true
			}
		case corev1.NodeSelectorOpNotIn:
			if slices.Contains(e.Values, string(corev1.Linux)) {
				return true
			}
		}
	}
	return false
}

// target is a container the preload is injected into: an app container
// (spec.containers[i]) or a native sidecar (spec.initContainers[i] with
// restartPolicy Always), which is a long-running app container too.
type target struct {
	init bool
	i    int
}

func (t target) of(spec *corev1.PodSpec) *corev1.Container {
	if t.init {
		return &spec.InitContainers[t.i]
	}
	return &spec.Containers[t.i]
}

func hasMemoryLimit(c *corev1.Container) bool {
	_, ok := c.Resources.Limits[corev1.ResourceMemory]
	return ok
}

// IsNativeSidecar reports whether an init container keeps running beside
// the app containers (Kubernetes >= 1.29).
func IsNativeSidecar(c *corev1.Container) bool {
	return c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

// targetContainers resolves the containers annotation to app containers and
// native sidecars. The default, when the annotation is absent: every app
// container, unless a native sidecar runs one of the target processes;
// then the containers (app or native sidecar) that run one. That makes
// the common "Redis as a native sidecar of a web app" pod put Redis, and
// only Redis, on PMEM, while pods without native sidecars keep the
// simple "all app containers" rule.
func targetContainers(pod *corev1.Pod, opts *Options, processes []string) ([]target, error) {
	if len(pod.Spec.Containers) == 0 {
		return nil, deny("pod has no containers to inject PMEM into")
	}
	spec := &pod.Spec
	if opts.Containers == nil {
		var sidecars []target
		for i := range spec.InitContainers {
			if c := &spec.InitContainers[i]; IsNativeSidecar(c) && runsTargetProcess(c, processes) {
				sidecars = append(sidecars, target{init: true, i: i})
			}
		}
		var out []target
		for i := range spec.Containers {
			if sidecars == nil || runsTargetProcess(&spec.Containers[i], processes) {
				out = append(out, target{i: i})
			}
		}
		return append(sidecars, out...), nil
	}
	var out []target
	for _, name := range opts.Containers {
		if i := slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == name }); i >= 0 {
			out = append(out, target{i: i})
			continue
		}
		i := slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == name })
		if i >= 0 && IsNativeSidecar(&spec.InitContainers[i]) {
			out = append(out, target{init: true, i: i})
			continue
		}
		var names []string
		for k := range spec.InitContainers {
			if IsNativeSidecar(&spec.InitContainers[k]) {
				names = append(names, spec.InitContainers[k].Name+" (native sidecar)")
			}
		}
		for _, c := range spec.Containers {
			names = append(names, c.Name)
		}
		kind := "no such container"
		if i >= 0 {
			kind = "it is an init container that runs to completion before the app starts; only app containers and native sidecars (restartPolicy: Always) can run on PMEM"
		}
		return nil, &DeniedError{Err: invalid(AnnotationContainers, strings.Join(opts.Containers, ","),
			"names %q (%s); the pod's containers that can run on PMEM are: %s", name, kind, strings.Join(names, ", "))}
	}
	// Native sidecars first, each list in pod order: the order the
	// containers start in, and a stable order for the output.
	slices.SortFunc(out, func(a, b target) int {
		if a.init != b.init {
			if a.init {
				return -1
			}
			return 1
		}
		return a.i - b.i
	})
	return out, nil
}

// runsTargetProcess guesses whether a container runs one of the processes
// the preload tiers: its command or args name the program, or its image
// is named after it (redis for redis-server).
func runsTargetProcess(c *corev1.Container, processes []string) bool {
	name := c.Image[strings.LastIndex(c.Image, "/")+1:]
	if i := strings.IndexAny(name, ":@"); i >= 0 {
		name = name[:i]
	}
	for _, p := range processes {
		if name != "" && (name == p || strings.HasPrefix(p, name+"-")) {
			return true
		}
		for _, a := range append(slices.Clip(c.Command), c.Args...) {
			for _, f := range strings.Fields(a) {
				if f[strings.LastIndex(f, "/")+1:] == p {
					return true
				}
			}
		}
	}
	return false
}

// checkCollisions refuses pods that already use one of our names for
// something of their own: merging would silently change what they mount.
func checkCollisions(pod *corev1.Pod, targets []target, cfg *Config) error {
	var errs []error
	for _, v := range pod.Spec.Volumes {
		if v.Name == PMEMVolumeName || v.Name == LibVolumeName {
			// A StatefulSet's volumeClaimTemplate becomes a pod volume of its
			// name, and a claim template cannot be renamed in place: say so,
			// since the user may never have written a volume of that name.
			errs = append(errs, fmt.Errorf("pod already has a volume named %q (a StatefulSet volumeClaimTemplate of that name becomes one); "+
				"the PMEM injector needs that name: rename the volume, or recreate the StatefulSet with the claim template renamed "+
				"(kubectl delete statefulset NAME --cascade=orphan keeps the pods and PVCs)", v.Name))
		}
	}
	for _, c := range append(slices.Clip(pod.Spec.InitContainers), pod.Spec.Containers...) {
		if c.Name == InitContainerName {
			errs = append(errs, fmt.Errorf("pod already has a container named %q; the PMEM injector needs that name for its init container: rename the container", c.Name))
		}
		// In any container, not only the targets: checking an injected pod
		// again (reinvocation, pmem-inject) and un-injecting it read these
		// names as the injector's wherever they are, so a non-target
		// container carrying one was injected once, then refused, and its
		// value dropped by un-injection (found in the field re-run).
		for _, e := range c.Env {
			if e.Name == EnvMemTiers || e.Name == EnvTargetProcesses || e.Name == EnvContainerName {
				errs = append(errs, fmt.Errorf("container %q already sets %s, which the PMEM injector owns: remove it and use the pmem.alibabacloud.com/* annotations", c.Name, e.Name))
			}
		}
	}
	for _, t := range targets {
		c := t.of(&pod.Spec)
		for _, m := range c.VolumeMounts {
			if m.MountPath == PMEMMountPath || m.MountPath == cfg.LibDir ||
				strings.HasPrefix(m.MountPath, PMEMMountPath+"/") || strings.HasPrefix(m.MountPath, cfg.LibDir+"/") {
				errs = append(errs, fmt.Errorf("container %q already mounts volume %q at %s, where the PMEM injector mounts its own: move that mount", c.Name, m.Name, m.MountPath))
			}
		}
		for _, e := range c.Env {
			switch e.Name {
			case EnvLDPreload:
				if e.ValueFrom != nil {
					errs = append(errs, fmt.Errorf("container %q sets %s with valueFrom, which cannot be joined with the PMEM preload at admission: set it as a plain value", c.Name, EnvLDPreload))
				}
			}
		}
	}
	if len(errs) > 0 {
		return &DeniedError{Err: errors.Join(errs...)}
	}
	return nil
}

// injection is the plan for one pod, computed before anything is built so
// that every refusal happens before any output exists.
type injection struct {
	pod     *corev1.Pod
	cfg     *Config
	opts    *Options
	targets []target

	totalSize  resource.Quantity // PVC request (fsdax)
	sizeLimits []int64           // PMEM_SIZE_LIMIT per target (fsdax)
	processes  []string
	warnings   []string
}

const mib = 1 << 20

// pmemHeadroom is what the memkind heap leaves unused on the PMEM volume.
// The CSI driver formats a filesystem of exactly the PVC size; ext4 and xfs
// keep part of it for the journal (up to 1 GiB), inode tables and
// allocation metadata — about 2-3% on ext4 with default mkfs settings. If
// memkind were allowed the full size, its last fallocate would fail with
// ENOSPC and the allocation would return NULL inside Redis. 4% (at least
// 64 MiB) covers both filesystems with margin.
func pmemHeadroom(total int64) int64 {
	return max(total/25, 64*mib)
}

// minHeapPerContainer is the smallest heap memkind's FS_DAX kind can be
// created with (MEMKIND_PMEM_MIN_SIZE is 16 MiB) plus room for arenas.
const minHeapPerContainer = 32 * mib

func (in *injection) plan() error {
	in.processes = in.opts.Processes
	if in.processes == nil {
		in.processes = in.cfg.TargetProcesses
	}
	spec := &in.pod.Spec

	for _, t := range in.targets {
		if c := t.of(spec); !hasMemoryLimit(c) && (in.opts.Mode == ModeKMEM || in.opts.Size != nil) {
			in.warn("container %q has no memory limit: its DRAM and PMEM use are unbounded; set resources.limits.memory", c.Name)
		}
	}

	if in.opts.Mode == ModeFSDAX {
		if err := in.planSize(); err != nil {
			return err
		}
		for _, t := range in.targets {
			c := t.of(spec)
			in.warnNoFSGroup(c)
			if runsForkingRedis(c, in.processes) {
				// Forks are safe (the preload remaps the heap copy-on-write
				// for the child's life), but not free: say what it costs.
				in.warn("container %q: Redis forks to save (RDB, AOF rewrite, replicas); on fsdax, memory written or allocated "+
					"during a save is on DRAM until written back: size memory limits for it (docs/node.md)", c.Name)
				if seccompRuntimeDefault(in.pod, c) {
					in.warn("container %q: seccompProfile RuntimeDefault refuses userfaultfd: the fsdax write-back after a save "+
						"pauses Redis in ~1 ms steps (longer if CPU-starved), 0.3-3 s/GiB in all (docs/node.md)", c.Name)
				}
			}
			if daemonizes(c) {
				in.warn("container %q runs redis-server with --daemonize yes: the daemon is a forked child, whose heap the fsdax preload keeps off the shared PMEM file, so it runs on DRAM; run Redis in the foreground", c.Name)
			}
		}
	}

	if in.opts.Mode == ModeKMEM && len(in.cfg.KMEMNodeSelector) > 0 {
		for _, k := range slices.Sorted(maps.Keys(in.cfg.KMEMNodeSelector)) {
			want := in.cfg.KMEMNodeSelector[k]
			if have, ok := in.pod.Spec.NodeSelector[k]; ok && have != want {
				return deny("pod nodeSelector %s=%q conflicts with %s=%q, which mode kmem requires to land on nodes with PMEM onlined as memory",
					k, have, k, want)
			}
		}
		in.warn("mode kmem: added nodeSelector %s so the pod lands on nodes whose PMEM is onlined as a NUMA node", FormatSelector(in.cfg.KMEMNodeSelector))
	}
	// Un-injecting a kmem template keeps the selector (it may be the
	// user's), so a switch back to fsdax can leave the pod pinned to the
	// nodes meant for kmem.
	if in.opts.Mode == ModeFSDAX && len(in.cfg.KMEMNodeSelector) > 0 && hasAll(in.pod.Spec.NodeSelector, in.cfg.KMEMNodeSelector) {
		in.warn("mode fsdax, but the pod keeps nodeSelector %s, which the injector adds for mode kmem: if it is left from a kmem injection, remove it", FormatSelector(in.cfg.KMEMNodeSelector))
	}

	for _, t := range in.targets {
		c := t.of(spec)
		in.warnEnvFrom(c)
		for _, e := range c.Env {
			if e.Name == EnvLDPreload && e.Value != "" && !containsPath(e.Value, in.preloadPath()) {
				in.warn("container %q already sets %s=%q: the PMEM preload goes first so that it interposes mmap",
					c.Name, EnvLDPreload, Abbreviate(e.Value, 60))
			}
		}
	}
	return nil
}

// warnNoFSGroup: a server running as a non-root uid must be able to create
// its heap file on /mnt/pmem. A fresh volume's root is root:root 0755, and
// only fsGroup makes the kubelet hand it to the pod's group (the preload's
// PATH/heap fallback needs a root process in the container, which an image
// started directly as that uid does not have). Only an explicit runAsUser is
// known here: an image's USER is not.
func (in *injection) warnNoFSGroup(c *corev1.Container) {
	uid := (*int64)(nil)
	if sc := in.pod.Spec.SecurityContext; sc != nil {
		if sc.FSGroup != nil {
			return
		}
		uid = sc.RunAsUser
	}
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		uid = c.SecurityContext.RunAsUser
	}
	if uid == nil || *uid == 0 {
		return
	}
	in.warn("container %q runs as uid %d with no pod securityContext.fsGroup: on a root-owned PMEM volume it cannot create "+
		"its heap file, which stays on DRAM; set fsGroup (e.g. %d)", c.Name, *uid, *uid)
}

// warnEnvFrom warns about envFrom sources that may carry LD_PRELOAD. Their
// content is not visible at admission, and the injected env entry wins
// over envFrom, so an LD_PRELOAD they set would silently be dropped.
// valueFrom is denied because it certainly sets LD_PRELOAD; an envFrom
// only may, and denying every pod with an envFrom ConfigMap would refuse
// the common case, so this warns. An explicit env LD_PRELOAD already
// overrides envFrom (the container's own choice), and a prefix that
// cannot begin "LD_PRELOAD" cannot produce it: both are left alone.
func (in *injection) warnEnvFrom(c *corev1.Container) {
	if slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == EnvLDPreload }) {
		return
	}
	for _, src := range c.EnvFrom {
		if !strings.HasPrefix(EnvLDPreload, src.Prefix) {
			continue
		}
		var from string
		switch {
		case src.ConfigMapRef != nil:
			from = fmt.Sprintf("configMapRef %q", src.ConfigMapRef.Name)
		case src.SecretRef != nil:
			from = fmt.Sprintf("secretRef %q", src.SecretRef.Name)
		default:
			from = "an envFrom source"
		}
		if src.Prefix != "" {
			from += fmt.Sprintf(" (prefix %q)", src.Prefix)
		}
		in.warn("container %q: envFrom %s may set %s, which the injected env overrides; if so, set %s in env instead (joined with the PMEM preload)",
			c.Name, Abbreviate(from, 50), EnvLDPreload, EnvLDPreload)
	}
}

// planSize decides the PVC size and each target's share of it.
func (in *injection) planSize() error {
	spec := &in.pod.Spec
	shares := make([]int64, len(in.targets))
	var total int64
	if in.opts.Size != nil {
		total = in.opts.Size.Value()
		for k := range shares {
			shares[k] = total / int64(len(shares))
		}
	} else {
		for k, t := range in.targets {
			c := t.of(spec)
			limit, ok := c.Resources.Limits[corev1.ResourceMemory]
			if !ok {
				return deny("annotation %s is not set and container %q has no memory limit to derive it from: set %s (e.g. 60Gi) or resources.limits.memory on the container",
					AnnotationSize, c.Name, AnnotationSize)
			}
			share, err := derivedShare(c.Name, limit, in.cfg.SizeFactor)
			if err != nil {
				return err
			}
			shares[k] = share
			// Each share is at most maxSize, so the sum of a pod's
			// shares cannot overflow int64 before this check stops it.
			total += share
			if total > maxSize.Value() {
				return deny("annotation %s is not set and the size derived from the target containers' memory limits (%s so far, at container %q) exceeds the maximum %s: set %s (at most %s) or lower resources.limits.memory",
					AnnotationSize, formatBytes(total), c.Name, maxSize.String(), AnnotationSize, maxSize.String())
			}
		}
		if total < minSize.Value() {
			return deny("annotation %s is not set and the size derived from the target containers' memory limits is %s, below the minimum %s: set %s (at least %s) or raise resources.limits.memory",
				AnnotationSize, formatBytes(total), minSize.String(), AnnotationSize, minSize.String())
		}
	}
	usable := total - pmemHeadroom(total)
	in.sizeLimits = make([]int64, len(shares))
	for k, share := range shares {
		// Scale each share by the same usable fraction; big.Int is not
		// needed: total <= 64Ti and usable/total < 1.
		limit := int64(float64(share) * (float64(usable) / float64(total)))
		limit = limit / mib * mib
		if limit < minHeapPerContainer {
			return deny("PMEM size %s leaves %d MiB for container %q after filesystem headroom; at least %d MiB per container is needed: raise %s",
				resource.NewQuantity(total, resource.BinarySI).String(), limit/mib, in.targets[k].of(spec).Name, minHeapPerContainer/mib, AnnotationSize)
		}
		in.sizeLimits[k] = limit
	}
	in.totalSize = *resource.NewQuantity(total, resource.BinarySI)
	return nil
}

// derivedShare is one container's part of a derived PMEM size: its memory
// limit times the size factor, rounded up to whole MiB. The product is
// checked against the size annotation's bounds in floating point *before*
// any int64 conversion: a 5Ei limit times 2 does not fit in int64, and a
// float64 above 2^63 converts to a negative number.
func derivedShare(container string, limit resource.Quantity, factor float64) (int64, error) {
	if limit.Sign() <= 0 {
		return 0, deny("container %q has memory limit %s, which cannot size a PMEM volume: set resources.limits.memory to a positive size such as 1Gi, or set %s",
			container, limit.String(), AnnotationSize)
	}
	f := limit.AsApproximateFloat64() * factor
	if f > float64(maxSize.Value()) {
		return 0, deny("container %q memory limit %s times the size factor %v exceeds the maximum PMEM size %s: set %s (at most %s) or lower resources.limits.memory",
			container, limit.String(), factor, maxSize.String(), AnnotationSize, maxSize.String())
	}
	if f < mib && limit.MilliValue()%1000 != 0 {
		// "1500m" is 1.5 bytes: almost certainly meant as 1500Mi.
		return 0, deny("container %q memory limit %s is a fraction of a byte count (m means milli, not Mi), too small to size PMEM from: write e.g. %sMi, or set %s (at least %s)",
			container, limit.String(), strings.TrimSuffix(limit.String(), "m"), AnnotationSize, minSize.String())
	}
	share := int64(math.Ceil(f))
	return (share + mib - 1) / mib * mib, nil // whole MiB: readable PVC sizes
}

// formatBytes renders a byte count for messages: exact binary units when
// they fit, never a negative or scientific figure.
func formatBytes(n int64) string {
	return resource.NewQuantity(n, resource.BinarySI).String()
}

func (in *injection) warn(format string, args ...any) {
	in.warnings = append(in.warnings, fmt.Sprintf(format, args...))
}

func (in *injection) preloadPath() string { return in.cfg.LibDir + "/" + PreloadLibrary }

// memTiers renders MEMKIND_MEM_TIERS in memkind's own syntax, which both
// libmemtier and our preload parse.
func (in *injection) memTiers(sizeLimit int64) string {
	pmemRatio := 1
	var b strings.Builder
	if r := in.opts.DRAMRatio; r != nil {
		fmt.Fprintf(&b, "KIND:DRAM,RATIO:%d;", r.DRAM)
		pmemRatio = r.PMEM
	}
	switch in.opts.Mode {
	case ModeKMEM:
		fmt.Fprintf(&b, "KIND:KMEM_DAX,RATIO:%d", pmemRatio)
	default:
		fmt.Fprintf(&b, "KIND:FS_DAX,PATH:%s,PMEM_SIZE_LIMIT:%d,RATIO:%d", PMEMMountPath, sizeLimit, pmemRatio)
	}
	b.WriteString(";POLICY:STATIC_RATIO")
	return b.String()
}

// build assembles the output pod. Only the fields that change are copied.
func (in *injection) build() *corev1.Pod {
	src := in.pod
	out := *src
	out.ObjectMeta.Annotations = copyMap(src.Annotations)
	out.ObjectMeta.Annotations[AnnotationStatus] = StatusInjected

	out.Spec.Volumes = append(slices.Clip(src.Spec.Volumes), in.volumes()...)
	// The init container goes last, or right before the first native
	// sidecar that is a target: sidecars start in order with the init
	// containers, and one started before the libraries are copied would
	// run without its preload (the loader only warns).
	at := len(src.Spec.InitContainers)
	if len(in.targets) > 0 && in.targets[0].init {
		at = in.targets[0].i
	}
	out.Spec.InitContainers = slices.Insert(slices.Clone(src.Spec.InitContainers), at, InitContainer(in.cfg))
	out.Spec.Containers = slices.Clone(src.Spec.Containers)
	for k, t := range in.targets {
		var c *corev1.Container
		if t.init {
			idx := t.i
			if idx >= at {
				idx++
			}
			c = &out.Spec.InitContainers[idx]
		} else {
			c = &out.Spec.Containers[t.i]
		}
		var limit int64
		if in.sizeLimits != nil {
			limit = in.sizeLimits[k]
		}
		c.VolumeMounts = append(slices.Clip(c.VolumeMounts), in.mounts()...)
		c.Env = in.env(c.Name, c.Env, limit)
	}

	if in.opts.Mode == ModeKMEM && len(in.cfg.KMEMNodeSelector) > 0 {
		out.Spec.NodeSelector = copyMap(src.Spec.NodeSelector)
		for k, v := range in.cfg.KMEMNodeSelector {
			out.Spec.NodeSelector[k] = v
		}
	}
	return &out
}

func (in *injection) volumes() []corev1.Volume {
	lib := corev1.Volume{Name: LibVolumeName, VolumeSource: corev1.VolumeSource{
		EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: ptr(libVolumeSizeLimit.DeepCopy())},
	}}
	if in.opts.Mode == ModeKMEM {
		return []corev1.Volume{lib}
	}
	var pmem corev1.Volume
	if in.opts.Claim != "" {
		pmem = corev1.Volume{Name: PMEMVolumeName, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: in.opts.Claim},
		}}
	} else {
		sc := in.opts.StorageClass
		if sc == "" {
			sc = in.cfg.DefaultStorageClass
		}
		pmem = corev1.Volume{Name: PMEMVolumeName, VolumeSource: corev1.VolumeSource{
			Ephemeral: &corev1.EphemeralVolumeSource{VolumeClaimTemplate: &corev1.PersistentVolumeClaimTemplate{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{LabelManagedBy: ManagedByValue}},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					StorageClassName: &sc,
					VolumeMode:       ptr(corev1.PersistentVolumeFilesystem),
					Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: in.totalSize.DeepCopy()},
					},
				},
			}},
		}}
	}
	return []corev1.Volume{pmem, lib}
}

func (in *injection) mounts() []corev1.VolumeMount {
	lib := corev1.VolumeMount{Name: LibVolumeName, MountPath: in.cfg.LibDir, ReadOnly: true}
	if in.opts.Mode == ModeKMEM {
		return []corev1.VolumeMount{lib}
	}
	return []corev1.VolumeMount{{Name: PMEMVolumeName, MountPath: PMEMMountPath}, lib}
}

// env returns the target container's env with the preload added. The
// input slice is not modified. name is the container's name, which the
// preload puts in its status file's name (EnvContainerName).
func (in *injection) env(name string, env []corev1.EnvVar, sizeLimit int64) []corev1.EnvVar {
	out := make([]corev1.EnvVar, len(env), len(env)+4)
	copy(out, env)
	preload := in.preloadPath()
	joined := false
	for k := range out {
		if out[k].Name != EnvLDPreload {
			continue
		}
		joined = true
		switch {
		case out[k].Value == "":
			out[k].Value = preload
		case !containsPath(out[k].Value, preload):
			// First: the first object defining malloc wins interposition.
			out[k].Value = preload + ":" + out[k].Value
		}
	}
	if !joined {
		out = append(out, corev1.EnvVar{Name: EnvLDPreload, Value: preload})
	}
	return append(out,
		corev1.EnvVar{Name: EnvMemTiers, Value: in.memTiers(sizeLimit)},
		corev1.EnvVar{Name: EnvTargetProcesses, Value: strings.Join(in.processes, ",")},
		corev1.EnvVar{Name: EnvContainerName, Value: name},
	)
}

// The init container's resources: it copies ~12 MiB once.
var (
	initCPURequest    = resource.MustParse("10m")
	initMemoryRequest = resource.MustParse("16Mi")
	initCPULimit      = resource.MustParse("500m")
	initMemoryLimit   = resource.MustParse("64Mi")
)

// InitContainer is the init container injected into every pod: it depends
// only on the cluster configuration, so callers may cache its encoding.
func InitContainer(cfg *Config) corev1.Container {
	return corev1.Container{
		Name:            InitContainerName,
		Image:           cfg.MemkindImage,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Command:         []string{InitProgram},
		Args:            []string{"--dest=" + cfg.LibDir},
		VolumeMounts:    []corev1.VolumeMount{{Name: LibVolumeName, MountPath: cfg.LibDir}},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    initCPURequest.DeepCopy(),
				corev1.ResourceMemory: initMemoryRequest.DeepCopy(),
			},
			Limits: corev1.ResourceList{
				corev1.ResourceCPU:    initCPULimit.DeepCopy(),
				corev1.ResourceMemory: initMemoryLimit.DeepCopy(),
			},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		// PodSecurity "restricted" compliant whatever the pod sets: the
		// init program only copies files into an emptyDir.
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                ptr(int64(65532)),
			RunAsGroup:               ptr(int64(65532)),
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

// seccompRuntimeDefault reports whether container c of pod runs under the
// runtime's default seccomp profile by its spec (the container's
// seccompProfile, else the pod's). containerd's default profile (1.6 to 2.x)
// does not allow userfaultfd, which the fsdax write-back's pre-copy needs
// (measured in pods: TestPods/fork_write-back). A pod that sets none gets the
// kubelet's default, RuntimeDefault only with seccompDefault: not visible here.
func seccompRuntimeDefault(pod *corev1.Pod, c *corev1.Container) bool {
	var sp *corev1.SeccompProfile
	if pod.Spec.SecurityContext != nil {
		sp = pod.Spec.SecurityContext.SeccompProfile
	}
	if c.SecurityContext != nil && c.SecurityContext.SeccompProfile != nil {
		sp = c.SecurityContext.SeccompProfile
	}
	return sp != nil && sp.Type == corev1.SeccompProfileTypeRuntimeDefault
}

// IsInitContainer reports whether c is the init container Apply adds for
// cfg (InitContainer), so a caller that caches its encoding can recognise
// it among the values of the JSON patch.
func IsInitContainer(c *corev1.Container, cfg *Config) bool {
	return c.Name == InitContainerName && c.Image == cfg.MemkindImage
}

// runsForkingRedis guesses whether the container runs a Redis that will
// fork for persistence: it must be a target of the preload, and its
// command line must not switch both RDB snapshots and AOF off.
func runsForkingRedis(c *corev1.Container, processes []string) bool {
	if !slices.ContainsFunc(processes, func(p string) bool { return strings.Contains(p, "redis") }) {
		return false
	}
	args := append(slices.Clip(c.Command), c.Args...)
	looksLikeRedis := isRedisImage(c.Image) ||
		slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, "redis-server") })
	if !looksLikeRedis {
		return false
	}
	saveOff, aofOn := false, false
	for k, a := range args {
		next := ""
		if k+1 < len(args) {
			next = args[k+1]
		}
		switch {
		case a == "--save" && (next == "" || next == `""` || next == "''"):
			saveOff = true
		case strings.Contains(a, `--save ""`) || strings.Contains(a, "--save ''"):
			saveOff = true
		case a == "--appendonly" && next == "yes", strings.Contains(a, "--appendonly yes"):
			aofOn = true
		}
	}
	return !saveOff || aofOn
}

// Abbreviate bounds a value quoted in a warning or an error message to n
// bytes (plus "..."): warnings stay under the 256 characters the apiserver
// passes on untruncated, and a hostile value cannot make a message large.
func Abbreviate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// isRedisImage matches images named redis or redis-something (not tools
// such as redis_exporter that only talk to Redis).
func isRedisImage(image string) bool {
	name := image[strings.LastIndex(image, "/")+1:]
	if i := strings.IndexAny(name, ":@"); i >= 0 {
		name = name[:i]
	}
	return (name == "redis" || strings.HasPrefix(name, "redis-")) && !strings.Contains(name, "exporter")
}

// daemonizes reports whether the command line asks Redis to fork into the
// background.
func daemonizes(c *corev1.Container) bool {
	args := append(slices.Clip(c.Command), c.Args...)
	for k, a := range args {
		if a == "--daemonize" && k+1 < len(args) && args[k+1] == "yes" || strings.Contains(a, "--daemonize yes") {
			return true
		}
	}
	return false
}

func containsPath(list, p string) bool {
	return slices.Contains(strings.FieldsFunc(list, func(r rune) bool { return r == ':' || r == ' ' }), p)
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// hasAll reports whether every key=value of want is in have.
func hasAll(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

// FormatSelector renders a node selector as sorted k="v" pairs, for
// messages and logs (values quoted: a value may contain "," or "=").
func FormatSelector(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+strconv.Quote(m[k]))
	}
	return strings.Join(parts, ",")
}

func ptr[T any](v T) *T { return &v }
