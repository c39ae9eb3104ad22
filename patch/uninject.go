package patch

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// UninjectResult is what Uninject did.
type UninjectResult struct {
	// Removed is true when the pod carried this project's injection and
	// Pod is the pod without it. False: Pod is the input pod itself.
	Removed bool
	Pod     *corev1.Pod
	// Notes say what was left in place for the user to judge (the kmem
	// node selector, which the user may have written too).
	Notes []string
}

// Uninject is the way back to DRAM for a manifest that was injected
// offline (pmem-inject) and no longer opts in: the template itself carries
// the injected pieces, and only the offline injector can remove them (the
// webhook mutates pods, never templates, and passes pods without the
// opt-in through untouched).
//
// For a pod whose opt-in is absent or "false" and which carries the
// injection (the status annotation says injected, and/or the pieces only
// the injector writes are there: its init container, its preload in
// LD_PRELOAD), it removes exactly those pieces: the init
// container, the volumes pmem and pmem-memkind, their mounts, the env
// MEMKIND_MEM_TIERS, PMEM_TARGET_PROCESSES and PMEM_CONTAINER_NAME (absent
// from injections made before it existed), the preload entry of
// LD_PRELOAD (the user's own entries stay) and the status annotation. A
// piece that has one of our names but is not what the injector generates
// is the user's, or was edited: it is refused with a *DeniedError naming
// the field, rather than guessed at.
//
// Like Apply, it never modifies its input. It works on fully decoded pods
// (pmem-inject), not on DecodePartial's.
func Uninject(pod *corev1.Pod, cfg *Config) (*UninjectResult, error) {
	if NeedsAdmission(pod.Annotations) {
		return &UninjectResult{Pod: pod}, nil
	}
	// Marked injected: every piece under our names must be ours. Not
	// marked (the user deleted the status with the opt-in): only the
	// pieces no one else writes say it is our injection, the init
	// container or our preload in LD_PRELOAD; a volume named pmem or
	// memkind's own MEMKIND_MEM_TIERS alone may be the user's, and such a
	// manifest passes through as before.
	marked := pod.Annotations[AnnotationStatus] == StatusInjected
	if !marked && !hasDistinctivePieces(pod, cfg) {
		return &UninjectResult{Pod: pod}, nil
	}
	if err := checkOwnPieces(pod, cfg); err != nil {
		return nil, err
	}
	out := removePieces(pod, cfg)
	res := &UninjectResult{Removed: true, Pod: out}
	if usesKMEM(pod) && len(cfg.KMEMNodeSelector) > 0 {
		var kept []string
		for k, v := range cfg.KMEMNodeSelector {
			if pod.Spec.NodeSelector[k] == v {
				kept = append(kept, k)
			}
		}
		if len(kept) > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("nodeSelector %s, which mode kmem adds, is kept (it may be your own): remove it if you did not write it",
				FormatSelector(cfg.KMEMNodeSelector)))
		}
	}
	return res, nil
}

// hasDistinctivePieces reports whether the pod has the init container or
// the preload entry in LD_PRELOAD: pieces only this injector writes.
func hasDistinctivePieces(pod *corev1.Pod, cfg *Config) bool {
	if slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == InitContainerName }) {
		return true
	}
	preload := cfg.LibDir + "/" + PreloadLibrary
	for _, c := range append(slices.Clip(pod.Spec.InitContainers), pod.Spec.Containers...) {
		if v, ok := envOf(c.Env, EnvLDPreload); ok && containsPath(v, preload) {
			return true
		}
	}
	return false
}

// usesKMEM reports whether any container's injected tiers are KMEM_DAX.
func usesKMEM(pod *corev1.Pod) bool {
	for _, c := range append(slices.Clip(pod.Spec.InitContainers), pod.Spec.Containers...) {
		if v, ok := envOf(c.Env, EnvMemTiers); ok && strings.Contains(v, "KIND:KMEM_DAX") {
			return true
		}
	}
	return false
}

// memTiersPattern matches every MEMKIND_MEM_TIERS value memTiers renders.
var memTiersPattern = regexp.MustCompile(`^(KIND:DRAM,RATIO:[0-9]+;)?(KIND:KMEM_DAX|KIND:FS_DAX,PATH:` + regexp.QuoteMeta(PMEMMountPath) + `,PMEM_SIZE_LIMIT:[0-9]+),RATIO:[0-9]+;POLICY:STATIC_RATIO$`)

// checkOwnPieces refuses a pod in which a piece with one of the injector's
// names differs from what the injector generates.
func checkOwnPieces(pod *corev1.Pod, cfg *Config) error {
	differs := func(field, what string) error {
		return deny("%s differs from what the PMEM injector generates (%s), so it is not removed as part of the injection: "+
			"if it is yours, rename it; if the injection was made with other injector settings (--lib-dir, --config), run the injector with those; if it was edited, remove its pieces by hand (init container %s, volumes %s and %s, their mounts, env %s, %s and %s, the preload in %s, annotation %s)",
			field, what, InitContainerName, PMEMVolumeName, LibVolumeName, EnvMemTiers, EnvTargetProcesses, EnvContainerName, EnvLDPreload, AnnotationStatus)
	}
	if v, ok := pod.Annotations[AnnotationStatus]; ok && v != StatusInjected {
		return differs(fmt.Sprintf("metadata.annotations %s=%q", AnnotationStatus, Abbreviate(v, 40)), fmt.Sprintf("%q", StatusInjected))
	}
	gen := &injection{cfg: cfg, opts: &Options{Mode: ModeFSDAX}}
	for i, v := range pod.Spec.Volumes {
		field := fmt.Sprintf("spec.volumes[%d] (%q)", i, v.Name)
		switch v.Name {
		case LibVolumeName:
			want := gen.volumes()[1]
			if !equality.Semantic.DeepEqual(v, want) {
				return differs(field, fmt.Sprintf("an emptyDir with sizeLimit %s", libVolumeSizeLimit.String()))
			}
		case PMEMVolumeName:
			if !isGeneratedPMEMVolume(&v) {
				return differs(field, "a generic ephemeral volume of one ReadWriteOnce Filesystem claim labelled "+LabelManagedBy+"="+ManagedByValue+", or a persistentVolumeClaim")
			}
		}
	}
	initWant := InitContainer(cfg)
	for i, c := range pod.Spec.InitContainers {
		if c.Name != InitContainerName {
			continue
		}
		// The image is the one setting that changes between releases and
		// flags: any image, everything else as generated.
		have := *c.DeepCopy()
		have.Image = initWant.Image
		if c.Image == "" || !equality.Semantic.DeepEqual(have, initWant) {
			return differs(fmt.Sprintf("spec.initContainers[%d] (%q)", i, c.Name), "command "+InitProgram+" --dest="+cfg.LibDir+" (--lib-dir), the injector's mounts, resources and securityContext, any image")
		}
	}
	check := func(list string, cs []corev1.Container) error {
		for i, c := range cs {
			if c.Name == InitContainerName {
				continue
			}
			for k, m := range c.VolumeMounts {
				field := fmt.Sprintf("%s[%d].volumeMounts[%d] (%q, container %q)", list, i, k, m.Name, c.Name)
				switch m.Name {
				case PMEMVolumeName:
					if !equality.Semantic.DeepEqual(m, corev1.VolumeMount{Name: PMEMVolumeName, MountPath: PMEMMountPath}) {
						return differs(field, "mountPath "+PMEMMountPath+", read-write")
					}
				case LibVolumeName:
					if !equality.Semantic.DeepEqual(m, corev1.VolumeMount{Name: LibVolumeName, MountPath: cfg.LibDir, ReadOnly: true}) {
						return differs(field, "mountPath "+cfg.LibDir+", readOnly")
					}
				}
			}
			for k, e := range c.Env {
				field := fmt.Sprintf("%s[%d].env[%d] (%s, container %q)", list, i, k, e.Name, c.Name)
				switch e.Name {
				case EnvMemTiers:
					if e.ValueFrom != nil || !memTiersPattern.MatchString(e.Value) {
						return differs(field, "a value such as KIND:FS_DAX,PATH:"+PMEMMountPath+",PMEM_SIZE_LIMIT:<bytes>,RATIO:1;POLICY:STATIC_RATIO")
					}
				case EnvTargetProcesses:
					if _, bad := parseList(e.Value, validateProcessName); e.ValueFrom != nil || bad != "" {
						return differs(field, "a comma list of program names")
					}
				case EnvContainerName:
					if e.ValueFrom != nil || e.Value != c.Name {
						return differs(field, fmt.Sprintf("the container's own name %q", c.Name))
					}
				}
			}
		}
		return nil
	}
	if err := check("spec.initContainers", pod.Spec.InitContainers); err != nil {
		return err
	}
	return check("spec.containers", pod.Spec.Containers)
}

// isGeneratedPMEMVolume reports whether v is a pmem volume as volumes()
// builds it, for any size and storage class, or any claim.
func isGeneratedPMEMVolume(v *corev1.Volume) bool {
	switch {
	case v.PersistentVolumeClaim != nil:
		want := corev1.Volume{Name: PMEMVolumeName, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: v.PersistentVolumeClaim.ClaimName},
		}}
		return v.PersistentVolumeClaim.ClaimName != "" && equality.Semantic.DeepEqual(*v, want)
	case v.Ephemeral != nil && v.Ephemeral.VolumeClaimTemplate != nil:
		spec := v.Ephemeral.VolumeClaimTemplate.Spec
		size, ok := spec.Resources.Requests[corev1.ResourceStorage]
		if !ok || spec.StorageClassName == nil {
			return false
		}
		opts := &Options{Mode: ModeFSDAX, StorageClass: *spec.StorageClassName}
		gen := &injection{cfg: &Config{}, opts: opts, totalSize: size}
		return equality.Semantic.DeepEqual(*v, gen.volumes()[0])
	}
	return false
}

// removePieces returns pod without the injector's pieces (checked by
// checkOwnPieces). Only the fields that change are copied.
func removePieces(pod *corev1.Pod, cfg *Config) *corev1.Pod {
	out := *pod
	if _, ok := pod.Annotations[AnnotationStatus]; ok {
		out.Annotations = copyMap(pod.Annotations)
		delete(out.Annotations, AnnotationStatus)
		if len(out.Annotations) == 0 {
			out.Annotations = nil
		}
	}
	if slices.ContainsFunc(pod.Spec.Volumes, isOwnVolume) {
		out.Spec.Volumes = slices.DeleteFunc(slices.Clone(pod.Spec.Volumes), isOwnVolume)
	}
	preload := cfg.LibDir + "/" + PreloadLibrary
	strip := func(cs []corev1.Container) []corev1.Container {
		cs = slices.DeleteFunc(slices.Clone(cs), func(c corev1.Container) bool { return c.Name == InitContainerName })
		for i := range cs {
			c := &cs[i]
			if slices.ContainsFunc(c.VolumeMounts, isOwnMount) {
				c.VolumeMounts = slices.DeleteFunc(slices.Clone(c.VolumeMounts), isOwnMount)
			}
			var env []corev1.EnvVar
			changed := false
			for _, e := range c.Env {
				switch {
				case e.Name == EnvMemTiers || e.Name == EnvTargetProcesses || e.Name == EnvContainerName:
					changed = true
					continue
				case e.Name == EnvLDPreload && e.ValueFrom == nil && containsPath(e.Value, preload):
					changed = true
					e.Value = withoutPreload(e.Value, preload)
					if e.Value == "" {
						continue
					}
				}
				env = append(env, e)
			}
			if changed {
				c.Env = env
			}
		}
		return cs
	}
	if len(pod.Spec.InitContainers) > 0 {
		out.Spec.InitContainers = strip(pod.Spec.InitContainers)
	}
	out.Spec.Containers = strip(pod.Spec.Containers)
	return &out
}

// withoutPreload removes the preload's entries from a colon-separated
// LD_PRELOAD; the user's entries stay, in order. An entry that also
// contains blank-separated paths keeps the others.
func withoutPreload(v, preload string) string {
	var kept []string
	for _, part := range strings.Split(v, ":") {
		fields := strings.Fields(part)
		if !slices.Contains(fields, preload) {
			kept = append(kept, part)
			continue
		}
		fields = slices.DeleteFunc(fields, func(f string) bool { return f == preload })
		if len(fields) > 0 {
			kept = append(kept, strings.Join(fields, " "))
		}
	}
	return strings.Join(kept, ":")
}

func isOwnVolume(v corev1.Volume) bool { return v.Name == PMEMVolumeName || v.Name == LibVolumeName }

func isOwnMount(m corev1.VolumeMount) bool {
	return m.Name == PMEMVolumeName || m.Name == LibVolumeName
}

// UninjectOperations turns Uninject's difference between orig and mut into
// RFC 6902 operations on orig's document: removals of elements (in
// descending index order, so each index is still valid when applied),
// LD_PRELOAD values replaced, and the status annotation removed. Like
// Operations, it looks only at the fields Uninject may change, so fields
// the Go types do not know are kept by the caller's document.
func UninjectOperations(orig, mut *corev1.Pod) ([]jsonpatch.Operation, error) {
	var ops []jsonpatch.Operation
	if _, had := orig.Annotations[AnnotationStatus]; had {
		if _, has := mut.Annotations[AnnotationStatus]; !has {
			if len(mut.Annotations) == 0 {
				ops = append(ops, jsonpatch.NewOperation("remove", "/metadata/annotations", nil))
			} else {
				ops = append(ops, jsonpatch.NewOperation("remove", "/metadata/annotations/"+escape(AnnotationStatus), nil))
			}
		}
	}
	lists := []struct {
		path      string
		orig, mut []corev1.Container
	}{
		{"/spec/initContainers", orig.Spec.InitContainers, mut.Spec.InitContainers},
		{"/spec/containers", orig.Spec.Containers, mut.Spec.Containers},
	}
	var removals []jsonpatch.Operation
	for _, l := range lists {
		kept, err := subsequence(l.path, names(l.orig, func(c corev1.Container) string { return c.Name }), names(l.mut, func(c corev1.Container) string { return c.Name }))
		if err != nil {
			return nil, err
		}
		// Edits inside kept containers first, at the original indexes;
		// the containers' removal afterwards.
		for j, i := range kept {
			base := l.path + "/" + strconv.Itoa(i)
			o, m := &l.orig[i], &l.mut[j]
			mk, err := subsequence(base+"/volumeMounts", names(o.VolumeMounts, func(v corev1.VolumeMount) string { return v.Name + ":" + v.MountPath }),
				names(m.VolumeMounts, func(v corev1.VolumeMount) string { return v.Name + ":" + v.MountPath }))
			if err != nil {
				return nil, err
			}
			ops = append(ops, removeOps(base+"/volumeMounts", len(o.VolumeMounts), mk)...)
			ek, err := subsequence(base+"/env", names(o.Env, func(e corev1.EnvVar) string { return e.Name }), names(m.Env, func(e corev1.EnvVar) string { return e.Name }))
			if err != nil {
				return nil, err
			}
			for jj, ii := range ek {
				if o.Env[ii].Value != m.Env[jj].Value {
					ops = append(ops, jsonpatch.NewOperation("replace", base+"/env/"+strconv.Itoa(ii)+"/value", m.Env[jj].Value))
				}
			}
			ops = append(ops, removeOps(base+"/env", len(o.Env), ek)...)
		}
		removals = append(removals, removeOps(l.path, len(l.orig), kept)...)
	}
	ops = append(ops, removals...)
	vk, err := subsequence("/spec/volumes", names(orig.Spec.Volumes, func(v corev1.Volume) string { return v.Name }), names(mut.Spec.Volumes, func(v corev1.Volume) string { return v.Name }))
	if err != nil {
		return nil, err
	}
	return append(ops, removeOps("/spec/volumes", len(orig.Spec.Volumes), vk)...), nil
}

func names[T any](list []T, name func(T) string) []string {
	out := make([]string, len(list))
	for i, x := range list {
		out[i] = name(x)
	}
	return out
}

// subsequence matches mut, a list with elements removed from orig, to
// orig's indexes (kept[j] is the index in orig of mut[j]).
func subsequence(path string, orig, mut []string) ([]int, error) {
	kept := make([]int, 0, len(mut))
	i := 0
	for _, name := range mut {
		for i < len(orig) && orig[i] != name {
			i++
		}
		if i == len(orig) {
			return nil, fmt.Errorf("%s: %q is not an element of the original list; un-injection only removes", path, name)
		}
		kept = append(kept, i)
		i++
	}
	return kept, nil
}

// removeOps removes every index of a list of n elements not in kept, the
// highest first. A list emptied entirely is removed as a whole field, as
// it was absent before injection.
func removeOps(path string, n int, kept []int) []jsonpatch.Operation {
	if n > 0 && len(kept) == 0 {
		return []jsonpatch.Operation{jsonpatch.NewOperation("remove", path, nil)}
	}
	var ops []jsonpatch.Operation
	for i := n - 1; i >= 0; i-- {
		if !slices.Contains(kept, i) {
			ops = append(ops, jsonpatch.NewOperation("remove", path+"/"+strconv.Itoa(i), nil))
		}
	}
	return ops
}
