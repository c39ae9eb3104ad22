package preload

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pmem-webhook/pmem-webhook/test/gate"
)

// The aarch64 cross toolchain and user-mode emulator (Debian bookworm:
// gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user; make node-deps
// installs them).
const (
	crossCC   = "aarch64-linux-gnu-gcc"
	qemu      = "qemu-aarch64"
	crossRoot = "/usr/aarch64-linux-gnu" // the arm64 glibc and ld.so: qemu -L
)

// needCross skips (or, under make test-node, fails) without the tools.
func needCross(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			gate.Skip(t, gate.Node, tool+" not installed (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)")
		}
	}
}

// buildArm64 builds the preload for aarch64 with Build (Flags plus
// ArchFlags["aarch64"]) and returns its path.
func buildArm64(t *testing.T) string {
	t.Helper()
	needCross(t, crossCC)
	lib := filepath.Join(t.TempDir(), FileName)
	if err := Build(context.Background(), crossCC, lib); err != nil {
		t.Fatal(err)
	}
	return lib
}

// nmSet returns the lines of `nm -D FLAG lib` without addresses, sorted.
func nmSet(t *testing.T, flag, lib string) []string {
	t.Helper()
	out, err := exec.Command("nm", "-D", flag, lib).CombinedOutput()
	if err != nil {
		t.Fatalf("nm -D %s %s: %v\n%s", flag, lib, err, out)
	}
	var set []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 {
			set = append(set, strings.Join(f[len(f)-2:], " ")) // "T mmap", "w __errno_location"
		}
	}
	slices.Sort(set)
	return set
}

// TestArm64Build: the preload compiles for aarch64 with the x86_64 build's
// flags (Build; -Werror, -Wl,-z,defs), is an AArch64 shared object with no
// DT_NEEDED and no versioned symbol, and exports and imports exactly what
// the x86_64 build does (nm -D).
func TestArm64Build(t *testing.T) {
	arm := buildArm64(t)
	x86Dir, _ := setup(t)
	x86 := filepath.Join(x86Dir, FileName)
	hdr, err := exec.Command("readelf", "-h", "-d", "-V", arm).CombinedOutput()
	if err != nil {
		t.Fatalf("readelf: %v\n%s", err, hdr)
	}
	if !strings.Contains(string(hdr), "AArch64") {
		t.Errorf("%s is not an AArch64 object:\n%s", arm, hdr)
	}
	for _, bad := range []string{"NEEDED", "GLIBC_", "VERNEED"} {
		if strings.Contains(string(hdr), bad) {
			t.Errorf("readelf -d -V of the aarch64 build shows %s:\n%s", bad, hdr)
		}
	}
	for _, flag := range []string{"--undefined-only", "--defined-only"} {
		a, x := nmSet(t, flag, arm), nmSet(t, flag, x86)
		if !slices.Equal(a, x) {
			t.Errorf("nm -D %s: aarch64 %q, x86_64 %q", flag, a, x)
		}
		t.Logf("nm -D %s (both): %q", flag, a)
	}
}

// TestArm64UnderQemu runs the preload's C tests built for aarch64 under
// qemu-user (qemu-aarch64 -L /usr/aarch64-linux-gnu). What qemu-user
// changes, and what each case asserts because of it:
//   - the process's comm is "qemu-aarch64": that is the target name;
//   - LD_PRELOAD goes to the emulated program only (-E), the rest of the env
//     to qemu, which passes it on (the preload reads /proc/self/environ: the
//     host process's);
//   - qemu runs a thread of its own (RCU) that blocks every signal, so the
//     write-back after a fork cannot pause it (the preload's write-back
//     thread, which does start under qemu, retries): the heap stays a
//     private mapping of the heap file (semantics fsdax-private, and the status file says so); writeback.c,
//     which needs the write-back, is not run;
//   - set_mempolicy is not emulated (ENOSYS): kmem logs it and stays on DRAM;
//   - a program the test execs (/bin/true, x86_64) runs natively: host
//     ld.so prints that it ignores the aarch64 LD_PRELOAD.
func TestArm64UnderQemu(t *testing.T) {
	if testing.Short() {
		t.Skip("about a minute under emulation: make test-node runs it (make unit is -short)")
	}
	needCross(t, crossCC, qemu)
	if _, err := os.Stat(filepath.Join(crossRoot, "lib", "ld-linux-aarch64.so.1")); err != nil {
		gate.Skip(t, gate.Node, "no aarch64 glibc in "+crossRoot+" (apt-get install libc6-dev-arm64-cross): "+err.Error())
	}
	lib := buildArm64(t)
	dir := t.TempDir()
	build := func(name string, extra ...string) string {
		t.Helper()
		prog := filepath.Join(dir, name)
		args := append([]string{"-O1", "-Wall", "-Werror", "-pthread", "-o", prog, "testdata/" + name + ".c"}, extra...)
		if out, err := exec.Command(crossCC, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", crossCC, args, err, out)
		}
		return prog
	}
	semantics := build("semantics")
	threads := build("threads_spawn")
	align := build("large_alignment", "-Wno-unused-parameter")

	run := func(t *testing.T, env []string, argv ...string) (stdout, stderr string, pid int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, qemu, append([]string{"-L", crossRoot, "-E", "LD_PRELOAD=" + lib}, argv...)...)
		cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, env...)
		var e strings.Builder
		cmd.Stderr = &e
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %q: %v\nstdout: %s\nstderr: %s", qemu, argv, err, out, e.String())
		}
		return string(out), e.String(), cmd.Process.Pid
	}
	tiers := func(pmem string) string {
		return "MEMKIND_MEM_TIERS=" + fsdaxTiers(pmem)
	}
	const target = "PMEM_TARGET_PROCESSES=" + qemu

	t.Run("semantics", func(t *testing.T) {
		pmem := t.TempDir()
		for _, tc := range []struct {
			name    string
			env     []string
			args    []string
			wantLog string
		}{
			{"not a target process", []string{tiers(pmem)}, []string{"plain"}, ""},
			{"fsdax", []string{target, tiers(pmem)}, []string{"fsdax-private", pmem},
				"heap on FS_DAX PMEM: anonymous mappings from " + pmem + "/pmem-heap."},
			{"kmem: set_mempolicy not emulated", []string{target, "MEMKIND_DAX_KMEM_NODES=0", "MEMKIND_MEM_TIERS=KIND:KMEM_DAX,RATIO:1;POLICY:STATIC_RATIO"},
				[]string{"kmem"}, "KMEM_DAX tier: set_mempolicy: errno 38; heap stays on DRAM"},
			{"bad tiers", []string{target, "MEMKIND_MEM_TIERS=KIND:OPTANE,RATIO:1"}, []string{"plain"},
				"KIND must be DRAM, FS_DAX or KMEM_DAX"},
			{"unwritable pmem dir", []string{target, "MEMKIND_MEM_TIERS=KIND:FS_DAX,PATH:/proc/nonexistent,PMEM_SIZE_LIMIT:0,RATIO:1"},
				[]string{"fallback"}, "FS_DAX tier: open /proc/nonexistent/pmem-heap."},
		} {
			t.Run(tc.name, func(t *testing.T) {
				out, log, pid := run(t, tc.env, append([]string{semantics}, tc.args...)...)
				if !strings.HasPrefix(out, "PASS ") {
					t.Fatalf("stdout %q, stderr: %s", out, log)
				}
				if tc.wantLog == "" && log != "" || !strings.Contains(log, tc.wantLog) {
					t.Errorf("stderr %q, want it to contain %q (empty: silent)", log, tc.wantLog)
				}
				if tc.args[0] != "fsdax-private" {
					return
				}
				st := readStatus(t, pmem, pid)
				t.Logf("status: forks=%s restores=%s restore_retries=%s writeback_thread=%s heap_shared=%q", st["forks"], st["restores"], st["restore_retries"], st["writeback_thread"], st["heap_shared"])
				// The aarch64 clone of the write-back thread runs under
				// qemu (it is the thread that retried).
				if n, _ := strconv.Atoi(st["writeback_thread"]); n <= 0 {
					t.Errorf("status writeback_thread=%q: the aarch64 write-back thread did not start", st["writeback_thread"])
				}
				if st["forks"] != "2" || st["restores"] != "0" || !strings.HasPrefix(st["heap_shared"], "0 ") {
					t.Errorf("status forks=%s restores=%s heap_shared=%q: want 2 forks, no write-back, private", st["forks"], st["restores"], st["heap_shared"])
				}
				if n, _ := strconv.Atoi(st["restore_retries"]); n < 1 {
					t.Errorf("status restore_retries=%s: the write-back was never tried", st["restore_retries"])
				}
			})
		}
	})
	for _, mode := range []string{"threads", "spawn"} {
		t.Run(mode, func(t *testing.T) {
			out, log, _ := run(t, []string{target, tiers(t.TempDir())}, threads, mode)
			if out != "PASS "+mode+"\n" || !strings.Contains(log, "heap on FS_DAX PMEM") {
				t.Errorf("stdout %q, stderr: %s", out, log)
			}
		})
	}
	t.Run("large alignment", func(t *testing.T) {
		pmem := t.TempDir()
		for _, which := range []string{"p", "a", "m"} {
			out, log, _ := run(t, []string{target, tiers(pmem)}, align, "30", which)
			if !strings.Contains(out, " aligned") {
				t.Errorf("2^30 %s: stdout %q, stderr %s", which, out, log)
			}
		}
	})
}
