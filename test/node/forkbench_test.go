package node

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pmem-webhook/pmem-webhook/preload"
	"github.com/pmem-webhook/pmem-webhook/test/redischeck"
)

// Fork-cost benchmark (issue 12): a ~256 MiB heap, a SET load from Go
// clients, one BGSAVE during the load.
const (
	fbKeys     = 25000
	fbSize     = 10240
	fbClients  = 4
	fbWarmup   = time.Second
	fbLoadMax  = 90 * time.Second // hard bound of one load
	fbOpsMax   = 5_000_000        // hard bound of one load, in requests
	fbSaveMax  = 60 * time.Second // bound of one BGSAVE
	fbShareMax = 20 * time.Second // bound of the wait for the fsdax write-back
)

// forkResult is one BGSAVE on one fresh server.
type forkResult struct {
	forkUsec    float64 // INFO persistence latest_fork_usec
	p99, max    float64 // ms, SETs overlapping the BGSAVE window
	samples     int     // SETs overlapping the window
	maxAfter    float64 // fsdax: ms, SETs started after the save, until the write-back is done
	saveMs      float64 // BGSAVE sent -> rdb_bgsave_in_progress:0
	childCowMiB float64 // INFO rdb_last_cow_size
	copiedMiB   float64 // fsdax: parent's anonymous pages in heap-file mappings at the save's end
	pauseMs     float64 // fsdax: the last write-back's longest pause (threads stopped), status restore_last_us longest
	restores    int     // fsdax: status restores
	shared      string  // fsdax: status heap_shared at the end
	wb          writeBack
}

// writeBack is the fsdax write-back after the child, from the status file.
type writeBack struct {
	phases      map[string]float64 // restore_last_us, in ms: precopy, then summed over the pauses stop, write, remap, pause (total); longest, gaps, after
	pauses      int                // restore_last_pauses
	longestMs   float64            // the longest single pause
	totalMs     float64            // all pauses together
	lockWaits   string             // restore_last_lock_waits: threads' futex waits for the preload's lock meanwhile
	rounds      int                // restore_last_precopy_rounds
	precopyMiB  float64            // restore_last_bytes_precopy: written with the threads running
	inPauseMiB  float64            // restore_last_bytes_pause: written in the pause
	moves, left string             // restore_moves: private maps moved out by mremap / replaced in place
}

// parseWriteBack reads the write-back fields of a status file.
func parseWriteBack(st map[string]string) writeBack {
	wb := writeBack{phases: map[string]float64{}}
	ps := preload.LastPauses(st)
	for k, us := range ps.Phases {
		wb.phases[k] = float64(us) / 1000
	}
	wb.pauses, wb.longestMs, wb.totalMs = ps.Count, float64(ps.LongestUS)/1000, float64(ps.TotalUS)/1000
	wb.lockWaits = st["restore_last_lock_waits"]
	wb.rounds, _ = strconv.Atoi(st["restore_last_precopy_rounds"])
	b, _ := strconv.ParseFloat(st["restore_last_bytes_precopy"], 64)
	wb.precopyMiB = b / (1 << 20)
	b, _ = strconv.ParseFloat(st["restore_last_bytes_pause"], 64)
	wb.inPauseMiB = b / (1 << 20)
	wb.moves, wb.left, _ = strings.Cut(st["restore_moves"], ",")
	return wb
}

// latSample is one request: start and duration.
type latSample struct {
	start time.Time
	dur   time.Duration
}

// TestBenchFork is `make bench-fork`: the cost of a BGSAVE (fork stall,
// latency of a concurrent write load, fsdax's write-back pause) for
// Debian's redis-server on DRAM, fsdax (the webhook's env) and kmem, modes
// interleaved round by round, a fresh server per run. It reports; it
// asserts no timing.
func TestBenchFork(t *testing.T) {
	if os.Getenv("PMEM_BENCH_FORK") != "1" {
		t.Skip("benchmark: run with `make bench-fork` (PMEM_BENCH_FORK=1)")
	}
	need(t, "redis-server")
	rounds := benchRounds(3)
	fsdax, modes := benchModes(t)
	// FS_DAX-nopre: the write-back without pre-copy (PMEM_PRECOPY=0), what a
	// pod gets when its seccomp profile blocks userfaultfd (containerd's
	// and Docker's default profiles do).
	dirs := map[string]string{"FS_DAX": fsdax.PMEMDir, "FS_DAX-nopre": fsdax.PMEMDir}
	modes = append(modes, benchMode{"FS_DAX-nopre", append(append([]string{}, fsdax.Env...), "PMEM_PRECOPY=0")})
	// PMEM_PAUSE_BUDGET_US in the bench's environment reaches both fsdax
	// modes (the write-back's pause budget; to compare budgets).
	if v := os.Getenv("PMEM_PAUSE_BUDGET_US"); v != "" {
		for i := range modes {
			if dirs[modes[i].name] != "" {
				modes[i].env = append(append([]string{}, modes[i].env...), "PMEM_PAUSE_BUDGET_US="+v)
			}
		}
	}

	results := map[string][]forkResult{}
	loadBefore := loadAvg()
	start := time.Now()
	for r := 0; r < rounds; r++ {
		for i := range modes {
			m := modes[(i+r)%len(modes)]
			res := runForkBench(t, m, dirs[m.name])
			t.Logf("round %d %-8s fork %.0f us, save %.0f ms, p99 %.1f ms, max %.1f ms (%d SETs in the window), max after %.1f ms, child cow %.1f MiB, parent copies %.1f MiB, longest write-back pause %.1f ms of %d, %.1f ms in all (restores %d, heap_shared %q, phases ms %v, pre-copy %d rounds %.1f MiB, in the pause %.1f MiB, mremap moves %s, replaced in place %s)",
				r+1, m.name, res.forkUsec, res.saveMs, res.p99, res.max, res.samples, res.maxAfter, res.childCowMiB, res.copiedMiB, res.pauseMs, res.wb.pauses, res.wb.totalMs, res.restores, res.shared,
				res.wb.phases, res.wb.rounds, res.wb.precopyMiB, res.wb.inPauseMiB, res.wb.moves, res.wb.left)
			results[m.name] = append(results[m.name], res)
		}
		t.Logf("round %d/%d done after %s", r+1, rounds, time.Since(start).Round(time.Second))
	}

	pick := func(rs []forkResult, f func(forkResult) float64) []float64 {
		out := make([]float64, len(rs))
		for i, r := range rs {
			out[i] = f(r)
		}
		return out
	}
	cell := func(v []float64, format string) string {
		return fmt.Sprintf(format+" ["+format+"–"+format+"]", median(v), minOf(v), maxOf(v))
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "BGSAVE under a SET load: %d keys x %d B (~%d MiB), %d Go clients (1 SET in flight each, random keys), Debian redis-server;\n",
		fbKeys, fbSize, fbKeys*fbSize>>20, fbClients)
	fmt.Fprintf(&b, "median of %d interleaved rounds [min–max], a fresh server per run; latency of the SETs overlapping the BGSAVE window\n", rounds)
	fmt.Fprintf(&b, "%-13s %-24s %-20s %-20s %-20s %-17s %-17s %-17s %-20s\n",
		"mode", "latest_fork_usec", "p99 ms", "max ms", "longest pause ms", "child cow MiB", "parent copy MiB", "save ms", "max ms after save")
	for _, m := range modes {
		rs := results[m.name]
		pause, copied, after := "-", "-", "-"
		if dirs[m.name] != "" {
			after = cell(pick(rs, func(r forkResult) float64 { return r.maxAfter }), "%.1f")
			pause = cell(pick(rs, func(r forkResult) float64 { return r.pauseMs }), "%.1f")
			copied = cell(pick(rs, func(r forkResult) float64 { return r.copiedMiB }), "%.0f")
		}
		fmt.Fprintf(&b, "%-13s %-24s %-20s %-20s %-20s %-17s %-17s %-17s %-20s\n", m.name,
			cell(pick(rs, func(r forkResult) float64 { return r.forkUsec }), "%.0f"),
			cell(pick(rs, func(r forkResult) float64 { return r.p99 }), "%.1f"),
			cell(pick(rs, func(r forkResult) float64 { return r.max }), "%.1f"),
			pause,
			cell(pick(rs, func(r forkResult) float64 { return r.childCowMiB }), "%.0f"),
			copied,
			cell(pick(rs, func(r forkResult) float64 { return r.saveMs }), "%.0f"),
			after)
	}
	med := func(name string, f func(forkResult) float64) float64 { return median(pick(results[name], f)) }
	forkOf := func(r forkResult) float64 { return r.forkUsec }
	dram := med("DRAM", forkOf)
	fmt.Fprintln(&b, "ratios to DRAM (medians):")
	for _, m := range modes[1:] {
		fmt.Fprintf(&b, "  %-8s fork stall %.2fx, p99 %.2fx, max %.2fx\n", m.name, med(m.name, forkOf)/dram,
			med(m.name, func(r forkResult) float64 { return r.p99 })/med("DRAM", func(r forkResult) float64 { return r.p99 }),
			med(m.name, func(r forkResult) float64 { return r.max })/med("DRAM", func(r forkResult) float64 { return r.max }))
	}
	fsFork := med("FS_DAX", forkOf)
	fmt.Fprintf(&b, "target fork stall <= 3x DRAM: FS_DAX %.2fx -> %s\n", fsFork/dram, metOrMissed(dram > 0 && fsFork <= 3*dram))
	fmt.Fprintln(&b, "write-back per run: pre-copy with the threads running, then pauses (threads stopped: stop them, write what changed since, remap shared) with the threads running between them;")
	fmt.Fprintln(&b, "longest = the longest single pause, ms/GiB = longest per GiB copied, its stop = stopping the threads in it; stop/write/remap summed over the pauses; gaps = the threads ran between pauses")
	fmt.Fprintf(&b, "%-13s %-4s %-11s %-8s %-7s %-9s %-7s %-8s %-8s %-8s %-8s %-8s %-11s %-7s %-12s %-10s %-12s %-10s %s\n", "mode", "run", "copied MiB", "longest", "pauses", "total ms", "ms/GiB",
		"its stop", "stop ms", "write ms", "remap ms", "gaps ms", "pre-copy ms", "rounds", "pre-copy MiB", "pause MiB", "moved/kept", "lock waits", "target <= 100 ms/GiB")
	for _, m := range modes {
		for i, r := range results[m.name] {
			if dirs[m.name] == "" {
				break
			}
			perGiB := 0.0
			if r.copiedMiB > 0 {
				perGiB = r.pauseMs / (r.copiedMiB / 1024)
			}
			fmt.Fprintf(&b, "%-13s %-4d %-11.1f %-8.1f %-7d %-9.1f %-7.0f %-8.1f %-8.1f %-8.1f %-8.1f %-8.1f %-11.0f %-7d %-12.1f %-10.1f %-12s %-10s %s\n", m.name, i+1, r.copiedMiB, r.pauseMs, r.wb.pauses, r.wb.totalMs, perGiB,
				r.wb.phases["longest_stop"], r.wb.phases["stop"], r.wb.phases["write"], r.wb.phases["remap"], r.wb.phases["gaps"], r.wb.phases["precopy"], r.wb.rounds, r.wb.precopyMiB, r.wb.inPauseMiB,
				r.wb.moves+"/"+r.wb.left, r.wb.lockWaits, target(r.restores, r.copiedMiB, perGiB))
		}
	}
	fmt.Fprintf(&b, "total %s; load average (1, 5, 15 min) before %s, after %s (2 shared cores: timings are noisy)\n",
		time.Since(start).Round(time.Second), loadBefore, loadAvg())
	fmt.Print(b.String())
	if out := os.Getenv("PMEM_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, b.Bytes(), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// loadAvg is the first three fields of /proc/loadavg (what uptime shows).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

// target judges one run against the pause target (<= 100 ms per GiB
// copied). With no copied pages in the sample the write-back had already
// run when smaps was read (it starts as soon as the child is gone): there
// is no denominator, so no verdict.
func target(restores int, copiedMiB, perGiB float64) string {
	if restores > 0 && copiedMiB == 0 {
		return "n/a (sampled after the write-back)"
	}
	return metOrMissed(restores > 0 && perGiB <= 100)
}

func metOrMissed(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// runForkBench starts a fresh server for mode m, fills it, runs the load,
// issues one BGSAVE in the middle of it and measures. pmemDir is the fsdax
// volume's host dir ("" otherwise).
func runForkBench(t *testing.T, m benchMode, pmemDir string) forkResult {
	t.Helper()
	port, _, args := redisArgs(t, "--save", "", "--appendonly", "no")
	s := startRedis(t, m.env, append([]string{"redis-server"}, args...)...)
	c := s.waitReady(t, port)
	defer func() { c.Close(); s.Stop() }()
	redischeck.Load(t, c, fbKeys, fbSize)
	pid := s.Cmd.Process.Pid

	l := startLatencyLoad(t, port)
	time.Sleep(fbWarmup)
	var res forkResult
	t0 := time.Now()
	r, err := c.Do("BGSAVE")
	if err != nil {
		t.Fatalf("%s BGSAVE: %v\n%s", m.name, err, tail(s.Log.String()))
	}
	if e, ok := r.(redischeck.Error); ok {
		t.Fatalf("%s BGSAVE: %v\n%s", m.name, e, tail(s.Log.String()))
	}
	if err := redischeck.WaitSaved(c, time.Now().Add(fbSaveMax)); err != nil {
		t.Fatalf("%s BGSAVE: %v\n%s", m.name, err, tail(s.Log.String()))
	}
	t1 := time.Now()
	res.saveMs = float64(t1.Sub(t0).Microseconds()) / 1000
	if pmemDir != "" {
		res.copiedMiB = float64(heapFileAnon(t, pid, pmemDir)) / 1024
		// The write-back runs at the next interposed call on a thread that
		// can pause the others (with Debian's Redis: jemalloc's purge,
		// seconds): keep the load running until it has happened, bounded.
		deadline := time.Now().Add(fbShareMax)
		for time.Now().Before(deadline) {
			if st := statusFile(t, pmemDir, m.env, pid); st["heap_shared"] == "1" && st["restores"] != "0" {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		st := statusFile(t, pmemDir, m.env, pid)
		res.restores, _ = strconv.Atoi(st["restores"])
		res.shared = st["heap_shared"]
		res.wb = parseWriteBack(st)
		res.pauseMs = res.wb.longestMs
	}
	samples := l.Stop(t)
	if !s.Alive() {
		t.Fatalf("%s server died: %v\n%s", m.name, s.err, tail(s.Log.String()))
	}
	info, err := c.Info("persistence")
	if err != nil {
		t.Fatal(err)
	}
	stats, err := c.Info("stats")
	if err != nil {
		t.Fatal(err)
	}
	res.forkUsec, _ = strconv.ParseFloat(stats["latest_fork_usec"], 64)
	cow, _ := strconv.ParseFloat(info["rdb_last_cow_size"], 64)
	res.childCowMiB = cow / (1 << 20)

	var window []float64
	for _, x := range samples {
		ms := float64(x.dur.Microseconds()) / 1000
		if x.start.Before(t1) && x.start.Add(x.dur).After(t0) {
			window = append(window, ms)
		} else if !x.start.Before(t1) {
			res.maxAfter = max(res.maxAfter, ms)
		}
	}
	sort.Float64s(window)
	res.samples = len(window)
	if len(window) > 0 {
		res.p99 = window[min(len(window)-1, len(window)*99/100)]
		res.max = window[len(window)-1]
	}
	return res
}

// latencyLoad is fbClients connections, each sending one SET of fbSize
// bytes to a random key at a time and timing it.
type latencyLoad struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	all  []latSample
	errs []error
}

func startLatencyLoad(t *testing.T, port int) *latencyLoad {
	t.Helper()
	l := &latencyLoad{stop: make(chan struct{})}
	val := strings.Repeat("v", fbSize)
	for i := 0; i < fbClients; i++ {
		c, err := redischeck.Dial(port)
		if err != nil {
			t.Fatal(err)
		}
		l.wg.Add(1)
		go func(seed int64) {
			defer l.wg.Done()
			defer c.Close()
			rng := rand.New(rand.NewSource(seed))
			var mine []latSample
			deadline := time.Now().Add(fbLoadMax)
		loop:
			for op := 0; op < fbOpsMax/fbClients && time.Now().Before(deadline); op++ {
				select {
				case <-l.stop:
					break loop
				default:
				}
				st := time.Now()
				r, err := c.Do("SET", redischeck.KeyName(rng.Intn(fbKeys)), val)
				d := time.Since(st)
				if err == nil && r != "OK" {
					err = fmt.Errorf("SET: reply %v", r)
				}
				if err != nil {
					l.mu.Lock()
					l.errs = append(l.errs, err)
					l.mu.Unlock()
					break loop
				}
				mine = append(mine, latSample{st, d})
			}
			l.mu.Lock()
			l.all = append(l.all, mine...)
			l.mu.Unlock()
		}(int64(i + 1))
	}
	return l
}

// Stop ends the load (bounded) and returns every sample.
func (l *latencyLoad) Stop(t *testing.T) []latSample {
	t.Helper()
	close(l.stop)
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("SET load did not stop in 30s")
	}
	if len(l.errs) > 0 {
		t.Fatalf("SET load: %v", l.errs[0])
	}
	return l.all
}

// heapFileAnon returns, in kB, the Anonymous pages (copies made since a
// fork) of the mappings of files under dir in /proc/PID/smaps.
func heapFileAnon(t *testing.T, pid int, dir string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var anon int64
	in := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			in = len(fields) >= 6 && strings.HasPrefix(strings.Join(fields[5:], " "), dir+"/")
			continue
		}
		if in && len(fields) >= 2 && fields[0] == "Anonymous:" {
			n, _ := strconv.ParseInt(fields[1], 10, 64)
			anon += n
		}
	}
	return anon
}
