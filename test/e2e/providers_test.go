package e2e

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/pmem-webhook/pmem-webhook/test/gate"
)

// provider is a way to get a cluster other than ProviderLocal (which e2e_test.go runs
// itself). Providers register in init(), so one behind a build tag (kind) only exists in
// builds with that tag.
type provider struct {
	// start brings the cluster up with the webhook installed and returns its admin config,
	// the feature environment, what only pod-running providers offer (nil: no pods), and a
	// stop function that removes everything it started.
	start func(ctx context.Context, logf func(string, ...any)) (*rest.Config, *Env, *PodEnv, func() error, error)
	// unavailable wraps the errors that mean "this machine cannot run the provider" (missing
	// binaries or tools): a skip unless PMEM_E2E_REQUIRE is set.
	unavailable []error
}

var providers = map[string]provider{}

// podEnv is set when the provider runs pods (kubelet, kind); TestPods skips otherwise.
var podEnv *PodEnv

// runProvider is TestMain's body for every provider except ProviderLocal.
func runProvider(m *testing.M, name string) int {
	p, ok := providers[name]
	if !ok {
		known := []string{ProviderLocal}
		for k := range providers {
			known = append(known, k)
		}
		sort.Strings(known)
		log.Printf("%s=%q: unknown provider; this build knows %s (kind needs -tags kind)", ProviderEnvVar, name, strings.Join(known, ", "))
		return 2
	}
	if testing.Short() {
		skipReason = "e2e tests are not run with -short"
		return m.Run()
	}
	logf := func(format string, args ...any) { log.Printf("e2e "+name+": "+format, args...) }
	start := time.Now()
	// ^C during the (minutes-long) start-up or the tests: cancel, then stop what is up.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	cfg, fenv, penv, stop, err := p.start(ctx, logf)
	if err != nil {
		for _, u := range p.unavailable {
			if errors.Is(err, u) && !gate.Required(gate.ControlPlane) {
				skipReason = fmt.Sprintf("provider %s cannot run here: %v", name, err)
				return m.Run()
			}
		}
		log.Printf("e2e %s provider: %v", name, err)
		return 1
	}
	logf("cluster and webhook up in %s", time.Since(start).Round(time.Millisecond))
	stopped := make(chan struct{})
	defer func() {
		stopStart := time.Now()
		if err := stop(); err != nil {
			logf("stop: %v", err)
		}
		logf("stopped in %s", time.Since(stopStart).Round(time.Millisecond))
		close(stopped)
	}()
	go func() {
		<-ctx.Done()
		select {
		case <-stopped:
		default:
			logf("interrupted, stopping the cluster")
			_ = stop()
			os.Exit(130)
		}
	}()
	// `go test -timeout` ends the binary with a panic that runs no deferred clean-up: stop
	// the cluster a little before that, so no pod outlives the run.
	if d := testTimeout(); d > 0 {
		margin := 90 * time.Second
		if d < 3*margin {
			margin = d / 3
		}
		watchdog := time.AfterFunc(time.Until(start.Add(d-margin)), func() {
			logf("go test -timeout %s is near: stopping the cluster before the panic", d)
			_ = stop()
		})
		defer watchdog.Stop()
	}
	testenv, featureEnv, err = newEnvironment(cfg, fenv)
	if err != nil {
		log.Print(err)
		return 1
	}
	podEnv = penv
	return m.Run()
}

// testTimeout is the -test.timeout of this test binary (0: none).
func testTimeout() time.Duration {
	f := flag.Lookup("test.timeout")
	if f == nil {
		return 0
	}
	d, _ := time.ParseDuration(f.Value.String())
	return d
}

func providerName() string {
	if p := os.Getenv(ProviderEnvVar); p != "" {
		return p
	}
	return ProviderLocal
}
