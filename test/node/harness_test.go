// Package node runs Debian's real redis-server under exactly the env and
// mounts the webhook produces for an annotated pod: the pod fixture goes
// through patch.Apply, the real init program installs the staged closure
// into a temp dir standing for the pmem-memkind volume, and container paths
// are mapped to temp dirs.
//
// Without redis-server or gcc the tests skip with a
// message; `make test-node` sets PMEM_NODE_REQUIRED=1, which turns every
// such skip into a failure.
package node

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/pmem-webhook/pmem-webhook/memkindinit"
	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/preload"
	"github.com/pmem-webhook/pmem-webhook/test/gate"
	"github.com/pmem-webhook/pmem-webhook/test/proc"
	"github.com/pmem-webhook/pmem-webhook/test/redischeck"
	"github.com/pmem-webhook/pmem-webhook/test/smaps"
)

// workDir holds everything built once per test binary.
var workDir string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "pmem-node-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

// need skips the test when a tool is missing, or fails it under
// PMEM_NODE_REQUIRED=1.
func need(t *testing.T, tools ...string) {
	t.Helper()
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	gate.Skip(t, gate.Node, fmt.Sprintf("node tier needs %s (apt-get install redis-server redis-tools gcc)", strings.Join(missing, ", ")))
}

// image is the memkind init image's content, built once: the staged
// closure (what the Dockerfile puts at /usr/lib/pmem-memkind) and the init
// program.
type image struct {
	closure string
	initBin string
}

var (
	imageOnce sync.Once
	img       image
	imageErr  error
)

func buildImage(t *testing.T) image {
	t.Helper()
	need(t, "gcc", "redis-server")
	imageOnce.Do(func() {
		ctx := context.Background()
		build := filepath.Join(workDir, "build")
		if imageErr = os.MkdirAll(build, 0o755); imageErr != nil {
			return
		}
		pre := filepath.Join(build, preload.FileName)
		if imageErr = preload.Build(ctx, "", pre); imageErr != nil {
			return
		}
		img.closure = filepath.Join(workDir, "image", "usr", "lib", "pmem-memkind")
		if _, imageErr = memkindinit.Stage(ctx, memkindinit.StageOptions{Preload: pre, Out: img.closure}); imageErr != nil {
			return
		}
		img.initBin = filepath.Join(workDir, "image", "pmem-memkind-init")
		out, err := exec.Command("go", "build", "-o", img.initBin, "../../cmd/pmem-memkind-init").CombinedOutput()
		if err != nil {
			imageErr = fmt.Errorf("go build pmem-memkind-init: %w\n%s", err, out)
		}
	})
	if imageErr != nil {
		t.Fatalf("building the memkind image content: %v", imageErr)
	}
	return img
}

// pod is one admitted pod, "running" on this machine: its volumes are temp
// dirs, its init container has run.
type pod struct {
	// Env is the target container's env as the webhook set it, with
	// container paths mapped to the temp dirs.
	Env []string
	// PMEMDir is the host dir behind /mnt/pmem ("" in kmem mode).
	PMEMDir string
	// LibDir is the host dir behind the pmem-memkind volume.
	LibDir string
	// Args are the container's own args.
	Args []string
	// Warnings the webhook returned at admission.
	Warnings []string
}

// admit runs the pod fixture through patch.Apply with the given mode, runs
// the init program as the init container would, and maps the target
// container's env. pmemBase is where the pmem volume's dir is created
// (disk-backed temp dir by default; the bench uses tmpfs).
func admit(t *testing.T, mode patch.Mode, pmemBase string) *pod {
	t.Helper()
	im := buildImage(t)
	data, err := os.ReadFile("testdata/redis-pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var in corev1.Pod
	if err := yaml.Unmarshal(data, &in); err != nil {
		t.Fatalf("testdata/redis-pod.yaml: %v", err)
	}
	in.Annotations[patch.AnnotationMode] = string(mode)
	if mode == patch.ModeKMEM {
		delete(in.Annotations, patch.AnnotationSize) // kmem needs no volume
	}
	cfg := patch.DefaultConfig()
	res, err := patch.Apply(&in, &cfg)
	if err != nil {
		t.Fatalf("patch.Apply: %v", err)
	}
	if res.Decision != patch.Injected {
		t.Fatalf("patch.Apply decision %q, want injected", res.Decision)
	}
	out := res.Pod

	// Volumes -> host dirs.
	root := t.TempDir()
	if pmemBase == "" {
		pmemBase = root
	}
	hostDirs := map[string]string{}
	for _, v := range out.Spec.Volumes {
		base := root
		if v.Name == patch.PMEMVolumeName {
			base = pmemBase
		}
		d, err := os.MkdirTemp(base, "vol-"+v.Name+"-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		hostDirs[v.Name] = d
	}

	// The init container, with its mounts mapped.
	var initC *corev1.Container
	for i := range out.Spec.InitContainers {
		if out.Spec.InitContainers[i].Name == patch.InitContainerName {
			initC = &out.Spec.InitContainers[i]
		}
	}
	if initC == nil {
		t.Fatalf("patched pod has no init container %q", patch.InitContainerName)
	}
	if len(initC.Command) != 1 || initC.Command[0] != patch.InitProgram {
		t.Fatalf("init container command %q, want [%s]", initC.Command, patch.InitProgram)
	}
	initMap := mountMap(t, initC.VolumeMounts, hostDirs)
	args := []string{"--source=" + im.closure}
	for _, a := range initC.Args {
		args = append(args, mapPaths(a, initMap))
	}
	if b, err := exec.Command(im.initBin, args...).CombinedOutput(); err != nil {
		t.Fatalf("init container %s %q: %v\n%s", patch.InitProgram, args, err, b)
	}

	c := &out.Spec.Containers[0]
	m := mountMap(t, c.VolumeMounts, hostDirs)
	p := &pod{LibDir: hostDirs[patch.LibVolumeName], Args: c.Args, Warnings: res.Warnings}
	if mode == patch.ModeFSDAX {
		p.PMEMDir = hostDirs[patch.PMEMVolumeName]
		if m[patch.PMEMMountPath] != p.PMEMDir {
			t.Fatalf("target container does not mount the pmem volume at %s: %v", patch.PMEMMountPath, c.VolumeMounts)
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			continue
		}
		p.Env = append(p.Env, e.Name+"="+mapPaths(e.Value, m))
	}
	if mode == patch.ModeKMEM {
		// The one addition: this machine has no PMEM NUMA node, so memkind
		// is told to treat node 0 as one (the simulation the issue names).
		p.Env = append(p.Env, "MEMKIND_DAX_KMEM_NODES=0")
	}
	return p
}

// mountMap maps each mount path to the host dir of its volume.
func mountMap(t *testing.T, mounts []corev1.VolumeMount, hostDirs map[string]string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, vm := range mounts {
		d, ok := hostDirs[vm.Name]
		if !ok {
			t.Fatalf("mount of unknown volume %q", vm.Name)
		}
		m[vm.MountPath] = d
	}
	return m
}

// mapPaths rewrites container paths in s (an env value or an argument) to
// host paths, longest mount path first.
func mapPaths(s string, m map[string]string) string {
	paths := make([]string, 0, len(m))
	for p := range m {
		paths = append(paths, p)
	}
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	for _, p := range paths {
		s = strings.ReplaceAll(s, p, m[p])
	}
	return s
}

// baseEnv is what a container runtime gives every process.
func baseEnv() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp"}
}

// server is a running redis-server.
type server struct {
	Cmd    *exec.Cmd
	Port   int
	Dir    string
	Log    *proc.LockedBuffer
	exited chan struct{}
	err    error
}

// startRedis starts argv (redis-server or a shell that execs it) with env
// and waits until it answers PING.
func startRedis(t *testing.T, env []string, argv ...string) *server {
	t.Helper()
	s := &server{Log: &proc.LockedBuffer{}, exited: make(chan struct{})}
	s.Cmd = exec.Command(argv[0], argv[1:]...)
	s.Cmd.Env = append(baseEnv(), env...)
	s.Cmd.Stdout = s.Log
	s.Cmd.Stderr = s.Log
	s.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.Cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", argv, err)
	}
	go func() { s.err = s.Cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() { s.Stop() })
	return s
}

// redisArgs are the flags every test server gets: loopback, a free port, a
// data dir. The container's own args come after.
func redisArgs(t *testing.T, extra ...string) (port int, dir string, args []string) {
	t.Helper()
	port, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	args = append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--dbfilename", "dump.rdb", "--daemonize", "no", "--logfile", ""}, extra...)
	return port, dir, args
}

func (s *server) waitReady(t *testing.T, port int) *redischeck.Client {
	t.Helper()
	s.Port = port
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			t.Fatalf("redis-server exited (%v) before answering; output:\n%s", s.err, s.Log.String())
		default:
		}
		c, err := redischeck.Dial(port)
		if err == nil {
			r, err := c.Do("PING")
			if err == nil && r == "PONG" {
				return c
			}
			c.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("redis-server on port %d not ready in 30s; output:\n%s", port, s.Log.String())
	return nil
}

// Alive reports whether the process is still running.
func (s *server) Alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// Stop shuts the server down (SIGTERM, then SIGKILL) and waits, bounded.
func (s *server) Stop() {
	if !s.Alive() {
		return
	}
	_ = s.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.Cmd.Process.Kill()
		<-s.exited
	}
}

// procStatus returns the kB fields of /proc/PID/status we care about.
func procStatus(t *testing.T, pid int) map[string]int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || !strings.HasPrefix(k, "Rss") && k != "VmRSS" {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		out[k] = n
	}
	return out
}

// heapSplit returns, in kB, the resident file pages of mappings under dir
// (on PMEM: copy-on-write copies are left out), the anonymous resident size
// of the whole process (DRAM), and the distinct files mapped.
func heapSplit(t *testing.T, pid int, dir string) (onPMEM, anon int64, files []string) {
	t.Helper()
	u, err := smaps.Read(pid, dir+"/")
	if err != nil {
		t.Fatal(err)
	}
	return u.FileKB(), u.AnonKB, u.Files()
}

// mappedRSS returns the resident kB of mappings whose path starts with
// prefix, and their distinct paths.
func mappedRSS(t *testing.T, pid int, prefix string) (int64, []string) {
	t.Helper()
	u, err := smaps.Read(pid, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return u.RSSKB, u.Files()
}
