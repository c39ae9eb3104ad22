package patch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/buger/jsonparser"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// DecodePartial decodes only the parts of a pod that Apply reads and
// Operations diffs: annotations, node selector, the names of volumes,
// per container (app and init) its name, image, command, args, memory
// limit, mounts, env, envFrom, restartPolicy and securityContext
// windowsOptions, runAsUser and seccompProfile, spec.securityContext
// fsGroup and seccompProfile, and spec.os and the node affinity (Windows
// markers).
// Everything else (probes, ports, the rest of security contexts, the
// values of unrelated env vars) is never decoded: on large pods that is
// most of the bytes, and reflection-driven decoding of them was the whole
// cost of admission.
//
// The result is NOT the pod: it is only fit for Apply followed by
// Operations, whose operations address the original document by index.
// It lives beside Apply so that one package owns what the injector reads
// and writes; TestDecodePartialMatchesFullDecode and FuzzDecodePartial hold
// it to a full decode.
func DecodePartial(raw []byte) (*corev1.Pod, error) {
	pod := &corev1.Pod{}
	var metadata, spec []byte
	// One pass per object level: jsonparser.Get scans from the start of
	// its input on every call, and a container with 1,500 env vars is most
	// of the body.
	if err := eachField(raw, func(key string, value []byte, _ jsonparser.ValueType) error {
		switch key {
		case "metadata":
			metadata = value
		case "spec":
			spec = value
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if metadata != nil {
		err := eachField(metadata, func(key string, value []byte, vt jsonparser.ValueType) (err error) {
			switch key {
			case "name":
				pod.Name, err = stringValue(value, vt, at("metadata.name"))
			case "generateName":
				pod.GenerateName, err = stringValue(value, vt, at("metadata.generateName"))
			case "annotations":
				pod.Annotations, err = stringMapValue(value, vt, at("metadata.annotations"))
			}
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	if spec == nil {
		return pod, nil
	}
	err := eachField(spec, func(key string, value []byte, vt jsonparser.ValueType) (err error) {
		switch key {
		case "nodeSelector":
			pod.Spec.NodeSelector, err = stringMapValue(value, vt, at("spec.nodeSelector"))
		case "volumes":
			pod.Spec.Volumes, err = volumes(value, vt)
		case "initContainers":
			// Decoded like app containers: native sidecars can be targets,
			// and any init container can say the pod is Windows.
			pod.Spec.InitContainers, err = containers(value, vt, "spec.initContainers")
		case "containers":
			pod.Spec.Containers, err = containers(value, vt, "spec.containers")
		case "os":
			// The fields that can say "Windows" are rare and small:
			// decoded whole.
			err = unmarshalField(value, vt, at("spec.os"), &pod.Spec.OS)
		case "securityContext":
			var sc struct {
				WindowsOptions *corev1.WindowsSecurityContextOptions `json:"windowsOptions"`
				RunAsUser      *int64                                `json:"runAsUser"`
				FSGroup        *int64                                `json:"fsGroup"`
				SeccompProfile *corev1.SeccompProfile                `json:"seccompProfile"`
			}
			if err = unmarshalField(value, vt, at("spec.securityContext"), &sc); err == nil && (sc.WindowsOptions != nil || sc.RunAsUser != nil || sc.FSGroup != nil || sc.SeccompProfile != nil) {
				pod.Spec.SecurityContext = &corev1.PodSecurityContext{WindowsOptions: sc.WindowsOptions, RunAsUser: sc.RunAsUser, FSGroup: sc.FSGroup, SeccompProfile: sc.SeccompProfile}
			}
		case "affinity":
			var a struct {
				NodeAffinity *corev1.NodeAffinity `json:"nodeAffinity"`
			}
			if err = unmarshalField(value, vt, at("spec.affinity"), &a); err == nil && a.NodeAffinity != nil {
				pod.Spec.Affinity = &corev1.Affinity{NodeAffinity: a.NodeAffinity}
			}
		}
		return err
	})
	return pod, err
}

// eachField calls fn for every member of a JSON object, in one pass.
func eachField(obj []byte, fn func(key string, value []byte, vt jsonparser.ValueType) error) error {
	return jsonparser.ObjectEach(obj, func(key, value []byte, vt jsonparser.ValueType, _ int) error {
		k := string(key)
		if bytes.IndexByte(key, '\\') >= 0 {
			var err error
			if k, err = jsonparser.ParseString(key); err != nil {
				return err
			}
		}
		return fn(k, value, vt)
	})
}

func stringValue(value []byte, vt jsonparser.ValueType, field where) (string, error) {
	switch vt {
	case jsonparser.Null:
		return "", nil
	case jsonparser.String:
		return jsonparser.ParseString(value)
	}
	return "", fmt.Errorf("%s: want a string", field)
}

// stringMapValue mirrors encoding/json: null -> nil map, {} -> empty
// non-nil map.
func stringMapValue(value []byte, vt jsonparser.ValueType, field where) (map[string]string, error) {
	if vt == jsonparser.Null {
		return nil, nil
	}
	if vt != jsonparser.Object {
		return nil, fmt.Errorf("%s: want an object", field)
	}
	out := map[string]string{}
	err := eachField(value, func(k string, v []byte, vt jsonparser.ValueType) (err error) {
		if vt != jsonparser.String {
			return fmt.Errorf("%s: value of %q is not a string", field, k)
		}
		out[k], err = jsonparser.ParseString(v)
		return err
	})
	return out, err
}

// elements returns the raw elements of a list of objects; nil for null,
// empty non-nil for [].
func elements(value []byte, vt jsonparser.ValueType, field where) ([][]byte, error) {
	if vt == jsonparser.Null {
		return nil, nil
	}
	if vt != jsonparser.Array {
		return nil, fmt.Errorf("%s: want a list", field)
	}
	elems := [][]byte{}
	var elemErr error
	_, err := jsonparser.ArrayEach(value, func(v []byte, vt jsonparser.ValueType, _ int, _ error) {
		if vt != jsonparser.Object && elemErr == nil {
			elemErr = fmt.Errorf("%s: elements must be objects", field)
		}
		elems = append(elems, v)
	})
	if err == nil {
		err = elemErr
	}
	return elems, err
}

// volumes keeps every volume's name (indexes must match the document) and
// decodes whole only the injector's own, which Apply compares with
// what it would inject when a pod is marked injected.
func volumes(value []byte, vt jsonparser.ValueType) ([]corev1.Volume, error) {
	elems, err := elements(value, vt, at("spec.volumes"))
	if err != nil || elems == nil {
		return nil, err
	}
	out := make([]corev1.Volume, len(elems))
	for i, e := range elems {
		if out[i].Name, err = optString(e, "name"); err != nil {
			return nil, err
		}
		if out[i].Name == PMEMVolumeName || out[i].Name == LibVolumeName {
			if err := json.Unmarshal(e, &out[i]); err != nil {
				return nil, fmt.Errorf("spec.volumes[%d]: %w", i, err)
			}
		}
	}
	return out, nil
}

func stringListValue(value []byte, vt jsonparser.ValueType, field where) ([]string, error) {
	if vt == jsonparser.Null {
		return nil, nil
	}
	if vt != jsonparser.Array {
		return nil, fmt.Errorf("%s: want a list of strings", field)
	}
	out := []string{}
	var elemErr error
	_, err := jsonparser.ArrayEach(value, func(v []byte, vt jsonparser.ValueType, _ int, _ error) {
		if elemErr != nil {
			return
		}
		if vt != jsonparser.String {
			elemErr = fmt.Errorf("%s: want a list of strings", field)
			return
		}
		s, err := jsonparser.ParseString(v)
		if err != nil {
			elemErr = err
		}
		out = append(out, s)
	})
	if err == nil {
		err = elemErr
	}
	return out, err
}

// unmarshalField decodes a rare, small field whole; null leaves it unset,
// as encoding/json does.
func unmarshalField(value []byte, vt jsonparser.ValueType, field where, into any) error {
	if vt == jsonparser.Null {
		return nil
	}
	if err := json.Unmarshal(value, into); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

func containers(value []byte, vt jsonparser.ValueType, list string) ([]corev1.Container, error) {
	elems, err := elements(value, vt, at(list))
	if err != nil || elems == nil {
		return nil, err
	}
	out := make([]corev1.Container, len(elems))
	for i, e := range elems {
		c := &out[i]
		field := where{list: list, i: i}
		err := eachField(e, func(key string, value []byte, vt jsonparser.ValueType) (err error) {
			switch key {
			case "name":
				c.Name, err = stringValue(value, vt, field.with(".name"))
			case "image":
				c.Image, err = stringValue(value, vt, field.with(".image"))
			case "command":
				c.Command, err = stringListValue(value, vt, field.with(".command"))
			case "args":
				c.Args, err = stringListValue(value, vt, field.with(".args"))
			case "resources":
				c.Resources.Limits, err = memoryLimit(value, vt, field)
			case "volumeMounts":
				c.VolumeMounts, err = mounts(value, vt, field)
			case "env":
				c.Env, err = env(value, vt, field)
			case "restartPolicy":
				var p string
				if p, err = stringValue(value, vt, field.with(".restartPolicy")); err == nil && p != "" {
					c.RestartPolicy = ptr(corev1.ContainerRestartPolicy(p))
				}
			case "securityContext":
				var sc struct {
					WindowsOptions *corev1.WindowsSecurityContextOptions `json:"windowsOptions"`
					RunAsUser      *int64                                `json:"runAsUser"`
					SeccompProfile *corev1.SeccompProfile                `json:"seccompProfile"`
				}
				if err = unmarshalField(value, vt, field.with(".securityContext"), &sc); err == nil && (sc.WindowsOptions != nil || sc.RunAsUser != nil || sc.SeccompProfile != nil) {
					c.SecurityContext = &corev1.SecurityContext{WindowsOptions: sc.WindowsOptions, RunAsUser: sc.RunAsUser, SeccompProfile: sc.SeccompProfile}
				}
			case "envFrom":
				// Rare and short: decoded whole, for the LD_PRELOAD check.
				if vt != jsonparser.Null {
					if err = json.Unmarshal(value, &c.EnvFrom); err != nil {
						err = fmt.Errorf("%s.envFrom: %w", field, err)
					}
				}
			}
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func memoryLimit(resources []byte, vt jsonparser.ValueType, field where) (corev1.ResourceList, error) {
	if vt != jsonparser.Object {
		return nil, nil
	}
	mem, mvt, _, err := jsonparser.Get(resources, "limits", "memory")
	if err == jsonparser.KeyPathNotFoundError || (err == nil && mvt == jsonparser.Null) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	switch mvt {
	case jsonparser.String:
		s, err := jsonparser.ParseString(mem)
		if err != nil {
			return nil, err
		}
		mem = []byte(s)
	case jsonparser.Number:
	default:
		return nil, fmt.Errorf("%s.resources.limits.memory: want a quantity", field)
	}
	q, err := resource.ParseQuantity(string(mem))
	if err != nil {
		return nil, fmt.Errorf("%s.resources.limits.memory: %w", field, err)
	}
	return corev1.ResourceList{corev1.ResourceMemory: q}, nil
}

func mounts(value []byte, vt jsonparser.ValueType, field where) ([]corev1.VolumeMount, error) {
	elems, err := elements(value, vt, field.with(".volumeMounts"))
	if err != nil || elems == nil {
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
// only as "present". One pass: the env list is the bulk of large pods.
func env(value []byte, vt jsonparser.ValueType, field where) ([]corev1.EnvVar, error) {
	if vt == jsonparser.Null {
		return nil, nil
	}
	if vt != jsonparser.Array {
		return nil, fmt.Errorf("%s.env: want a list", field)
	}
	out := []corev1.EnvVar{}
	var elemErr error
	_, err := jsonparser.ArrayEach(value, func(e []byte, vt jsonparser.ValueType, _ int, _ error) {
		if elemErr != nil {
			return
		}
		if vt != jsonparser.Object {
			elemErr = fmt.Errorf("%s.env: elements must be objects", field)
			return
		}
		var v corev1.EnvVar
		v, elemErr = envVar(e, field, len(out))
		out = append(out, v)
	})
	if err == nil {
		err = elemErr
	}
	return out, err
}

func envVar(e []byte, field where, i int) (corev1.EnvVar, error) {
	var v corev1.EnvVar
	// Names are compared as bytes first: allocating 1,500 strings is the
	// cost this decoder exists to avoid.
	nameRaw, vt, _, err := jsonparser.Get(e, "name")
	if err != nil && err != jsonparser.KeyPathNotFoundError {
		return v, err
	}
	if err == nil && vt != jsonparser.String {
		return v, fmt.Errorf("%s.env[%d].name is not a string", field, i)
	}
	if bytes.IndexByte(nameRaw, '\\') >= 0 {
		if s, err := jsonparser.ParseString(nameRaw); err == nil {
			nameRaw = []byte(s)
		}
	}
	switch string(nameRaw) {
	case EnvLDPreload, EnvMemTiers, EnvTargetProcesses, EnvContainerName:
		v.Name = string(nameRaw)
		if v.Value, err = optString(e, "value"); err != nil {
			return v, err
		}
		if from, vt, _, err := jsonparser.Get(e, "valueFrom"); err == nil && vt == jsonparser.Object {
			v.ValueFrom = &corev1.EnvVarSource{}
			if err := json.Unmarshal(from, v.ValueFrom); err != nil {
				return v, err
			}
		}
	default:
		// A placeholder name that no owned variable can have; its value
		// and source are never looked at.
		v.Name = otherEnv
	}
	return v, nil
}

// otherEnv stands in for names of env vars the injector does not look at.
const otherEnv = "\x00other"

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

// where names a field in error messages: field alone, or, for a field of a list element,
// list[i] then field (spec.containers[2].image). DecodePartial runs on every admission and a
// decode that succeeds reports no error, so the name is a value that is turned into text
// (String, or a %s verb) only when an error is reported.
type where struct {
	list  string // the list; "" when the field is not in a list element
	i     int    // the element's index in list
	field string // the field ("metadata.name"), or the path within the element (".image"; "" for the element itself)
}

// at names a field that is not in a list element.
func at(field string) where { return where{field: field} }

// with names the field f (".image") of the element w names.
func (w where) with(f string) where {
	w.field = f
	return w
}

func (w where) String() string {
	if w.list == "" {
		return w.field
	}
	return w.list + "[" + strconv.Itoa(w.i) + "]" + w.field
}
