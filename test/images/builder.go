// Package images builds the container images of the kubelet e2e provider without Docker: it
// reads the Dockerfiles under deploy/images and carries out their final stage on a directory
// tree (COPY from a build context or from a stage output, RUN in a chroot, USER, CMD, ...),
// then writes the tree as a one-layer image archive with go-containerregistry, which
// `ctr images import` loads into containerd.
//
// The Dockerfiles are the one list of what an image contains: the builder refuses any
// instruction it does not carry out, so an image built here cannot silently drift from the
// one `docker build` produces. What differs is only where the base comes from (see Bases).
package images

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Image says how to build one image.
type Image struct {
	// Ref is the name the image is tagged with (e.g. pmem-webhook/webhook:dev).
	Ref string
	// Dockerfile is the path of the Dockerfile, relative to the repository root.
	Dockerfile string
	// Context maps a COPY source of the final stage (a build-context path) to a host file.
	Context map[string]string
	// StageOutputs maps "<stage>:<path>" of a `COPY --from=<stage> <path>` to a host file
	// or directory holding what that stage produced.
	StageOutputs map[string]string
}

// Options configure Build.
type Options struct {
	// RepoRoot is the repository root (Dockerfile paths are relative to it).
	RepoRoot string
	// Bases builds or finds the base images' root filesystems.
	Bases *Bases
	// WorkDir receives the image trees and archives.
	WorkDir string
	// Logf reports progress; nil discards it.
	Logf func(format string, args ...any)
}

// Built is an image archive ready for `ctr images import`.
type Built struct {
	Ref     string
	Archive string
}

// Build carries out the final stage of img's Dockerfile and writes the image archive.
func Build(ctx context.Context, opts Options, img Image) (Built, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	df, err := ParseDockerfile(filepath.Join(opts.RepoRoot, img.Dockerfile))
	if err != nil {
		return Built{}, err
	}
	final := df.Final()
	slug := strings.NewReplacer("/", "_", ":", "_").Replace(img.Ref)
	tree := filepath.Join(opts.WorkDir, slug+".rootfs")
	_ = os.RemoveAll(tree)
	cfg, err := opts.Bases.Populate(ctx, final.From, tree)
	if err != nil {
		return Built{}, fmt.Errorf("%s: base %s: %w", img.Dockerfile, final.From, err)
	}
	cmdSet := false
	for _, in := range final.Instr {
		where := fmt.Sprintf("%s:%d: %s", img.Dockerfile, in.Line, in.Cmd)
		switch in.Cmd {
		case "COPY":
			if err := doCopy(in, img, tree); err != nil {
				return Built{}, fmt.Errorf("%s: %w", where, err)
			}
		case "RUN":
			if in.JSON {
				return Built{}, fmt.Errorf("%s: exec-form RUN is not supported", where)
			}
			start := time.Now()
			if err := runChroot(ctx, tree, in.Args[0], cfg); err != nil {
				return Built{}, fmt.Errorf("%s: %w", where, err)
			}
			logf("%s: RUN done in %s", img.Ref, time.Since(start).Round(time.Second))
		case "USER":
			cfg.User = in.Args[0]
		case "WORKDIR":
			cfg.WorkingDir = in.Args[0]
			if err := os.MkdirAll(filepath.Join(tree, in.Args[0]), 0o755); err != nil {
				return Built{}, fmt.Errorf("%s: %w", where, err)
			}
		case "EXPOSE":
			if cfg.ExposedPorts == nil {
				cfg.ExposedPorts = map[string]struct{}{}
			}
			for _, p := range in.Args {
				if !strings.Contains(p, "/") {
					p += "/tcp"
				}
				cfg.ExposedPorts[p] = struct{}{}
			}
		case "ENV":
			if len(in.Args) != 1 || !strings.Contains(in.Args[0], "=") {
				return Built{}, fmt.Errorf("%s: want one KEY=value", where)
			}
			cfg.Env = setEnv(cfg.Env, in.Args[0])
		case "CMD":
			cfg.Cmd = execForm(in)
			cmdSet = true
		case "ENTRYPOINT":
			cfg.Entrypoint = execForm(in)
			// As docker: an ENTRYPOINT resets a CMD inherited from the base image.
			if !cmdSet {
				cfg.Cmd = nil
			}
		default:
			return Built{}, fmt.Errorf("%s: not supported in the final stage", where)
		}
	}

	archive := filepath.Join(opts.WorkDir, slug+".tar")
	if err := writeArchive(tree, archive, img.Ref, cfg); err != nil {
		return Built{}, fmt.Errorf("%s: %w", img.Ref, err)
	}
	_ = os.RemoveAll(tree)
	return Built{Ref: img.Ref, Archive: archive}, nil
}

func execForm(in Instruction) []string {
	if in.JSON {
		return in.Args
	}
	return []string{"/bin/sh", "-c", strings.Join(in.Args, " ")}
}

func setEnv(env []string, kv string) []string {
	k, _, _ := strings.Cut(kv, "=")
	for i, e := range env {
		if strings.HasPrefix(e, k+"=") {
			env[i] = kv
			return env
		}
	}
	return append(env, kv)
}

func doCopy(in Instruction, img Image, tree string) error {
	if len(in.Args) != 2 {
		return fmt.Errorf("want exactly one source and one destination, got %q", in.Args)
	}
	src, dst := in.Args[0], in.Args[1]
	var chmod fs.FileMode
	if s, ok := in.Flags["chmod"]; ok {
		m, err := strconv.ParseUint(s, 8, 32)
		if err != nil {
			return fmt.Errorf("--chmod=%s: want an octal mode: %w", s, err)
		}
		chmod = fs.FileMode(m)
	}
	for k := range in.Flags {
		if k != "chmod" && k != "from" {
			return fmt.Errorf("flag --%s is not supported (supported: --from, --chmod)", k)
		}
	}
	var host string
	if stage, ok := in.Flags["from"]; ok {
		key := stage + ":" + src
		if host, ok = img.StageOutputs[key]; !ok {
			return fmt.Errorf("no output registered for COPY --from=%s %s (the builder knows %s)", stage, src, keys(img.StageOutputs))
		}
	} else if host, ok = img.Context[src]; !ok {
		return fmt.Errorf("build-context file %q is not provided (the builder knows %s)", src, keys(img.Context))
	}
	target := filepath.Join(tree, filepath.FromSlash(path.Clean("/"+dst)))
	st, err := os.Stat(host)
	if err != nil {
		return fmt.Errorf("source for %s: %w", src, err)
	}
	if !st.IsDir() && strings.HasSuffix(dst, "/") {
		target = filepath.Join(target, filepath.Base(src))
	}
	return copyTree(host, target, chmod)
}

func keys(m map[string]string) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return "[" + strings.Join(ks, " ") + "]"
}

// runChroot runs a RUN command in tree the way a Dockerfile build does: /bin/sh -c in the
// image's root, with its environment. It runs in new mount and PID namespaces
// (`unshare --mount-proc`), so /proc is unmounted and any daemon a package's postinst starts
// is killed when the command ends; a policy-rc.d keeps postinst scripts from starting
// services at all (what Debian's container images do), and the host's resolv.conf is lent
// for apt-get, then removed again.
func runChroot(ctx context.Context, tree, script string, cfg v1.Config) error {
	policy := filepath.Join(tree, "usr/sbin/policy-rc.d")
	resolv := filepath.Join(tree, "etc/resolv.conf")
	hadPolicy := fileExists(policy)
	if !hadPolicy {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
			return err
		}
		defer os.Remove(policy)
	}
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		_ = os.Remove(resolv)
		if err := os.WriteFile(resolv, b, 0o644); err != nil {
			return err
		}
		defer os.Remove(resolv)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--pid", "--fork", "--kill-child",
		"--mount-proc="+filepath.Join(tree, "proc"),
		"chroot", tree, "/bin/sh", "-c", script)
	env := []string{"DEBIAN_FRONTEND=noninteractive", "HOME=/root"}
	env = append(env, cfg.Env...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("RUN %q in a chroot: %w\n%s", script, err, tail(out, 4000))
	}
	return nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// writeArchive writes tree as a one-layer image tagged ref, in the `docker save` format that
// `ctr images import` reads.
func writeArchive(tree, archive, ref string, cfg v1.Config) error {
	layerTar := archive + ".layer"
	f, err := os.Create(layerTar)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := writeTar(bw, tree); err != nil {
		f.Close()
		return fmt.Errorf("tar the image tree: %w", err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	defer os.Remove(layerTar)
	layer, err := tarball.LayerFromFile(layerTar, tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config = cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		return fmt.Errorf("write %s: %w", archive, err)
	}
	return nil
}

// hashFiles is a content hash of files and directory trees, for cache keys.
func hashFiles(paths ...string) (string, error) {
	h := sha256.New()
	for _, root := range paths {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%s\n", strings.TrimPrefix(p, root))
			if !d.Type().IsRegular() {
				return nil
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(h, f)
			return err
		})
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
