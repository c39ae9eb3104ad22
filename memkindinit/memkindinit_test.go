package memkindinit

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pmem-webhook/pmem-webhook/preload"
)

// fixture builds a small closure with gcc: a preload, a libmemkind.so.0
// that needs libdep.so.1, and libdep.so.1, with RUNPATH $ORIGIN set by the
// linker. Real memkind is not needed for the install logic.
func fixture(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed: cannot build the ELF fixtures")
	}
	build := t.TempDir()
	src := filepath.Join(build, "x.c")
	if err := os.WriteFile(src, []byte("int dep(void) { return 1; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gcc := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
			t.Fatalf("gcc %v: %v\n%s", args, err, out)
		}
	}
	gcc("-shared", "-fPIC", "-o", filepath.Join(dir, "libdep.so.1"), "-Wl,-soname,libdep.so.1",
		"-Wl,--enable-new-dtags,-rpath,$ORIGIN", src)
	gcc("-shared", "-fPIC", "-o", filepath.Join(dir, MemkindName), "-Wl,-soname,"+MemkindName,
		"-Wl,--enable-new-dtags,-rpath,$ORIGIN", "-Wl,--no-as-needed", src, "-L"+dir, "-l:libdep.so.1")
	gcc("-shared", "-fPIC", "-o", filepath.Join(dir, preload.FileName), src)
	writeManifest(t, dir)
	return dir
}

func writeManifest(t *testing.T, dir string) Manifest {
	t.Helper()
	m := Manifest{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == ManifestName {
			continue
		}
		sum, err := fileSHA256(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = sum
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestName), m.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestInstallFreshThenIdempotent(t *testing.T) {
	src := fixture(t)
	dst := t.TempDir()
	res, err := Install(InstallOptions{Source: src, Dest: dst})
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	if res.Unchanged {
		t.Fatal("first install reported Unchanged")
	}
	want := []string{"libdep.so.1", MemkindName, preload.FileName, ManifestName}
	if strings.Join(res.Files, " ") != strings.Join(want, " ") {
		t.Fatalf("installed %v, want %v (preload after the libraries, MANIFEST last)", res.Files, want)
	}
	for _, n := range want {
		st, err := os.Stat(filepath.Join(dst, n))
		if err != nil {
			t.Fatal(err)
		}
		if n != ManifestName && st.Mode().Perm() != 0o755 {
			t.Errorf("%s mode %v, want 0755", n, st.Mode().Perm())
		}
	}
	before, _ := os.Stat(filepath.Join(dst, MemkindName))
	time.Sleep(10 * time.Millisecond) // lets a rewrite show in the mtime
	res, err = Install(InstallOptions{Source: src, Dest: dst})
	if err != nil {
		t.Fatalf("second Install: %v", err)
	}
	if !res.Unchanged {
		t.Fatal("second install over a verified copy must change nothing")
	}
	after, _ := os.Stat(filepath.Join(dst, MemkindName))
	if !before.ModTime().Equal(after.ModTime()) {
		t.Error("second install rewrote libmemkind.so.0")
	}
}

func TestInstallRepairsInterruptedRun(t *testing.T) {
	src := fixture(t)
	dst := t.TempDir()
	// A run that died after half a library: a temp file and a truncated
	// library, no MANIFEST; plus a file from an older closure.
	if err := os.WriteFile(filepath.Join(dst, tempPrefix+"libmemkind.so.0-123"), []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, MemkindName), []byte("\x7fELF trunc"), 0o755); err != nil {
		t.Fatal(err)
	}
	res, err := Install(InstallOptions{Source: src, Dest: dst})
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	if res.Unchanged {
		t.Fatal("a damaged dest must be reinstalled")
	}
	entries, _ := os.ReadDir(dst)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			t.Errorf("leftover %s not removed", e.Name())
		}
	}
	if err := Verify(dst, mustManifest(t, src)); err != nil {
		t.Fatalf("dest does not verify after repair: %v", err)
	}
}

func TestInstallRemovesFilesOfOlderClosure(t *testing.T) {
	src := fixture(t)
	dst := t.TempDir()
	if _, err := Install(InstallOptions{Source: src, Dest: dst}); err != nil {
		t.Fatal(err)
	}
	// The old closure had one more library; a file we never wrote stays.
	old := mustManifest(t, dst)
	old["libold.so.1"] = strings.Repeat("0", 64)
	if err := os.WriteFile(filepath.Join(dst, ManifestName), old.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"libold.so.1", "user-file"} {
		if err := os.WriteFile(filepath.Join(dst, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res, err := Install(InstallOptions{Source: src, Dest: dst})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Removed, ",") != "libold.so.1" {
		t.Errorf("removed %v, want [libold.so.1]", res.Removed)
	}
	if _, err := os.Stat(filepath.Join(dst, "user-file")); err != nil {
		t.Errorf("a file not in the old MANIFEST was touched: %v", err)
	}
}

func mustManifest(t *testing.T, dir string) Manifest {
	t.Helper()
	m, err := ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestInstallRejectsBrokenSource(t *testing.T) {
	tests := []struct {
		name    string
		breakIt func(t *testing.T, src string)
		wantErr string
	}{
		{
			name: "library listed but missing",
			breakIt: func(t *testing.T, src string) {
				os.Remove(filepath.Join(src, "libdep.so.1"))
			},
			wantErr: "library missing: " + "SRC/libdep.so.1 is listed in MANIFEST but does not exist",
		},
		{
			name: "dependency not in the closure",
			breakIt: func(t *testing.T, src string) {
				os.Remove(filepath.Join(src, "libdep.so.1"))
				writeManifest(t, src)
			},
			wantErr: "library missing: SRC/libmemkind.so.0 needs libdep.so.1, which is neither in the closure nor part of glibc",
		},
		{
			name: "checksum mismatch",
			breakIt: func(t *testing.T, src string) {
				f, _ := os.OpenFile(filepath.Join(src, MemkindName), os.O_WRONLY|os.O_APPEND, 0)
				f.Write([]byte{0})
				f.Close()
			},
			wantErr: "checksum mismatch: SRC/libmemkind.so.0 has sha256",
		},
		{
			name: "not an ELF file",
			breakIt: func(t *testing.T, src string) {
				os.WriteFile(filepath.Join(src, "libdep.so.1"), []byte("#!/bin/sh\n"), 0o755)
				writeManifest(t, src)
			},
			wantErr: "SRC/libdep.so.1 is not a loadable ELF file",
		},
		{
			name: "preload not listed",
			breakIt: func(t *testing.T, src string) {
				os.Remove(filepath.Join(src, preload.FileName))
				writeManifest(t, src)
			},
			wantErr: "SRC/MANIFEST does not list libpmem-preload.so",
		},
		{
			name: "no manifest",
			breakIt: func(t *testing.T, src string) {
				os.Remove(filepath.Join(src, ManifestName))
			},
			wantErr: "read manifest: open SRC/MANIFEST: no such file or directory",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := fixture(t)
			tc.breakIt(t, src)
			dst := t.TempDir()
			_, err := Install(InstallOptions{Source: src, Dest: dst})
			want := strings.ReplaceAll(tc.wantErr, "SRC", src)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v\nwant it to contain %q", err, want)
			}
			if entries, _ := os.ReadDir(dst); len(entries) != 0 {
				t.Errorf("a broken source must not write anything, dest has %d entries", len(entries))
			}
		})
	}
}

func TestInstallRejectsBadDest(t *testing.T) {
	src := fixture(t)
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	tests := []struct {
		name, dest, wantErr string
	}{
		{"dest is a file", file, "is not a directory"},
		{"dest missing", filepath.Join(t.TempDir(), "nope"), "no such file or directory (mount the pmem-memkind volume there)"},
		{"dest inside source", filepath.Join(src, "sub"), "must not be the source"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Install(InstallOptions{Source: src, Dest: tc.dest})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseManifest(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	tests := []struct {
		name, in, wantErr string
		want              int
	}{
		{name: "ok", in: sum + "  libmemkind.so.0\n" + sum + "  libpmem-preload.so\n", want: 2},
		{name: "blank lines ok", in: "\n" + sum + "  a.so\n\n", want: 1},
		{name: "single space", in: sum + " a.so\n", wantErr: `want "<sha256>  <file>"`},
		{name: "short digest", in: "abcd  a.so\n", wantErr: "want 64 hex digits"},
		{name: "path", in: sum + "  ../etc/passwd\n", wantErr: "want a plain file name"},
		{name: "manifest itself", in: sum + "  MANIFEST\n", wantErr: "want a plain file name"},
		{name: "duplicate", in: sum + "  a.so\n" + sum + "  a.so\n", wantErr: "listed twice"},
		{name: "empty", in: "", wantErr: "lists no files"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseManifest([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || len(m) != tc.want {
				t.Fatalf("got %v, %v; want %d entries", m, err, tc.want)
			}
			if again, err := ParseManifest(m.Marshal()); err != nil || len(again) != len(m) {
				t.Fatalf("Marshal does not round-trip: %v", err)
			}
		})
	}
}

func TestIsGlibc(t *testing.T) {
	for name, want := range map[string]bool{
		"libc.so.6": true, "libm.so.6": true, "libpthread.so.0": true, "libdl.so.2": true, "librt.so.1": true,
		"/lib64/ld-linux-x86-64.so.2": true, "ld-linux-aarch64.so.1": true, "linux-vdso.so.1": true,
		"libnuma.so.1": false, "libcrypto.so.3": false, "libmemkind.so.0": false, "libcap.so.2": false,
	} {
		if got := IsGlibc(name); got != want {
			t.Errorf("IsGlibc(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestStagePreloadOnly: the default closure is the preload and its MANIFEST.
func TestStagePreloadOnly(t *testing.T) {
	pre := filepath.Join(fixture(t), preload.FileName)
	out := filepath.Join(t.TempDir(), "closure")
	m, err := Stage(context.Background(), StageOptions{Preload: pre, Out: out})
	if err != nil {
		t.Fatalf("Stage: %v", err)
	}
	if got := strings.Join(m.Names(), " "); got != preload.FileName {
		t.Errorf("staged %s, want only %s", got, preload.FileName)
	}
	if err := Verify(out, m); err != nil {
		t.Error(err)
	}
}

// TestStageRealMemkind stages the system's libmemkind as an extra library:
// no glibc library is copied, every library gets RUNPATH $ORIGIN, and the
// result verifies.
func TestStageRealMemkind(t *testing.T) {
	ctx := context.Background()
	for _, tool := range []string{"patchelf", "ldd", "ldconfig"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	mk, err := FindSystemLibrary(ctx, MemkindName)
	if err != nil {
		t.Skipf("libmemkind0 not installed: %v", err)
	}
	pre := filepath.Join(fixture(t), preload.FileName)
	out := filepath.Join(t.TempDir(), "closure")
	m, err := Stage(ctx, StageOptions{Preload: pre, Memkind: mk, Out: out})
	if err != nil {
		t.Fatalf("Stage: %v", err)
	}
	for _, n := range m.Names() {
		if IsGlibc(n) {
			t.Errorf("glibc library %s was copied", n)
		}
	}
	for _, n := range []string{MemkindName, "libnuma.so.1", "libdaxctl.so.1", preload.FileName} {
		if _, ok := m[n]; !ok {
			t.Errorf("closure lacks %s: %v", n, m.Names())
		}
	}
	if _, err := Stage(ctx, StageOptions{Preload: pre, Out: out}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("staging into a non-empty dir: %v, want a 'not empty' error", err)
	}
}
