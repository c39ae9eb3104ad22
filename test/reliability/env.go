// Package reliability holds the control-plane reliability and security tests
// of issue 7 and the apiserver load benchmark of issue 6: bad input, certificate
// rotation under load, graceful shutdown, outage behaviour under both failure
// policies, the TLS surface of the webhook port, and admission latency as the
// kube-apiserver itself measures it.
//
// Everything runs against the real control plane of test/cluster (etcd,
// kube-apiserver and kube-controller-manager built from source) on 127.0.0.1.
// The webhook runs either in-process (cluster.StartWebhook) or, where a signal,
// a cert dir or the process's memory matter, as the real pmem-webhook binary
// built into a temporary directory. See docs/reliability.md.
package reliability

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pmem-webhook/pmem-webhook/deploy"
	"github.com/pmem-webhook/pmem-webhook/test/cluster"
	"github.com/pmem-webhook/pmem-webhook/test/gate"
)

// shared is the one control plane and webhook binary of a test binary run:
// started lazily by the first test that needs them (a `-run` of the unit
// tests alone starts nothing), stopped by Shutdown from TestMain.
var shared struct {
	once       sync.Once
	cp         *cluster.ControlPlane
	webhookBin string
	tmp        string
	err        error
	skip       string
}

// Env is what a control-plane test gets.
type Env struct {
	CP *cluster.ControlPlane
	// WebhookBin is ./cmd/pmem-webhook built from this tree.
	WebhookBin string
}

// Setup returns the shared control plane, starting it on first use. It
// skips the test when the binaries are not built (unless PMEM_E2E_REQUIRE is
// set) or under -short.
func Setup(t *testing.T) *Env {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a control plane (-short)")
	}
	shared.once.Do(start)
	if shared.skip != "" {
		t.Skip(shared.skip)
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return &Env{CP: shared.cp, WebhookBin: shared.webhookBin}
}

func start() {
	if _, err := cluster.FindBinaries(""); err != nil {
		if errors.Is(err, cluster.ErrBinariesMissing) && !gate.Required(gate.ControlPlane) {
			shared.skip = fmt.Sprintf("%v; `make test-reliability` builds them (set %s=1 to fail instead of skipping)", err, gate.ControlPlane)
			return
		}
		shared.err = err
		return
	}
	tmp, err := os.MkdirTemp("", "pmem-reliability-")
	if err != nil {
		shared.err = err
		return
	}
	shared.tmp = tmp
	if shared.webhookBin, err = buildWebhook(tmp); err != nil {
		shared.err = err
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	shared.cp, shared.err = cluster.Start(ctx, cluster.Options{Logf: func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, "reliability: "+f+"\n", a...)
	}})
}

// Shutdown stops what Setup started; TestMain calls it after the tests.
func Shutdown() {
	if shared.cp != nil {
		shared.cp.Stop()
	}
	if shared.tmp != "" {
		_ = os.RemoveAll(shared.tmp)
	}
}

// buildWebhook compiles ./cmd/pmem-webhook: the tests that signal the
// webhook, watch its memory or rotate its cert dir run the real binary.
func buildWebhook(dir string) (string, error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return "", err
	}
	goBin := os.Getenv("GO")
	if goBin == "" {
		goBin = "go"
	}
	out := filepath.Join(dir, "pmem-webhook")
	cmd := exec.Command(goBin, "build", "-o", out, "./cmd/pmem-webhook")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/pmem-webhook: %v\n%s", err, b)
	}
	return out, nil
}

// serverFlags are set by the tests themselves (loopback ports, temp cert dir).
var serverFlags = map[string]bool{"port": true, "cert-dir": true, "health-addr": true, "metrics-addr": true, "bind-address": true}

// DeployedArgs are the pmem-webhook flags of deploy/default's Deployment
// without the listener and cert-dir flags: the process under test runs with
// the injection settings and shutdown timeout a user installs.
func DeployedArgs() ([]string, error) {
	all, err := deploy.DefaultWebhookArgs()
	if err != nil {
		return nil, err
	}
	var args []string
	for _, a := range all {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !serverFlags[name] {
			args = append(args, a)
		}
	}
	return args, nil
}
