package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/buger/jsonparser"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// decodeForPatch decodes only the parts of a pod that patch.Apply reads
// and BuildPatch diffs: annotations, node selector, the names of volumes
// and init containers, and per app container its name, image, command,
// args, memory limit, mounts and env. Everything else (probes, ports,
// security contexts, the values of unrelated env vars) is never decoded:
// on large pods that is most of the bytes, and reflection-driven decoding
// of them was the whole cost of admission.
//
// The result is NOT the pod: it is only fit for patch.Apply followed by
// BuildPatch, whose operations address the original document by index.
// TestDecodeForPatchMatchesFullDecode and FuzzDecodeForPatch hold the two
// paths to the same patch.
func decodeForPatch(raw []byte) (*corev1.Pod, error) {
	pod := &corev1.Pod{}
	var err error
	if pod.Name, err = optString(raw, "metadata", "name"); err != nil {
		return nil, err
	}
	if pod.GenerateName, err = optString(raw, "metadata", "generateName"); err != nil {
		return nil, err
	}
	if pod.Annotations, err = stringMap(raw, "metadata", "annotations"); err != nil {
		return nil, err
	}
	if pod.Spec.NodeSelector, err = stringMap(raw, "spec", "nodeSelector"); err != nil {
		return nil, err
	}
	if pod.Spec.Volumes, err = namedList(raw, func(name string) corev1.Volume { return corev1.Volume{Name: name} }, "spec", "volumes"); err != nil {
		return nil, err
	}
	if pod.Spec.InitContainers, err = namedList(raw, func(name string) corev1.Container { return corev1.Container{Name: name} }, "spec", "initContainers"); err != nil {
		return nil, err
	}
	pod.Spec.Containers, err = containers(raw)
	return pod, err
}

func optString(raw []byte, path ...string) (string, error) {
	v, err := jsonparser.GetString(raw, path...)
	if err == jsonparser.KeyPathNotFoundError {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("%v: %w", path, err)
	}
	return v, nil
}

// stringMap mirrors encoding/json: absent or null -> nil map, {} -> empty
// non-nil map.
func stringMap(raw []byte, path ...string) (map[string]string, error) {
	v, vt, _, err := jsonparser.Get(raw, path...)
	if err == jsonparser.KeyPathNotFoundError || vt == jsonparser.Null {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%v: %w", path, err)
	}
	if vt != jsonparser.Object {
		return nil, fmt.Errorf("%v: want an object", path)
	}
	out := map[string]string{}
	err = jsonparser.ObjectEach(v, func(key, value []byte, vt jsonparser.ValueType, _ int) error {
		if vt != jsonparser.String {
			return fmt.Errorf("%v: value of %q is not a string", path, key)
		}
		k, err := jsonparser.ParseString(key)
		if err != nil {
			return err
		}
		if out[k], err = jsonparser.ParseString(value); err != nil {
			return err
		}
		return nil
	})
	return out, err
}

// array returns the raw elements of a list; nil for absent/null, empty
// non-nil for [].
func array(raw []byte, path ...string) ([][]byte, bool, error) {
	v, vt, _, err := jsonparser.Get(raw, path...)
	if err == jsonparser.KeyPathNotFoundError || vt == jsonparser.Null {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("%v: %w", path, err)
	}
	if vt != jsonparser.Array {
		return nil, false, fmt.Errorf("%v: want a list", path)
	}
	var elems [][]byte
	var elemErr error
	_, err = jsonparser.ArrayEach(v, func(value []byte, vt jsonparser.ValueType, _ int, _ error) {
		if vt != jsonparser.Object && elemErr == nil {
			elemErr = fmt.Errorf("%v: elements must be objects", path)
		}
		elems = append(elems, value)
	})
	if err == nil {
		err = elemErr
	}
	return elems, true, err
}

func namedList[T any](raw []byte, mk func(string) T, path ...string) ([]T, error) {
	elems, present, err := array(raw, path...)
	if err != nil || !present {
		return nil, err
	}
	out := make([]T, 0, len(elems))
	for _, e := range elems {
		name, err := optString(e, "name")
		if err != nil {
			return nil, err
		}
		out = append(out, mk(name))
	}
	return out, nil
}

func stringList(raw []byte, key string) ([]string, error) {
	elems, present, err := func() ([][]byte, bool, error) {
		v, vt, _, err := jsonparser.Get(raw, key)
		if err == jsonparser.KeyPathNotFoundError || vt == jsonparser.Null {
			return nil, false, nil
		}
		if err != nil || vt != jsonparser.Array {
			return nil, false, fmt.Errorf("%s: want a list of strings", key)
		}
		var out [][]byte
		var elemErr error
		_, err = jsonparser.ArrayEach(v, func(value []byte, vt jsonparser.ValueType, _ int, _ error) {
			if vt != jsonparser.String && elemErr == nil {
				elemErr = fmt.Errorf("%s: want a list of strings", key)
			}
			out = append(out, value)
		})
		if err == nil {
			err = elemErr
		}
		return out, true, err
	}()
	if err != nil || !present {
		return nil, err
	}
	out := make([]string, len(elems))
	for i, e := range elems {
		if out[i], err = jsonparser.ParseString(e); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func containers(raw []byte) ([]corev1.Container, error) {
	elems, present, err := array(raw, "spec", "containers")
	if err != nil || !present {
		return nil, err
	}
	out := make([]corev1.Container, len(elems))
	for i, e := range elems {
		c := &out[i]
		if c.Name, err = optString(e, "name"); err != nil {
			return nil, err
		}
		if c.Image, err = optString(e, "image"); err != nil {
			return nil, err
		}
		if c.Command, err = stringList(e, "command"); err != nil {
			return nil, err
		}
		if c.Args, err = stringList(e, "args"); err != nil {
			return nil, err
		}
		if mem, vt, _, err := jsonparser.Get(e, "resources", "limits", "memory"); err != nil && err != jsonparser.KeyPathNotFoundError {
			return nil, err
		} else if err == nil && (vt == jsonparser.String || vt == jsonparser.Number) {
			if vt == jsonparser.String {
				s, err := jsonparser.ParseString(mem)
				if err != nil {
					return nil, err
				}
				mem = []byte(s)
			}
			q, err := resource.ParseQuantity(string(mem))
			if err != nil {
				return nil, fmt.Errorf("containers[%d].resources.limits.memory: %w", i, err)
			}
			c.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: q}
		}
		if c.VolumeMounts, err = mounts(e); err != nil {
			return nil, err
		}
		if c.Env, err = env(e); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func mounts(container []byte) ([]corev1.VolumeMount, error) {
	elems, present, err := array(container, "volumeMounts")
	if err != nil || !present {
		return nil, err
	}
	out := make([]corev1.VolumeMount, len(elems))
	for i, e := range elems {
		if out[i].Name, err = optString(e, "name"); err != nil {
			return nil, err
		}
		if out[i].MountPath, err = optString(e, "mountPath"); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// env keeps every entry's name (indexes must match the document), the
// value only of the variables the injector owns or joins, and valueFrom
// only as "present".
func env(container []byte) ([]corev1.EnvVar, error) {
	elems, present, err := array(container, "env")
	if err != nil || !present {
		return nil, err
	}
	out := make([]corev1.EnvVar, len(elems))
	for i, e := range elems {
		v := &out[i]
		// Names are compared as bytes first: allocating 1,500 strings is
		// the cost this decoder exists to avoid.
		nameRaw, vt, _, err := jsonparser.Get(e, "name")
		if err != nil && err != jsonparser.KeyPathNotFoundError {
			return nil, err
		}
		if err == nil && vt != jsonparser.String {
			return nil, fmt.Errorf("env[%d].name is not a string", i)
		}
		if bytes.IndexByte(nameRaw, '\\') >= 0 {
			if s, err := jsonparser.ParseString(nameRaw); err == nil {
				nameRaw = []byte(s)
			}
		}
		switch string(nameRaw) {
		case "LD_PRELOAD", "MEMKIND_MEM_TIERS", "PMEM_TARGET_PROCESSES":
			v.Name = string(nameRaw)
			if v.Value, err = optString(e, "value"); err != nil {
				return nil, err
			}
			if from, vt, _, err := jsonparser.Get(e, "valueFrom"); err == nil && vt == jsonparser.Object {
				v.ValueFrom = &corev1.EnvVarSource{}
				if err := json.Unmarshal(from, v.ValueFrom); err != nil {
					return nil, err
				}
			}
		default:
			// A placeholder name that no owned variable can have; its
			// value and source are never looked at.
			v.Name = otherEnv
		}
	}
	return out, nil
}

// otherEnv stands in for names of env vars the injector does not look at.
const otherEnv = "\x00other"
