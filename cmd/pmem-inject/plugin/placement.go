package plugin

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/preload"
)

// placementScript prints the status records of the preload's processes that
// are still alive in the container. The preload writes
// <dir>/pmem-status.<container>.<pid> (or <dir>/heap/... when the volume root
// is not writable by the server's uid; docs/node.md): two containers of a
// pod share the volume but not the pid namespace (both are pid 1), so the
// container's name (PMEM_CONTAINER_NAME) is part of the file's name. A pod
// injected before that variable existed has <dir>/pmem-status.<pid>. %[2]s
// is the name's prefix up to the pid ("pmem-status.redis." or
// "pmem-status."), and only names whose rest is a pid are read: the old
// prefix would match every container's new names too. Files of processes
// that exited (an earlier container restart) stay on the volume, so they
// are filtered by /proc/<pid> of the container the script runs in. POSIX sh
// only: images differ.
const placementScript = `for f in %[1]s/%[2]s* %[1]s/heap/%[2]s*; do
  [ -f "$f" ] || continue
  b=${f##*/}; pid=${b#%[2]s}
  case $pid in ''|*[!0-9]*) continue;; esac
  [ -d "/proc/$pid" ] && { cat "$f"; echo; }
done; exit 0`

// placementCommand is the script reading the records of one container
// whose PMEM volume is mounted at dir. name is its PMEM_CONTAINER_NAME ("":
// an injection from before it, whose records are named by pid alone).
func placementCommand(dir, name string) string {
	prefix := "pmem-status."
	if name != "" {
		prefix += name + "."
	}
	return fmt.Sprintf(placementScript, dir, prefix)
}

// execTimeout bounds one exec: status must not hang on a stuck node.
const execTimeout = 20 * time.Second

// placementTarget is one container that carries the injection: its name,
// where it mounts the PMEM volume, and the name its preload puts in its
// status files ("" for an older injection).
type placementTarget struct {
	container, dir, name string
}

// placementTargets lists the containers that mount the PMEM volume (the
// regular ones and native sidecars, which the injector may target too).
func placementTargets(p *corev1.Pod) []placementTarget {
	var out []placementTarget
	var cs []corev1.Container
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			cs = append(cs, c)
		}
	}
	for _, c := range append(cs, p.Spec.Containers...) {
		for _, m := range c.VolumeMounts {
			if m.Name != patch.PMEMVolumeName {
				continue
			}
			t := placementTarget{container: c.Name, dir: m.MountPath}
			for _, e := range c.Env {
				// The preload ignores a value that is not a DNS label (and
				// the name goes into a shell glob): so does this.
				if e.Name == patch.EnvContainerName && preload.ValidContainerName(e.Value) {
					t.name = e.Value
				}
			}
			out = append(out, t)
			break
		}
	}
	return out
}

// placement reads what the preload placed, through `exec` into each
// container that mounts the PMEM volume, each reading its own records. It
// never fails the status command: every problem becomes a "not available
// (...)" text naming the cause. With more than one such container, each
// record's line names its container (both servers may be pid 1), and each
// record carries container=<name>.
func placement(ctx context.Context, cfg *rest.Config, p *corev1.Pod, mode string) (string, []map[string]string) {
	if mode == string(patch.ModeKMEM) {
		return "kmem: no record (the kernel's NUMA policy places the heap; see /proc/<pid>/numa_maps in the container)", nil
	}
	if p.Status.Phase != corev1.PodRunning {
		return fmt.Sprintf("not available (pod is %s)", dash(string(p.Status.Phase))), nil
	}
	targets := placementTargets(p)
	if len(targets) == 0 {
		return "not available (no container mounts the " + patch.PMEMVolumeName + " volume)", nil
	}
	if cfg == nil {
		return "not available (no API client)", nil
	}
	outs := make([]string, len(targets))
	errs := make([]error, len(targets))
	for i, t := range targets {
		outs[i], errs[i] = Exec(ctx, cfg, p, t.container, execTimeout, "sh", "-c", placementCommand(t.dir, t.name))
	}
	return placementSummary(targets, outs, errs)
}

// placementSummary renders the records read from each target (outs[i],
// errs[i] from its exec). One target: the line as it always was. Several:
// each part names its container.
func placementSummary(targets []placementTarget, outs []string, errs []error) (string, []map[string]string) {
	multi := len(targets) > 1
	var all []map[string]string
	var parts, none []string
	for i, t := range targets {
		if errs[i] != nil {
			parts = append(parts, "not available (exec into "+t.container+" failed: "+errs[i].Error()+")")
			continue
		}
		records := parseRecords(outs[i])
		for _, r := range records {
			r["container"] = t.container
		}
		if len(records) == 0 {
			none = append(none, t.container)
			continue
		}
		all = append(all, records...)
		parts = append(parts, summarize(records, multi))
	}
	if len(all) == 0 && len(parts) == 0 {
		return "none: no running process of the container has placed memory (target not started, statically linked, or not a target process)", nil
	}
	if len(none) > 0 {
		parts = append(parts, strings.Join(none, ", ")+": none")
	}
	return strings.Join(parts, "; "), all
}

// Exec runs cmd in a container through the API server's exec subresource
// (what `kubectl exec` does), bounded by timeout, and returns its stdout,
// also when it fails; the error carries stderr.
func Exec(ctx context.Context, cfg *rest.Config, pod *corev1.Pod, container string, timeout time.Duration, cmd ...string) (string, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	req := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(cfg, http.MethodPost, req.URL())
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return stdout.String(), fmt.Errorf("%w (stderr: %s)", err, msg)
		}
		return stdout.String(), err
	}
	return stdout.String(), nil
}

// parseRecords splits the status files' key=value lines into one map per
// process; a record starts at its pid= line. The preload pads each file
// with spaces, which are trimmed.
func parseRecords(out string) []map[string]string {
	var records []map[string]string
	var cur map[string]string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if k == "pid" {
			cur = map[string]string{}
			records = append(records, cur)
		}
		if cur != nil {
			cur[k] = v
		}
	}
	return records
}

// summarize renders one line per process, e.g.
// "redis-server[7]: 241 MiB on PMEM, 0 MiB fallback to DRAM, heap shared";
// with withContainer, "cache/redis-server[1]: ..." (records["container"]).
func summarize(records []map[string]string, withContainer bool) string {
	parts := make([]string, 0, len(records))
	for _, r := range records {
		who := r["comm"]
		if withContainer {
			who = r["container"] + "/" + who
		}
		s := fmt.Sprintf("%s[%s]: %s on PMEM, %s fallback to DRAM", who, r["pid"],
			mib(r["bytes_resident_pmem"]), mib(r["bytes_fallback_dram"]))
		switch shared := r["heap_shared"]; {
		case shared == "1":
			s += ", heap shared"
		case shared != "":
			s += ", heap private since a fork (pages written since are on DRAM)"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func mib(bytes string) string {
	n, err := strconv.ParseUint(bytes, 10, 64)
	if err != nil {
		return "? MiB"
	}
	return strconv.FormatUint(n>>20, 10) + " MiB"
}
