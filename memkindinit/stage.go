package memkindinit

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/pmem-webhook/pmem-webhook/preload"
)

// StageOptions say where the parts of the closure come from.
type StageOptions struct {
	// Preload is the built libpmem-preload.so.
	Preload string
	// Memkind is an optional extra library (e.g. libmemkind.so.0) staged
	// with its non-glibc closure beside the preload. Empty: none. The
	// page-level preload needs no library at all, so the memkind image
	// stages none.
	Memkind string
	// Out is the closure directory to create (e.g. /usr/lib/pmem-memkind in
	// the memkind image). It must not exist or be empty.
	Out string
	// Patchelf and LDD name the tools; empty means from PATH.
	Patchelf, LDD string
}

// Stage assembles the closure: the preload, and, if o.Memkind is set, that
// library and every library ldd resolves for it except glibc's, each copied
// under its soname with RUNPATH $ORIGIN; then a MANIFEST. The result passes
// Verify.
func Stage(ctx context.Context, o StageOptions) (Manifest, error) {
	if o.Patchelf == "" {
		o.Patchelf = "patchelf"
	}
	if o.LDD == "" {
		o.LDD = "ldd"
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, fmt.Errorf("stage: %w", err)
	}
	if entries, err := os.ReadDir(o.Out); err != nil {
		return nil, fmt.Errorf("stage: %w", err)
	} else if len(entries) > 0 {
		return nil, fmt.Errorf("stage: output directory %s is not empty", o.Out)
	}
	libs := map[string]string{} // file name -> source path
	if o.Memkind != "" {
		deps, err := closure(ctx, o.LDD, o.Memkind)
		if err != nil {
			return nil, err
		}
		libs[filepath.Base(o.Memkind)] = o.Memkind
		for name, path := range deps {
			libs[name] = path
		}
	}
	m := Manifest{}
	for name, src := range libs {
		dst := filepath.Join(o.Out, name)
		if err := copyFile(src, dst, 0o755); err != nil {
			return nil, fmt.Errorf("stage %s: %w", name, err)
		}
		cmd := exec.CommandContext(ctx, o.Patchelf, "--set-rpath", Origin, dst)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("stage %s: patchelf --set-rpath: %w: %s", name, err, bytes.TrimSpace(out))
		}
	}
	if err := copyFile(o.Preload, filepath.Join(o.Out, preload.FileName), 0o755); err != nil {
		return nil, fmt.Errorf("stage preload: %w", err)
	}
	entries, err := os.ReadDir(o.Out)
	if err != nil {
		return nil, fmt.Errorf("stage: %w", err)
	}
	for _, e := range entries {
		sum, err := fileSHA256(filepath.Join(o.Out, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("stage: %w", err)
		}
		m[e.Name()] = sum
	}
	if err := os.WriteFile(filepath.Join(o.Out, ManifestName), m.Marshal(), 0o644); err != nil {
		return nil, fmt.Errorf("stage: write manifest: %w", err)
	}
	if err := Verify(o.Out, m); err != nil {
		return nil, fmt.Errorf("stage: the staged closure does not verify: %w", err)
	}
	return m, nil
}

// closure runs ldd on lib and returns soname -> resolved path for every
// dependency outside glibc. ldd (not a DT_NEEDED walk of our own) because
// it is the loader's own answer, including the search path it used.
func closure(ctx context.Context, ldd, lib string) (map[string]string, error) {
	out, err := exec.CommandContext(ctx, ldd, lib).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w: %s", lib, err, bytes.TrimSpace(out))
	}
	deps := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || IsGlibc(f[0]) {
			continue
		}
		// "libnuma.so.1 => /lib/x86_64-linux-gnu/libnuma.so.1 (0x...)"
		if len(f) < 3 || f[1] != "=>" {
			return nil, fmt.Errorf("ldd %s: unexpected line %q", lib, sc.Text())
		}
		if f[2] == "not" {
			return nil, fmt.Errorf("ldd %s: library missing on the build host: %s", lib, f[0])
		}
		deps[f[0]] = f[2]
	}
	return deps, sc.Err()
}

// FindSystemLibrary returns the path of a library by soname from the
// loader cache (ldconfig -p).
func FindSystemLibrary(ctx context.Context, soname string) (string, error) {
	ldconfig := "ldconfig"
	if _, err := exec.LookPath(ldconfig); err != nil {
		// Not in a non-root user's PATH on some distributions.
		for _, p := range []string{"/sbin/ldconfig", "/usr/sbin/ldconfig"} {
			if _, err := os.Stat(p); err == nil {
				ldconfig = p
				break
			}
		}
	}
	out, err := exec.CommandContext(ctx, ldconfig, "-p").Output()
	if err != nil {
		return "", fmt.Errorf("ldconfig -p: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || name != soname {
			continue
		}
		if _, path, ok := strings.Cut(rest, "=> "); ok {
			return strings.TrimSpace(path), nil
		}
	}
	return "", fmt.Errorf("%s not found in the loader cache (install libmemkind0)", soname)
}

// copyFile copies src (following symlinks) to dst with mode perm.
func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return fmt.Errorf("sync %s: %w", dst, err)
	}
	return out.Close()
}
