package node

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// benchCase is one payload size: -n and -r keep every run near two seconds
// and the keyspace (r x d) around 100-200 MB.
type benchCase struct {
	size, requests, keyspace int
}

var benchCases = []benchCase{
	{size: 10240, requests: 100000, keyspace: 10000},
	{size: 102400, requests: 20000, keyspace: 2000},
}

type benchMode struct {
	name string
	env  []string
}

// TestBenchRedis is `make bench-redis`: redis-benchmark SET and GET with the
// same -d on every side, DRAM vs fsdax vs kmem, each server started with the
// env the webhook sets (no env for DRAM), modes interleaved round by round,
// a fresh server per run. It prints a table of medians and ratios to DRAM.
// DRAM-backed emulation: the fsdax "PMEM" dir is tmpfs (no page cache
// writeback, like DAX) and kmem is NUMA node 0 (MEMKIND_DAX_KMEM_NODES=0), so
// the table measures the interposition and tiering overhead, not Optane.
func TestBenchRedis(t *testing.T) {
	if os.Getenv("PMEM_BENCH_REDIS") != "1" {
		t.Skip("benchmark: run with `make bench-redis` (PMEM_BENCH_REDIS=1)")
	}
	need(t, "redis-server", "redis-benchmark")
	rounds := benchRounds(5)
	_, modes := benchModes(t)
	servers := benchServers(t)

	// results[size][op][server][mode] = rps per round
	results := map[int]map[string]map[string]map[string][]float64{}
	start := time.Now()
	for r := 0; r < rounds; r++ {
		for _, bc := range benchCases {
			for _, srv := range servers {
				for i := range modes {
					m := modes[(i+r)%len(modes)] // rotate the order every round
					rps := runBenchmark(t, srv.path, m, bc)
					for op, v := range rps {
						if results[bc.size] == nil {
							results[bc.size] = map[string]map[string]map[string][]float64{}
						}
						if results[bc.size][op] == nil {
							results[bc.size][op] = map[string]map[string][]float64{}
						}
						if results[bc.size][op][srv.name] == nil {
							results[bc.size][op][srv.name] = map[string][]float64{}
						}
						results[bc.size][op][srv.name][m.name] = append(results[bc.size][op][srv.name][m.name], v)
					}
				}
			}
		}
		t.Logf("round %d/%d done after %s", r+1, rounds, time.Since(start).Round(time.Second))
	}

	var b bytes.Buffer
	fmt.Fprintf(&b, "redis-benchmark -c 50 -t set,get, requests/s: median of %d interleaved rounds [min-max] (ratio to the same server on DRAM)\n", rounds)
	for _, srv := range servers {
		fmt.Fprintf(&b, "server %s: %s\n", srv.name, srv.path)
	}
	fmt.Fprintf(&b, "%-7s %-4s %-9s %-26s %-34s %-34s\n", "-d", "op", "server", "DRAM", "FS_DAX", "KMEM_DAX")
	for _, bc := range benchCases {
		for _, op := range []string{"SET", "GET"} {
			for _, srv := range servers {
				byMode := results[bc.size][op][srv.name]
				base := median(byMode["DRAM"])
				fmt.Fprintf(&b, "%-7d %-4s %-9s", bc.size, op, srv.name)
				for _, m := range modes {
					v := byMode[m.name]
					cell := fmt.Sprintf("%.0f [%.0f-%.0f]", median(v), minOf(v), maxOf(v))
					if m.name != "DRAM" {
						cell += fmt.Sprintf(" (%.2f)", median(v)/base)
					}
					fmt.Fprintf(&b, " %-*s", map[bool]int{true: 26, false: 34}[m.name == "DRAM"], cell)
				}
				fmt.Fprintln(&b)
			}
		}
	}
	fmt.Fprintf(&b, "total %s\n", time.Since(start).Round(time.Second))
	fmt.Print(b.String())
	if out := os.Getenv("PMEM_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, b.Bytes(), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// benchServer is one Redis build under test.
type benchServer struct{ name, path string }

// benchServers is Debian's redis-server and, when `make variants` has built
// it, the official-image build (bundled static jemalloc): the two allocator
// shapes the preload must serve. PMEM_BENCH_OFFICIAL overrides its path.
func benchServers(t *testing.T) []benchServer {
	servers := []benchServer{{"debian", "redis-server"}}
	official := os.Getenv("PMEM_BENCH_OFFICIAL")
	if official == "" {
		official = "../../bin/variants/redis-official/redis-server"
	}
	if abs, err := filepath.Abs(official); err == nil {
		if _, err := os.Stat(abs); err == nil {
			return append(servers, benchServer{"official", abs})
		}
	}
	t.Logf("no official-image build at %s (make variants): benchmarking Debian's redis-server only", official)
	return servers
}

// runBenchmark starts a fresh server for mode m and runs SET then GET.
func runBenchmark(t *testing.T, server string, m benchMode, bc benchCase) map[string]float64 {
	t.Helper()
	port, _, args := redisArgs(t, "--save", "", "--appendonly", "no")
	s := startRedis(t, m.env, append([]string{server}, args...)...)
	c := s.waitReady(t, port)
	c.Close()
	defer s.Stop()
	cmd := exec.Command("redis-benchmark", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-c", "50",
		"-t", "set,get", "-d", strconv.Itoa(bc.size), "-n", strconv.Itoa(bc.requests), "-r", strconv.Itoa(bc.keyspace), "--csv")
	cmd.Env = baseEnv() // the client runs plain
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("redis-benchmark %s -d %d: %v\n%s", m.name, bc.size, err, out)
	}
	if !s.Alive() {
		t.Fatalf("%s server died during the benchmark: %v\n%s", m.name, s.err, tail(s.Log.String()))
	}
	rps := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ",")
		if len(f) < 2 {
			continue
		}
		op := strings.Trim(f[0], `"`)
		v, err := strconv.ParseFloat(strings.Trim(f[1], `"`), 64)
		if err == nil && (op == "SET" || op == "GET") {
			rps[op] = v
		}
	}
	if len(rps) != 2 {
		t.Fatalf("redis-benchmark output without SET and GET rows:\n%s", out)
	}
	return rps
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minOf(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[0]
}

func maxOf(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)-1]
}

// benchRounds is PMEM_BENCH_ROUNDS (make's BENCH_ROUNDS), else def.
func benchRounds(def int) int {
	if v, err := strconv.Atoi(os.Getenv("PMEM_BENCH_ROUNDS")); err == nil && v > 0 {
		return v
	}
	return def
}

// benchModes admits the same Redis pod in fsdax and kmem and returns the
// three sides every benchmark compares: DRAM (no env), fsdax, kmem. fsdax's
// directory is on /dev/shm where it exists (tmpfs: no page-cache writeback,
// like DAX).
func benchModes(t *testing.T) (fsdax *pod, modes []benchMode) {
	t.Helper()
	pmemBase := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		pmemBase = "/dev/shm"
	}
	fsdax = admit(t, patch.ModeFSDAX, pmemBase)
	kmem := admit(t, patch.ModeKMEM, "")
	return fsdax, []benchMode{{"DRAM", nil}, {"FS_DAX", fsdax.Env}, {"KMEM_DAX", kmem.Env}}
}
