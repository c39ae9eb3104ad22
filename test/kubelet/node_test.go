package kubelet

import (
	"encoding/json"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func testNode() *Node {
	return &Node{
		Dir: "/tmp/pmem-node-1", Socket: "/tmp/pmem-node-1/containerd.sock",
		Bridge: "pmem-e2e100", PodSubnet: "10.244.100.0/24",
		pki: &kubeletClientPKI{CAFile: "/tmp/pmem-node-1/pki/kubelet-client-ca.crt"},
	}
}

// The settings measured on these machines (package comment) must survive edits: each line
// here is one that made a difference.
func TestContainerdConfig(t *testing.T) {
	cfg := testNode().containerdConfig()
	for _, want := range []string{
		"restrict_oom_score_adj = true",
		`sandbox_image = "docker.io/pmem-e2e/pause:static"`,
		`bin_dir = "/usr/lib/cni"`,
		`conf_dir = "/tmp/pmem-node-1/cni/net.d"`,
		`address = "/tmp/pmem-node-1/containerd.sock"`,
		"SystemdCgroup = false",
		`stream_server_address = "127.0.0.1"`,
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("containerd config lacks %q:\n%s", want, cfg)
		}
	}
}

func TestConflist(t *testing.T) {
	var c struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type             string `json:"type"`
			Bridge           string `json:"bridge"`
			IsGateway        bool   `json:"isGateway"`
			IsDefaultGateway bool   `json:"isDefaultGateway"`
			IPAM             struct {
				Type    string                      `json:"type"`
				Ranges  [][]struct{ Subnet string } `json:"ranges"`
				DataDir string                      `json:"dataDir"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(testNode().conflist()), &c); err != nil {
		t.Fatalf("conflist is not JSON: %v", err)
	}
	if len(c.Plugins) != 1 {
		t.Fatalf("%d plugins, want 1 (bridge)", len(c.Plugins))
	}
	p := c.Plugins[0]
	if p.Type != "bridge" || p.Bridge != "pmem-e2e100" || !p.IsGateway || !p.IsDefaultGateway ||
		p.IPAM.Type != "host-local" || len(p.IPAM.Ranges) != 1 || p.IPAM.Ranges[0][0].Subnet != "10.244.100.0/24" ||
		!strings.HasPrefix(p.IPAM.DataDir, "/tmp/pmem-node-1/") {
		t.Errorf("bridge plugin %+v: want bridge pmem-e2e100, gateway and default route, host-local 10.244.100.0/24 under the node dir", p)
	}
}

func TestKubeletConfig(t *testing.T) {
	var c map[string]any
	if err := yaml.Unmarshal([]byte(testNode().kubeletConfig(10250, 10248)), &c); err != nil {
		t.Fatalf("kubelet config is not YAML: %v", err)
	}
	get := func(path ...string) any {
		var v any = c
		for _, p := range path {
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[p]
		}
		return v
	}
	for _, tt := range []struct {
		path []string
		want any
	}{
		{[]string{"kind"}, "KubeletConfiguration"},
		{[]string{"cgroupDriver"}, "cgroupfs"},
		{[]string{"failCgroupV1"}, false},
		{[]string{"address"}, "127.0.0.1"},
		{[]string{"port"}, float64(10250)},
		{[]string{"readOnlyPort"}, float64(0)},
		{[]string{"authentication", "anonymous", "enabled"}, false},
		{[]string{"authentication", "x509", "clientCAFile"}, "/tmp/pmem-node-1/pki/kubelet-client-ca.crt"},
		{[]string{"containerRuntimeEndpoint"}, "unix:///tmp/pmem-node-1/containerd.sock"},
		{[]string{"evictionHard", "nodefs.available"}, "1%"},
		{[]string{"imageGCHighThresholdPercent"}, float64(100)},
	} {
		if got := get(tt.path...); got != tt.want {
			t.Errorf("%s = %v (%T), want %v", strings.Join(tt.path, "."), got, got, tt.want)
		}
	}
}

func TestStatPPID(t *testing.T) {
	for _, tt := range []struct {
		stat string
		want int
	}{
		{"123 (containerd-shim) S 1 123 123 0", 1},
		{"456 (weird ) name) S 77 456 456 0", 77},
		{"789 (truncated", 0},
		{"790 (x) S", 0},
	} {
		if got := statPPID(tt.stat); got != tt.want {
			t.Errorf("statPPID(%q) = %d, want %d", tt.stat, got, tt.want)
		}
	}
}
