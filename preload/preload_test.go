package preload

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pmem-webhook/pmem-webhook/memkindinit"
)

// skip skips, or fails under PMEM_NODE_REQUIRED=1 (make test-node).
func skip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("PMEM_NODE_REQUIRED") == "1" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// setup builds the preload and the semantics test program and returns the
// lib dir (preload + libmemkind.so.0 beside it) and the program's path.
func setup(t *testing.T) (libDir, prog string) {
	t.Helper()
	ctx := context.Background()
	if _, err := exec.LookPath("gcc"); err != nil {
		skip(t, "gcc not installed")
	}
	memkind, err := memkindinit.FindSystemLibrary(ctx, memkindinit.MemkindName)
	if err != nil {
		skip(t, "libmemkind0 not installed: "+err.Error())
	}
	libDir = t.TempDir()
	_, statErr := os.Stat("/usr/include/memkind_memtier.h")
	if err := Build(ctx, "", filepath.Join(libDir, FileName), statErr == nil); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(memkind, filepath.Join(libDir, memkindinit.MemkindName)); err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	prog = filepath.Join(bin, "semantics")
	for _, args := range [][]string{
		{"-O1", "-shared", "-fPIC", "-o", filepath.Join(bin, "libearly.so"), "testdata/early.c"},
		{"-O1", "-Wno-alloc-size-larger-than", "-Wno-use-after-free", "-o", prog, "testdata/semantics.c",
			filepath.Join(bin, "libearly.so"), "-Wl,-rpath," + bin, "-lpthread"},
	} {
		if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
			t.Fatalf("gcc %v: %v\n%s", args, err, out)
		}
	}
	return libDir, prog
}

func TestSemantics(t *testing.T) {
	libDir, prog := setup(t)
	pmem := t.TempDir()
	fsdax := "KIND:FS_DAX,PATH:" + pmem + ",PMEM_SIZE_LIMIT:0,RATIO:1;POLICY:STATIC_RATIO"
	tests := []struct {
		name    string
		env     []string
		args    []string
		wantLog string // a line the preload must print on stderr ("" = silent)
	}{
		{
			name: "not a target process",
			env:  []string{"MEMKIND_MEM_TIERS=" + fsdax}, // default targets: redis-server
			args: []string{"plain"},
		},
		{
			name: "target without tiers",
			env:  []string{"PMEM_TARGET_PROCESSES=semantics"},
			args: []string{"plain"},
		},
		{
			name:    "fsdax",
			env:     []string{"PMEM_TARGET_PROCESSES=redis-server,semantics", "MEMKIND_MEM_TIERS=" + fsdax},
			args:    []string{"fsdax", pmem},
			wantLog: "refusing fork() (refusal #1): the heap is on FS_DAX PMEM (" + pmem + ")",
		},
		{
			name: "dram and fsdax tiers",
			env: []string{"PMEM_TARGET_PROCESSES=semantics",
				"MEMKIND_MEM_TIERS=KIND:DRAM,RATIO:1;KIND:FS_DAX,PATH:" + pmem + ",PMEM_SIZE_LIMIT:1073741824,RATIO:4;POLICY:STATIC_RATIO"},
			args:    []string{"mixed"},
			wantLog: "heap tiered: DRAM ratio 1, FS_DAX " + pmem + " ratio 4",
		},
		{
			name:    "kmem",
			env:     []string{"PMEM_TARGET_PROCESSES=semantics", "MEMKIND_DAX_KMEM_NODES=0", "MEMKIND_MEM_TIERS=KIND:KMEM_DAX,RATIO:1;POLICY:STATIC_RATIO"},
			args:    []string{"kmem"},
			wantLog: "heap tiered: KMEM_DAX ratio 1",
		},
		{
			name:    "bad tiers fall back to glibc with a clear line",
			env:     []string{"PMEM_TARGET_PROCESSES=semantics", "MEMKIND_MEM_TIERS=KIND:OPTANE,RATIO:1"},
			args:    []string{"plain"},
			wantLog: "MEMKIND_MEM_TIERS=KIND:OPTANE,RATIO:1: tier 1: KIND OPTANE: allowed DRAM, FS_DAX, KMEM_DAX; heap stays on DRAM",
		},
		{
			name:    "unwritable pmem dir falls back",
			env:     []string{"PMEM_TARGET_PROCESSES=semantics", "MEMKIND_MEM_TIERS=KIND:FS_DAX,PATH:/proc/nonexistent,PMEM_SIZE_LIMIT:0,RATIO:1"},
			args:    []string{"fallback"},
			wantLog: "FS_DAX tier on /proc/nonexistent (limit 0 bytes):",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(prog, tc.args...)
			cmd.Env = append([]string{"LD_PRELOAD=" + filepath.Join(libDir, FileName), "PATH=/usr/bin:/bin"}, tc.env...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output() // a pipe: stdout is fully buffered
			if err != nil {
				t.Fatalf("%v\nstdout: %s\nstderr: %s", err, out, stderr.String())
			}
			if !strings.HasPrefix(string(out), "PASS ") {
				t.Fatalf("stdout %q (lost at exit?), stderr: %s", out, stderr.String())
			}
			if tc.wantLog == "" {
				if stderr.Len() != 0 {
					t.Errorf("the preload must be silent here, stderr: %s", stderr.String())
				}
			} else if !strings.Contains(stderr.String(), tc.wantLog) {
				t.Errorf("stderr lacks %q:\n%s", tc.wantLog, stderr.String())
			}
		})
	}
}

// TestShellToolsUnderPreload: entrypoint tools run under the container-wide
// LD_PRELOAD; grep failed with "memory exhausted" under libmemtier 1.14.
func TestShellToolsUnderPreload(t *testing.T) {
	libDir, _ := setup(t)
	pmem := t.TempDir()
	// As targets, grep and sort run tiered (sh would not: it forks).
	for _, target := range []string{"redis-server", "grep,sort,tr"} {
		cmd := exec.Command("sh", "-c", "grep -c root /etc/passwd && echo b a | tr ' ' '\\n' | sort | tr '\\n' ' '")
		cmd.Env = []string{"PATH=/usr/bin:/bin", "LD_PRELOAD=" + filepath.Join(libDir, FileName),
			"PMEM_TARGET_PROCESSES=" + target,
			"MEMKIND_MEM_TIERS=KIND:FS_DAX,PATH:" + pmem + ",PMEM_SIZE_LIMIT:0,RATIO:1;POLICY:STATIC_RATIO"}
		out, err := cmd.Output()
		if err != nil || !strings.HasSuffix(string(out), "a b ") {
			t.Errorf("targets %s: %v: %q", target, err, out)
		}
	}
}
