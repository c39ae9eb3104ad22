package preload

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// kernelConstants are the flag and errno values the preload defines itself
// (it is built without libc headers). Each must equal the target libc's,
// which are the kernel's ABI for that architecture: O_DIRECTORY and
// O_NOFOLLOW differ between x86_64 and aarch64, and the aarch64 build once
// used the x86_64 values (open of /proc/self/task failed with EINVAL, so a
// fork's write-back could never start there).
var kernelConstants = []string{
	"PROT_NONE", "PROT_READ", "PROT_WRITE",
	"MAP_SHARED", "MAP_PRIVATE", "MAP_TYPE", "MAP_FIXED", "MAP_ANONYMOUS", "MAP_GROWSDOWN", "MAP_NORESERVE",
	"MAP_STACK", "MAP_HUGETLB", "MAP_FIXED_NOREPLACE",
	"MREMAP_MAYMOVE", "MREMAP_FIXED", "MADV_FREE", "MADV_REMOVE", "MADV_DONTNEED",
	"O_RDONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_NONBLOCK", "O_CLOEXEC", "O_DIRECTORY", "O_NOFOLLOW", "O_PATH",
	"AT_FDCWD", "FALLOC_FL_KEEP_SIZE", "FALLOC_FL_PUNCH_HOLE",
	"EAGAIN", "ENOMEM", "EINVAL", "EPERM", "EACCES", "EROFS", "ENOENT", "ENOTDIR", "EFBIG", "ENOSPC",
	"SIG_BLOCK", "SIG_UNBLOCK", "SIG_SETMASK", "SIGKILL", "SIGSTOP",
	"CLONE_VM", "CLONE_FS", "CLONE_FILES", "CLONE_SIGHAND", "CLONE_THREAD", "CLONE_SYSVSEM",
	"PR_SET_NAME", "F_DUPFD_CLOEXEC", "POLLIN", "FUTEX_WAIT_PRIVATE", "FUTEX_WAKE_PRIVATE",
}

// headers declare kernelConstants and the SYS_ numbers for the target.
const headers = "#define _GNU_SOURCE\n#include <errno.h>\n#include <fcntl.h>\n#include <sys/mman.h>\n#include <linux/falloc.h>\n" +
	"#include <signal.h>\n#include <sched.h>\n#include <sys/prctl.h>\n#include <poll.h>\n#include <linux/futex.h>\n#include <sys/syscall.h>\n"

// sysEnum finds the preload's system call numbers (SYS_x = n in its enum,
// one per architecture) in its source as cc preprocesses it for its target.
var sysEnum = regexp.MustCompile(`\b(SYS_[a-z0-9_]+) = ([0-9]+)`)

// constOffset keeps every emitted value non-zero and positive, so the
// compiler writes one data directive per value (no .zero runs).
const constOffset = 1 << 40

// TestKernelConstants compares the preload's own constants with the libc
// headers of each target it is built for: the native gcc and, where it is
// installed, aarch64-linux-gnu-gcc. The preload's values come from its
// preprocessed source (cc -dM -E), the headers' from an array the compiler
// lays out in assembly (cc -S), so nothing has to run on the target.
func TestKernelConstants(t *testing.T) {
	for _, cc := range []string{"gcc", crossCC} {
		t.Run(cc, func(t *testing.T) {
			if cc == crossCC {
				needCross(t, crossCC)
			}
			ours := preloadDefines(t, cc)
			theirs := headerValues(t, cc, kernelConstants)
			for i, name := range kernelConstants {
				v, ok := ours[name]
				if !ok {
					t.Errorf("%s: the preload defines no %s (or not as an integer literal)", cc, name)
					continue
				}
				if v != theirs[i] {
					t.Errorf("%s: the preload's %s = %#o, the target's headers say %#o", cc, name, v, theirs[i])
				}
			}
			// Every system call number, the same way (a wrong one for
			// an architecture calls another system call there).
			src, err := exec.Command(cc, "-E", "-x", "c", filepath.Join("csrc", "pmem_preload.c")).Output()
			if err != nil {
				t.Fatalf("%s -E: %v", cc, err)
			}
			var names []string
			nums := map[string]int64{}
			for _, m := range sysEnum.FindAllStringSubmatch(string(src), -1) {
				if _, dup := nums[m[1]]; !dup {
					names = append(names, m[1])
				}
				nums[m[1]], _ = strconv.ParseInt(m[2], 10, 64)
			}
			if len(names) < 30 {
				t.Fatalf("%s: found %d SYS_ numbers in the preprocessed preload, want its whole enum", cc, len(names))
			}
			sys := headerValues(t, cc, names)
			for i, name := range names {
				if nums[name] != sys[i] {
					t.Errorf("%s: the preload's %s = %d, the target's <sys/syscall.h> says %d", cc, name, nums[name], sys[i])
				}
			}
			t.Logf("%s: %d constants and %d system call numbers compared", cc, len(kernelConstants), len(names))
		})
	}
}

// preloadDefines returns the integer-literal macros of csrc/pmem_preload.c
// as cc preprocesses it for its target.
func preloadDefines(t *testing.T, cc string) map[string]int64 {
	t.Helper()
	out, err := exec.Command(cc, "-dM", "-E", "-x", "c", filepath.Join("csrc", "pmem_preload.c")).Output()
	if err != nil {
		t.Fatalf("%s -dM -E: %v", cc, err)
	}
	defs := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "#define" {
			continue
		}
		lit := strings.TrimSuffix(strings.Trim(f[2], "()"), "UL")
		if v, err := strconv.ParseInt(lit, 0, 64); err == nil {
			defs[f[1]] = v
		}
	}
	return defs
}

// headerValues compiles an array of the named constants against the target
// libc's headers and reads the values back from the assembly.
func headerValues(t *testing.T, cc string, names []string) []int64 {
	t.Helper()
	var src strings.Builder
	src.WriteString(headers)
	src.WriteString("long pmem_consts[] = {\n")
	for _, name := range names {
		src.WriteString("\t(long)(" + name + ") + " + strconv.FormatInt(constOffset, 10) + "L,\n")
	}
	src.WriteString("};\n")
	file := filepath.Join(t.TempDir(), "consts.c")
	if err := os.WriteFile(file, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(cc, "-S", "-O0", "-o", "-", file).CombinedOutput()
	if err != nil {
		t.Fatalf("%s -S: %v\n%s", cc, err, out)
	}
	var vals []int64
	in := false
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "pmem_consts:":
			in = true
		case in && (strings.HasPrefix(l, ".quad") || strings.HasPrefix(l, ".xword") || strings.HasPrefix(l, ".dword")):
			v, err := strconv.ParseInt(strings.TrimSpace(strings.Fields(l)[1]), 0, 64)
			if err != nil {
				t.Fatalf("%s: cannot read %q", cc, l)
			}
			vals = append(vals, v-constOffset)
		case in && len(vals) > 0:
			in = false
		}
	}
	if len(vals) != len(names) {
		t.Fatalf("%s: read %d values from the assembly, want %d:\n%s", cc, len(vals), len(names), out)
	}
	return vals
}
