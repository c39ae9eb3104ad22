// writeback_newthreads.c: a thread created while a write-back pause is
// being set up must be paused too (issue 12, found in review). A creator
// threads (CREATORS) each start short-lived threads back to back; each of
// those stamps its creator's pages of the heap with a new version and reads
// them all back. Meanwhile the main
// thread forks children that exit at once, so write-backs (many short
// pauses with PMEM_PAUSE_BUDGET_US=1) keep running. A thread that was in
// pthread_create when a pause listed the threads, and made a new one before
// pausing, left that new thread running through the pause: its stores into
// a chunk between the chunk's pwrite and its remap were lost (read back as
// an older version), or it touched a piece of the heap in the moment it
// was unmapped (SIGSEGV).
//
// Usage: writeback_newthreads PMEMDIR SECONDS. Prints "PASS forks=F
// threads=T restores=R" or exits 1 (a lost store) or 3 (SIGSEGV).
#define _GNU_SOURCE
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

enum {
	STAMPED = 64,  // pages each thread stamps: short-lived threads, so many are created
	CREATORS = 1,  // threads creating stampers (more: fewer write-backs on 2 cores, fewer failures seen)
};

static uint64_t seq;
static int stop, lost;

static void on_segv(int sig, siginfo_t *si, void *uc) {
	(void)sig;
	(void)uc;
	char b[160];
	int n = snprintf(b, sizeof b, "FAIL SIGSEGV at %p (heap %p, %d pages): a thread ran while a piece of the heap was unmapped\n",
			 si->si_addr, (void *)heap, PAGES);
	if (write(2, b, (size_t)n) < 0)
		_exit(3);
	_exit(3);
}

// stamper stamps and checks the STAMPED pages of its creator (arg: the
// creator's number): no other thread stores there meanwhile.
static void *stamper(void *arg) {
	size_t lo = (size_t)(intptr_t)arg * STAMPED;
	uint64_t v = __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED);
	for (size_t i = lo; i < lo + STAMPED; i++)
		stamp(heap + i * PG, i, v);
	for (size_t i = lo; i < lo + STAMPED; i++) {
		uint64_t a, b;
		memcpy(&a, heap + i * PG, 8);
		memcpy(&b, heap + i * PG + 8, 8);
		if (a != i || b != v) {
			fprintf(stderr, "FAIL page %zu holds index %lu version %lu, this thread stored %lu: a store was lost\n", i,
				(unsigned long)a, (unsigned long)b, (unsigned long)v);
			__atomic_store_n(&lost, 1, __ATOMIC_RELEASE);
			break;
		}
	}
	return NULL;
}

static long created; // atomic: every creator adds

static void *creator(void *arg) {
	while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE) && !__atomic_load_n(&lost, __ATOMIC_ACQUIRE)) {
		pthread_t t;
		CHECK(pthread_create(&t, NULL, stamper, arg) == 0, "pthread_create");
		CHECK(pthread_join(t, NULL) == 0, "pthread_join");
		__atomic_add_fetch(&created, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

int main(int argc, char **argv) {
	CHECK(argc == 3, "usage: writeback_newthreads PMEMDIR SECONDS");
	const char *dir = argv[1];
	double secs = atof(argv[2]);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_segv;
	sa.sa_flags = SA_SIGINFO;
	CHECK(sigaction(SIGSEGV, &sa, NULL) == 0, "sigaction");
	heap = mmap(NULL, (size_t)PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(heap != MAP_FAILED, "mmap heap");
	CHECK(in_heap_file(heap), "heap placed in the heap file");
	for (size_t i = 0; i < PAGES; i++)
		stamp(heap + i * PG, i, 0);
	pthread_t c[CREATORS];
	for (int k = 0; k < CREATORS; k++)
		CHECK(pthread_create(&c[k], NULL, creator, (void *)(intptr_t)k) == 0, "pthread_create creator");
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int forks = 0;
	// Bounded: SECONDS, at most 2000 forks.
	for (; forks < 2000 && !__atomic_load_n(&lost, __ATOMIC_ACQUIRE); forks++) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9 > secs)
			break;
		pid_t pid = fork();
		CHECK(pid >= 0, "fork");
		if (pid == 0)
			_exit(0);
		CHECK(waitpid(pid, NULL, 0) == pid, "waitpid");
		usleep(3000); // the write-back runs now, on the preload's thread
	}
	__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
	for (int k = 0; k < CREATORS; k++)
		CHECK(pthread_join(c[k], NULL) == 0, "pthread_join creator");
	if (lost)
		return 1;
	printf("PASS forks=%d threads=%ld restores=%ld\n", forks, created, status_num(dir, "restores"));
	return 0;
}
