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
)

// placementScript prints the status records of the preload's processes that
// are still alive in the container. The preload writes
// <dir>/pmem-status.<pid> (or <dir>/heap/... when the volume root is not
// writable by the server's uid; docs/node.md); files of processes that
// exited (an earlier container restart) stay on the volume, so they are
// filtered by /proc/<pid>. POSIX sh only: images differ.
const placementScript = `for f in %[1]s/pmem-status.* %[1]s/heap/pmem-status.*; do
  [ -f "$f" ] || continue
  pid=${f##*.}
  [ -d "/proc/$pid" ] && { cat "$f"; echo; }
done; exit 0`

// execTimeout bounds one exec: status must not hang on a stuck node.
const execTimeout = 20 * time.Second

// placement reads what the preload placed, through `exec` into the first
// container that mounts the PMEM volume. It never fails the status command:
// every problem becomes a "not available (...)" text naming the cause.
func placement(ctx context.Context, cfg *rest.Config, p *corev1.Pod, mode string) (string, []map[string]string) {
	if mode == string(patch.ModeKMEM) {
		return "kmem: no record (the kernel's NUMA policy places the heap; see /proc/<pid>/numa_maps in the container)", nil
	}
	if p.Status.Phase != corev1.PodRunning {
		return fmt.Sprintf("not available (pod is %s)", dash(string(p.Status.Phase))), nil
	}
	container, dir := "", ""
	for _, c := range p.Spec.Containers {
		for _, m := range c.VolumeMounts {
			if m.Name == patch.PMEMVolumeName && container == "" {
				container, dir = c.Name, m.MountPath
			}
		}
	}
	if container == "" {
		return "not available (no container mounts the " + patch.PMEMVolumeName + " volume)", nil
	}
	if cfg == nil {
		return "not available (no API client)", nil
	}
	out, err := Exec(ctx, cfg, p, container, execTimeout, "sh", "-c", fmt.Sprintf(placementScript, dir))
	if err != nil {
		return "not available (exec into " + container + " failed: " + err.Error() + ")", nil
	}
	records := parseRecords(out)
	if len(records) == 0 {
		return "none: no running process of the container has placed memory (target not started, statically linked, or not a target process)", nil
	}
	return summarize(records), records
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
// "redis-server[7]: 241 MiB on PMEM, 0 MiB fallback to DRAM, heap shared".
func summarize(records []map[string]string) string {
	parts := make([]string, 0, len(records))
	for _, r := range records {
		s := fmt.Sprintf("%s[%s]: %s on PMEM, %s fallback to DRAM", r["comm"], r["pid"],
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
