package kubelet

// The node's pod network: a private bridge with host-local IPAM (CNI), and the route from
// pods to the apiserver.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
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

func listNetns() map[string]bool {
	m := map[string]bool{}
	entries, _ := os.ReadDir("/var/run/netns")
	for _, e := range entries {
		m[e.Name()] = true
	}
	return m
}
