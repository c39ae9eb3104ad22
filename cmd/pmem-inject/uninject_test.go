package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// dropOptIn removes the opt-in annotation from every document of a
// stream: from each object's own metadata and its pod template's (a
// CronJob's too, and List items'), as a user going back to DRAM does.
func dropOptIn(t *testing.T, stream string) string {
	t.Helper()
	var parts []string
	for _, part := range strings.Split(stream, "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(part), &obj); err != nil {
			t.Fatalf("document does not parse: %v\n%s", err, part)
		}
		dropFrom(obj)
		out, err := yaml.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, string(out))
	}
	return strings.Join(parts, "---\n")
}

func dropFrom(obj map[string]any) {
	for _, path := range [][]string{{"metadata"}, {"spec", "template", "metadata"}, {"spec", "jobTemplate", "spec", "template", "metadata"}} {
		if ann, _ := patch.NestedObject(obj, path...)["annotations"].(map[string]any); ann != nil {
			delete(ann, patch.AnnotationDirect)
		}
	}
	items, _ := obj["items"].([]any)
	for _, it := range items {
		if m, ok := it.(map[string]any); ok {
			dropFrom(m)
		}
	}
}

// normalize drops null members and empty objects and lists: an absent
// annotations map and an empty one are the same object.
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			if e = normalize(e); e != nil {
				out[k] = e
			}
		}
		if len(out) == 0 {
			return nil
		}
		return out
	case []any:
		if len(x) == 0 {
			return nil
		}
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalize(e)
		}
		return out
	}
	return v
}

func objects(t *testing.T, stream string) []any {
	t.Helper()
	var out []any
	for _, d := range documents(t, stream) {
		out = append(out, normalize(d))
	}
	return out
}

// TestUninjectRoundTrip: a manifest injected offline, stored, and then
// stripped of its opt-in goes back to the original manifest (without the
// opt-in) when pmem-inject runs on it again: inject, drop the annotation,
// inject again == the input with the annotation dropped, as objects.
func TestUninjectRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		file     string
		injected int // documents (objects) with an injection
	}{
		{"../../deploy/examples/redis-pmem.yaml", 1},
		{"testdata/multi.yaml", 4},      // Pod, StatefulSet (kmem), CronJob, Deployment annotated on its own metadata
		{"testdata/field/list.yaml", 1}, // a List whose item opts in
		{"testdata/field/replicationcontroller.yaml", 1},
		{"testdata/field/cloneset.yaml", 1}, // a kind with a pod template the workload rule does not know
		{"../../patch/testdata/native-sidecar-redis.yaml", 1},
		{"../../patch/testdata/native-sidecar-after-init.yaml", 1},
		{"../../patch/testdata/existing-ldpreload.yaml", 1}, // the user's own LD_PRELOAD
		{"../../patch/testdata/claim.yaml", 1},
		{"../../patch/testdata/dram-ratio.yaml", 1},
	} {
		t.Run(filepath.Base(tc.file), func(t *testing.T) {
			input, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			once, stderr, err := inject(t, "-f", tc.file)
			if err != nil {
				t.Fatalf("inject: %v\n%s", err, stderr)
			}
			if n := strings.Count(once, "pmem.alibabacloud.com/status: injected"); n != tc.injected {
				t.Fatalf("%d documents injected, want %d:\n%s", n, tc.injected, once)
			}
			off := filepath.Join(t.TempDir(), "off.yaml")
			if err := os.WriteFile(off, []byte(dropOptIn(t, once)), 0o644); err != nil {
				t.Fatal(err)
			}
			back, stderr, err := inject(t, "-f", off)
			if err != nil {
				t.Fatalf("inject after dropping the opt-in: %v\n%s", err, stderr)
			}
			want := objects(t, dropOptIn(t, string(input)))
			if got := objects(t, back); !reflect.DeepEqual(got, want) {
				t.Errorf("un-injected manifest differs from the input without the opt-in (-want +got):\n%s", cmp.Diff(want, got))
			}
			if n := strings.Count(stderr, "removed the PMEM injection (back to DRAM)"); n != tc.injected {
				t.Errorf("%d un-injection notes, want %d:\n%s", n, tc.injected, stderr)
			}
			if strings.Contains(stderr, "was injected") {
				t.Errorf("stderr says injected on the way back:\n%s", stderr)
			}
			// Plain again: a third pass changes nothing and says nothing.
			third := filepath.Join(t.TempDir(), "back.yaml")
			if err := os.WriteFile(third, []byte(back), 0o644); err != nil {
				t.Fatal(err)
			}
			again, stderr, err := inject(t, "-f", third)
			if err != nil || again != back || strings.Contains(stderr, "note:") {
				t.Errorf("third pass: err %v, changed %v, stderr:\n%s", err, again != back, stderr)
			}
		})
	}
}

// Setting the opt-in to "false" is the same way back.
func TestUninjectDirectFalse(t *testing.T) {
	once, _, err := inject(t, "-f", "../../deploy/examples/redis-pmem.yaml")
	if err != nil {
		t.Fatal(err)
	}
	off := filepath.Join(t.TempDir(), "false.yaml")
	if err := os.WriteFile(off, []byte(strings.Replace(once, `pmem.alibabacloud.com/direct: "true"`, `pmem.alibabacloud.com/direct: "false"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	back, stderr, err := inject(t, "-f", off)
	if err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"pmem-memkind", "LD_PRELOAD", "MEMKIND_MEM_TIERS", "PMEM_TARGET_PROCESSES", "status: injected", "/mnt/pmem"} {
		if strings.Contains(back, gone) {
			t.Errorf("output still has %q:\n%s", gone, back)
		}
	}
	if !strings.Contains(back, `pmem.alibabacloud.com/direct: "false"`) {
		t.Errorf("the user's opt-out was removed:\n%s", back)
	}
	if want := `note: Deployment redis-pmem (document 1): no pmem.alibabacloud.com/direct: "true": removed the PMEM injection (back to DRAM)`; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
}

// Field case 10b: an offline-injected template that later gets mode: kmem
// is refused, and the refusal's route (opt-in "false", inject, "true",
// inject) ends on a kmem injection with nothing of the fsdax one left.
func TestReinjectRouteAfterModeChange(t *testing.T) {
	dir := t.TempDir()
	step := func(name, stream, from, to string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(strings.Replace(stream, from, to, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	once, _, err := inject(t, "-f", "../../deploy/examples/redis-pmem.yaml")
	if err != nil {
		t.Fatal(err)
	}
	direct := `pmem.alibabacloud.com/direct: "true"`
	kmem := step("kmem.yaml", once, direct, direct+"\n        pmem.alibabacloud.com/mode: kmem")
	_, _, err = inject(t, "-f", kmem)
	if err == nil || !strings.Contains(err.Error(), `set pmem.alibabacloud.com/direct to "false", run it on the manifest`) {
		t.Fatalf("err = %v, want the refusal naming the route", err)
	}
	stored, _ := os.ReadFile(kmem)
	back, _, err := inject(t, "-f", step("false.yaml", string(stored), direct, `pmem.alibabacloud.com/direct: "false"`))
	if err != nil {
		t.Fatalf("step 1 (opt-in false): %v", err)
	}
	again, _, err := inject(t, "-f", step("true.yaml", back, `pmem.alibabacloud.com/direct: "false"`, direct))
	if err != nil {
		t.Fatalf("step 2 (opt-in true again): %v", err)
	}
	if !strings.Contains(again, "KIND:KMEM_DAX") || strings.Contains(again, "FS_DAX") || strings.Contains(again, "/mnt/pmem") {
		t.Errorf("after the route the template is not a clean kmem injection:\n%s", again)
	}
}

// An injection made with other injector settings (--lib-dir) is removed
// by the injector run with the same settings; with others, the refusal
// says so.
func TestUninjectNeedsTheSameLibDir(t *testing.T) {
	once, _, err := inject(t, "--lib-dir", "/opt/pm", "-f", "../../deploy/examples/redis-pmem.yaml")
	if err != nil {
		t.Fatal(err)
	}
	off := filepath.Join(t.TempDir(), "false.yaml")
	if err := os.WriteFile(off, []byte(strings.Replace(once, `pmem.alibabacloud.com/direct: "true"`, `pmem.alibabacloud.com/direct: "false"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = inject(t, "-f", off)
	for _, want := range []string{`spec.initContainers[0] ("pmem-memkind-init") differs`, "--dest=/opt/pmem-memkind (--lib-dir)", "run the injector with those"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("default flags: err = %v, want it to contain %q", err, want)
		}
	}
	back, _, err := inject(t, "--lib-dir", "/opt/pm", "-f", off)
	if err != nil {
		t.Fatalf("--lib-dir /opt/pm: %v", err)
	}
	if strings.Contains(back, "pmem-memkind") || strings.Contains(back, "/opt/pm") {
		t.Errorf("the injection was not removed:\n%s", back)
	}
}

// The kmem node selector is not among the pieces removed (the user may
// have written it): it stays, and the note says so.
func TestUninjectKeepsKMEMNodeSelector(t *testing.T) {
	flags := []string{"--kmem-node-selector", "pmem.alibabacloud.com/kmem=true"}
	once, _, err := inject(t, append([]string{"-f", "testdata/multi.yaml"}, flags...)...)
	if err != nil {
		t.Fatal(err)
	}
	off := filepath.Join(t.TempDir(), "off.yaml")
	if err := os.WriteFile(off, []byte(dropOptIn(t, once)), 0o644); err != nil {
		t.Fatal(err)
	}
	back, stderr, err := inject(t, append([]string{"-f", off}, flags...)...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(back, "pmem.alibabacloud.com/kmem: \"true\"") || strings.Contains(back, "MEMKIND_MEM_TIERS") {
		t.Errorf("want the node selector kept and the injection gone:\n%s", back)
	}
	if want := `note: StatefulSet cache (document 3): nodeSelector pmem.alibabacloud.com/kmem="true", which mode kmem adds, is kept`; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
}

// A volume of the user's own under one of our names is never removed:
// the run fails naming the field, and writes nothing.
func TestUninjectRefusesForeignPiece(t *testing.T) {
	once, _, err := inject(t, "-f", "../../deploy/examples/redis-pmem.yaml")
	if err != nil {
		t.Fatal(err)
	}
	off := dropOptIn(t, once)
	edited := strings.Replace(off, "sizeLimit: 64Mi", "sizeLimit: 1Gi", 1)
	if edited == off {
		t.Fatalf("no lib volume to edit:\n%s", off)
	}
	p := filepath.Join(t.TempDir(), "edited.yaml")
	if err := os.WriteFile(p, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := inject(t, "-f", p)
	if err == nil || !strings.Contains(err.Error(), `Deployment redis-pmem (document 1): spec.volumes[1] ("pmem-memkind") differs from what the PMEM injector generates`) {
		t.Errorf("err = %v, want a refusal naming the volume", err)
	}
	if stdout != "" {
		t.Errorf("wrote output despite the refusal:\n%s", stdout)
	}
}

// A misspelled key is warned about offline, once per document, with the
// suggestion, whether the template opts in or not.
func TestInjectWarnsUnknownAnnotation(t *testing.T) {
	const want = "warning: Deployment redis-pmem (document 1): annotation pmem.alibabacloud.com/sise is unknown and has no effect (did you mean pmem.alibabacloud.com/size?)"
	input, err := os.ReadFile("../../deploy/examples/redis-pmem.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, from, to string }{
		{"opted in", "# pmem.alibabacloud.com/size: 4Gi", "pmem.alibabacloud.com/sise: 4Gi"},
		{"on the workload", "  labels: {app: redis-pmem}\nspec:", "  labels: {app: redis-pmem}\n  annotations: {pmem.alibabacloud.com/sise: 4Gi}\nspec:"},
		{"not opted in", `pmem.alibabacloud.com/direct: "true"`, "pmem.alibabacloud.com/sise: 4Gi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			edited := strings.Replace(string(input), tc.from, tc.to, 1)
			if edited == string(input) {
				t.Fatalf("%q not in the example", tc.from)
			}
			p := filepath.Join(t.TempDir(), "typo.yaml")
			if err := os.WriteFile(p, []byte(edited), 0o644); err != nil {
				t.Fatal(err)
			}
			_, stderr, err := inject(t, "-f", p)
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(stderr, want); n != 1 {
				t.Errorf("stderr has the warning %d times, want once:\n%s", n, stderr)
			}
		})
	}
}
