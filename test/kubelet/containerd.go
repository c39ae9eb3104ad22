package kubelet

// containerd: its configuration, start-up, and the ctr calls the node makes.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pmem-webhook/pmem-webhook/test/images"
)

const containerdConfig = `version = 2
root = %[1]q
state = %[2]q
# Only what the CRI needs; the other snapshotters only log errors on this machine.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  # The VM lacks CAP_SYS_RESOURCE: lowering oom_score_adj below the runtime's own fails in
  # runc ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  sandbox_image = %[6]q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
    max_conf_num = 1
`

func (n *Node) containerdConfig() string {
	return fmt.Sprintf(containerdConfig,
		filepath.Join(n.Dir, "containerd", "root"), filepath.Join(n.Dir, "containerd", "state"),
		n.Socket, n.Socket+".ttrpc", filepath.Join(n.Dir, "containerd", "opt"),
		"docker.io/"+images.PauseRef, CNIBinDir, filepath.Join(n.Dir, "cni", "net.d"))
}

func (n *Node) startContainerd(ctx context.Context) error {
	if err := n.setupBridge(); err != nil {
		return err
	}
	cniConf := filepath.Join(n.Dir, "cni", "net.d")
	if err := os.MkdirAll(cniConf, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cniConf, "10-pmem-e2e.conflist"), []byte(n.conflist()), 0o644); err != nil {
		return err
	}
	cfgPath := filepath.Join(n.Dir, "containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(n.containerdConfig()), 0o644); err != nil {
		return err
	}
	p, err := n.start("containerd", Containerd, []string{"--config", cfgPath, "--log-level", "info"})
	if err != nil {
		return err
	}
	return p.WaitFor(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		return n.ctr(ctx, "version")
	})
}

// ctr runs `ctr -n k8s.io` against this node's containerd.
func (n *Node) ctr(ctx context.Context, args ...string) error {
	_, err := n.ctrOutput(ctx, args...)
	return err
}

func (n *Node) ctrOutput(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	full := append([]string{"--address", n.Socket, "-n", "k8s.io"}, args...)
	out, err := exec.CommandContext(ctx, Ctr, full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ContainerRootReadOnly reports whether the OCI spec containerd ran a container with (by the
// ID in a pod's container status, "containerd://<id>") had a read-only root filesystem, and
// the uid it ran as: what the kubelet and runc made of the securityContext, not what the pod
// asked for.
func (n *Node) ContainerRootReadOnly(ctx context.Context, containerID string) (readOnly bool, uid uint32, err error) {
	id := strings.TrimPrefix(containerID, "containerd://")
	out, err := n.ctrOutput(ctx, "containers", "info", id)
	if err != nil {
		return false, 0, err
	}
	var info struct {
		Spec struct {
			Root struct {
				Readonly bool `json:"readonly"`
			} `json:"root"`
			Process struct {
				User struct {
					UID uint32 `json:"uid"`
				} `json:"user"`
			} `json:"process"`
		} `json:"Spec"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return false, 0, fmt.Errorf("ctr containers info %s: %w", id, err)
	}
	return info.Spec.Root.Readonly, info.Spec.Process.User.UID, nil
}
