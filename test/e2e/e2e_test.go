package e2e

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/e2e-framework/klient"
	"sigs.k8s.io/e2e-framework/pkg/env"
	"sigs.k8s.io/e2e-framework/pkg/envconf"

	"github.com/pmem-webhook/pmem-webhook/test/cluster"
	"github.com/pmem-webhook/pmem-webhook/test/gate"
)

var (
	testenv    env.Environment
	featureEnv *Env
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse() // for testing.Short
	provider := os.Getenv(ProviderEnvVar)
	if provider == "" {
		provider = ProviderLocal
	}
	if provider != ProviderLocal {
		return runProvider(m, provider) // providers_test.go
	}
	if testing.Short() {
		skipReason = "control-plane e2e tests are not run with -short"
		return m.Run()
	}

	ctx := context.Background()
	start := time.Now()
	local, cfg, fenv, err := StartLocal(ctx, func(format string, args ...any) { log.Printf("e2e local: "+format, args...) })
	switch {
	case errors.Is(err, cluster.ErrBinariesMissing) && !gate.Required(gate.ControlPlane):
		skipReason = fmt.Sprintf("%v; `make test-controlplane` builds them and runs these tests", err)
		return m.Run()
	case err != nil:
		log.Printf("e2e local provider: %v", err)
		return 1
	}
	log.Printf("e2e local: control plane and webhook up in %s (logs in %s)", time.Since(start).Round(time.Millisecond), local.ControlPlane.Dir)
	defer func() {
		if err := local.Stop(); err != nil {
			log.Printf("e2e local: stop: %v", err)
		}
	}()
	// ^C: stop the control plane and remove its directory before exiting.
	// (Without this the kernel still kills the binaries, see test/cluster.)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		if _, ok := <-sigs; ok {
			log.Print("e2e local: interrupted, stopping the control plane")
			_ = local.Stop()
			os.Exit(130)
		}
	}()

	testenv, featureEnv, err = newEnvironment(cfg, fenv)
	if err != nil {
		log.Print(err)
		return 1
	}
	return m.Run()
}

func newEnvironment(cfg *rest.Config, fenv *Env) (env.Environment, *Env, error) {
	kc, err := klient.New(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("e2e client: %w", err)
	}
	// Each feature works in its own namespace, so they run in parallel.
	return env.NewWithConfig(envconf.New().WithClient(kc).WithParallelTestEnabled()), fenv, nil
}

// TestControlPlane runs every feature against the selected provider.
func TestControlPlane(t *testing.T) {
	if skipReason != "" {
		t.Skip(skipReason)
	}
	testenv.TestInParallel(t, Features(featureEnv)...)
}
