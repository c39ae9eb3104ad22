package matrix

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pmem-webhook/pmem-webhook/preload"
	"github.com/pmem-webhook/pmem-webhook/test/redischeck"
	"github.com/pmem-webhook/pmem-webhook/test/smaps"
)

// The fork row (the fsdax fork safety of docs/node.md, "Fork (fsdax)", for
// every image class): the server with Redis's default save points, a 16 MB
// data set, a pipelined write load, forkSaves BGSAVEs during it. Bounded:
// forkSaveTime for the saves, then at most forkWriteBackRounds rewrites
// of every value (forkWriteBackTime) for the write-back.
const (
	forkKeys            = 4000
	forkSize            = 4096
	forkSaves           = 5
	forkSaveTime        = 90 * time.Second
	forkWriteBackRounds = 40
	forkWriteBackTime   = 60 * time.Second
	forkWriterOps       = 5_000_000
)

// forkResult is one row of the fork table.
type forkResult struct {
	row                       string
	dumps                     int
	writesOK, writesErr       int
	forks, restores, maxMs    string
	heapShared                string
	shareBefore, shareAfter   float64
	pmemBefore, pmemAfter     int64
	seconds                   float64
	measuredShare, statusSeen bool
}

var forkResults []forkResult

func recordFork(r forkResult) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	forkResults = append(forkResults, r)
}

// forkTable is the fork rows' part of the printed table. resultsMu held.
func forkTable(b *strings.Builder) {
	if len(forkResults) == 0 {
		return
	}
	fmt.Fprintf(b, "\n%-16s %6s %10s %5s %8s %14s %6s  %-22s %s\n", "fork row", "dumps", "writes", "errs",
		"restores", "max pause ms", "shared", "PMEM share before/after", "seconds")
	for _, r := range forkResults {
		share := "-"
		if r.measuredShare {
			share = fmt.Sprintf("%.1f%% / %.1f%%", 100*r.shareBefore, 100*r.shareAfter)
		}
		restores, maxMs, shared := r.restores, r.maxMs, r.heapShared
		if !r.statusSeen {
			restores, maxMs, shared = "-", "-", "-"
		}
		fmt.Fprintf(b, "%-16s %6d %10d %5d %8s %14s %6s  %-22s %.1f\n", r.row, r.dumps, r.writesOK, r.writesErr,
			restores, maxMs, shared, share, r.seconds)
	}
}

// forkRow runs the row's server under the injected env with Redis's default
// save points, loads forkKeys self-describing values, and takes forkSaves
// BGSAVEs under a write load. Each BGSAVE comes right after an MGET of every
// key with nothing written between them (forkAt), so the client knows the
// exact data at the fork; the dump is then loaded by the same binary without
// the env (plain, on DRAM) and must hold exactly that (DBSIZE, every value
// well-formed and at its fork-time version). The parent must survive with every last value. Heap rows:
// the status file must then show the write-back (restores >= 1,
// heap_shared=1; the writes go on, bounded, until it happens) and the PMEM
// share of the heap must not drop by more than 5 points. The static row
// (heap on DRAM by design) must stay on DRAM with no status file.
func forkRow(t *testing.T, r row, s *sandbox, plain *sandbox, server string) {
	began := time.Now()
	res := forkResult{row: r.name}
	defer func() {
		res.seconds = time.Since(began).Seconds()
		recordFork(res)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// No --save: Redis's default save points, as in the images.
	p, err := start(ctx, t, r, s, server, s.workIn, "--appendonly", "no")
	defer p.stop()
	if err != nil {
		t.Fatalf("%s: %v (exit: %v); output:\n%s", r.name, err, p.waitErr, p.log.String())
	}
	c, err := redischeck.Dial(p.port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pid := p.cmd.Process.Pid
	statusDir := s.pmemDir
	if r.gosu {
		statusDir = filepath.Join(s.pmemDir, "heap") // the root is not writable by uid 999
	}
	split := func() (pmemKB int64, share float64, ok bool) {
		u, err := smaps.Read(pid, s.pmemDir+"/", s.pmemIn+"/")
		if err != nil {
			t.Fatal(err)
		}
		pmemKB = u.FileKB()
		if pmemKB+u.AnonKB == 0 {
			return pmemKB, 0, false
		}
		return pmemKB, float64(pmemKB) / float64(pmemKB+u.AnonKB), true
	}

	redischeck.Load(t, c, forkKeys, forkSize)
	res.pmemBefore, res.shareBefore, res.measuredShare = split()

	// forks counts the server's forks: the status file's (written at every
	// fork), else INFO's total_forks (Redis >= 6.2), else -1 (unknown).
	forks := func() int {
		if r.heap {
			if st, err := preload.ReadStatus(statusDir, preload.StatusContainer(s.env), pid); err == nil {
				if n, err := strconv.Atoi(st["forks"]); err == nil {
					return n
				}
			}
		}
		if info, err := c.Info("stats"); err == nil {
			if n, err := strconv.Atoi(info["total_forks"]); err == nil {
				return n
			}
		}
		return -1
	}

	snaps := t.TempDir()
	type dump struct {
		path string
		vers []int // every key's version at the fork
	}
	var dumps []dump
	w := redischeck.StartWriter(t, p.port, forkKeys, forkSize, forkWriterOps, forkSaveTime+30*time.Second)
	writerStopped := false
	defer func() {
		if !writerStopped {
			w.Stop(t)
		}
	}()
	deadline := time.Now().Add(forkSaveTime)
	// CLIENT PAUSE ... WRITE (Redis 6.2+, Valkey) or a transaction (6.0).
	r0, err := c.Do("CLIENT", "PAUSE", "1", "WRITE")
	if err != nil {
		t.Fatal(err)
	}
	_, refused := r0.(redischeck.Error)
	pauseWrite := !refused
	for attempt := 0; len(dumps) < forkSaves && attempt < 4*forkSaves && time.Now().Before(deadline); attempt++ {
		// An automatic save (the default save points) may be running.
		if err := redischeck.WaitSaved(c, deadline); err != nil {
			t.Fatalf("before BGSAVE %d: %v\n%s", len(dumps), err, tail(p.log.String()))
		}
		before := forks()
		vers, started, err := forkAt(c, pauseWrite)
		if err != nil {
			t.Fatalf("BGSAVE %d: %.300v (server alive %v)\n%s\n%s", len(dumps), err, p.alive(), tail(p.log.String()), threads(pid, statusDir, preload.StatusContainer(s.env)))
		}
		if !started { // an automatic save began meanwhile
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err := redischeck.WaitSaved(c, deadline); err != nil {
			t.Fatalf("BGSAVE %d: %v\n%s", len(dumps), err, tail(p.log.String()))
		}
		dst := filepath.Join(snaps, fmt.Sprintf("dump-%d.rdb", len(dumps)))
		if err := redischeck.CopyFile(filepath.Join(s.workDir, "dump.rdb"), dst); err != nil {
			t.Fatal(err)
		}
		if after := forks(); before >= 0 && after != before+1 {
			// An automatic save may have replaced dump.rdb: not this fork's.
			t.Logf("BGSAVE %d: %d forks instead of 1 before the dump was copied; taking another", len(dumps), after-before)
			continue
		}
		dumps = append(dumps, dump{dst, vers})
	}
	w.Stop(t)
	writerStopped = true
	res.dumps, res.writesOK, res.writesErr = len(dumps), w.OK, w.Errs
	if !p.alive() {
		t.Fatalf("%s died during the saves: %v\n%s", r.server, p.waitErr, tail(p.log.String()))
	}
	if len(dumps) < forkSaves {
		t.Fatalf("%d dumps in %v, want %d", len(dumps), forkSaveTime, forkSaves)
	}
	if w.Errs > 0 {
		t.Errorf("writes refused during the saves: %d ok, %d errors %v", w.OK, w.Errs, w.ErrKinds)
	}
	vers, err := redischeck.ReadAll(c, forkKeys)
	if err != nil {
		t.Fatalf("the parent's reads after the saves: %v", err)
	}
	if sent := w.Snapshot(); !slices.Equal(vers, sent) {
		t.Fatalf("the parent does not hold every last version written")
	}

	// Every dump, loaded by the same binary without the env.
	changed := 0
	for i, d := range dumps {
		got := loadDump(t, r, plain, server, d.path, i)
		if !slices.Equal(got, d.vers) {
			for k := range got {
				if got[k] != d.vers[k] {
					t.Fatalf("%s: key %d has version %d, %d at the fork", filepath.Base(d.path), k, got[k], d.vers[k])
				}
			}
		}
		if i > 0 && !slices.Equal(d.vers, dumps[i-1].vers) {
			changed++
		}
	}
	if changed == 0 {
		t.Error("no value changed between dumps: the write load did not overlap the saves")
	}

	if !r.heap {
		// Statically linked: the preload never loads. On DRAM, no status.
		pmemKB, _, _ := split()
		res.pmemAfter = pmemKB
		if res.pmemBefore != 0 || pmemKB != 0 {
			t.Errorf("%s: %d kB before and %d kB after the saves mapped from the pmem dir, want 0 (a static binary stays on DRAM)", r.name, res.pmemBefore, pmemKB)
		}
		if _, err := os.Stat(preload.StatusPath(statusDir, preload.StatusContainer(s.env), pid)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: status file %s: %v, want none", r.name, preload.StatusPath(statusDir, preload.StatusContainer(s.env), pid), err)
		}
		t.Logf("%s: %d BGSAVEs under %d writes, every dump exact in a plain server; heap on DRAM (0 kB from the pmem dir)", r.name, len(dumps), w.OK)
		shutdownFork(t, r, c, p)
		return
	}

	// The write-back runs on the preload's own thread once the child is
	// gone (usually before the next save; static: none). The load goes on
	// until the status shows it. Bounded in rounds and time.
	var st map[string]string
	wbDeadline := time.Now().Add(forkWriteBackTime)
	for i := 0; i < forkWriteBackRounds && time.Now().Before(wbDeadline); i++ {
		redischeck.Load(t, c, forkKeys, forkSize)
		if st, err = preload.ReadStatus(statusDir, preload.StatusContainer(s.env), pid); err != nil {
			t.Fatal(err)
		}
		if n, _ := strconv.Atoi(st["restores"]); n >= 1 && st["heap_shared"] == "1" {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	res.statusSeen = true
	res.forks, res.restores, res.maxMs, res.heapShared = st["forks"], st["restores"], st["restore_max_ms"], st["heap_shared"]
	// Read every value first: after the write-back the heap is a fresh
	// shared mapping of the file, and a page is resident (counted) only
	// once touched again.
	if vers, err := redischeck.ReadAll(c, forkKeys); err != nil {
		t.Fatalf("reads after the write-back: %v", err)
	} else if i := slices.IndexFunc(vers, func(v int) bool { return v != 0 }); i >= 0 {
		t.Fatalf("key %d: version %d after the rewrite with version 0", i, vers[i])
	}
	res.pmemAfter, res.shareAfter, _ = split()
	t.Logf("%s: %d BGSAVEs under %d writes (%d errors), every dump exact in a plain server; status forks=%s restores=%s restore_max_ms=%s restore_last_us=%s heap_shared=%q; PMEM share of the heap %.1f%% before the saves, %.1f%% after (%d kB)",
		r.name, len(dumps), w.OK, w.Errs, st["forks"], st["restores"], st["restore_max_ms"], st["restore_last_us"], st["heap_shared"],
		100*res.shareBefore, 100*res.shareAfter, res.pmemAfter)
	if n, _ := strconv.Atoi(st["forks"]); n < len(dumps) {
		t.Errorf("status forks=%s, want >= %d", st["forks"], len(dumps))
	}
	if n, _ := strconv.Atoi(st["restores"]); n < 1 {
		t.Errorf("status restores=%s after %d rewrites of every value: no write-back", st["restores"], forkWriteBackRounds)
	}
	if st["heap_shared"] != "1" {
		t.Errorf("status heap_shared=%q after the children exited, want 1", st["heap_shared"])
	}
	if res.shareAfter < res.shareBefore-0.05 {
		t.Errorf("after the saves %.1f%% of the resident heap is on PMEM, %.1f%% before: more than 5 points lost",
			100*res.shareAfter, 100*res.shareBefore)
	}
	shutdownFork(t, r, c, p)
}

// forkAt makes the server fork for a BGSAVE at a point where the client
// knows every key's version: with writes held (CLIENT PAUSE WRITE, Redis
// 6.2+; reads and BGSAVE still run) an MGET of every key, BGSAVE, CLIENT
// UNPAUSE, pipelined, so the write load stops only for that moment. A
// server without CLIENT PAUSE WRITE (Redis 6.0) gets MULTI, MGET, BGSAVE,
// EXEC: nothing runs between the commands of a transaction, and 6.0 forks
// inside it (6.2+ only schedules a BGSAVE issued in EXEC, hence the pause).
// started is false when a save was already running (an automatic one).
func forkAt(c *redischeck.Client, pause bool) (vers []int, started bool, err error) {
	mget := redischeck.MGetArgs(0, forkKeys)
	var cmds [][]string
	if pause {
		cmds = [][]string{{"CLIENT", "PAUSE", "5000", "WRITE"}, mget, {"BGSAVE"}, {"CLIENT", "UNPAUSE"}}
	} else {
		cmds = [][]string{{"MULTI"}, mget, {"BGSAVE"}, {"EXEC"}}
	}
	for _, cmd := range cmds {
		c.Send(cmd...)
	}
	if err := c.Flush(); err != nil {
		return nil, false, err
	}
	replies := make([]any, len(cmds))
	for i := range cmds {
		if replies[i], err = c.Receive(); err != nil {
			return nil, false, err
		}
	}
	var mgetReply, saveReply any
	if pause {
		if e, ok := replies[0].(redischeck.Error); ok {
			return nil, false, fmt.Errorf("CLIENT PAUSE WRITE: %v", e)
		}
		mgetReply, saveReply = replies[1], replies[2]
	} else {
		exec, ok := replies[3].([]any)
		if !ok || len(exec) != 2 {
			return nil, false, fmt.Errorf("EXEC reply %.200v", replies)
		}
		mgetReply, saveReply = exec[0], exec[1]
	}
	if e, ok := saveReply.(redischeck.Error); ok {
		if strings.Contains(string(e), "in progress") {
			return nil, false, nil
		}
		return nil, false, e
	}
	if r, _ := saveReply.(string); !strings.Contains(r, "started") {
		return nil, false, fmt.Errorf("BGSAVE replied %q, not a fork now", saveReply)
	}
	vers, err = redischeck.Versions(0, mgetReply)
	if err != nil || len(vers) != forkKeys {
		return nil, false, fmt.Errorf("the parent's values at the fork: %v (%d values)", err, len(vers))
	}
	return vers, true, nil
}

// loadDump starts the row's server through its entrypoint without the
// webhook's env (plain sandbox: DRAM) on a copy of the dump, checks DBSIZE
// and every value, and returns every key's version.
func loadDump(t *testing.T, r row, plain *sandbox, server, dump string, i int) []int {
	t.Helper()
	dir := plain.mkdir(t, fmt.Sprintf("load-%d", i), 0o777)
	if err := redischeck.CopyFile(dump, filepath.Join(dir, "dump.rdb")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := start(ctx, t, r, plain, server, plain.inView(t, dir), "--save", "", "--appendonly", "no")
	defer p.stop()
	if err != nil {
		t.Fatalf("%s: plain server on the dump: %v (exit %v)\n%s", filepath.Base(dump), err, p.waitErr, p.log.String())
	}
	c, err := redischeck.Dial(p.port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n, err := c.Do("DBSIZE"); err != nil || n != int64(forkKeys) {
		t.Fatalf("%s: DBSIZE %v %v, want %d", filepath.Base(dump), n, err, forkKeys)
	}
	vers, err := redischeck.ReadAll(c, forkKeys)
	if err != nil {
		t.Fatalf("%s: %v", filepath.Base(dump), err)
	}
	_, _ = c.Do("SHUTDOWN", "NOSAVE")
	return vers
}

// shutdownFork: SHUTDOWN NOSAVE must make the server exit 0.
func shutdownFork(t *testing.T, r row, c *redischeck.Client, p *running) {
	t.Helper()
	_, _ = c.Do("SHUTDOWN", "NOSAVE") // the reply is the connection closing
	select {
	case <-p.exited:
		if p.waitErr != nil {
			t.Errorf("%s after SHUTDOWN NOSAVE: %v\n%s", r.server, p.waitErr, tail(p.log.String()))
		}
	case <-time.After(15 * time.Second):
		t.Errorf("%s still running 15s after SHUTDOWN NOSAVE", r.server)
	}
}

// threads describes a server that stopped answering: per thread its name,
// state, kernel wait channel, system call and signal masks, and the
// preload's status file.
func threads(pid int, statusDir, container string) string {
	var b strings.Builder
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	for _, task := range tasks {
		read := func(name string) string {
			d, _ := os.ReadFile(filepath.Join(task, name))
			return strings.TrimSpace(string(d))
		}
		var state, blk string
		for _, l := range strings.Split(read("status"), "\n") {
			if v, ok := strings.CutPrefix(l, "State:"); ok {
				state = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(l, "SigBlk:"); ok {
				blk = strings.TrimSpace(v)
			}
		}
		fmt.Fprintf(&b, "task %s %q state %s wchan %s syscall %s sigblk %s\n%s\n", filepath.Base(task), read("comm"), state,
			read("wchan"), read("syscall"), blk, read("stack"))
	}
	if st, err := os.ReadFile(preload.StatusPath(statusDir, container, pid)); err == nil {
		b.WriteString(strings.Join(strings.Fields(string(st)), " "))
	}
	return b.String()
}

func tail(s string) string {
	if len(s) > 3000 {
		return "..." + s[len(s)-3000:]
	}
	return s
}
