package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pmem-webhook/pmem-webhook/memkindinit"
	"github.com/pmem-webhook/pmem-webhook/preload"
)

// The init container runs as uid 65532 (restricted PodSecurity). These tests
// run the real binary; as root they drop to that uid to see EACCES.
const podUID = 65532

// worldDir is a temp dir every uid can traverse (t.TempDir is 0700).
func worldDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "pmem-init-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func buildInit(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "pmem-memkind-init")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// closure builds a minimal valid closure with gcc.
func closure(t *testing.T, dir string) string {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed")
	}
	src := filepath.Join(dir, "src")
	os.Mkdir(src, 0o755)
	c := filepath.Join(dir, "x.c")
	os.WriteFile(c, []byte("int x(void) { return 0; }\n"), 0o644)
	for _, args := range [][]string{
		{"-shared", "-fPIC", "-o", filepath.Join(src, memkindinit.MemkindName), "-Wl,-soname," + memkindinit.MemkindName, "-Wl,--enable-new-dtags,-rpath,$ORIGIN", c},
		{"-shared", "-fPIC", "-o", filepath.Join(src, preload.FileName), c},
	} {
		if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
			t.Fatalf("gcc: %v\n%s", err, out)
		}
	}
	m := memkindinit.Manifest{}
	for _, n := range []string{memkindinit.MemkindName, preload.FileName} {
		out, err := exec.Command("sha256sum", filepath.Join(src, n)).Output()
		if err != nil {
			t.Skipf("sha256sum: %v", err)
		}
		m[n] = strings.Fields(string(out))[0]
	}
	os.WriteFile(filepath.Join(src, memkindinit.ManifestName), m.Marshal(), 0o644)
	return src
}

func run(t *testing.T, bin string, asPodUser bool, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	if asPodUser && os.Getuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: podUID, Gid: podUID}}
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestInitProgram(t *testing.T) {
	dir := worldDir(t)
	bin := buildInit(t, dir)
	src := closure(t, dir)

	dest := filepath.Join(dir, "dest")
	os.Mkdir(dest, 0o755)
	os.Chmod(dest, 0o777) // an emptyDir is world-writable
	out, err := run(t, bin, true, "--source", src, "--dest", dest)
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	if !strings.Contains(out, "installed and verified 3 files") {
		t.Errorf("output %q", out)
	}
	out, err = run(t, bin, true, "--source", src, "--dest", dest)
	if err != nil || !strings.Contains(out, "already holds the verified closure") {
		t.Errorf("restart: %v %q", err, out)
	}

	ro := filepath.Join(dir, "readonly")
	os.Mkdir(ro, 0o755)
	os.Chmod(ro, 0o555)
	if os.Getuid() != 0 {
		// without root we cannot drop to podUID, but 0555 stops us too
		t.Log("not root: testing the read-only dest as the current user")
	}
	out, err = run(t, bin, true, "--source", src, "--dest", ro)
	if err == nil {
		t.Fatalf("a read-only dest must fail, got %q", out)
	}
	if !strings.Contains(out, "is not writable by uid") || !strings.Contains(out, "mount the pmem-memkind volume read-write") {
		t.Errorf("unclear error for a read-only dest: %q", out)
	}

	out, err = run(t, bin, true, "--source", filepath.Join(dir, "nope"), "--dest", dest)
	if err == nil || !strings.Contains(out, "source closure") || !strings.Contains(out, "MANIFEST") {
		t.Errorf("missing source: %v %q", err, out)
	}
	out, err = run(t, bin, false, "--source", src, "--dest", dest, "extra")
	if err == nil || !strings.Contains(out, "unexpected arguments") {
		t.Errorf("extra args: %v %q", err, out)
	}
}
