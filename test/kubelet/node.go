// Package kubelet runs a real node on this machine for the kubelet e2e provider: containerd
// (Debian's, with runc and the CNI plugins from Debian's containernetworking-plugins), a
// kubelet and a kube-scheduler built from source (test/controlplane/build-node.sh), attached
// to a control plane from test/cluster. Everything is root, talks over loopback (the pods sit
// on a private bridge) and is torn down by Stop: pods, shims, mounts, network namespaces,
// the bridge and the working directory.
//
// Settings measured on these machines (docs/e2e.md has the why of each):
//   - containerd CRI restrict_oom_score_adj = true: the VM lacks CAP_SYS_RESOURCE, and runc
//     fails with "can't get final child's PID from pipe: EOF" otherwise;
//   - kubelet failCgroupV1: false, cgroupDriver: cgroupfs (cgroup v1 hybrid, no systemd);
//   - sandbox_image: a static pause image built here and imported (no registry);
//   - the node is named "localhost": the kubelet refuses a loopback --node-ip, but the
//     apiserver dials a node by its Hostname address first, and "localhost" resolves to the
//     loopback address the kubelet listens on.
package kubelet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pmem-webhook/pmem-webhook/test/images"
	"github.com/pmem-webhook/pmem-webhook/test/proc"
)

// NodeName is the node's name and Hostname address (see the package comment).
const NodeName = "localhost"

// Binaries of the node, built by test/controlplane/build-node.sh next to the control plane's.
const (
	BinKubelet   = "kubelet"
	BinScheduler = "kube-scheduler"
)

// System binaries from Debian packages (containerd, runc, containernetworking-plugins).
var (
	Containerd = "containerd"
	Ctr        = "ctr"
	CNIBinDir  = "/usr/lib/cni"
)

// ErrPrerequisites wraps what is missing on the machine (binaries, root).
var ErrPrerequisites = errors.New("kubelet provider prerequisites missing")

// Options configure New.
type Options struct {
	// BinDir holds kubelet and kube-scheduler.
	BinDir string
	// Logf reports progress; nil discards it.
	Logf func(format string, args ...any)
	// SaveLogsTo, if set, receives a copy of the node's logs when Stop removes Dir.
	SaveLogsTo string
}

// Node is a containerd + kubelet + kube-scheduler on this machine.
type Node struct {
	// Dir is the working directory: configs, logs (<name>.log), containerd's root, kubelet's
	// root, the hostPath volumes.
	Dir string
	// Socket is containerd's address.
	Socket string
	// Bridge and PodSubnet are the pod network.
	Bridge, PodSubnet string

	opts     Options
	pki      *kubeletClientPKI
	procs    []*proc.Process
	netnsPre map[string]bool
	natRule  []string
	stopOnce sync.Once
	stopErr  error
}

// New checks prerequisites and prepares the node's directory and the kubelet client
// certificate. The control plane must then be started with ControlPlaneArgs and
// ControlPlaneControllers, and Start called with it.
func New(opts Options) (*Node, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: the kubelet provider must run as root", ErrPrerequisites)
	}
	var missing []string
	for _, b := range []string{filepath.Join(opts.BinDir, BinKubelet), filepath.Join(opts.BinDir, BinScheduler)} {
		if st, err := os.Stat(b); err != nil || st.Mode()&0o111 == 0 {
			missing = append(missing, b+" (make node-bins)")
		}
	}
	for _, b := range []string{Containerd, Ctr, "runc", "containerd-shim-runc-v2", "iptables", "mount", "ip"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b+" (apt-get install containerd runc containernetworking-plugins iptables)")
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(CNIBinDir, p)); err != nil {
			missing = append(missing, filepath.Join(CNIBinDir, p)+" (apt-get install containernetworking-plugins)")
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrPrerequisites, strings.Join(missing, ", "))
	}
	// A short path: containerd's socket must fit in sun_path (108 bytes).
	dir, err := os.MkdirTemp("", "pmem-node-")
	if err != nil {
		return nil, err
	}
	n := &Node{Dir: dir, Socket: filepath.Join(dir, "containerd.sock"), opts: opts}
	reapOrphans(n.logf)
	if n.Bridge, n.PodSubnet, err = pickBridge(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	// For reapOrphans, should this run die without cleaning up.
	if err := os.WriteFile(filepath.Join(dir, "bridge"), []byte(n.Bridge), 0o644); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if n.pki, err = newKubeletClientPKI(filepath.Join(dir, "pki"), 24*time.Hour); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return n, nil
}

func (n *Node) logf(format string, args ...any) {
	if n.opts.Logf != nil {
		n.opts.Logf(format, args...)
	}
}

// ControlPlaneArgs are the kube-apiserver flags the node needs: admission webhooks and
// aggregated APIs called at their endpoints (pod IPs on the bridge; there is no kube-proxy
// for Service IPs), and a client certificate the kubelet accepts for logs/exec/port-forward,
// dialled by the node's Hostname address.
func (n *Node) ControlPlaneArgs() []string {
	return []string{
		"--enable-aggregator-routing=true",
		"--kubelet-client-certificate=" + n.pki.CertFile,
		"--kubelet-client-key=" + n.pki.KeyFile,
		"--kubelet-preferred-address-types=Hostname,InternalIP",
		// That plugin taints every new node not-ready until the node-lifecycle controller
		// lifts it; that controller would also evict pods whenever the two loaded cores delay
		// a node heartbeat. The features need neither.
		"--disable-admission-plugins=TaintNodesByCondition",
	}
}

// ControlPlaneControllers are the controllers a node with pods needs besides test/cluster's:
// EndpointSlices (Service -> webhook pods), PV binding (the pmem PVCs to the hostPath PVs) and
// the PodDisruptionBudget status of the webhook's PDB.
func (n *Node) ControlPlaneControllers() []string {
	return []string{
		"endpointslice-controller",
		"persistentvolume-binder-controller",
		"disruption-controller",
	}
}

// StartOptions say what to attach the node to.
type StartOptions struct {
	// Config and KubeconfigFile are the control plane's admin credentials.
	Config         *rest.Config
	KubeconfigFile string
	// Images are imported into containerd before the kubelet starts; one must be PauseRef.
	Images []images.Built
	// Timeout bounds the start-up; 0 means 3 minutes.
	Timeout time.Duration
}

// Start starts containerd, imports the images, starts the kubelet and the scheduler, and
// returns once the node is Ready. On error everything started is stopped (not the dir).
func (n *Node) Start(ctx context.Context, so StartOptions) (err error) {
	if so.Timeout == 0 {
		so.Timeout = 3 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, so.Timeout)
	defer cancel()
	defer func() {
		if err != nil {
			n.stopProcesses()
			n.forceCleanup()
		}
	}()
	n.netnsPre = listNetns()

	start := time.Now()
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	n.logf("containerd ready (%s)", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	for _, img := range so.Images {
		if err := n.ctr(ctx, "images", "import", img.Archive); err != nil {
			return fmt.Errorf("import %s: %w", img.Ref, err)
		}
	}
	n.logf("%d images imported (%s)", len(so.Images), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	if err := n.startKubelet(ctx, so); err != nil {
		return err
	}
	n.logf("kubelet: node %s Ready (%s)", NodeName, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := n.startScheduler(ctx, so); err != nil {
		return err
	}
	n.logf("kube-scheduler ready (%s)", time.Since(start).Round(time.Millisecond))
	return nil
}

func (n *Node) start(name, bin string, args []string, env ...string) (*proc.Process, error) {
	p, err := proc.Start(name, bin, args, n.Dir, env)
	if err != nil {
		return nil, err
	}
	n.procs = append(n.procs, p)
	return p, nil
}

// LogFile is the log of one of the node's processes ("containerd", "kubelet", "kube-scheduler").
func (n *Node) LogFile(name string) string { return filepath.Join(n.Dir, name+".log") }

func (n *Node) kubeletConfig(port, healthPort int) string {
	return fmt.Sprintf(kubeletConfig, port, healthPort, n.Socket, n.pki.CAFile, filepath.Join(n.Dir, "kubelet", "volume-plugins"))
}

const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: %[1]d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %[2]d
containerRuntimeEndpoint: unix://%[3]s
# cgroup v1 (hybrid) and no systemd here.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: %[4]q
# Only the apiserver holds a certificate of that CA.
authorization:
  mode: AlwaysAllow
resolvConf: /etc/resolv.conf
# A test node on a shared disk: never evict or garbage-collect the imported images.
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
# React quickly: the features wait for pods and their deletion.
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
maxPods: 50
volumePluginDir: %[5]q
`

func (n *Node) startKubelet(ctx context.Context, so StartOptions) error {
	port, err := proc.FreePort()
	if err != nil {
		return err
	}
	healthPort, err := proc.FreePort()
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, []byte(n.kubeletConfig(port, healthPort)), 0o644); err != nil {
		return err
	}
	p, err := n.start(BinKubelet, filepath.Join(n.opts.BinDir, BinKubelet), []string{
		"--config=" + cfgPath,
		"--kubeconfig=" + so.KubeconfigFile,
		"--root-dir=" + filepath.Join(n.Dir, "kubelet"),
		"--cert-dir=" + filepath.Join(n.Dir, "kubelet", "pki"),
		"--hostname-override=" + NodeName,
		"--v=1",
	})
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(so.Config)
	if err != nil {
		return err
	}
	return p.WaitFor(ctx, 250*time.Millisecond, func(ctx context.Context) error {
		node, err := cs.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("node %s not Ready: %s: %s", NodeName, c.Reason, c.Message)
			}
		}
		return fmt.Errorf("node %s has no Ready condition yet", NodeName)
	})
}

func (n *Node) startScheduler(ctx context.Context, so StartOptions) error {
	port, err := proc.FreePort()
	if err != nil {
		return err
	}
	p, err := n.start(BinScheduler, filepath.Join(n.opts.BinDir, BinScheduler), []string{
		"--kubeconfig=" + so.KubeconfigFile,
		"--authentication-kubeconfig=" + so.KubeconfigFile,
		"--authorization-kubeconfig=" + so.KubeconfigFile,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + filepath.Join(n.Dir, "scheduler"),
		"--leader-elect=false",
		"--profiling=false",
	})
	if err != nil {
		return err
	}
	// Its own self-signed serving certificate on loopback.
	insecure := proc.LoopbackProbeClient()
	url := "https://127.0.0.1:" + strconv.Itoa(port) + "/readyz"
	return p.WaitFor(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		_, err := proc.Get(ctx, insecure, url)
		return err
	})
}
