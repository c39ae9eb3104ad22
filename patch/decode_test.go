package patch

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// patchVia runs Apply + Operations on a pod decoded by decode and returns
// the encoded patch, or the denial message.
func patchVia(t testing.TB, raw []byte, decode func([]byte) (*corev1.Pod, error)) (string, bool) {
	pod, err := decode(raw)
	if err != nil {
		return "decode error", false
	}
	res, err := Apply(pod, testConfig())
	if err != nil {
		return "denied: " + err.Error(), true
	}
	// The warnings are part of the answer too: a field the partial decode
	// drops can silence one (seccompProfile did).
	warnings := strings.Join(res.Warnings, "\n")
	if res.Decision != Injected {
		return string(res.Decision) + "\n" + warnings, true
	}
	ops, err := Operations(pod, res.Pod)
	if err != nil {
		t.Fatalf("Operations: %v", err)
	}
	out, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	return string(out) + "\n" + warnings, true
}

func fullDecode(raw []byte) (*corev1.Pod, error) {
	pod := &corev1.Pod{}
	return pod, json.Unmarshal(raw, pod)
}

// The partial decoder and a full decode must lead to byte-identical
// patches (or the same denial) for every pod in the test data.
func TestDecodePartialMatchesFullDecode(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(files) < 10 {
		t.Fatalf("test pods: %v (%d)", err, len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			y, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := yaml.YAMLToJSON(y)
			if err != nil {
				t.Fatal(err)
			}
			full, ok1 := patchVia(t, raw, fullDecode)
			partial, ok2 := patchVia(t, raw, DecodePartial)
			if ok1 != ok2 || full != partial {
				t.Errorf("partial decode diverges:\nfull:    %s\npartial: %s", full, partial)
			}
		})
	}
}

func FuzzDecodePartial(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	for _, file := range files {
		y, _ := os.ReadFile(file)
		if raw, err := yaml.YAMLToJSON(y); err == nil {
			f.Add(raw)
		}
	}
	f.Add([]byte(`{"metadata":{"annotations":{"pmem.alibabacloud.com/direct":"true"}},"spec":{"containers":[{"name":"a","env":[{"name":"LD\u005fPRELOAD","value":"x"}],"resources":{"limits":{"memory":1073741824}}}]}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var probe corev1.Pod
		if json.Unmarshal(raw, &probe) != nil {
			return // the apiserver only sends valid pods
		}
		// Normalise through the Go types, as the apiserver does before
		// calling webhooks.
		raw, _ = json.Marshal(&probe)
		full, ok1 := patchVia(t, raw, fullDecode)
		partial, ok2 := patchVia(t, raw, DecodePartial)
		if ok1 != ok2 || !reflect.DeepEqual(full, partial) {
			t.Fatalf("partial decode diverges for %s:\nfull:    %s\npartial: %s", raw, full, partial)
		}
	})
}

// Fields that only change a warning must survive the partial decode too:
// seccompProfile RuntimeDefault (pod or container) warns about the fsdax
// write-back, and the webhook decodes partially.
func TestDecodePartialKeepsWarningFields(t *testing.T) {
	for name, raw := range map[string]string{
		"container seccompProfile": `{"metadata":{"name":"r","annotations":{"pmem.alibabacloud.com/direct":"true"}},"spec":{"containers":[{"name":"redis","image":"redis:7","securityContext":{"seccompProfile":{"type":"RuntimeDefault"}},"resources":{"limits":{"memory":"1Gi"}}}]}}`,
		"pod seccompProfile":       `{"metadata":{"name":"r","annotations":{"pmem.alibabacloud.com/direct":"true"}},"spec":{"securityContext":{"seccompProfile":{"type":"RuntimeDefault"}},"containers":[{"name":"redis","image":"redis:7","resources":{"limits":{"memory":"1Gi"}}}]}}`,
	} {
		t.Run(name, func(t *testing.T) {
			full, _ := patchVia(t, []byte(raw), fullDecode)
			partial, _ := patchVia(t, []byte(raw), DecodePartial)
			if !strings.Contains(full, "seccompProfile RuntimeDefault") {
				t.Fatalf("no seccomp warning even from the full decode:\n%s", full)
			}
			if full != partial {
				t.Errorf("partial decode diverges:\nfull:    %s\npartial: %s", full, partial)
			}
		})
	}
}

// The field names in decode errors are built only when an error is reported (where.String):
// they must still say which element and which field, as they did when built eagerly.
func TestDecodePartialErrorNames(t *testing.T) {
	for raw, want := range map[string]string{
		`{"metadata":{"name":1}}`:                                                    "metadata.name: want a string",
		`{"spec":{"volumes":[1]}}`:                                                   "spec.volumes: elements must be objects",
		`{"spec":{"containers":[{},{"name":1}]}}`:                                    "spec.containers[1].name: want a string",
		`{"spec":{"initContainers":[{},{},{"image":1}]}}`:                            "spec.initContainers[2].image: want a string",
		`{"spec":{"containers":[{"args":[1]}]}}`:                                     "spec.containers[0].args: want a list of strings",
		`{"spec":{"containers":[{"resources":{"limits":{"memory":true}}}]}}`:         "spec.containers[0].resources.limits.memory: want a quantity",
		`{"spec":{"containers":[{},{},{},{},{},{},{},{},{},{},{"volumeMounts":1}]}}`: "spec.containers[10].volumeMounts: want a list",
		`{"spec":{"containers":[{"env":[{},{"name":1}]}]}}`:                          "spec.containers[0].env[1].name is not a string",
		`{"spec":{"containers":[{"restartPolicy":1}]}}`:                              "spec.containers[0].restartPolicy: want a string",
		`{"spec":{"containers":[{"envFrom":1}]}}`:                                    "spec.containers[0].envFrom: json: cannot unmarshal",
	} {
		_, err := DecodePartial([]byte(raw))
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("DecodePartial(%s): error %v, want %q", raw, err, want)
		}
	}
}
