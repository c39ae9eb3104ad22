package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// Names of the images the e2e features run: what deploy/ and the examples reference.
const (
	WebhookRef = "pmem-webhook/webhook:dev"
	MemkindRef = patch.DefaultMemkindImage
	RedisRef   = "pmem-webhook/redis-debian:7.0"
	// PauseRef is containerd's sandbox_image: a static pause program, because no registry is
	// reachable to pull registry.k8s.io/pause.
	PauseRef = "pmem-e2e/pause:static"
)

// Dockerfiles of the images, relative to the repository root.
const (
	WebhookDockerfile = "deploy/images/webhook/Dockerfile"
	MemkindDockerfile = "deploy/images/memkind/Dockerfile"
	RedisDockerfile   = "deploy/images/redis-debian/Dockerfile"
)

// SetOptions configure BuildSet.
type SetOptions struct {
	RepoRoot string
	// CacheDir keeps what is slow to make (the Debian tree, the Redis image) between runs.
	CacheDir string
	// WorkDir receives the archives; it is the caller's to remove.
	WorkDir string
	// GoBin is the go command ("" means "go").
	GoBin string
	Logf  func(format string, args ...any)
}

// BuildSet builds the webhook, memkind init, Debian Redis and pause images and returns their
// archives. Needs root (chroot, chown), debootstrap and gcc (static glibc; the memkind
// closure, the freestanding preload, is built with the host's gcc as the Dockerfile's stage
// builds it).
func BuildSet(ctx context.Context, o SetOptions) ([]Built, error) {
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if o.GoBin == "" {
		o.GoBin = "go"
	}
	bases := &Bases{CacheDir: o.CacheDir, Logf: logf}
	opts := Options{RepoRoot: o.RepoRoot, Bases: bases, WorkDir: o.WorkDir, Logf: logf}
	ctxDir := filepath.Join(o.WorkDir, "context")

	var out []Built
	// Webhook: its context is the static binaries its Dockerfile copies.
	start := time.Now()
	webhookCtx, err := goContext(ctx, o, WebhookDockerfile, ctxDir)
	if err != nil {
		return nil, err
	}
	b, err := Build(ctx, opts, Image{Ref: WebhookRef, Dockerfile: WebhookDockerfile, Context: webhookCtx})
	if err != nil {
		return nil, err
	}
	out = append(out, b)
	logf("image %s built in %s", WebhookRef, time.Since(start).Round(time.Millisecond))

	// Memkind init: the context binaries plus what its "stage" stage produces.
	start = time.Now()
	memkindCtx, err := goContext(ctx, o, MemkindDockerfile, ctxDir)
	if err != nil {
		return nil, err
	}
	stageOut, err := memkindStage(ctx, o.RepoRoot, memkindCtx, filepath.Join(o.WorkDir, "memkind-stage"))
	if err != nil {
		return nil, err
	}
	if b, err = Build(ctx, opts, Image{Ref: MemkindRef, Dockerfile: MemkindDockerfile, Context: memkindCtx, StageOutputs: stageOut}); err != nil {
		return nil, err
	}
	out = append(out, b)
	logf("image %s built in %s", MemkindRef, time.Since(start).Round(time.Millisecond))

	// Redis: apt-get in a chroot takes a while; the archive is cached by Dockerfile content.
	start = time.Now()
	if b, err = cachedBuild(ctx, opts, o.CacheDir, Image{Ref: RedisRef, Dockerfile: RedisDockerfile}); err != nil {
		return nil, err
	}
	out = append(out, b)
	logf("image %s ready in %s", RedisRef, time.Since(start).Round(time.Millisecond))

	if b, err = buildPause(ctx, o.RepoRoot, o.WorkDir); err != nil {
		return nil, err
	}
	out = append(out, b)
	return out, nil
}

// ContextBinaries lists the build-context files a Dockerfile's final stage copies (COPY
// without --from): each is the static Go program ./cmd/<name>, as `make image-contexts` builds.
func ContextBinaries(df *Dockerfile) []string {
	var names []string
	for _, st := range df.Stages {
		for _, in := range st.Instr {
			if in.Cmd == "COPY" && in.Flags["from"] == "" {
				names = append(names, in.Args[0])
			}
		}
	}
	return names
}

// goContext builds the context binaries of a Dockerfile with the flags of mk/deploy.mk
// (CGO_ENABLED=0, -trimpath, -s -w).
func goContext(ctx context.Context, o SetOptions, dockerfile, dir string) (map[string]string, error) {
	df, err := ParseDockerfile(filepath.Join(o.RepoRoot, dockerfile))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, name := range ContextBinaries(df) {
		pkg := "./cmd/" + name
		if _, err := os.Stat(filepath.Join(o.RepoRoot, "cmd", name)); err != nil {
			return nil, fmt.Errorf("%s copies %q from its context, but there is no %s to build it from", dockerfile, name, pkg)
		}
		bin := filepath.Join(dir, name)
		cmd := exec.CommandContext(ctx, o.GoBin, "build", "-trimpath", "-ldflags=-s -w", "-o", bin, pkg)
		cmd.Dir = o.RepoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
		}
		m[name] = bin
	}
	return m, nil
}

// memkindStage produces what the memkind Dockerfile's "stage" stage produces, on this host
// (Debian bookworm with the stage's packages: gcc, libc6-dev): the
// closure from the same pmem-stage program and command line, and the copyright files of the
// packages the closure's libraries come from, found the way the stage's RUN finds them.
func memkindStage(ctx context.Context, repoRoot string, context map[string]string, dir string) (map[string]string, error) {
	df, err := ParseDockerfile(filepath.Join(repoRoot, MemkindDockerfile))
	if err != nil {
		return nil, err
	}
	st, err := df.Stage("stage")
	if err != nil {
		return nil, err
	}
	const closure = "/usr/lib/pmem-memkind"
	if !stageRuns(st, "pmem-stage --out "+closure) {
		return nil, fmt.Errorf("%s: stage %q no longer runs `pmem-stage --out %s`; update test/images to match", MemkindDockerfile, st.Name, closure)
	}
	stageBin, ok := context["pmem-stage"]
	if !ok {
		return nil, fmt.Errorf("%s: pmem-stage is not in the build context", MemkindDockerfile)
	}
	_ = os.RemoveAll(dir)
	out := filepath.Join(dir, "closure")
	if b, err := exec.CommandContext(ctx, stageBin, "--out", out).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pmem-stage --out %s (needs gcc, libc6-dev): %w\n%s", out, err, b)
	}
	licenses := filepath.Join(dir, "licenses")
	if err := os.MkdirAll(licenses, 0o755); err != nil {
		return nil, err
	}
	libs, _ := filepath.Glob(filepath.Join(out, "*.so*"))
	for _, lib := range libs {
		name := filepath.Base(lib)
		b, err := exec.CommandContext(ctx, "dpkg", "-S", "*/"+name).Output()
		if err != nil {
			continue // our own preload: no package
		}
		pkg, _, _ := strings.Cut(strings.SplitN(string(b), "\n", 2)[0], ":")
		src := filepath.Join("/usr/share/doc", pkg, "copyright")
		if fileExists(src) {
			if err := copyFile(src, filepath.Join(licenses, pkg+".copyright"), 0o644); err != nil {
				return nil, err
			}
		}
	}
	return map[string]string{MemkindStageOutputs[0]: out, MemkindStageOutputs[1]: licenses}, nil
}

// MemkindStageOutputs are the `COPY --from` sources of the memkind image that memkindStage
// produces (Build refuses any other).
var MemkindStageOutputs = []string{"stage:/usr/lib/pmem-memkind", "stage:/licenses"}

func stageRuns(st *Stage, command string) bool {
	for _, in := range st.Instr {
		if in.Cmd == "RUN" && strings.Contains(strings.Join(in.Args, " "), command) {
			return true
		}
	}
	return false
}

// cachedBuild reuses the archive of an image whose Dockerfile copies nothing from a context,
// keyed by the Dockerfile's content.
func cachedBuild(ctx context.Context, opts Options, cacheDir string, img Image) (Built, error) {
	key, err := hashFiles(filepath.Join(opts.RepoRoot, img.Dockerfile))
	if err != nil {
		return Built{}, err
	}
	cached := filepath.Join(cacheDir, "images", BaseVersion+"-"+key[:16]+".tar")
	if fileExists(cached) {
		return Built{Ref: img.Ref, Archive: cached}, nil
	}
	b, err := Build(ctx, opts, img)
	if err != nil {
		return Built{}, err
	}
	if err := os.MkdirAll(filepath.Dir(cached), 0o755); err != nil {
		return Built{}, err
	}
	if err := os.Rename(b.Archive, cached); err != nil {
		return Built{}, err
	}
	return Built{Ref: img.Ref, Archive: cached}, nil
}

// pauseC is the pod sandbox's process: it sleeps until told to stop and reaps the zombies of
// the (shared-PID) pod.
const pauseC = `#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
	struct sigaction s = {0}, r = {0};
	s.sa_handler = stop; sigaction(SIGINT, &s, NULL); sigaction(SIGTERM, &s, NULL);
	r.sa_handler = reap; r.sa_flags = SA_NOCLDSTOP; sigaction(SIGCHLD, &r, NULL);
	for (;;) pause();
}
`

func buildPause(ctx context.Context, repoRoot, workDir string) (Built, error) {
	_ = repoRoot
	tree := filepath.Join(workDir, "pause.rootfs")
	_ = os.RemoveAll(tree)
	if err := os.MkdirAll(tree, 0o755); err != nil {
		return Built{}, err
	}
	src := filepath.Join(workDir, "pause.c")
	if err := os.WriteFile(src, []byte(pauseC), 0o644); err != nil {
		return Built{}, err
	}
	if b, err := exec.CommandContext(ctx, "gcc", "-static", "-O2", "-o", filepath.Join(tree, "pause"), src).CombinedOutput(); err != nil {
		return Built{}, fmt.Errorf("gcc -static pause.c (needs gcc and libc6-dev): %w\n%s", err, b)
	}
	archive := filepath.Join(workDir, "pause.tar")
	if err := writeArchive(tree, archive, PauseRef, v1.Config{Entrypoint: []string{"/pause"}, User: "65535:65535"}); err != nil {
		return Built{}, err
	}
	_ = os.RemoveAll(tree)
	return Built{Ref: PauseRef, Archive: archive}, nil
}
