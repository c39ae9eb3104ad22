// writeback.c: the write-back after a fork (issue 12) must land every page
// in the heap file, including pages written while it runs. A writer thread
// keeps rewriting heap pages (by stores, and by read() from a pipe: a write
// by the kernel) while a child exits and the main thread triggers the
// write-back with mmap/munmap calls. The pre-copy copies pages while the
// writer runs; a page written after its copy must be written again in the
// pause. After the write-back the heap is MAP_SHARED from the file, so what
// the process reads is the file: a lost write shows up as an older version.
// Also: a mapping made while the heap was private is in the heap file
// afterwards, with its contents (a line of /proc/self/maps names the file).
//
// With a small PMEM_PAUSE_BUDGET_US the pause part is many short pauses
// (chunks) with the threads running between them; a watcher thread then
// looks for that mixed state (part of the heap mapped shared, part still
// private, in /proc/self/maps) and, by MODE:
// - forkagain: forks right then (or just after the write-back if it never
//   saw it). The fork must wait for the write-back (or be handled): the
//   child must see a fork-time heap of its own (a page the parent's writer
//   changes after the fork must not change in the child), and the parent
//   must end shared again after a second write-back.
// - blocker: blocks signal 62 in itself, so the next pause of the sequence
//   cannot stop every thread (it times out). The heap must then be all
//   private again (no shared chunk left for a fork to share), the status
//   must count the retry, and once the thread unblocks the write-back must
//   finish with every page intact.
// - madvise: purges a page (MADV_DONTNEED, as jemalloc does) and stamps it
//   again. The call finds the heap private and waits for the preload's
//   lock, which the write-back holds to its end: the purge must then be
//   one of a shared heap (the page stays a mapping of the heap file), not
//   anonymous zeros that the next fork maps the file over (the stamp
//   lost: Redis served zeros from its reply buffers that way).
//
// Usage: writeback PMEMDIR [plain|forkagain|blocker|madvise]. Prints "PASS rounds=R
// bytes_pause=B bytes_precopy=C pauses=P cycles=N mixed=M" or exits 1.
// Cycles repeat (at most 8) until one had the case under test: a pre-copy
// round and pages written in the pause (plain), the mixed state seen by the
// watcher (forkagain, blocker).
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "heapcheck.h"

enum { NEWPAGES = 1024 };

static uint64_t ver[PAGES]; // last version stored in each page (not in the heap)
static int stop, pfd[2];
// Once the child has exited the writer keeps to the lower half of the heap:
// the upper half then holds private copies that nothing rewrites, so a page
// the write-back failed to write cannot be healed by a later store.
static int half;

static void *writer(void *arg) {
	(void)arg;
	uint64_t n = 0;
	for (size_t i = 0; !__atomic_load_n(&stop, __ATOMIC_ACQUIRE); i = (i + 7) % (__atomic_load_n(&half, __ATOMIC_RELAXED) ? PAGES / 2 : PAGES), n++) {
		uint64_t v = ver[i] + 1;
		unsigned char *p = heap + i * PG;
		if (n % 64 == 0) {
			// The kernel writes the version word (copy_to_user into a
			// page that may be write-protected for the pre-copy).
			CHECK(write(pfd[1], &v, 8) == 8, "pipe write");
			CHECK(read(pfd[0], p + 8, 8) == 8, "pipe read into the heap");
			memcpy(p, &i, 8);
			memcpy(p + PG - 8, &v, 8);
		} else {
			stamp(p, i, v);
		}
		ver[i] = v;
	}
	return NULL;
}

static const char *mode = "plain", *pdir;
static long restores0, retries0;
static int watched, mixed_seen, forked_again;

// forkcheck runs in the child of a fork made during (or just after) the
// write-back: its heap must be its own. Every page holds its index, and no
// page changes while the parent's writer keeps rewriting the heap.
static void forkcheck(void) {
	static uint64_t snap[PAGES];
	for (size_t i = 0; i < PAGES; i++) {
		uint64_t a;
		memcpy(&a, heap + i * PG, 8);
		if (a != i)
			_exit(3);
		memcpy(&snap[i], heap + i * PG + 8, 8);
	}
	usleep(30000);
	for (size_t i = 0; i < PAGES; i++) {
		uint64_t b;
		memcpy(&b, heap + i * PG + 8, 8);
		if (b != snap[i])
			_exit(4); // the parent's store reached the child: shared
	}
	_exit(0);
}

static void verify(const char *what);

// purged is the page the madvise mode purges and stamps: in the upper half,
// which the writer leaves alone once the child has exited.
enum { PURGED = PAGES - 3 };

static void *watcher(void *arg) {
	(void)arg;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int mixed = 0;
	for (;;) {
		int sh, pr;
		heap_maps(&sh, &pr);
		if (sh > 0 && pr > 0) {
			mixed = 1;
			break;
		}
		if (status_num(pdir, "restores") > restores0)
			break; // done before we saw it
		clock_gettime(CLOCK_MONOTONIC, &t);
		if (t.tv_sec - t0.tv_sec >= 10)
			break;
	}
	if (strcmp(mode, "forkagain") == 0) {
		mixed_seen += mixed;
		// Forks mid-sequence if mixed (then fork_prepare waits for the
		// lock), else just after the write-back.
		pid_t pid = fork();
		CHECK(pid >= 0, "fork again");
		if (pid == 0)
			forkcheck();
		int st;
		CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "FAIL the child forked during the write-back (mixed=%d) exited %d: %s\n", mixed,
				WIFEXITED(st) ? WEXITSTATUS(st) : -1,
				WIFEXITED(st) && WEXITSTATUS(st) == 4 ? "a page changed under it (heap shared with the parent)"
								      : "a page did not hold its index");
			exit(1);
		}
		forked_again = 1;
	} else if (strcmp(mode, "madvise") == 0 && mixed) {
		unsigned char *p = heap + (size_t)PURGED * PG;
		CHECK(madvise(p, PG, MADV_DONTNEED) == 0, "madvise");
		uint64_t z;
		memcpy(&z, p, 8);
		CHECK(z == 0, "a purged page reads zero");
		ver[PURGED]++;
		stamp(p, PURGED, ver[PURGED]);
		mixed_seen++;
	} else if (strcmp(mode, "blocker") == 0 && mixed) {
		sigset_t s62, old;
		sigemptyset(&s62);
		sigaddset(&s62, 62);
		CHECK(pthread_sigmask(SIG_BLOCK, &s62, &old) == 0, "block signal 62");
		// The next pause of the sequence times out (200 ms): wait for the
		// status to count the retry (unless that was the last pause).
		int timedout = 0;
		for (int k = 0; k < 5000; k++) {
			if ((timedout = status_num(pdir, "restore_retries") > retries0) || status_num(pdir, "restores") > restores0)
				break;
			usleep(1000);
		}
		mixed_seen += timedout;
		int sh, pr;
		heap_maps(&sh, &pr);
		if (timedout && sh != 0) {
			fprintf(stderr, "FAIL after a pause timed out mid-sequence %d heap mappings are still shared (%d private): a fork now would share them\n", sh, pr);
			exit(1);
		}
		char shared[80];
		status(pdir, "heap_shared", shared, sizeof shared);
		CHECK(!timedout || shared[0] == '0', "heap_shared=0 after the timeout");
		CHECK(pthread_sigmask(SIG_SETMASK, &old, NULL) == 0, "unblock");
	}
	__atomic_store_n(&watched, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void verify(const char *what) {
	for (size_t i = 0; i < PAGES; i++) {
		uint64_t a, b, c;
		unsigned char *p = heap + i * PG;
		memcpy(&a, p, 8);
		memcpy(&b, p + 8, 8);
		memcpy(&c, p + PG - 8, 8);
		if (a != i || b != ver[i] || c != ver[i]) {
			fprintf(stderr, "FAIL %s: page %zu holds index %lu versions %lu/%lu, last written %lu\n", what, i,
				(unsigned long)a, (unsigned long)b, (unsigned long)c, (unsigned long)ver[i]);
			exit(1);
		}
	}
}

int main(int argc, char **argv) {
	CHECK(argc == 2 || argc == 3, "usage: writeback PMEMDIR [plain|forkagain|blocker]");
	const char *dir = argv[1];
	pdir = dir;
	if (argc == 3)
		mode = argv[2];
	int watch = strcmp(mode, "plain") != 0;
	CHECK(pipe(pfd) == 0, "pipe");
	heap = mmap(NULL, (size_t)PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(heap != MAP_FAILED, "mmap heap");
	CHECK(in_heap_file(heap), "heap placed in the heap file");
	for (size_t i = 0; i < PAGES; i++)
		stamp(heap + i * PG, i, 0);

	long rounds = 0, inpause = 0, pre = 0, pauses = 0;
	int cycle;
	for (cycle = 1; cycle <= 8; cycle++) {
		long restores = status_num(dir, "restores");
		restores0 = restores;
		retries0 = status_num(dir, "restore_retries");
		__atomic_store_n(&watched, 0, __ATOMIC_RELEASE);
		forked_again = 0;
		int mixed0 = mixed_seen;
		pthread_t w, wt;
		__atomic_store_n(&stop, 0, __ATOMIC_RELEASE);
		__atomic_store_n(&half, 0, __ATOMIC_RELEASE);
		pid_t pid = fork();
		CHECK(pid >= 0, "fork");
		if (pid == 0) {
			// The child sees the fork-time heap while the parent writes.
			usleep(20000);
			for (size_t i = 0; i < PAGES; i++) {
				uint64_t a;
				memcpy(&a, heap + i * PG, 8);
				if (a != i)
					_exit(2);
			}
			_exit(0);
		}
		CHECK(pthread_create(&w, NULL, writer, NULL) == 0, "pthread_create");
		if (watch)
			CHECK(pthread_create(&wt, NULL, watcher, NULL) == 0, "pthread_create watcher");
		// A mapping made while private: served from the heap range as
		// anonymous memory, back in the file after the write-back.
		unsigned char *young = mmap(NULL, (size_t)NEWPAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(young != MAP_FAILED, "mmap while private");
		memset(young, 0x40 + cycle, (size_t)NEWPAGES * PG);
		int st;
		CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child saw the fork-time heap");
		__atomic_store_n(&half, 1, __ATOMIC_RELEASE);
		// The write-back runs in an interposed call once the child is gone.
		struct timespec t0, t;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		// With a watcher: until it is done too, and after a second fork
		// until the write-back after that child.
		for (;;) {
			void *q = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			CHECK(q != MAP_FAILED && munmap(q, PG) == 0, "trigger mmap");
			char sh[8];
			status(dir, "heap_shared", sh, sizeof sh);
			int done = !watch || __atomic_load_n(&watched, __ATOMIC_ACQUIRE);
			if (done && status_num(dir, "restores") >= restores + 1 + forked_again && strcmp(sh, "1") == 0)
				break;
			clock_gettime(CLOCK_MONOTONIC, &t);
			CHECK(t.tv_sec - t0.tv_sec < 20, "write-back within 20 s");
			usleep(1000);
		}
		__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
		CHECK(pthread_join(w, NULL) == 0, "pthread_join");
		if (watch)
			CHECK(pthread_join(wt, NULL) == 0, "pthread_join watcher");
		char shared[8];
		status(dir, "heap_shared", shared, sizeof shared);
		CHECK(strcmp(shared, "1") == 0, "heap_shared=1 after the write-back");
		CHECK(status_num(dir, "children_sharing") == 0, "children_sharing=0");
		int nsh, npr;
		heap_maps(&nsh, &npr);
		if (npr != 0 || nsh == 0) {
			fprintf(stderr, "FAIL after the write-back %d heap mappings are private, %d shared: want all shared\n", npr, nsh);
			exit(1);
		}
		verify("after the write-back");
		CHECK(in_heap_file(young), "a mapping made while private is in the heap file afterwards");
		for (size_t k = 0; k < (size_t)NEWPAGES * PG; k += 512)
			CHECK(young[k] == 0x40 + cycle, "its contents survived the write-back");
		CHECK(munmap(young, (size_t)NEWPAGES * PG) == 0, "munmap");
		if (strcmp(mode, "madvise") == 0 && mixed_seen > mixed0) {
			if (!in_heap_file(heap + (size_t)PURGED * PG)) {
				fprintf(stderr, "FAIL page %d, purged while the write-back ran, is not a mapping of the heap file after it (anonymous memory in a shared heap)\n", PURGED);
				exit(1);
			}
			// The next fork maps the heap private from the file: what
			// the page held must be in the file.
			pid_t pid = fork();
			CHECK(pid >= 0, "fork after the purge");
			if (pid == 0)
				_exit(0);
			int st2;
			CHECK(waitpid(pid, &st2, 0) == pid, "waitpid");
			verify("after a fork that followed the purge");
		}
		rounds = status_num(dir, "restore_last_precopy_rounds");
		inpause = status_num(dir, "restore_last_bytes_pause");
		pre = status_num(dir, "restore_last_bytes_precopy");
		pauses = status_num(dir, "restore_last_pauses");
		if (watch ? mixed_seen > mixed0 : rounds > 0 && inpause > 0)
			break;
	}
	printf("PASS rounds=%ld bytes_pause=%ld bytes_precopy=%ld pauses=%ld cycles=%d mixed=%d\n", rounds, inpause, pre, pauses,
	       cycle > 8 ? 8 : cycle, mixed_seen);
	return 0;
}
