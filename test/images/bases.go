package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Base image references the Dockerfiles under deploy/images start FROM.
const (
	BaseDistrolessStatic = "gcr.io/distroless/static-debian12:nonroot"
	BaseDebianSlim       = "debian:bookworm-slim"
)

// DefaultMirror is the Debian mirror debootstrap and apt-get use (PMEM_DEBIAN_MIRROR overrides).
const DefaultMirror = "http://deb.debian.org/debian"

// Bases makes the root filesystems of the base images without pulling them (no registry is
// reachable here):
//
//   - debian:bookworm-slim: `debootstrap --variant=minbase bookworm` plus what makes Debian's
//     image "slim" (dpkg excludes docs, man pages and locales), the same apt sources
//     (bookworm, bookworm-updates, bookworm-security) and their updates; cached in CacheDir
//     because it takes a few minutes.
//   - distroless/static-debian12:nonroot: the few files a static binary needs (passwd and
//     group with nonroot 65532, /tmp, /home/nonroot, the CA bundle), written directly.
type Bases struct {
	// CacheDir keeps the debootstrapped tree between runs.
	CacheDir string
	// Mirror is the Debian mirror; "" means $PMEM_DEBIAN_MIRROR or DefaultMirror.
	Mirror string
	Logf   func(format string, args ...any)

	mu sync.Mutex
}

func (b *Bases) logf(format string, args ...any) {
	if b.Logf != nil {
		b.Logf(format, args...)
	}
}

// Populate fills tree (which must not exist) with the base image ref and returns its config.
func (b *Bases) Populate(ctx context.Context, ref, tree string) (v1.Config, error) {
	switch ref {
	case BaseDebianSlim:
		src, err := b.debianSlim(ctx)
		if err != nil {
			return v1.Config{}, err
		}
		// cp -a keeps owners, hard links and modes.
		if out, err := exec.CommandContext(ctx, "cp", "-a", src, tree).CombinedOutput(); err != nil {
			return v1.Config{}, fmt.Errorf("copy %s: %w: %s", src, err, out)
		}
		return v1.Config{
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cmd: []string{"bash"},
		}, nil
	case BaseDistrolessStatic:
		return distrolessStatic(tree)
	default:
		return v1.Config{}, fmt.Errorf("base image %q is not known to the builder (known: %s, %s)", ref, BaseDebianSlim, BaseDistrolessStatic)
	}
}

func distrolessStatic(tree string) (v1.Config, error) {
	files := map[string]string{
		"etc/passwd":        "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
		"etc/group":         "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n",
		"etc/nsswitch.conf": "hosts: files dns\n",
	}
	for p, content := range files {
		full := filepath.Join(tree, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return v1.Config{}, err
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			return v1.Config{}, err
		}
	}
	for _, d := range []struct {
		path string
		mode os.FileMode
		uid  int
	}{{"tmp", 0o1777, 0}, {"home/nonroot", 0o700, 65532}, {"root", 0o700, 0}} {
		full := filepath.Join(tree, d.path)
		if err := os.MkdirAll(full, 0o755); err != nil {
			return v1.Config{}, err
		}
		mode := d.mode.Perm()
		if d.mode&0o1000 != 0 {
			mode |= os.ModeSticky
		}
		if err := os.Chmod(full, mode); err != nil {
			return v1.Config{}, err
		}
		if err := os.Chown(full, d.uid, d.uid); err != nil {
			return v1.Config{}, err
		}
	}
	// The webhook serves TLS and never dials out, but distroless ships the CA bundle: so do we.
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		if err := copyFile("/etc/ssl/certs/ca-certificates.crt", filepath.Join(tree, "etc/ssl/certs/ca-certificates.crt"), 0o644); err != nil {
			return v1.Config{}, err
		}
	}
	return v1.Config{
		User:       "65532",
		WorkingDir: "/home/nonroot",
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
		},
	}, nil
}

// slimDpkgConfig is what Debian's slim images add to /etc/dpkg/dpkg.cfg.d (debuerreotype's
// --slim): no documentation, man pages or translations, copyright files kept.
const slimDpkgConfig = `path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
`

// aptCleanConfig is Debian's container images' /etc/apt/apt.conf.d/docker-clean: downloaded
// packages are removed after every install, so a RUN apt-get leaves no .deb in the layer.
const aptCleanConfig = `DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
`

// BaseVersion names the cached Debian tree and is part of every cache key: bump it when the
// way the bases are made changes, so no stale tree or image is reused.
const BaseVersion = "v2"

func (b *Bases) debianSlim(ctx context.Context) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	dir := filepath.Join(b.CacheDir, "debian-bookworm-slim-"+BaseVersion)
	stamp := dir + ".complete"
	if fileExists(stamp) && fileExists(dir) {
		return dir, nil
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return "", fmt.Errorf("debootstrap is needed to build %s (apt-get install debootstrap): %w", BaseDebianSlim, err)
	}
	mirror := b.Mirror
	if mirror == "" {
		mirror = os.Getenv("PMEM_DEBIAN_MIRROR")
	}
	if mirror == "" {
		mirror = DefaultMirror
	}
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(b.CacheDir, 0o755); err != nil {
		return "", err
	}
	start := time.Now()
	b.logf("debootstrap --variant=minbase bookworm (%s), once; cached in %s", mirror, dir)
	ctx2, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx2, "debootstrap", "--variant=minbase", "bookworm", tmp, mirror)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("debootstrap: %w\n%s", err, tail(out, 4000))
	}
	if err := os.WriteFile(filepath.Join(tmp, "etc/dpkg/dpkg.cfg.d/docker"), []byte(slimDpkgConfig), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, "etc/apt/apt.conf.d/docker-clean"), []byte(aptCleanConfig), 0o644); err != nil {
		return "", err
	}
	sources := fmt.Sprintf("Types: deb\nURIs: %[1]s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"+
		"Types: deb\nURIs: %[2]s\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
		mirror, strings.Replace(mirror, "/debian", "/debian-security", 1))
	_ = os.Remove(filepath.Join(tmp, "etc/apt/sources.list"))
	if err := os.WriteFile(filepath.Join(tmp, "etc/apt/sources.list.d/debian.sources"), []byte(sources), 0o644); err != nil {
		return "", err
	}
	// Updates as in the published image, then the same clean-up it does.
	upd := "apt-get update && apt-get -y upgrade && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin " +
		"&& find /usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete " +
		"&& rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/*"
	if err := runChroot(ctx, tmp, upd, v1.Config{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}); err != nil {
		return "", fmt.Errorf("update the bookworm tree: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	if err := os.WriteFile(stamp, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return "", err
	}
	b.logf("debian-bookworm-slim tree ready in %s", time.Since(start).Round(time.Second))
	return dir, nil
}
