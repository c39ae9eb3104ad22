// Package matrix runs the image classes of issue 11 (built by
// test/variants/build.sh into bin/variants/) under exactly the env the
// webhook gives an annotated pod's target container, and measures where the
// target process's resident memory is.
//
// The preload and its closure are the staged bin/pmem-memkind/ (`make
// preload stage-memkind`); the env comes from patch.Apply on
// testdata/redis-pod.yaml. A missing variant or closure skips its row;
// PMEM_MATRIX_REQUIRED=1 (`make test-matrix`) turns every skip into a failure.
package matrix

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/preload"
	"github.com/pmem-webhook/pmem-webhook/test/gate"
	"github.com/pmem-webhook/pmem-webhook/test/proc"
	"github.com/pmem-webhook/pmem-webhook/test/smaps"
)

// row is one image class.
type row struct {
	name string
	// variant is the directory under bin/variants/ ("" = this machine's
	// Debian packages).
	variant string
	// chroot: server and tools run with the variant directory as root
	// (paths below are inside it); the closure and pmem dir are copied
	// or created inside it.
	chroot bool
	// server, cli are the row's own programs; process is the target
	// process name the webhook must list in PMEM_TARGET_PROCESSES.
	server, cli, process string
	// shell runs the entrypoint ("" = the image has none: exec directly).
	shell string
	// gosu: the entrypoint starts as root and drops to 999:999 with gosu,
	// on a pmem dir that is root:root 0755 (a fresh volume).
	gosu bool
	// heap: at least 90% of the resident heap must be on PMEM.
	heap bool
	// probe is an extra program of the image's libc run like the tools
	// (musl: Debian has no musl shell; see test/variants/probe.c).
	probe string
}

var rows = []row{
	{name: "debian-bookworm", server: "/usr/bin/redis-server", cli: "/usr/bin/redis-cli", process: "redis-server", shell: "/bin/sh", heap: true},
	{name: "official-build", variant: "redis-official", server: "redis-server", cli: "redis-cli", process: "redis-server", shell: "/bin/sh", heap: true},
	{name: "musl-build", variant: "redis-musl", server: "redis-server", cli: "redis-cli", process: "redis-server", shell: "/bin/sh", heap: true, probe: "musl-probe"},
	{name: "bullseye-root", variant: "bullseye-root", chroot: true, server: "/usr/bin/redis-server", cli: "/usr/bin/redis-cli", process: "redis-server", shell: "/bin/sh", heap: true},
	{name: "valkey-root", variant: "valkey-root", chroot: true, server: "/usr/bin/valkey-server", cli: "/usr/bin/valkey-cli", process: "valkey-server", shell: "/bin/sh", heap: true},
	{name: "official-gosu", variant: "redis-official", server: "redis-server", cli: "redis-cli", process: "redis-server", shell: "/bin/sh", gosu: true, heap: true},
	{name: "static", variant: "static", server: "redis-server", cli: "redis-cli", process: "redis-server"},
}

// binDir is the repository's bin/ (or PMEM_MATRIX_BIN).
func binDir(t *testing.T) string {
	if d := os.Getenv("PMEM_MATRIX_BIN"); d != "" {
		return d
	}
	d, err := filepath.Abs("../../bin")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// missing skips, or fails under PMEM_MATRIX_REQUIRED=1.
func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	gate.Skip(t, gate.Matrix, fmt.Sprintf(format, args...))
}

// result is one row of the printed table.
type result struct {
	row          string
	pmemKB       int64
	anonKB       int64
	share        float64
	measured     bool
	shutdownNote string
	toolsNote    string // "ok" or how many of the image's tools failed
}

var (
	resultsMu sync.Mutex
	results   []result
)

func TestMatrix(t *testing.T) {
	if os.Geteuid() != 0 {
		missing(t, "the matrix needs root (chroot, gosu, a root-owned pmem dir)")
	}
	bin := binDir(t)
	closure := filepath.Join(bin, "pmem-memkind")
	if _, err := os.Stat(filepath.Join(closure, preload.FileName)); err != nil {
		missing(t, "no staged closure in %s (make preload stage-memkind): %v", closure, err)
	}
	for _, tool := range []string{"redis-benchmark", "gosu"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing(t, "%s not found (apt-get install redis-tools gosu)", tool)
		}
	}
	t.Cleanup(func() { printTable(t) })
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) { runRow(t, bin, closure, r) })
	}
}

// printTable logs what each row measured, pass or fail.
func printTable(t *testing.T) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-16s %14s %14s %7s  %-10s %s\n", "row", "Rss on PMEM kB", "anon Rss kB", "share", "tools", "server")
	for _, r := range results {
		share := "-"
		if r.measured {
			share = fmt.Sprintf("%.1f%%", 100*r.share)
		}
		fmt.Fprintf(&b, "%-16s %14d %14d %7s  %-10s %s\n", r.row, r.pmemKB, r.anonKB, share, r.toolsNote, r.shutdownNote)
	}
	forkTable(&b)
	t.Log(b.String())
}

func record(r result) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	results = append(results, r)
}

// sandbox is where one row's processes see the pod's volumes.
type sandbox struct {
	root    string   // chroot dir ("" = /)
	top     string   // host dir holding the row's volumes (inside root for chroot rows)
	env     []string // the target container's env, paths in the process's view
	pmemDir string   // host path of the pmem volume
	pmemIn  string   // the same dir as the process sees it
	workDir string   // redis --dir, host path
	workIn  string   // the same, as the process sees it
}

// host maps a path as the process sees it to the host.
func (s *sandbox) host(p string) string { return filepath.Join(s.root, p) }

// inView maps a host path to the process's view (inside the chroot).
func (s *sandbox) inView(t *testing.T, hostPath string) string {
	t.Helper()
	if s.root == "" {
		return hostPath
	}
	rel, err := filepath.Rel(s.root, hostPath)
	if err != nil {
		t.Fatal(err)
	}
	return "/" + rel
}

// mkdir makes dir name under the row's top dir with exactly mode.
func (s *sandbox) mkdir(t *testing.T, name string, mode os.FileMode) string {
	t.Helper()
	d := filepath.Join(s.top, name)
	if err := os.Mkdir(d, mode); err != nil {
		t.Fatal(err)
	}
	// Mkdir applies the umask; the mode is the point here.
	if err := os.Chmod(d, mode); err != nil {
		t.Fatal(err)
	}
	return d
}

// setup admits the pod fixture with the row's command, and lays out its
// volumes: the lib volume gets a copy of the staged closure (what the init
// container copies), the pmem volume a fresh dir.
func setup(t *testing.T, r row, variantDir, closure string) *sandbox {
	t.Helper()
	data, err := os.ReadFile("testdata/redis-pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var in corev1.Pod
	if err := yaml.Unmarshal(data, &in); err != nil {
		t.Fatal(err)
	}
	in.Spec.Containers[0].Command = []string{r.process}
	cfg := patch.DefaultConfig()
	// Pass the row's target process explicitly when the default list does
	// not have it yet (valkey-server), as a cluster admin would.
	if !slices.Contains(cfg.TargetProcesses, r.process) {
		cfg.TargetProcesses = append(cfg.TargetProcesses, r.process)
	}
	res, err := patch.Apply(&in, &cfg)
	if err != nil {
		t.Fatalf("patch.Apply: %v", err)
	}
	if res.Decision != patch.Injected {
		t.Fatalf("patch.Apply decision %q, want injected", res.Decision)
	}

	s := &sandbox{}
	// The process's view of "/tmp": for chroot rows a dir inside the root.
	base := os.TempDir()
	if r.chroot {
		s.root = variantDir
		base = filepath.Join(variantDir, "tmp")
	}
	top, err := os.MkdirTemp(base, "pmem-matrix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	// 0755 all the way down: the gosu row's uid 999 must reach the libs.
	if err := os.Chmod(top, 0o755); err != nil {
		t.Fatal(err)
	}
	s.top = top
	inView := func(hostPath string) string { return s.inView(t, hostPath) }
	mkdir := func(name string, mode os.FileMode) string { return s.mkdir(t, name, mode) }
	libDir := mkdir("lib", 0o755)
	if out, err := exec.Command("cp", "-a", closure+"/.", libDir).CombinedOutput(); err != nil {
		t.Fatalf("copy closure: %v\n%s", err, out)
	}
	pmemMode := os.FileMode(0o777)
	if r.gosu {
		pmemMode = 0o755 // root:root 0755, a fresh filesystem's root
	}
	s.pmemDir = mkdir("pmem", pmemMode)
	s.pmemIn = inView(s.pmemDir)
	s.workDir = mkdir("data", 0o777)
	s.workIn = inView(s.workDir)

	c := res.Pod.Spec.Containers[0]
	hostDirs := map[string]string{patch.PMEMVolumeName: s.pmemIn, patch.LibVolumeName: inView(libDir)}
	mounts := map[string]string{}
	for _, vm := range c.VolumeMounts {
		d, ok := hostDirs[vm.Name]
		if !ok {
			t.Fatalf("target container mounts unknown volume %q", vm.Name)
		}
		mounts[vm.MountPath] = d
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			continue
		}
		s.env = append(s.env, e.Name+"="+mapPaths(e.Value, mounts))
	}
	return s
}

// mapPaths rewrites container mount paths in s, longest first.
func mapPaths(s string, m map[string]string) string {
	paths := make([]string, 0, len(m))
	for p := range m {
		paths = append(paths, p)
	}
	slices.SortFunc(paths, func(a, b string) int { return len(b) - len(a) })
	for _, p := range paths {
		s = strings.ReplaceAll(s, p, m[p])
	}
	return s
}

// command builds argv under the row's env, inside its root if any.
func (s *sandbox) command(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp"}, s.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if s.root != "" {
		// chroot(2) in the child, so no host program runs under the env.
		cmd.SysProcAttr.Chroot = s.root
		cmd.Dir = "/"
	}
	return cmd
}

// mountSys bind-mounts /proc, /sys and /dev into a chroot row's root for the
// duration of the row: a container has them, and the preload may read them.
func mountSys(t *testing.T, root string) {
	t.Helper()
	for _, d := range []string{"proc", "sys", "dev"} {
		target := filepath.Join(root, d)
		if err := os.MkdirAll(target, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("/"+d, target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			t.Fatalf("bind-mount /%s into %s: %v", d, root, err)
		}
		t.Cleanup(func() { _ = syscall.Unmount(target, syscall.MNT_DETACH) })
	}
}

func runRow(t *testing.T, bin, closure string, r row) {
	variantDir := ""
	resolve := func(p string) string { return p }
	if r.variant != "" {
		variantDir = filepath.Join(bin, "variants", r.variant)
		if _, err := os.Stat(filepath.Join(variantDir, ".version")); err != nil {
			missing(t, "variant %s not built (make variants): %v", r.variant, err)
		}
		if !r.chroot {
			resolve = func(p string) string { return filepath.Join(variantDir, p) }
		}
	}
	server, cli := resolve(r.server), resolve(r.cli)
	s := setup(t, r, variantDir, closure)
	if r.chroot {
		mountSys(t, variantDir)
	}
	t.Logf("env: %q", s.env)

	// The image's other processes, under the same env: each must exit 0
	// with the right output (LD_PRELOAD is container-wide).
	toolsNote := "ok"
	t.Run("tools", func(t *testing.T) {
		tools := []toolCase{
			{"shell", []string{"/bin/sh", "-c", "x=pmem; echo \"sh $x\""}, "", "sh pmem\n"},
			{"grep", []string{"grep", "-c", "b"}, "a\nb\nbb\n", "2\n"},
			{"sed", []string{"sed", "s/a/x/g"}, "banana\n", "bxnxnx\n"},
			{"awk", []string{"awk", "{print $2}"}, "a b c\n", "b\n"},
		}
		if r.shell == "" {
			// The static image has no shell or tools: only its own binaries.
			tools = tools[:0]
		}
		if r.probe != "" {
			tools = append(tools, toolCase{r.probe, []string{resolve(r.probe), "x"}, "", "probe ok x\n"})
		}
		failed := 0
		defer func() {
			if failed > 0 {
				toolsNote = fmt.Sprintf("%d/%d fail", failed, len(tools))
			}
		}()
		for _, tc := range tools {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			cmd := s.command(ctx, tc.argv...)
			cmd.Stdin = strings.NewReader(tc.stdin)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			cancel()
			if err != nil || string(out) != tc.want {
				failed++
				t.Errorf("%s %q under the injected env: %v, stdout %q (want %q), stderr %q", tc.name, tc.argv, err, out, tc.want, stderr.String())
			}
		}
	})

	// Baseline: the same entrypoint without the webhook's env must serve
	// and shut down cleanly, so a failure below is the injection's, not
	// the variant's or this harness's.
	plain := *s
	plain.env = nil
	if !t.Run("baseline", func(t *testing.T) { serve(t, r, &plain, server, cli, false) }) {
		record(result{row: r.name, toolsNote: toolsNote, shutdownNote: "baseline (no env) fails"})
		t.Fatalf("%s does not work without the injected env either: the variant or the harness is broken", r.name)
	}
	res := serve(t, r, s, server, cli, true)
	res.toolsNote = toolsNote
	record(res)

	// Fork safety: BGSAVEs under a write load, every dump exact.
	t.Run("fork", func(t *testing.T) { forkRow(t, r, s, &plain, server) })
}

// running is a server started through the row's entrypoint.
type running struct {
	cmd     *exec.Cmd
	port    int
	log     proc.LockedBuffer
	exited  chan struct{}
	waitErr error // valid once exited is closed
}

// start starts the row's server through its entrypoint under s's env, on
// 127.0.0.1 only, with --dir dirIn (as the process sees it) and extra
// args, and waits (30 s at most) until it answers PING. The caller stops it.
func start(ctx context.Context, t *testing.T, r row, s *sandbox, server, dirIn string, extra ...string) (*running, error) {
	t.Helper()
	// The port was free a moment ago; a client's ephemeral port (the
	// write load's, another test binary's) or another run's server can
	// take it before the server binds it. Seen once in 11 loops with two
	// matrix runs at a time. (Another run's server taking it after ours
	// bound it is not caught: ours would fail to start, as here.)
	for attempt := 1; ; attempt++ {
		p, err := startOnce(ctx, t, r, s, server, dirIn, extra...)
		if err == nil || attempt == 3 || !strings.Contains(p.log.String(), "Address already in use") {
			return p, err
		}
		t.Logf("%s: port %d taken before the server bound it; another port", r.name, p.port)
	}
}

func startOnce(ctx context.Context, t *testing.T, r row, s *sandbox, server, dirIn string, extra ...string) (*running, error) {
	t.Helper()
	port, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{server, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dirIn,
		"--daemonize", "no", "--logfile", ""}, extra...)
	if r.gosu {
		args = append([]string{"gosu", "999:999"}, args...)
	}
	if r.shell != "" {
		// An entrypoint script's last line: exec, so the server keeps the pid.
		args = append([]string{r.shell, "-c", `exec "$@"`, "entrypoint"}, args...)
	}
	p := &running{port: port, exited: make(chan struct{})}
	p.cmd = s.command(ctx, args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.log, &p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %q: %v", args, err)
	}
	go func() { p.waitErr = p.cmd.Wait(); close(p.exited) }()
	if err := waitReady(port, p.exited, 30*time.Second); err != nil {
		p.stop()
		return p, err
	}
	return p, nil
}

func (p *running) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop kills the server if it still runs and waits for it.
func (p *running) stop() {
	if p.alive() {
		_ = p.cmd.Process.Kill()
	}
	<-p.exited
}

// serve starts the row's server through its entrypoint under s's env,
// checks PING with the row's own cli, optionally drives the SET load and
// measures placement, then SHUTDOWN NOSAVE must make it exit 0.
func serve(t *testing.T, r row, s *sandbox, server, cli string, load bool) (res result) {
	res.row = r.name
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, err := start(ctx, t, r, s, server, s.workIn, "--save", "", "--appendonly", "no")
	defer p.stop()
	if err != nil {
		res.shutdownNote = "did not start"
		t.Errorf("%s: %v (exit: %v); output:\n%s", r.name, err, p.waitErr, p.log.String())
		return res
	}
	port, cmd, log := p.port, p.cmd, &p.log
	cliCmd := func(args ...string) (string, error) {
		c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := s.command(c, append([]string{cli, "-h", "127.0.0.1", "-p", strconv.Itoa(port)}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := cliCmd("PING"); err != nil || strings.TrimSpace(out) != "PONG" {
		t.Errorf("%s PING under the injected env: %v, output %q", r.cli, err, out)
	}

	if !load {
		return res.shutdown(t, r, cliCmd, p)
	}

	// The load: from this machine's redis-benchmark, a client outside the
	// pod, bounded by a timeout.
	bctx, bcancel := context.WithTimeout(context.Background(), 3*time.Minute)
	bout, err := exec.CommandContext(bctx, "redis-benchmark", "-h", "127.0.0.1", "-p", strconv.Itoa(port),
		"-t", "set", "-n", "20000", "-d", "10240", "-r", "100000", "-q").CombinedOutput()
	bcancel()
	if err != nil {
		t.Errorf("redis-benchmark: %v\n%s\nserver output:\n%s", err, bout, log.String())
	}
	t.Logf("redis-benchmark: %s", lastLine(string(bout)))

	// The pmem volume as the host and as the process see it: a chroot does
	// not change the reader's view. Copy-on-write copies in private file
	// mappings are DRAM: FileKB leaves them out, AnonKB counts them.
	u, err := smaps.Read(cmd.Process.Pid, s.pmemDir+"/", s.pmemIn+"/")
	if err != nil {
		t.Error(err)
	}
	pmemKB, anonKB := u.FileKB(), u.AnonKB
	res.pmemKB, res.anonKB, res.measured = pmemKB, anonKB, pmemKB+anonKB > 0
	if res.measured {
		res.share = float64(pmemKB) / float64(pmemKB+anonKB)
	}
	t.Logf("%s: Rss on PMEM %d kB, anon Rss %d kB, share %.1f%%", r.name, pmemKB, anonKB, 100*res.share)
	if r.heap && res.share < 0.90 {
		t.Errorf("%s: %.1f%% of the resident heap is on PMEM (%d kB in files under %s, %d kB anonymous), want >= 90%%; server output:\n%s",
			r.name, 100*res.share, pmemKB, s.pmemIn, anonKB, log.String())
	}

	if r.gosu {
		// The volume root stays root:root 0755; the server's heap and status
		// file are in PATH/heap, which the root entrypoint made 01777, and
		// its log line says so.
		heap := filepath.Join(s.pmemIn, "heap")
		want := "heap on FS_DAX PMEM: anonymous mappings from " + heap + "/pmem-heap." + strconv.Itoa(cmd.Process.Pid)
		if !strings.Contains(log.String(), want) {
			t.Errorf("%s: server output lacks %q:\n%s", r.name, want, log.String())
		}
		if fi, err := os.Stat(preload.StatusPath(filepath.Join(s.pmemDir, "heap"), preload.StatusContainer(s.env), cmd.Process.Pid)); err != nil {
			t.Errorf("%s: no status file beside the heap file: %v", r.name, err)
		} else if st := fi.Sys().(*syscall.Stat_t); st.Uid != 999 {
			t.Errorf("%s: status file owned by uid %d, want 999", r.name, st.Uid)
		}
		if fi, err := os.Stat(s.pmemDir); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: volume root %v (%v), want 0755 unchanged", r.name, fi.Mode(), err)
		}
	}

	return res.shutdown(t, r, cliCmd, p)
}

// shutdown sends SHUTDOWN NOSAVE with the row's cli: the server must exit 0.
func (res result) shutdown(t *testing.T, r row, cliCmd func(...string) (string, error), p *running) result {
	t.Helper()
	out, err := cliCmd("SHUTDOWN", "NOSAVE")
	if err != nil {
		t.Errorf("%s SHUTDOWN NOSAVE: %v, output %q", r.cli, err, out)
	}
	select {
	case <-p.exited:
		if p.waitErr != nil {
			res.shutdownNote = "exit: " + p.waitErr.Error()
			t.Errorf("%s after SHUTDOWN NOSAVE: %v; output:\n%s", r.server, p.waitErr, p.log.String())
		} else {
			res.shutdownNote = "exit 0"
		}
	case <-time.After(15 * time.Second):
		res.shutdownNote = "still running"
		t.Errorf("%s still running 15s after SHUTDOWN NOSAVE", r.server)
	}
	return res
}

// toolCase is one of the image's other programs run under the env.
type toolCase struct {
	name  string
	argv  []string
	stdin string
	want  string
}

// waitReady waits until a server answers PING on port, or exits.
func waitReady(port int, exited <-chan struct{}, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("exited before answering")
		default:
		}
		if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second); err == nil {
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			_, _ = c.Write([]byte("PING\r\n"))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if line == "+PONG\r\n" {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not answering PING on 127.0.0.1:%d in %v", port, limit)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexAny(s, "\r\n"); i >= 0 {
		return strings.TrimSpace(s[i+1:])
	}
	return s
}
