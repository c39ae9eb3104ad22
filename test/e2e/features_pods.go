package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/pkg/features"
	e2etypes "sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/pmem-webhook/pmem-webhook/cmd/pmem-inject/plugin"
	"github.com/pmem-webhook/pmem-webhook/patch"
)

// PodFeatures are the features that need pods to really run (providers kubelet and kind).
func PodFeatures(env *Env, penv *PodEnv) []e2etypes.Feature {
	return append([]e2etypes.Feature{
		RedisHeapOnPMEM(env, penv),
		ShellEntrypointStarts(env, penv),
		RemovingAnnotationRollsBackToDRAM(env, penv),
		WebhookReplicaLossDuringRollout(env, penv),
		InitContainerRestricted(env, penv),
	}, ForkWriteBackFeatures(env, penv)...)
}

type podKey struct{}

// The data written through Redis: 100 values of 1 MiB, 100 MiB in all.
const (
	redisValues    = 100
	redisValueSize = 1 << 20
)

// RedisHeapOnPMEM: an annotated Deployment of Debian's Redis becomes Ready; redis-server's
// heap is a file mapping under /mnt/pmem; 100 MiB SET through the apiserver's port-forward
// come back intact from GET, and are resident in that mapping.
func RedisHeapOnPMEM(env *Env, penv *PodEnv) e2etypes.Feature {
	return features.New("an annotated Debian Redis runs with its heap on PMEM").
		WithLabel("tier", "pods").
		Setup(setupNamespace(nil)).
		Assess("the annotated Deployment becomes Ready, injected", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			d := deployment(ns, "redis", debianRedis(penv, "512Mi"), map[string]string{patch.AnnotationDirect: "true"})
			if err := c.Create(ctx, d); err != nil {
				t.Fatalf("create Deployment: %v", err)
			}
			pods := waitDeploymentRolledOut(ctx, t, c, ns, "redis", podTimeout)
			pod := &pods[0]
			assertInjected(t, env, pod, wantInjection{size: "1Gi", targets: []string{"redis"}})
			pvc := assertPVC(ctx, t, env, c, pod, "1Gi")
			if pvc.Status.Phase != corev1.ClaimBound {
				t.Errorf("PVC %s: phase %s, want Bound", pvc.Name, pvc.Status.Phase)
			}
			return context.WithValue(ctx, podKey{}, pod)
		}).
		Assess("100 MiB round-trip and live in the /mnt/pmem mapping", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			pod := podFrom(ctx, t)
			rc := cfg.Client().RESTConfig()
			assertRedisServerIsPID1(ctx, t, rc, pod)
			roundTrip(ctx, t, rc, pod, redisValues, redisValueSize)
			rss, maps, err := pmemRss(ctx, rc, pod, "redis", "1")
			if err != nil {
				t.Fatalf("read smaps: %v", err)
			}
			t.Logf("redis-server: %d KiB resident in %d mapping(s) under /mnt/pmem: %q", rss, len(maps), maps)
			// Every value is in the heap once; allow for what Redis freed meanwhile.
			if min := int64(redisValues * redisValueSize / 1024 * 9 / 10); rss < min {
				t.Errorf("redis-server has %d KiB resident under /mnt/pmem after writing %d MiB, want >= %d KiB (heap not on PMEM?); mappings %q",
					rss, redisValues*redisValueSize>>20, min, maps)
			}
			return ctx
		}).
		Assess("kubectl pmem status reports the preload's placement record", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			pod := podFrom(ctx, t)
			kcfg := kubeconfigFor(t, cfg.Client().RESTConfig())
			out, stderr, err := kubectlPmem(ctx, t, "status", "deployment/redis", "-o", "json", "-n", pod.Namespace, "--kubeconfig", kcfg, "--context", "e2e")
			if err != nil {
				t.Fatalf("kubectl pmem status: %v\n%s%s", err, out, stderr)
			}
			var st []plugin.PodStatus
			if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) != 1 {
				t.Fatalf("status: %v\n%s", err, out)
			}
			s := st[0]
			t.Logf("placement: %s", s.Placement)
			if !strings.HasPrefix(s.Placement, "redis-server[1]: ") || !strings.Contains(s.Placement, "heap shared") || len(s.Records) != 1 {
				t.Fatalf("placement %q, records %v: want one record of redis-server (pid 1) with its heap shared", s.Placement, s.Records)
			}
			// The record is rewritten every 4 MiB of change: after the
			// round-trip it holds most of the values.
			resident, _ := strconv.ParseInt(s.Records[0]["bytes_resident_pmem"], 10, 64)
			if min := int64(redisValues*redisValueSize) * 8 / 10; resident < min {
				t.Errorf("bytes_resident_pmem = %d, want >= %d after writing %d MiB", resident, min, redisValues*redisValueSize>>20)
			}
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}

func podFrom(ctx context.Context, t *testing.T) *corev1.Pod {
	t.Helper()
	pod, ok := ctx.Value(podKey{}).(*corev1.Pod)
	if !ok {
		t.Skip("no running pod from the previous step")
	}
	return pod
}

// assertRedisServerIsPID1: the checks read /proc/1, so make sure that is redis-server (also
// after an entrypoint script's exec).
func assertRedisServerIsPID1(ctx context.Context, t *testing.T, cfg *rest.Config, pod *corev1.Pod) {
	t.Helper()
	out, err := execIn(ctx, cfg, pod, "redis", "cat", "/proc/1/comm")
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	if strings.TrimSpace(out) != "redis-server" {
		t.Fatalf("pod %s: PID 1 is %q, want redis-server", pod.Name, strings.TrimSpace(out))
	}
}

// roundTrip SETs n values of size bytes (pseudo-random, seeded by the pod name) through a
// port-forward, GETs them back and compares, then deletes nothing: the data stays for the
// smaps check.
func roundTrip(ctx context.Context, t *testing.T, cfg *rest.Config, pod *corev1.Pod, n, size int) {
	t.Helper()
	port, stop, err := portForward(ctx, cfg, pod, 6379)
	if err != nil {
		t.Fatalf("port-forward: %v", err)
	}
	defer stop()
	start := time.Now()
	r, err := dialRedis(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Now().Add(redisTimeout))
	if err != nil {
		t.Fatalf("connect to redis through port-forward: %v", err)
	}
	defer r.Close()
	if got, err := r.do([]byte("PING")); err != nil || string(got) != "PONG" {
		t.Fatalf("PING: %q, %v", got, err)
	}
	seed := uint64(len(pod.Name))
	for _, b := range []byte(pod.Name) {
		seed = seed*131 + uint64(b)
	}
	value := func(i int) []byte {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		v := make([]byte, size)
		for j := 0; j+8 <= size; j += 8 {
			x := rng.Uint64()
			for k := 0; k < 8; k++ {
				v[j+k] = byte(x >> (8 * k))
			}
		}
		return v
	}
	for i := 0; i < n; i++ {
		if got, err := r.do([]byte("SET"), []byte(fmt.Sprintf("key:%d", i)), value(i)); err != nil || string(got) != "OK" {
			t.Fatalf("SET key:%d: %q, %v", i, got, err)
		}
	}
	for i := 0; i < n; i++ {
		got, err := r.do([]byte("GET"), []byte(fmt.Sprintf("key:%d", i)))
		if err != nil {
			t.Fatalf("GET key:%d: %v", i, err)
		}
		if !bytes.Equal(got, value(i)) {
			t.Fatalf("GET key:%d: %d bytes differ from the %d written", i, len(got), size)
		}
	}
	t.Logf("%d MiB SET and GET through port-forward in %s", n*size>>20, time.Since(start).Round(time.Millisecond))
}
