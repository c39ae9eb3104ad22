package e2e

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/pkg/features"
	e2etypes "sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/preload"
)

// ForkWriteBackFeatures: a BGSAVE in a running fsdax Redis pod, under a write load, is written
// back to the shared PMEM file after the child exits (docs/node.md, "Fork (fsdax)"), once with
// the kubelet's default seccomp profile (Unconfined unless the kubelet's seccompDefault is on;
// the test node does not set it) and once with RuntimeDefault (the runtime's profile). Their
// names start with "fork write-back" so `-run 'TestPods/fork_write-back'` selects them.
func ForkWriteBackFeatures(env *Env, penv *PodEnv) []e2etypes.Feature {
	return []e2etypes.Feature{
		ForkWriteBack(env, penv, nil),
		ForkWriteBack(env, penv, &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}),
	}
}

// The data set before the save: redis-benchmark SETs of 512-byte values over 200,000 keys
// (about 173,000 distinct, ~110 MiB of heap); the load during and after it overwrites the same
// keys with 300-byte values, so a value of the load in the dump would change its digest.
const (
	forkKeys        = 200000
	forkPopulate    = "redis-benchmark -r 200000 -n 400000 -d 512 -P 32 -q -t set"
	forkLoadRound   = "redis-benchmark -r 200000 -n 5000 -c 4 -d 300 -q -t set"
	forkLoadSeconds = 60 // 3-37 s measured before the write-back thread; margin for a busy node
)

// forkLoadScript: digest and size, BGSAVE, then bounded rounds of the write load until the
// status record shows one more write-back with the heap shared again (the preload's write-back
// thread runs it once the child is gone; before that thread, it came only at jemalloc's next
// purge, 3-18 s after the BGSAVE in the runs of 2026-12-01; the bound is forkLoadSeconds). POSIX sh.
// The record is pmem-status.<container>.<pid> (the container, redis, from PMEM_CONTAINER_NAME:
// two containers of a pod are both pid 1).
const forkLoadScript = `st() { cat /mnt/pmem/pmem-status.redis.1 /mnt/pmem/heap/pmem-status.redis.1 2>/dev/null; }
val() { st | sed -n "s/^$1=\([^ ]*\).*/\1/p" | head -n 1; }
r0=$(val restores)
echo "digest=$(redis-cli DEBUG DIGEST)"
echo "dbsize=$(redis-cli DBSIZE)"
echo "bgsave=$(redis-cli BGSAVE)"
start=$(date +%%s); end=$((start + %d)); n=0
while [ "$(date +%%s)" -lt "$end" ]; do
  ` + forkLoadRound + ` >/dev/null 2>&1
  n=$((n + 1))
  r=$(val restores)
  if [ "${r:-0}" -gt "${r0:-0}" ] && [ "$(val heap_shared)" = 1 ]; then
    echo "writeback=after $n load rounds, $(($(date +%%s) - start)) s"
    break
  fi
done
echo "load_rounds=$n"
# The child's exit (its pipe's EOF) can bring the write-back before Redis reaps the child (serverCron,
# 10 times a second) and clears rdb_bgsave_in_progress: wait for that, bounded (10 s).
for i in $(seq 100); do
  redis-cli INFO persistence | tr -d '\r' | grep -q '^rdb_bgsave_in_progress:0' && break
  sleep 0.1
done
redis-cli INFO persistence | tr -d '\r' | grep -E '^rdb_(bgsave_in_progress|last_bgsave_status|last_cow_size)' | sed 's/:/=/'
exit 0`

// forkDumpScript loads the dump in a second redis-server without the preload and prints its
// size and digest.
const forkDumpScript = `env -u LD_PRELOAD redis-server --port 6380 --dir /var/lib/redis --dbfilename dump.rdb \
  --save '' --appendonly no --enable-debug-command local --daemonize yes \
  --logfile /tmp/dumpcheck.log --pidfile /tmp/dumpcheck.pid
i=0
while [ $i -lt 120 ]; do
  [ "$(redis-cli -p 6380 PING 2>/dev/null)" = PONG ] && break
  sleep 0.5; i=$((i + 1))
done
echo "dbsize=$(redis-cli -p 6380 DBSIZE)"
echo "digest=$(redis-cli -p 6380 DEBUG DIGEST)"
redis-cli -p 6380 SHUTDOWN NOSAVE >/dev/null 2>&1
exit 0`

// userfaultfdSyscall is the syscall number by GOARCH (the node's, as the kubelet provider
// runs here; kind nodes run the host's architecture).
var userfaultfdSyscall = map[string]int{"amd64": 323, "arm64": 282}

// userfaultfdProbe calls userfaultfd(O_CLOEXEC|O_NONBLOCK|UFFD_USER_MODE_ONLY) as the preload
// does, from a process exec'd in the container (same seccomp filter): "ok" or "errno=N".
// perl-base is in every Debian image (Essential).
const userfaultfdProbe = `perl -e '$! = 0; my $fd = syscall(%d, 0x80801); print $fd >= 0 ? "ok\n" : "errno=" . ($! + 0) . "\n"'`

// ForkWriteBack: see ForkWriteBackFeatures. seccomp nil: no seccompProfile in the pod.
func ForkWriteBack(env *Env, penv *PodEnv, seccomp *corev1.SeccompProfile) e2etypes.Feature {
	profile, app := "kubelet default", "redis-fork"
	if seccomp != nil {
		profile, app = string(seccomp.Type), "redis-fork-"+strings.ToLower(string(seccomp.Type))
	}
	// The kubelet default without seccompDefault is Unconfined: userfaultfd is allowed.
	// containerd's RuntimeDefault (contrib/seccomp/seccomp_default.go, 1.6 to 2.x) lists no
	// userfaultfd, under no capability either: its default action, EPERM.
	wantUffd := seccomp == nil
	return features.New("fork write-back after BGSAVE in a running pod, seccomp "+profile).
		WithLabel("tier", "pods").
		Setup(setupNamespace(nil)).
		Assess("BGSAVE under a write load: written back to shared PMEM, dump intact", func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
			c, ns := kube(t, cfg), namespace(ctx, t)
			ctr := debianRedis(penv, "512Mi")
			ctr.Args = append(ctr.Args, "--enable-debug-command", "local")
			d := deployment(ns, app, ctr, map[string]string{patch.AnnotationDirect: "true"})
			if seccomp != nil {
				d.Spec.Template.Spec.SecurityContext = &corev1.PodSecurityContext{SeccompProfile: seccomp}
			}
			if err := c.Create(ctx, d); err != nil {
				t.Fatalf("create Deployment: %v", err)
			}
			pods := waitDeploymentRolledOut(ctx, t, c, ns, app, podTimeout)
			pod := &pods[0]
			assertInjected(t, env, pod, wantInjection{size: "1Gi", targets: []string{"redis"}})
			rc := cfg.Client().RESTConfig()
			assertRedisServerIsPID1(ctx, t, rc, pod)
			sh := func(script string) string {
				t.Helper()
				out, err := execIn(ctx, rc, pod, "redis", "sh", "-c", script)
				if err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				return out
			}

			// What the container runs under: seccomp mode of redis-server, and what
			// userfaultfd returns there.
			mode := preload.ParseStatus(strings.ReplaceAll(sh("grep '^Seccomp:' /proc/1/status; uname -r | sed 's/^/kernel=/'"), ":\t", "="))
			t.Logf("seccomp %s: /proc/1/status Seccomp=%s (0 none, 2 filter), kernel %s", profile, mode["Seccomp"], mode["kernel"])
			if want := map[bool]string{true: "2", false: "0"}[seccomp != nil]; mode["Seccomp"] != want {
				t.Errorf("redis-server runs with Seccomp mode %q, want %s", mode["Seccomp"], want)
			}
			nr, ok := userfaultfdSyscall[runtime.GOARCH]
			if !ok {
				t.Skipf("no userfaultfd syscall number for %s", runtime.GOARCH)
			}
			uffd := strings.TrimSpace(sh(fmt.Sprintf(userfaultfdProbe, nr)))
			t.Logf("userfaultfd(UFFD_USER_MODE_ONLY) in the container: %s", uffd)
			switch {
			case wantUffd && uffd != "ok":
				t.Errorf("userfaultfd in a pod without seccompProfile: %s, want ok (kubelet seccompDefault on?)", uffd)
			case !wantUffd && uffd != "errno=1":
				t.Errorf("userfaultfd under %s: %s, want errno=1 (EPERM, the runtime profile's default action)", profile, uffd)
			}
			// The pre-copy also needs PAGEMAP_SCAN (Linux 6.7).
			precopyPossible := wantUffd && kernelAtLeast(mode["kernel"], 6, 7)

			before := statusRecord(ctx, t, rc, pod)
			out := sh(forkPopulate + " >/dev/null 2>&1; redis-cli INFO memory | tr -d '\\r' | grep -E '^used_memory:' | sed 's/:/=/'")
			t.Logf("populated: %s", strings.TrimSpace(out))

			load := preload.ParseStatus(sh(fmt.Sprintf(forkLoadScript, forkLoadSeconds)))
			t.Logf("BGSAVE %q; %s; load rounds %s; fork-time dbsize %s; rdb_last_bgsave_status %s, rdb_last_cow_size %s",
				load["bgsave"], load["writeback"], load["load_rounds"], load["dbsize"], load["rdb_last_bgsave_status"], load["rdb_last_cow_size"])
			after := statusRecord(ctx, t, rc, pod)
			t.Logf("status record after the write-back:\n%s", formatRecord(after))
			if load["bgsave"] != "Background saving started" || load["rdb_last_bgsave_status"] != "ok" || load["rdb_bgsave_in_progress"] != "0" {
				t.Fatalf("BGSAVE: %q, last status %q, in progress %q", load["bgsave"], load["rdb_last_bgsave_status"], load["rdb_bgsave_in_progress"])
			}
			if load["writeback"] == "" {
				t.Errorf("no write-back within %d s of write load after the save", forkLoadSeconds)
			}
			n := func(r map[string]string, k string) int64 {
				v, err := strconv.ParseInt(r[k], 10, 64)
				if err != nil {
					t.Errorf("status %s=%q: %v", k, r[k], err)
				}
				return v
			}
			if f0, f := n(before, "forks"), n(after, "forks"); f < f0+1 {
				t.Errorf("forks %d -> %d: want the BGSAVE counted", f0, f)
			}
			if r0, r := n(before, "restores"), n(after, "restores"); r < r0+1 {
				t.Errorf("restores %d -> %d: want a write-back after the child exited", r0, r)
			}
			// Off the application's threads: the preload's own thread
			// (clone is allowed under both profiles).
			if after["restore_last_thread"] != "writeback" {
				t.Errorf("restore_last_thread=%q writeback_thread=%q: want the write-back on the preload's thread", after["restore_last_thread"], after["writeback_thread"])
			}
			if after["heap_shared"] != "1" || after["children_sharing"] != "0" {
				t.Errorf("heap_shared=%q children_sharing=%q: want the heap shared again, no child", after["heap_shared"], after["children_sharing"])
			}
			rounds, pre, paused := n(after, "restore_last_precopy_rounds"), n(after, "restore_last_bytes_precopy"), n(after, "restore_last_bytes_pause")
			ps := preload.LastPauses(after)
			t.Logf("write-back: %d pre-copy round(s) wrote %.1f MiB in %d µs with the threads running; %d pause(s) wrote %.1f MiB, longest %d µs (%.0f ms per GiB written back), %d µs in all, the threads ran %d µs between them",
				rounds, float64(pre)/(1<<20), ps.Phases["precopy"], ps.Count, float64(paused)/(1<<20), ps.LongestUS, msPerGiB(ps.LongestUS, pre+paused), ps.TotalUS, ps.Phases["gaps"])
			switch {
			case precopyPossible && (rounds < 1 || pre == 0):
				t.Errorf("pre-copy rounds %d, bytes %d: want the pre-copy to run where userfaultfd is allowed", rounds, pre)
			case !wantUffd && (rounds != 0 || pre != 0 || paused == 0):
				t.Errorf("pre-copy rounds %d, bytes %d, pause bytes %d: want no pre-copy and the whole write-back in the pause where userfaultfd is refused", rounds, pre, paused)
			}

			dump := preload.ParseStatus(sh(forkDumpScript))
			t.Logf("dump loaded without the preload: dbsize %s, digest %s (at the fork: %s, %s)", dump["dbsize"], dump["digest"], load["dbsize"], load["digest"])
			if dump["dbsize"] == "" || dump["dbsize"] != load["dbsize"] || dump["digest"] != load["digest"] || len(load["digest"]) != 40 {
				t.Errorf("dump: dbsize %q digest %q, want %q %q as at the fork", dump["dbsize"], dump["digest"], load["dbsize"], load["digest"])
			}
			if keys, _ := strconv.Atoi(load["dbsize"]); keys < forkKeys/2 {
				t.Errorf("dbsize at the fork %q: want most of the %d keys populated", load["dbsize"], forkKeys)
			}
			return ctx
		}).
		Teardown(deleteNamespace).
		Feature()
}

// statusRecord reads redis-server's (PID 1 of container redis) status file as `kubectl pmem
// status` finds it: pmem-status.redis.1 (the container's name, then the pid).
func statusRecord(ctx context.Context, t *testing.T, cfg *rest.Config, pod *corev1.Pod) map[string]string {
	t.Helper()
	out, err := execIn(ctx, cfg, pod, "redis", "sh", "-c", "cat /mnt/pmem/pmem-status.redis.1 /mnt/pmem/heap/pmem-status.redis.1 2>/dev/null; exit 0")
	if err != nil {
		t.Fatalf("read the status file: %v", err)
	}
	r := preload.ParseStatus(out)
	if r["pid"] != "1" || r["mode"] != "fsdax" {
		t.Fatalf("status record of PID 1: %q", out)
	}
	return r
}

func formatRecord(r map[string]string) string {
	var b strings.Builder
	for _, k := range []string{"forks", "restores", "restore_retries", "children_sharing", "restore_max_ms", "restore_last_us",
		"restore_last_pauses", "restore_last_stops_given_up", "restore_last_lock_waits",
		"restore_moves", "restore_last_precopy_rounds", "restore_last_bytes_precopy", "restore_last_bytes_pause",
		"writeback_thread", "restore_last_thread", "heap_shared", "bytes_mapped_pmem", "bytes_resident_pmem", "bytes_fallback_dram"} {
		fmt.Fprintf(&b, "    %s=%s\n", k, r[k])
	}
	return b.String()
}

func msPerGiB(us, bytes int64) float64 {
	if bytes <= 0 {
		return 0
	}
	return float64(us) / 1000 / (float64(bytes) / (1 << 30))
}

// kernelAtLeast compares `uname -r` ("6.18.44-...") with major.minor.
func kernelAtLeast(release string, major, minor int) bool {
	var a, b int
	if _, err := fmt.Sscanf(release, "%d.%d", &a, &b); err != nil {
		return false
	}
	return a > major || (a == major && b >= minor)
}
