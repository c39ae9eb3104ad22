package patch

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
)

// Operations turns the difference between the pod the apiserver sent (orig)
// and the pod Apply built from it (mut) into RFC 6902 operations. The
// webhook answers with them, and pmem-inject applies them to manifests.
//
// It looks only at the fields Apply may change, and it only ever adds
// or replaces: diffing whole re-encoded documents (the CustomDefaulter way)
// costs two marshals per request and emits "remove" operations for fields
// that a newer apiserver knows and these Go types do not.
func Operations(orig, mut *corev1.Pod) ([]jsonpatch.Operation, error) {
	var ops []jsonpatch.Operation
	ops = diffMap(ops, "/metadata/annotations", orig.Annotations, mut.Annotations)
	ops = diffMap(ops, "/spec/nodeSelector", orig.Spec.NodeSelector, mut.Spec.NodeSelector)
	var err error
	if ops, err = appendOnly(ops, "/spec/volumes", orig.Spec.Volumes, mut.Spec.Volumes); err != nil {
		return nil, err
	}
	// The injector adds at most one init container: last, or before the
	// first native sidecar it targets. The operations apply in order, so
	// the sidecars' own changes below address them at their new indexes.
	oi, mi := orig.Spec.InitContainers, mut.Spec.InitContainers
	at := len(oi)
	switch {
	case len(mi) == len(oi):
	case len(mi) == len(oi)+1:
		for k := range oi {
			if oi[k].Name != mi[k].Name {
				at = k
				break
			}
		}
		if at == len(oi) {
			if ops, err = appendOnly(ops, "/spec/initContainers", oi, mi); err != nil {
				return nil, err
			}
		} else {
			ops = append(ops, jsonpatch.NewOperation("add", "/spec/initContainers/"+strconv.Itoa(at), mi[at]))
		}
	default:
		return nil, fmt.Errorf("initContainers changed from %d to %d; the injector adds at most one", len(oi), len(mi))
	}
	for i := range oi {
		j := i
		if i >= at {
			j++
		}
		if ops, err = diffContainer(ops, "/spec/initContainers/"+strconv.Itoa(j), &oi[i], &mi[j]); err != nil {
			return nil, err
		}
	}
	if len(orig.Spec.Containers) != len(mut.Spec.Containers) {
		return nil, fmt.Errorf("containers changed from %d to %d; the injector never adds app containers", len(orig.Spec.Containers), len(mut.Spec.Containers))
	}
	for i := range orig.Spec.Containers {
		if ops, err = diffContainer(ops, "/spec/containers/"+strconv.Itoa(i), &orig.Spec.Containers[i], &mut.Spec.Containers[i]); err != nil {
			return nil, err
		}
	}
	return ops, nil
}

// diffContainer emits the mounts and env the injector added to a target.
func diffContainer(ops []jsonpatch.Operation, base string, o, m *corev1.Container) ([]jsonpatch.Operation, error) {
	ops, err := appendOnly(ops, base+"/volumeMounts", o.VolumeMounts, m.VolumeMounts)
	if err != nil {
		return nil, err
	}
	return diffEnv(ops, base+"/env", o.Env, m.Env)
}

// diffMap adds the whole map when the original has none (a JSON pointer
// cannot address a key of an absent object), else one op per changed key.
func diffMap(ops []jsonpatch.Operation, path string, orig, mut map[string]string) []jsonpatch.Operation {
	if len(mut) == 0 || maps.Equal(orig, mut) {
		return ops
	}
	if orig == nil {
		return append(ops, jsonpatch.NewOperation("add", path, mut))
	}
	for _, k := range slices.Sorted(maps.Keys(mut)) {
		v := mut[k]
		if old, ok := orig[k]; !ok || old != v {
			// "add" on an existing member replaces it (RFC 6902 4.1).
			ops = append(ops, jsonpatch.NewOperation("add", path+"/"+escape(k), v))
		}
	}
	return ops
}

// appendOnly emits adds for elements appended to a list; Apply never
// edits or removes existing elements of these lists.
func appendOnly[T any](ops []jsonpatch.Operation, path string, orig, mut []T) ([]jsonpatch.Operation, error) {
	if len(mut) < len(orig) {
		return nil, fmt.Errorf("%s shrank from %d to %d elements; the injector only appends", path, len(orig), len(mut))
	}
	if len(mut) == len(orig) {
		return ops, nil
	}
	if len(orig) == 0 {
		return append(ops, jsonpatch.NewOperation("add", path, mut)), nil
	}
	for i := len(orig); i < len(mut); i++ {
		ops = append(ops, jsonpatch.NewOperation("add", path+"/-", mut[i]))
	}
	return ops, nil
}

// diffEnv is appendOnly plus in-place value changes (LD_PRELOAD joined).
func diffEnv(ops []jsonpatch.Operation, path string, orig, mut []corev1.EnvVar) ([]jsonpatch.Operation, error) {
	if len(mut) < len(orig) {
		return nil, fmt.Errorf("%s shrank from %d to %d elements; the injector only appends", path, len(orig), len(mut))
	}
	for i := range orig {
		if orig[i].Name != mut[i].Name || orig[i].ValueFrom != mut[i].ValueFrom {
			return nil, fmt.Errorf("%s/%d changed name or source; the injector only changes values", path, i)
		}
		if orig[i].Value != mut[i].Value {
			ops = append(ops, jsonpatch.NewOperation("replace", path+"/"+strconv.Itoa(i)+"/value", mut[i].Value))
		}
	}
	return appendOnly(ops, path, orig, mut)
}

// escape encodes a map key as a JSON pointer token (RFC 6901).
func escape(s string) string {
	if !strings.ContainsAny(s, "~/") {
		return s
	}
	return pointerEscaper.Replace(s)
}

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")
