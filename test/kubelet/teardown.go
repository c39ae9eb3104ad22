package kubelet

// Stopping the node: drain through the API, stop the processes, then clean up what they
// leave behind (containerd tasks and shims, mounts, network namespaces, cgroups), and save
// the logs.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pmem-webhook/pmem-webhook/test/proc"
)

// Stop removes every pod from the node and stops it: first through the API (namespaces other
// than the system ones are deleted and the kubelet tears their pods down properly, CNI
// included) when cfg is given, bounded by a minute; then the processes; then whatever is
// left (tasks, shims of this containerd, mounts under Dir, new network namespaces, the
// bridge); then Dir. Safe to call more than once.
func (n *Node) Stop(cfg *rest.Config) error {
	n.stopOnce.Do(func() {
		if cfg != nil {
			if err := drain(cfg, 90*time.Second); err != nil {
				n.logf("drain: %v (forcing)", err)
			}
		}
		n.stopProcesses()
		n.forceCleanup()
		if n.opts.SaveLogsTo != "" {
			if err := SaveLogs(n.Dir, n.opts.SaveLogsTo); err != nil {
				n.logf("save logs: %v", err)
			}
		}
		if err := os.RemoveAll(n.Dir); err != nil {
			n.stopErr = fmt.Errorf("remove %s: %w", n.Dir, err)
		}
	})
	return n.stopErr
}

// drain deletes the non-system namespaces and the pods left in the system ones, and waits
// until no pod is left on the node.
func drain(cfg *rest.Config, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	system := map[string]bool{"default": true, "kube-system": true, "kube-public": true, "kube-node-lease": true}
	for _, ns := range nss.Items {
		if !system[ns.Name] {
			if err := cs.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
	}
	grace := int64(2)
	for ns := range system {
		_ = cs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &grace}, metav1.ListOptions{})
	}
	for {
		pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + NodeName})
		if err == nil && len(pods.Items) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			left := -1
			if pods != nil {
				left = len(pods.Items)
			}
			return fmt.Errorf("%d pods still on the node after %s", left, timeout)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (n *Node) stopProcesses() {
	// Scheduler and kubelet first, containerd last: the kubelet must not restart what the
	// force clean-up below removes.
	var containerd *proc.Process
	for i := len(n.procs) - 1; i >= 0; i-- {
		if n.procs[i].Name == "containerd" {
			containerd = n.procs[i]
			continue
		}
		n.procs[i].Stop(15 * time.Second)
	}
	if containerd != nil {
		if done, _ := containerd.Exited(); !done {
			n.killTasks()
		}
		containerd.Stop(15 * time.Second)
	}
}

// killTasks kills and removes every container of the k8s.io namespace with ctr (what the
// kubelet did not remove because it was stopped first).
func (n *Node) killTasks() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := n.ctrOutput(ctx, "containers", "list", "-q")
	if err != nil {
		n.logf("list containers: %v", err)
		return
	}
	ids := strings.Fields(out)
	for _, id := range ids {
		_ = n.ctr(ctx, "tasks", "kill", "--signal", "SIGKILL", id)
	}
	for _, id := range ids {
		for i := 0; i < 20; i++ {
			if err := n.ctr(ctx, "tasks", "delete", "--force", id); err == nil || strings.Contains(err.Error(), "not found") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		_ = n.ctr(ctx, "containers", "delete", id)
	}
	if len(ids) > 0 {
		n.logf("removed %d containers the kubelet left", len(ids))
	}
}

// forceCleanup removes what outlives containerd: its shims (they daemonize out of its process
// group; found by this containerd's unique socket address), mounts under Dir, network
// namespaces created since Start, and the bridge.
func (n *Node) forceCleanup() {
	for _, pid := range shimsOf(n.Socket) {
		killShim(pid)
		n.logf("killed leftover shim %d", pid)
	}
	for _, m := range mountsUnder(n.Dir) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			n.logf("unmount %s: %v", m, err)
		}
	}
	for ns := range listNetns() {
		if n.netnsPre != nil && !n.netnsPre[ns] {
			p := filepath.Join("/var/run/netns", ns)
			_ = syscall.Unmount(p, syscall.MNT_DETACH)
			_ = os.Remove(p)
		}
	}
	if n.natRule != nil {
		if err := iptables("-D", n.natRule); err != nil {
			n.logf("%v", err)
		}
	}
	_ = exec.Command("ip", "link", "delete", n.Bridge).Run()
	removeCgroups("kubepods")
}

// removeCgroups removes the (by now empty) cgroup tree the kubelet made under each cgroup v1
// hierarchy, deepest first; a cgroup that still has processes stays (rmdir fails).
func removeCgroups(name string) {
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
	if unified := filepath.Join("/sys/fs/cgroup", name); fileExists(unified) {
		roots = append(roots, unified)
	}
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = syscall.Rmdir(dirs[i])
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// reapOrphans cleans up after earlier runs that could not clean up themselves (the test
// binary was killed, or panicked on `go test -timeout`): the kernel then killed their
// containerd and kubelet (Pdeathsig), but containerd's shims, and the pods' processes under
// them, live on. A shim is an orphan when its -address is a node socket under the temporary
// directory and no containerd with that node's config runs any more; the orphan's working
// directory (mounts included) goes too. Only processes of this package's making are touched.
func reapOrphans(logf func(string, ...any)) {
	pattern := filepath.Join(os.TempDir(), "pmem-node-*", "containerd.sock")
	live := map[string]bool{} // node dirs whose containerd runs
	for _, p := range procs() {
		if filepath.Base(p.args[0]) == "containerd" {
			for i, a := range p.args {
				if a == "--config" && i+1 < len(p.args) {
					live[filepath.Dir(p.args[i+1])] = true
				}
			}
		}
	}
	dead := map[string]bool{}
	for _, p := range procs() {
		if !strings.Contains(filepath.Base(p.args[0]), "containerd-shim") {
			continue
		}
		for i, a := range p.args {
			if a != "-address" || i+1 >= len(p.args) {
				continue
			}
			if ok, _ := filepath.Match(pattern, p.args[i+1]); ok && !live[filepath.Dir(p.args[i+1])] {
				killShim(p.pid)
				dead[filepath.Dir(p.args[i+1])] = true
				logf("killed shim %d of an earlier run (%s)", p.pid, p.args[i+1])
			}
		}
	}
	// Working dirs of runs that died before any pod ran (no shim to find them by): no live
	// containerd and untouched for 15 minutes (a run starting right now has a fresh dir).
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "pmem-node-*"))
	for _, dir := range dirs {
		if st, err := os.Stat(dir); err == nil && !live[dir] && time.Since(st.ModTime()) > 15*time.Minute {
			dead[dir] = true
		}
	}
	for dir := range dead {
		time.Sleep(200 * time.Millisecond)
		for _, m := range mountsUnder(dir) {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "nat-rule")); err == nil {
			_ = iptables("-D", strings.Split(string(b), "\n"))
		}
		if b, err := os.ReadFile(filepath.Join(dir, "bridge")); err == nil && strings.HasPrefix(string(b), bridgePrefix) {
			_ = exec.Command("ip", "link", "delete", string(b)).Run()
		}
		_ = os.RemoveAll(dir)
	}
}

// killShim kills a shim's children first (each the init of a container's PID namespace, so
// the container's other processes die with it; they would be re-parented and live on if
// only the shim died), then the shim.
func killShim(pid int) {
	for _, p := range procs() {
		if p.ppid == pid {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

type procInfo struct {
	pid, ppid int
	args      []string
}

// procs lists the processes of the machine with their command lines.
func procs() []procInfo {
	entries, _ := os.ReadDir("/proc")
	var ps []procInfo
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		p := procInfo{pid: pid, args: strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")}
		// /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may contain spaces and ')'.
		if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			p.ppid = statPPID(string(st))
		}
		ps = append(ps, p)
	}
	return ps
}

// statPPID is the parent pid from /proc/<pid>/stat, "pid (comm) state ppid ...", read after
// the last ')' because comm may contain spaces and parentheses; 0 if malformed.
func statPPID(stat string) int {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// shimsOf finds the containerd-shim processes serving the containerd at socket.
func shimsOf(socket string) []int {
	var pids []int
	for _, p := range procs() {
		if !strings.Contains(filepath.Base(p.args[0]), "containerd-shim") {
			continue
		}
		for i, a := range p.args {
			if a == "-address" && i+1 < len(p.args) && p.args[i+1] == socket {
				pids = append(pids, p.pid)
			}
		}
	}
	return pids
}

// mountsUnder lists the mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var ms []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			ms = append(ms, fields[4])
		}
	}
	for i, j := 0, len(ms)-1; i < j; i, j = i+1, j-1 {
		ms[i], ms[j] = ms[j], ms[i]
	}
	return ms
}

// SaveLogs copies the *.log files of directory from (a node's or a control plane's Dir)
// into to.
func SaveLogs(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return err
	}
	logs, _ := filepath.Glob(filepath.Join(from, "*.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, filepath.Base(l)), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
