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
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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

// Pod network: a bridge private to this node, pmem-e2e<N> with subnet 10.244.<N>.0/24, N
// the first of 100..199 no other bridge uses (two runs on one machine must not share it); the
// host is its gateway, so the apiserver reaches the webhook's pods directly
// (--enable-aggregator-routing).
const bridgePrefix = "pmem-e2e"

func pickBridge() (name, subnet string, err error) {
	for i := 100; i < 200; i++ {
		name := fmt.Sprintf("%s%d", bridgePrefix, i)
		if _, err := net.InterfaceByName(name); err == nil {
			continue
		}
		return name, fmt.Sprintf("10.244.%d.0/24", i), nil
	}
	return "", "", fmt.Errorf("no free pod bridge name %s100..199", bridgePrefix)
}

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

const cniConflist = `{
  "cniVersion": "1.0.0",
  "name": "pmem-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %[1]q,
      "isGateway": true,
      "isDefaultGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %[2]q}]],
        "dataDir": %[3]q
      }
    }
  ]
}
`

// setupBridge creates the pod bridge with its gateway address before the CNI plugin would,
// so that route_localnet can be set on it: RouteAPIServer's DNAT to the loopback-only
// apiserver needs it. The bridge plugin adopts an existing bridge.
func (n *Node) setupBridge() error {
	gw := strings.TrimSuffix(n.PodSubnet, ".0/24") + ".1/24"
	for _, args := range [][]string{
		{"link", "add", n.Bridge, "type", "bridge"},
		{"addr", "add", gw, "dev", n.Bridge},
		{"link", "set", n.Bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+n.Bridge+"/route_localnet", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("route_localnet on %s: %w", n.Bridge, err)
	}
	return nil
}

// RouteAPIServer makes the apiserver reachable from pods at the kubernetes Service
// (default/kubernetes, what in-cluster clients dial: KUBERNETES_SERVICE_HOST): a DNAT rule
// from that address, arriving on the pod bridge, to the apiserver's loopback port. There is no
// kube-proxy; this one rule is all the webhook's API calls (self-signed certificates, claim
// checks) need. Stop removes it.
func (n *Node) RouteAPIServer(ctx context.Context, cfg *rest.Config) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var svc *corev1.Service
	for i := 0; ; i++ {
		if svc, err = cs.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{}); err == nil || i == 50 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("the kubernetes Service: %w", err)
	}
	host, port, err := net.SplitHostPort(strings.TrimPrefix(cfg.Host, "https://"))
	if err != nil || host != "127.0.0.1" {
		return fmt.Errorf("apiserver %s: want https://127.0.0.1:<port> (%v)", cfg.Host, err)
	}
	if len(svc.Spec.Ports) == 0 {
		return fmt.Errorf("the kubernetes Service has no port")
	}
	n.natRule = []string{"-t", "nat", "PREROUTING", "-i", n.Bridge, "-d", svc.Spec.ClusterIP + "/32", "-p", "tcp",
		"--dport", strconv.Itoa(int(svc.Spec.Ports[0].Port)), "-j", "DNAT", "--to-destination", "127.0.0.1:" + port}
	if err := os.WriteFile(filepath.Join(n.Dir, "nat-rule"), []byte(strings.Join(n.natRule, "\n")), 0o644); err != nil {
		return err
	}
	return iptables("-A", n.natRule)
}

// iptables runs `iptables <table flags> <op> <chain> <rule...>` with rule = [-t nat CHAIN rest...].
func iptables(op string, rule []string) error {
	args := append([]string{rule[0], rule[1], op}, rule[2:]...)
	if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (n *Node) conflist() string {
	return fmt.Sprintf(cniConflist, n.Bridge, n.PodSubnet, filepath.Join(n.Dir, "cni", "ipam"))
}

func (n *Node) containerdConfig() string {
	return fmt.Sprintf(containerdConfig,
		filepath.Join(n.Dir, "containerd", "root"), filepath.Join(n.Dir, "containerd", "state"),
		n.Socket, n.Socket+".ttrpc", filepath.Join(n.Dir, "containerd", "opt"),
		"docker.io/"+images.PauseRef, CNIBinDir, filepath.Join(n.Dir, "cni", "net.d"))
}

func (n *Node) kubeletConfig(port, healthPort int) string {
	return fmt.Sprintf(kubeletConfig, port, healthPort, n.Socket, n.pki.CAFile, filepath.Join(n.Dir, "kubelet", "volume-plugins"))
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
	// Its own self-signed serving certificate on loopback: nothing to verify against.
	insecure := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // loopback health probe
	}}
	url := "https://127.0.0.1:" + strconv.Itoa(port) + "/readyz"
	return p.WaitFor(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := insecure.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	})
}

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

func listNetns() map[string]bool {
	m := map[string]bool{}
	entries, _ := os.ReadDir("/var/run/netns")
	for _, e := range entries {
		m[e.Name()] = true
	}
	return m
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
