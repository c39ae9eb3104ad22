package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pmem-webhook/pmem-webhook/test/gate"
)

// EnvBinDir overrides where the control-plane binaries are looked up.
const EnvBinDir = "PMEM_CONTROLPLANE_BIN_DIR"

// modulePath is the main module; its go.mod marks the repository root.
const modulePath = "github.com/pmem-webhook/pmem-webhook"

// Binary names, as built by test/controlplane/build.sh.
const (
	BinEtcd              = "etcd"
	BinAPIServer         = "kube-apiserver"
	BinControllerManager = "kube-controller-manager"
)

// ErrBinariesMissing is returned (wrapped) by FindBinaries when the
// control-plane binaries have not been built; tests skip on it.
var ErrBinariesMissing = errors.New("control-plane binaries not built (run `make controlplane-bins`)")

// Binaries are the paths of the three control-plane executables.
type Binaries struct {
	Dir                                string
	Etcd, APIServer, ControllerManager string
}

// KubernetesVersion is the Kubernetes release matching the k8s.io/api the
// main module requires (k8s.io/api v0.Y.Z belongs to Kubernetes v1.Y.Z): the
// version test/controlplane/go.mod pins and build.sh keys bin/ by. It reads
// the main module's go.mod because test binaries carry no dependency list in
// their build info.
func KubernetesVersion() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	goMod := filepath.Join(root, "go.mod")
	f, err := os.Open(goMod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(strings.TrimPrefix(strings.TrimSpace(s.Text()), "require "))
		if len(fields) < 2 || fields[0] != "k8s.io/api" {
			continue
		}
		v, ok := strings.CutPrefix(fields[1], "v0.")
		if !ok {
			return "", fmt.Errorf("%s: k8s.io/api %s: want v0.<minor>.<patch>", goMod, fields[1])
		}
		return "v1." + v, nil
	}
	return "", fmt.Errorf("%s does not require k8s.io/api", goMod)
}

// RepoRoot walks up from the working directory to the main module's root.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if isMainModule(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s above the working directory", modulePath)
		}
		dir = parent
	}
}

func isMainModule(goMod string) bool {
	f, err := os.Open(goMod)
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if line := strings.TrimSpace(s.Text()); strings.HasPrefix(line, "module ") {
			return strings.TrimSpace(strings.TrimPrefix(line, "module ")) == modulePath
		}
	}
	return false
}

// DefaultBinDir is $PMEM_CONTROLPLANE_BIN_DIR, else <repo>/bin/k8s-<version>.
func DefaultBinDir() (string, error) {
	if dir := os.Getenv(EnvBinDir); dir != "" {
		return dir, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	version, err := KubernetesVersion()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin", "k8s-"+version), nil
}

// FindBinaries checks that all three executables are in dir ("" means
// DefaultBinDir) and wraps ErrBinariesMissing if any is absent.
func FindBinaries(dir string) (Binaries, error) {
	if dir == "" {
		var err error
		if dir, err = DefaultBinDir(); err != nil {
			return Binaries{}, err
		}
	}
	// Absolute: the binaries run with the control plane's directory as
	// their working directory.
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Binaries{}, err
	}
	dir = abs
	b := Binaries{
		Dir:               dir,
		Etcd:              filepath.Join(dir, BinEtcd),
		APIServer:         filepath.Join(dir, BinAPIServer),
		ControllerManager: filepath.Join(dir, BinControllerManager),
	}
	var missing []string
	for _, p := range []string{b.Etcd, b.APIServer, b.ControllerManager} {
		if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, filepath.Base(p))
		}
	}
	if len(missing) > 0 {
		return b, fmt.Errorf("%w: %s missing in %s", ErrBinariesMissing, strings.Join(missing, ", "), dir)
	}
	return b, nil
}

// RequireBinaries is the gate of every test that starts a control plane:
// it skips under -short, and when the binaries are not built, unless
// gate.ControlPlane is set (then it fails). target names the make target
// that builds them, for the skip message. It returns the binaries found.
func RequireBinaries(t testing.TB, target string) Binaries {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a control plane (-short)")
	}
	bins, err := FindBinaries("")
	if err != nil {
		if errors.Is(err, ErrBinariesMissing) {
			gate.Skip(t, gate.ControlPlane, fmt.Sprintf("%v; `make %s` builds them", err, target))
		}
		t.Fatal(err)
	}
	return bins
}
