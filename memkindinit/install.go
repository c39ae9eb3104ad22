package memkindinit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/pmem-webhook/pmem-webhook/preload"
)

// tempPrefix marks files being written; a restarted init container removes
// leftovers of a run that died half way.
const tempPrefix = ".pmem-init-"

// InstallOptions are the init container's flags.
type InstallOptions struct {
	// Source is the staged closure in the memkind image.
	Source string
	// Dest is the shared volume the app containers mount read-only.
	Dest string
}

// InstallResult says what Install did.
type InstallResult struct {
	// Files are the installed file names, MANIFEST last.
	Files []string
	// Unchanged is true when Dest already held a verified copy of the same
	// closure (a restarted init container).
	Unchanged bool
	// Removed are files of an earlier closure that this one no longer has.
	Removed []string
}

// Install copies the closure from o.Source to o.Dest. It verifies the
// source first (checksums, ELF, completeness), writes every file to a
// temporary name in Dest and renames it into place (so no reader and no
// restarted run ever sees a half-written library), writes MANIFEST last,
// and verifies the result. Running it again on a complete Dest changes
// nothing. It writes nothing outside Dest.
func Install(o InstallOptions) (*InstallResult, error) {
	src, err := filepath.Abs(o.Source)
	if err != nil {
		return nil, fmt.Errorf("source %q: %w", o.Source, err)
	}
	dst, err := filepath.Abs(o.Dest)
	if err != nil {
		return nil, fmt.Errorf("dest %q: %w", o.Dest, err)
	}
	if src == dst || strings.HasPrefix(dst, src+string(filepath.Separator)) {
		return nil, fmt.Errorf("dest %s must not be the source %s or inside it", dst, src)
	}
	m, err := ReadManifest(src)
	if err != nil {
		return nil, fmt.Errorf("source closure %s: %w", src, err)
	}
	if err := Verify(src, m); err != nil {
		return nil, fmt.Errorf("source closure %s is broken (rebuild the memkind image): %w", src, err)
	}
	manifest := m.Marshal()

	if st, err := os.Stat(dst); err != nil {
		return nil, fmt.Errorf("dest %s: %w (mount the %s volume there)", dst, err, "pmem-memkind")
	} else if !st.IsDir() {
		return nil, fmt.Errorf("dest %s is not a directory", dst)
	}
	if old, err := os.ReadFile(filepath.Join(dst, ManifestName)); err == nil && bytes.Equal(old, manifest) {
		if Verify(dst, m) == nil {
			return &InstallResult{Files: append(m.Names(), ManifestName), Unchanged: true}, nil
		}
	}
	if err := checkWritable(dst); err != nil {
		return nil, err
	}
	removeLeftovers(dst)

	res := &InstallResult{}
	// Libraries first, the preload after them, MANIFEST last: a MANIFEST
	// that matches means everything it lists is in place.
	names := m.Names()
	order := make([]string, 0, len(names))
	for _, n := range names {
		if n != preload.FileName {
			order = append(order, n)
		}
	}
	order = append(order, preload.FileName)
	for _, n := range order {
		if err := installFile(filepath.Join(src, n), dst, n, m[n], 0o755); err != nil {
			return nil, err
		}
		res.Files = append(res.Files, n)
	}
	// Files of an earlier closure (listed in its MANIFEST) that this one
	// does not have. Files we never wrote are left alone.
	if oldData, err := os.ReadFile(filepath.Join(dst, ManifestName)); err == nil {
		if old, err := ParseManifest(oldData); err == nil {
			for _, n := range old.Names() {
				if _, keep := m[n]; !keep {
					if err := os.Remove(filepath.Join(dst, n)); err == nil {
						res.Removed = append(res.Removed, n)
					}
				}
			}
		}
	}
	if err := writeAtomic(dst, ManifestName, manifest, 0o644); err != nil {
		return nil, err
	}
	res.Files = append(res.Files, ManifestName)
	syncDir(dst)
	if err := Verify(dst, m); err != nil {
		return nil, fmt.Errorf("installed closure in %s does not verify: %w", dst, err)
	}
	return res, nil
}

func checkWritable(dir string) error {
	f, err := os.CreateTemp(dir, tempPrefix+"probe-*")
	if err != nil {
		if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
			return fmt.Errorf("dest %s is not writable by uid %d: %w (mount the pmem-memkind volume read-write in the init container)",
				dir, os.Getuid(), err)
		}
		return fmt.Errorf("dest %s: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func removeLeftovers(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// installFile copies src to dir/name through a temporary file, checking the
// bytes written against the manifest digest before the rename.
func installFile(src, dir, name, sum string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("install %s: %w", name, err)
	}
	defer in.Close()
	tmp, err := os.CreateTemp(dir, tempPrefix+name+"-*")
	if err != nil {
		return fmt.Errorf("install %s: %w", name, err)
	}
	tmpName := tmp.Name()
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmpName)
		return fmt.Errorf("install %s into %s: %w", name, dir, err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), in); err != nil {
		return fail(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fail(fmt.Errorf("source changed while copying: sha256 %s, %s says %s", got, ManifestName, sum))
	}
	if err := tmp.Chmod(perm); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmpName, filepath.Join(dir, name)); err != nil {
		os.Remove(tmpName)
		return fmt.Errorf("install %s into %s: %w", name, dir, err)
	}
	return nil
}

func writeAtomic(dir, name string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(dir, tempPrefix+name+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmpName := tmp.Name()
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmpName, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmpName)
		return fmt.Errorf("write %s into %s: %w", name, dir, err)
	}
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
