// Package preload holds the C source of libpmem-preload.so, the page-level
// placement layer the memkind init image ships (mmap/munmap/madvise/mremap
// interposer, no libc dependency), and builds it with the system C compiler. The source is embedded so that the stage tool and the tests can
// build it from anywhere.
package preload

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// FileName is the name the webhook puts into LD_PRELOAD.
const FileName = "libpmem-preload.so"

//go:embed csrc/pmem_preload.c
var Source []byte

// Flags are the compiler flags for the shared library. Freestanding with no
// libraries at all: the result has no DT_NEEDED and no versioned symbol, so it
// loads under glibc of any version and under musl. -fvisibility=hidden keeps
// every symbol but the interposed calls private.
var Flags = []string{"-O2", "-g", "-fPIC", "-shared", "-nostdlib", "-ffreestanding", "-fno-builtin",
	"-fno-stack-protector", "-fvisibility=hidden", "-Wl,-z,defs", "-Wall", "-Wextra", "-Werror"}

// ArchFlags are added to Flags for a target (the first field of `cc
// -dumpmachine`). aarch64: gcc's default outline atomics call helpers in
// libgcc (__aarch64_swp4_acq, ...), which -nostdlib leaves undefined; inline
// LL/SC atomics work on every ARMv8.
var ArchFlags = map[string][]string{"aarch64": {"-mno-outline-atomics"}}

// Target returns the architecture cc compiles for ("x86_64", "aarch64").
func Target(ctx context.Context, cc string) (string, error) {
	if cc == "" {
		cc = "gcc"
	}
	out, err := exec.CommandContext(ctx, cc, "-dumpmachine").Output()
	if err != nil {
		return "", fmt.Errorf("%s -dumpmachine: %w", cc, err)
	}
	arch, _, _ := strings.Cut(strings.TrimSpace(string(out)), "-")
	return arch, nil
}

// Build compiles the preload into out with cc (gcc when empty): Flags, plus
// ArchFlags of the compiler's target.
func Build(ctx context.Context, cc, out string) error {
	if cc == "" {
		cc = "gcc"
	}
	arch, err := Target(ctx, cc)
	if err != nil {
		return fmt.Errorf("build preload: %w", err)
	}
	dir, err := os.MkdirTemp("", "pmem-preload-src-")
	if err != nil {
		return fmt.Errorf("build preload: %w", err)
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "pmem_preload.c")
	if err := os.WriteFile(src, Source, 0o644); err != nil {
		return fmt.Errorf("build preload: %w", err)
	}
	// The temp dir must not leak into the debug info: same source, same bytes.
	args := append([]string{"-ffile-prefix-map=" + dir + "=preload/csrc"}, Flags...)
	args = append(args, ArchFlags[arch]...)
	args = append(args, "-o", out, src)
	cmd := exec.CommandContext(ctx, cc, args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build preload: %s %s: %w\n%s", cc, strings.Join(args, " "), err, b)
	}
	return nil
}

// StatusPath is the record the preload keeps for process pid of container
// in dir (the PMEM volume root, or its heap/ subdirectory for a server
// that cannot write the root): key=value lines (mode, bytes_mapped_pmem,
// forks, ...). It is pmem-status.<container>.<pid>: two containers of a
// pod share the volume but not the pid namespace (both are pid 1), and
// the webhook gives each its name in PMEM_CONTAINER_NAME. With container
// "" (the variable unset: an older injection, or not a DNS label, which
// the preload ignores) it is pmem-status.<pid>.
func StatusPath(dir, container string, pid int) string {
	if container == "" {
		return filepath.Join(dir, "pmem-status."+strconv.Itoa(pid))
	}
	return filepath.Join(dir, "pmem-status."+container+"."+strconv.Itoa(pid))
}

// StatusContainer is the container part of the status file's name for a
// process started with env (KEY=VALUE entries; the first of a key counts,
// as in the preload's reading of /proc/self/environ): the value of
// PMEM_CONTAINER_NAME if it is 1 to 63 of [a-z0-9-], as the preload
// checks, else "".
func StatusContainer(env []string) string {
	v := ""
	for _, e := range env {
		if name, ok := strings.CutPrefix(e, "PMEM_CONTAINER_NAME="); ok {
			v = name
			break // the preload takes the first
		}
	}
	if !ValidContainerName(v) {
		return ""
	}
	return v
}

// ValidContainerName reports whether s is what the preload accepts in
// PMEM_CONTAINER_NAME (and so puts into a file name): 1 to 63 of
// [a-z0-9-], a DNS label's characters, as every Kubernetes container name
// is. Anything else the preload ignores.
func ValidContainerName(s string) bool {
	return s != "" && len(s) <= 63 && strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
}

// ReadStatus reads the record at StatusPath(dir, container, pid) into a map.
func ReadStatus(dir, container string, pid int) (map[string]string, error) {
	b, err := os.ReadFile(StatusPath(dir, container, pid))
	if err != nil {
		return nil, fmt.Errorf("preload status: %w", err)
	}
	return ParseStatus(string(b)), nil
}

// ParseStatus parses a status record (or any key=value lines, as read
// from a pod) into a map: keys and values trimmed (the file is padded
// with spaces), lines without "=" skipped.
func ParseStatus(s string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m
}

// Pauses is the last write-back's pauses from a status record:
// restore_last_us (µs: longest single stop-the-world pause, and all of
// them together) and restore_last_pauses (how many; records written
// before the pauses were chunked have neither "longest" nor the count:
// their one pause is both).
type Pauses struct {
	LongestUS, TotalUS int64
	Count              int
	Phases             map[string]int64 // every restore_last_us field, µs
}

// LastPauses reads Pauses from a parsed status record.
func LastPauses(st map[string]string) Pauses {
	p := Pauses{Phases: map[string]int64{}}
	for _, kv := range strings.Split(st["restore_last_us"], ",") {
		if k, v, ok := strings.Cut(kv, ":"); ok {
			p.Phases[k], _ = strconv.ParseInt(v, 10, 64)
		}
	}
	p.TotalUS = p.Phases["pause"]
	p.LongestUS, p.Count = p.TotalUS, 1
	if l, ok := p.Phases["longest"]; ok {
		p.LongestUS = l
		p.Count, _ = strconv.Atoi(st["restore_last_pauses"])
	}
	return p
}
