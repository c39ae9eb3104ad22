// writeback_idle.c: the write-back after a fork (issue 12) must come even
// when no thread of the process calls mmap/munmap/madvise after the child
// exits. That is Redis overwriting values of the same size: jemalloc reuses
// the freed slots and has nothing to purge, and its background thread,
// created with every signal blocked (pthread_sigmask(SIG_SETMASK,
// sigfillset) around pthread_create), used to be the only thread that could
// run the write-back (no write-back in 70 s, measured by hand). Here every
// thread is created before the fork, one of them the jemalloc way; after
// the child exits the threads only store to heap pages (and read() into
// them: a write by the kernel), and the main thread only reads the status
// file (open/read: not interposed). The write-back must come within 20 s
// and every page must hold its last version afterwards, read from the heap
// file (every heap mapping shared).
//
// Also: the jemalloc-style thread must not block signal 62 (the preload
// leaves it out of a set that blocks everything), a thread that blocks
// only signal 62, on purpose, keeps it blocked (SigBlk in
// /proc/self/task/TID/status), and the write-back ran on the preload's own
// thread ("pmem-writeback").
//
// apphandler: afterwards the application installs a handler of its own for
// signal 62 and forks again: the preload must not send the signal any more
// (the handler never runs) and must say why the heap stays private.
//
// blocker: the thread that blocks 62 alone lives on and, after the child
// exits, maps and unmaps a page every 10 ms (what jemalloc's background
// thread did when it purged): no pause can stop it, so the write-back must
// run on it, in such a call (restore_last_thread=app), the one case where
// an application thread still runs it.
//
// sigwaiter: a "signal thread" (created with every signal blocked, then
// sigwaitinfo on every signal, 62 included) waits through the child's exit:
// it must never be handed a signal 62 (the kernel shows a sigwait's set as
// unblocked, and each pause's tgkill used to end up in its sigwaitinfo; found
// in review), the write-back must wait while it waits (it cannot be paused),
// and come once it has stopped waiting.
//
// sigfdwaiter: the same with a blocking read of a signalfd on every signal
// instead of sigwaitinfo: a signal the thread does not block is dequeued by
// the read as well, and must never be a pause's 62.
//
// Usage: writeback_idle PMEMDIR [apphandler|blocker|sigwaiter|sigfdwaiter]. Prints "PASS
// after_ms=N" or exits 1.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "heapcheck.h"

static uint64_t ver[PAGES];
static int stop, half, pfd[2];
static const char *dir;

static void *writer(void *arg) {
	(void)arg;
	uint64_t n = 0;
	for (size_t i = 0; !__atomic_load_n(&stop, __ATOMIC_ACQUIRE);
	     i = (i + 7) % (__atomic_load_n(&half, __ATOMIC_RELAXED) ? PAGES / 2 : PAGES), n++) {
		uint64_t v = ver[i] + 1;
		unsigned char *p = heap + i * PG;
		if (n % 64 == 0) {
			CHECK(write(pfd[1], &v, 8) == 8, "pipe write");
			CHECK(read(pfd[0], p + 8, 8) == 8, "pipe read into the heap");
			memcpy(p, &i, 8);
			memcpy(p + PG - 8, &v, 8);
		} else {
			stamp(p, i, v);
		}
		ver[i] = v;
		if (n % 4096 == 0)
			usleep(100); // leave the cores to the rest
	}
	return NULL;
}

// A sleeper: no interposed call, ever (nanosleep only).
static int tids[2], stop62, calls62;
static void *sleeper(void *arg) {
	int *tid = arg;
	if (tid == &tids[1]) {
		sigset_t s62;
		sigemptyset(&s62);
		sigaddset(&s62, 62);
		CHECK(pthread_sigmask(SIG_BLOCK, &s62, NULL) == 0, "block signal 62 alone");
	}
	__atomic_store_n(tid, (int)syscall(SYS_gettid), __ATOMIC_RELEASE);
	while (!__atomic_load_n(tid == &tids[1] ? &stop62 : &stop, __ATOMIC_ACQUIRE)) {
		if (tid == &tids[1] && __atomic_load_n(&calls62, __ATOMIC_ACQUIRE)) {
			void *q = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			CHECK(q != MAP_FAILED && munmap(q, PG) == 0, "mmap/munmap on the thread that blocks 62");
			usleep(10000);
			continue;
		}
		usleep(1000);
	}
	return NULL;
}

// The signal thread: every signal blocked (set before it was created),
// sigwaitinfo on all of them until SIGUSR1.
static int got62, waiting, use_signalfd;
static void *sigwaiter(void *arg) {
	(void)arg;
	sigset_t all;
	sigfillset(&all);
	if (use_signalfd) {
		int fd = signalfd(-1, &all, SFD_CLOEXEC);
		CHECK(fd >= 0, "signalfd");
		__atomic_store_n(&waiting, 1, __ATOMIC_RELEASE);
		for (;;) {
			struct signalfd_siginfo si;
			if (read(fd, &si, sizeof si) != (ssize_t)sizeof si)
				continue; // EINTR
			if (si.ssi_signo == 62)
				__atomic_add_fetch(&got62, 1, __ATOMIC_RELAXED);
			if (si.ssi_signo == SIGUSR1) {
				close(fd);
				return NULL;
			}
		}
	}
	__atomic_store_n(&waiting, 1, __ATOMIC_RELEASE);
	for (;;) {
		siginfo_t si;
		int s = sigwaitinfo(&all, &si);
		if (s == 62)
			__atomic_add_fetch(&got62, 1, __ATOMIC_RELAXED);
		if (s == SIGUSR1)
			return NULL;
	}
}

// sigblk returns the SigBlk mask of thread tid.
static unsigned long long sigblk(int tid) {
	char path[64], buf[4096];
	snprintf(path, sizeof path, "/proc/self/task/%d/status", tid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0, "open the thread's status");
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	CHECK(n > 0, "read the thread's status");
	buf[n] = 0;
	char *p = strstr(buf, "SigBlk:\t");
	CHECK(p != NULL, "SigBlk in the thread's status");
	return strtoull(p + 8, NULL, 16);
}

static void thread_comm(int tid, char *out, size_t cap) {
	char path[64];
	snprintf(path, sizeof path, "/proc/self/task/%d/comm", tid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	out[0] = 0;
	if (fd < 0)
		return;
	ssize_t n = read(fd, out, cap - 1);
	close(fd);
	out[n > 0 ? n : 0] = 0;
	if (n > 0 && out[n - 1] == '\n')
		out[n - 1] = 0;
}

static long now_ms(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int app_handler_runs;
static void app_handler(int sig) {
	(void)sig;
	__atomic_add_fetch(&app_handler_runs, 1, __ATOMIC_RELAXED);
}

// forkwait forks a child that reads the fork-time heap until the parent
// writes to its pipe; returns the pid and the pipe's write end.
static pid_t forkwait(int *release) {
	int cp[2];
	CHECK(pipe(cp) == 0, "pipe");
	pid_t pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid == 0) {
		close(cp[1]);
		char c;
		if (read(cp[0], &c, 1) < 0)
			_exit(5);
		for (size_t i = 0; i < PAGES; i++) {
			uint64_t a;
			memcpy(&a, heap + i * PG, 8);
			if (a != i)
				_exit(2);
		}
		_exit(0);
	}
	close(cp[0]);
	*release = cp[1];
	return pid;
}

int main(int argc, char **argv) {
	CHECK(argc == 2 || argc == 3, "usage: writeback_idle PMEMDIR [apphandler|blocker|sigwaiter|sigfdwaiter]");
	dir = argv[1];
	int apphandler = argc == 3 && strcmp(argv[2], "apphandler") == 0;
	int blocker = argc == 3 && strcmp(argv[2], "blocker") == 0;
	use_signalfd = argc == 3 && strcmp(argv[2], "sigfdwaiter") == 0;
	int waiter = use_signalfd || (argc == 3 && strcmp(argv[2], "sigwaiter") == 0);
	CHECK(pipe(pfd) == 0, "pipe");
	heap = mmap(NULL, (size_t)PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(heap != MAP_FAILED, "mmap heap");
	CHECK(in_heap_file(heap), "heap placed in the heap file");
	for (size_t i = 0; i < PAGES; i++)
		stamp(heap + i * PG, i, 0);

	// Every thread before the fork: creating one maps its stack.
	pthread_t bg, only62, w;
	sigset_t all, old;
	sigfillset(&all);
	CHECK(pthread_sigmask(SIG_SETMASK, &all, &old) == 0, "block everything (jemalloc's way)");
	CHECK(pthread_create(&bg, NULL, sleeper, &tids[0]) == 0, "pthread_create bg");
	pthread_t sw;
	if (waiter)
		CHECK(pthread_create(&sw, NULL, sigwaiter, NULL) == 0, "pthread_create sigwaiter");
	CHECK(pthread_sigmask(SIG_SETMASK, &old, NULL) == 0, "restore the mask");
	CHECK(pthread_create(&only62, NULL, sleeper, &tids[1]) == 0, "pthread_create only62");
	CHECK(pthread_create(&w, NULL, writer, NULL) == 0, "pthread_create writer");
	for (int k = 0; k < 5000 && !(__atomic_load_n(&tids[0], __ATOMIC_ACQUIRE) && __atomic_load_n(&tids[1], __ATOMIC_ACQUIRE)); k++)
		usleep(1000);
	CHECK(tids[0] && tids[1], "threads started");
	unsigned long long m0 = sigblk(tids[0]), m1 = sigblk(tids[1]);
	// A thread that blocks 62 cannot be paused: while it lives, only it
	// could run the write-back. It ends before the fork.
	if (!blocker) {
		__atomic_store_n(&stop62, 1, __ATOMIC_RELEASE);
		CHECK(pthread_join(only62, NULL) == 0, "join only62");
	}

	int release;
	pid_t pid = forkwait(&release);
	// A mapping made while private: in the heap file after the write-back.
	unsigned char *young = mmap(NULL, 256 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(young != MAP_FAILED, "mmap while private");
	memset(young, 0x5a, 256 * PG);
	usleep(20000); // the writer copies pages meanwhile
	__atomic_store_n(&half, 1, __ATOMIC_RELEASE);
	long t0 = now_ms();
	// From here on no thread calls mmap/munmap/madvise until the end.
	CHECK(write(release, "x", 1) == 1, "release the child");
	close(release);
	int st;
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child saw the fork-time heap");
	__atomic_store_n(&calls62, 1, __ATOMIC_RELEASE); // blocker: its calls start (after the child)
	char shared[200];
	if (waiter) {
		// 1.5 s: the write-back thread tries (and retries) meanwhile. A
		// pause's signal cuts a usleep short: sleep to a deadline.
		for (long d = now_ms() + 1500; now_ms() < d;)
			usleep(10000);
		status(dir, "heap_shared", shared, sizeof shared);
		int n62 = __atomic_load_n(&got62, __ATOMIC_RELAXED);
		if (n62 != 0 || !__atomic_load_n(&waiting, __ATOMIC_ACQUIRE) || status_num(dir, "restores") != 0) {
			fprintf(stderr, "FAIL with a thread in %s on every signal: it was handed signal 62 %d times, "
					"restores=%ld heap_shared=%s (want 0 times and no write-back while it waits)\n",
				use_signalfd ? "a signalfd read" : "sigwaitinfo", n62, status_num(dir, "restores"), shared);
			exit(1);
		}
		CHECK(pthread_kill(sw, SIGUSR1) == 0 && pthread_join(sw, NULL) == 0, "end the signal thread's wait");
		t0 = now_ms();
	}
	long after = -1;
	for (;;) {
		status(dir, "heap_shared", shared, sizeof shared);
		if (status_num(dir, "restores") >= 1 && strcmp(shared, "1") == 0) {
			after = now_ms() - t0;
			break;
		}
		if (now_ms() - t0 > 20000) {
			char wt[200];
			status(dir, "writeback_thread", wt, sizeof wt);
			fprintf(stderr, "FAIL no write-back within 20 s of the child's exit with no mmap/munmap/madvise call: "
					"restores=%ld restore_retries=%ld writeback_thread=%s heap_shared=%s\n",
				status_num(dir, "restores"), status_num(dir, "restore_retries"), wt, shared);
			exit(1);
		}
		usleep(10000);
	}
	__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
	CHECK(pthread_join(w, NULL) == 0 && pthread_join(bg, NULL) == 0, "join");
	if (blocker) {
		__atomic_store_n(&stop62, 1, __ATOMIC_RELEASE);
		CHECK(pthread_join(only62, NULL) == 0, "join only62");
	}
	// The masks, checked after the write-back (which the first needs).
	unsigned long long bit62 = 1ULL << 61, catchable = 0x7ffbfeffULL;
	if ((m0 & catchable) != catchable || (m0 & bit62)) {
		fprintf(stderr, "FAIL the thread created with every signal blocked has SigBlk %016llx: want 1-31 blocked, 62 not\n", m0);
		exit(1);
	}
	if (!(m1 & bit62)) {
		fprintf(stderr, "FAIL the thread that blocked signal 62 alone has SigBlk %016llx: 62 not blocked\n", m1);
		exit(1);
	}
	int nsh, npr;
	heap_maps(&nsh, &npr);
	if (npr != 0 || nsh == 0) {
		fprintf(stderr, "FAIL after the write-back %d heap mappings are private, %d shared: want all shared\n", npr, nsh);
		exit(1);
	}
	for (size_t i = 0; i < PAGES; i++) {
		uint64_t a, b, c;
		unsigned char *p = heap + i * PG;
		memcpy(&a, p, 8);
		memcpy(&b, p + 8, 8);
		memcpy(&c, p + PG - 8, 8);
		if (a != i || b != ver[i] || c != ver[i]) {
			fprintf(stderr, "FAIL page %zu holds index %lu versions %lu/%lu, last written %lu\n", i, (unsigned long)a,
				(unsigned long)b, (unsigned long)c, (unsigned long)ver[i]);
			exit(1);
		}
	}
	CHECK(in_heap_file(young), "a mapping made while private is in the heap file afterwards");
	for (size_t k = 0; k < 256 * PG; k += 512)
		CHECK(young[k] == 0x5a, "its contents survived the write-back");
	char by[32], comm[32];
	status(dir, "restore_last_thread", by, sizeof by);
	long wtid = status_num(dir, "writeback_thread");
	thread_comm((int)wtid, comm, sizeof comm);
	if (strcmp(by, blocker ? "app" : "writeback") != 0 || wtid <= 0 || strcmp(comm, "pmem-writeback") != 0) {
		fprintf(stderr, "FAIL restore_last_thread=%s writeback_thread=%ld (comm %s): want %s\n", by, wtid, comm,
			blocker ? "the thread that blocks 62 (app), the write-back thread running" : "the write-back thread");
		exit(1);
	}
	if (apphandler) {
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = app_handler;
		CHECK(sigaction(62, &sa, NULL) == 0, "the application's own handler for 62");
		__atomic_store_n(&stop, 0, __ATOMIC_RELEASE);
		CHECK(pthread_create(&w, NULL, writer, NULL) == 0, "pthread_create writer");
		pid = forkwait(&release);
		CHECK(write(release, "x", 1) == 1, "release the child");
		close(release);
		CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "second child");
		long t1 = now_ms();
		for (;;) {
			status(dir, "heap_shared", shared, sizeof shared);
			if (strstr(shared, "for good"))
				break;
			if (now_ms() - t1 > 20000 || strcmp(shared, "1") == 0) {
				fprintf(stderr, "FAIL after the application took signal 62: heap_shared=%s restores=%ld\n", shared,
					status_num(dir, "restores"));
				exit(1);
			}
			usleep(10000);
		}
		__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
		CHECK(pthread_join(w, NULL) == 0, "join");
		CHECK(strstr(shared, "the application replaced the preload's signal 62 handler") != NULL, "the reason");
		if (app_handler_runs) {
			fprintf(stderr, "FAIL the application's signal 62 handler ran %d times\n", app_handler_runs);
			exit(1);
		}
	}
	printf("PASS after_ms=%ld\n", after);
	return 0;
}
