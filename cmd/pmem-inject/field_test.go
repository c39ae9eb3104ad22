package main

import (
	"os"
	"strings"
	"testing"
)

// Issue 14 row 8: the opt-in written as a label is not an opt-in, and the
// user hears it: the manifest comes back unchanged with a warning saying
// where the key belongs.
func TestOptInAsLabelWarns(t *testing.T) {
	stdout, stderr, err := inject(t, "-f", "testdata/opt-in-label.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile("testdata/opt-in-label.yaml")
	if stdout != string(want) {
		t.Errorf("manifest changed:\n%s", stdout)
	}
	for _, w := range []string{"warning: Deployment redis-label", `label pmem.alibabacloud.com/direct="true" has no effect`, "spec.template.metadata.annotations"} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr)
		}
	}
}

// Issue 14 row 5 offline (field case 10b): re-running the injector on its
// own output is a no-op, but after the template is re-annotated mode: kmem
// it refuses, naming the stale FS_DAX env, instead of keeping it silently.
func TestReinjectAfterModeChange(t *testing.T) {
	once, _, err := inject(t, "-f", "../../deploy/examples/redis-pmem.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, content string) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	twice, _, err := inject(t, "-f", write("once.yaml", once))
	if err != nil || twice != once {
		t.Errorf("second injection changed the output (err %v):\n%s", err, twice)
	}
	const direct = `pmem.alibabacloud.com/direct: "true"`
	i := strings.Index(once, direct)
	if i < 0 {
		t.Fatalf("no opt-in in the injected example:\n%s", once)
	}
	indent := once[strings.LastIndex(once[:i], "\n")+1 : i]
	kmem := strings.Replace(once, direct, direct+"\n"+indent+"pmem.alibabacloud.com/mode: kmem", 1)
	_, _, err = inject(t, "-f", write("kmem.yaml", kmem))
	if err == nil || !strings.Contains(err.Error(), `MEMKIND_MEM_TIERS="KIND:FS_DAX`) || !strings.Contains(err.Error(), "KIND:KMEM_DAX") {
		t.Errorf("re-annotated mode kmem: err = %v; want a denial naming the stale FS_DAX env", err)
	}
}
