package memkindinit

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/pmem-webhook/pmem-webhook/preload"
)

// Origin is the RUNPATH every staged library carries, so that the loader
// finds the closure next to it without LD_LIBRARY_PATH (which would also
// change where the application finds its own libraries).
const Origin = "$ORIGIN"

// glibcLibs are provided by every glibc system and must never be copied: a
// second libc in a process is fatal, and an app image always has its own.
var glibcLibs = []string{
	"libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "libresolv.so", "libutil.so",
	"libanl.so", "libmvec.so", "libBrokenLocale.so", "libthread_db.so", "libnss_", "libc_malloc_debug.so",
	"ld-linux", "ld64.so", "linux-vdso.so", "linux-gate.so",
}

// IsGlibc reports whether a library name (soname or path) belongs to glibc.
func IsGlibc(name string) bool {
	base := filepath.Base(name)
	for _, p := range glibcLibs {
		if strings.HasPrefix(base, p) {
			return true
		}
	}
	return false
}

var elfMachine = map[string]elf.Machine{
	"amd64":   elf.EM_X86_64,
	"arm64":   elf.EM_AARCH64,
	"ppc64le": elf.EM_PPC64,
	"s390x":   elf.EM_S390,
	"riscv64": elf.EM_RISCV,
}

// libInfo is what we need to know about one staged shared object.
type libInfo struct {
	Needed  []string
	Soname  string
	Runpath string
}

// inspectELF checks that path is a shared object the loader of this
// machine can load (class, machine, type, a loadable segment) and returns
// its dynamic entries.
func inspectELF(path string) (*libInfo, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s is not a loadable ELF file: %w", path, err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 {
		return nil, fmt.Errorf("%s: ELF class %v, want ELFCLASS64", path, f.Class)
	}
	if want, ok := elfMachine[runtime.GOARCH]; ok && f.Machine != want {
		return nil, fmt.Errorf("%s: built for %v, this node is %s (%v)", path, f.Machine, runtime.GOARCH, want)
	}
	if f.Type != elf.ET_DYN {
		return nil, fmt.Errorf("%s: ELF type %v, want a shared object (ET_DYN)", path, f.Type)
	}
	load := false
	for _, p := range f.Progs {
		load = load || p.Type == elf.PT_LOAD
	}
	if !load {
		return nil, fmt.Errorf("%s: no PT_LOAD segment", path)
	}
	info := &libInfo{}
	if info.Needed, err = f.ImportedLibraries(); err != nil {
		return nil, fmt.Errorf("%s: read DT_NEEDED: %w", path, err)
	}
	if s, err := f.DynString(elf.DT_SONAME); err == nil && len(s) > 0 {
		info.Soname = s[0]
	}
	if s, err := f.DynString(elf.DT_RUNPATH); err == nil && len(s) > 0 {
		info.Runpath = s[0]
	}
	return info, nil
}

// Verify checks a closure directory against its manifest: every listed
// file exists with the listed sha256, is a loadable shared object for this
// machine, the libraries carry RUNPATH $ORIGIN and their soname as file
// name, and every DT_NEEDED is either in the closure or part of glibc.
func Verify(dir string, m Manifest) error {
	var errs []error
	for _, req := range []string{preload.FileName} {
		if _, ok := m[req]; !ok {
			errs = append(errs, fmt.Errorf("%s does not list %s", filepath.Join(dir, ManifestName), req))
		}
	}
	for _, name := range m.Names() {
		path := filepath.Join(dir, name)
		sum, err := fileSHA256(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("library missing: %s is listed in %s but does not exist", path, ManifestName))
			} else {
				errs = append(errs, fmt.Errorf("checksum %s: %w", path, err))
			}
			continue
		}
		if sum != m[name] {
			errs = append(errs, fmt.Errorf("checksum mismatch: %s has sha256 %s, %s says %s", path, sum, ManifestName, m[name]))
			continue
		}
		info, err := inspectELF(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if name != preload.FileName {
			if info.Runpath != Origin {
				errs = append(errs, fmt.Errorf("%s: RUNPATH %q, want %q (stage with patchelf --set-rpath '$ORIGIN')", path, info.Runpath, Origin))
			}
			if info.Soname != name {
				errs = append(errs, fmt.Errorf("%s: soname %q differs from its file name", path, info.Soname))
			}
		}
		for _, need := range info.Needed {
			if _, ok := m[need]; !ok && !IsGlibc(need) {
				errs = append(errs, fmt.Errorf("library missing: %s needs %s, which is neither in the closure nor part of glibc", path, need))
			}
		}
	}
	return errors.Join(errs...)
}
