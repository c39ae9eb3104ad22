// Package preload holds the C source of libpmem-preload.so, the malloc
// interposer the memkind init image ships, and builds it with the system C
// compiler. The source is embedded so that the stage tool and the tests can
// build it from anywhere.
package preload

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// FileName is the name the webhook puts into LD_PRELOAD.
const FileName = "libpmem-preload.so"

//go:embed csrc/pmem_preload.c
var Source []byte

// Flags are the compiler flags for the shared library. -fvisibility=hidden
// keeps every symbol but the malloc family and fork private.
var Flags = []string{"-O2", "-g", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror"}

// Build compiles the preload into out with cc (gcc when empty). With
// checkHeaders the memkind prototypes are checked against memkind's own
// headers (needs libmemkind-dev).
func Build(ctx context.Context, cc, out string, checkHeaders bool) error {
	if cc == "" {
		cc = "gcc"
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
	if checkHeaders {
		args = append(args, "-DPMEM_CHECK_HEADERS")
	}
	args = append(args, "-o", out, src, "-ldl", "-lpthread")
	cmd := exec.CommandContext(ctx, cc, args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build preload: %s %s: %w\n%s", cc, strings.Join(args, " "), err, b)
	}
	return nil
}
