// lockbench.c: not a test (nothing runs it in `make test`): the measurement
// behind the futex lock (docs/node.md, Fork). The write-back holds the
// preload's lock across its short pauses and the gaps between them; a
// thread that calls mmap meanwhile waits for the lock. With a pure spin
// lock it burns a core through the gaps. 2 writer threads dirty a 64 MiB
// heap, 1 allocator thread calls mmap/munmap while the write-back runs
// (started 2 ms after it, so the main thread is the one writing back), the
// main thread forks a child and then triggers the write-back. Per cycle:
// the trigger call's wall time, writer stores per ms meanwhile, the
// allocator thread's CPU time meanwhile.
//
//   gcc -O1 -pthread -o lockbench preload/testdata/lockbench.c
//   make preload; mkdir -p /tmp/pm
//   env -i LD_PRELOAD=$PWD/bin/libpmem-preload.so PMEM_TARGET_PROCESSES=lockbench PMEM_PRECOPY=0
//     MEMKIND_MEM_TIERS="KIND:FS_DAX,PATH:/tmp/pm,PMEM_SIZE_LIMIT:0,RATIO:1;POLICY:STATIC_RATIO" ./lockbench 8
// (one command line). The spin-lock variant was the lock()/unlock() of
// commit cd53904 compiled into the same source.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
enum { PAGES = 16384, PG = 4096 };
static unsigned char *heap;
static volatile int stop;
static volatile unsigned long stores[2];
static clockid_t acpu;
static double now(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void *writer(void *a) { long k = (long)a; for (size_t i = k; !stop; i = (i + 7) % PAGES) { heap[i * PG] = (unsigned char)i; stores[k]++; } return 0; }
static volatile int inwb;
static void *alloc(void *a) { (void)a; pthread_getcpuclockid(pthread_self(), &acpu); while (!stop) { if (!inwb) { usleep(100); continue; } usleep(2000); while (inwb) { void *p = mmap(0, PG, 3, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); munmap(p, PG); usleep(200);} } return 0; }
int main(int argc, char **argv) {
	if (argc != 2)
		return 2;
	int cycles = atoi(argv[1]);
	heap = mmap(0, (size_t)PAGES * PG, 3, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(heap, 1, (size_t)PAGES * PG);
	pthread_t w[2], al;
	for (long k = 0; k < 2; k++) pthread_create(&w[k], 0, writer, (void *)k);
	pthread_create(&al, 0, alloc, 0);
	usleep(100000);
	for (int c = 0; c < cycles; c++) {
		pid_t pid = fork();
		if (pid == 0) { usleep(50000); _exit(0); }
		waitpid(pid, 0, 0);
		unsigned long s0 = stores[0] + stores[1];
		double a0 = now(acpu), t0 = now(CLOCK_MONOTONIC);
		inwb = 1;
		void *p = mmap(0, PG, 3, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); // the write-back runs here
		double t1 = now(CLOCK_MONOTONIC), a1 = now(acpu);
		unsigned long s1 = stores[0] + stores[1];
		inwb = 0;
		munmap(p, PG);
		printf("wall_ms=%.2f stores_per_ms=%.0f alloc_cpu_ms=%.2f\n", (t1 - t0) * 1e3, (s1 - s0) / ((t1 - t0) * 1e3), (a1 - a0) * 1e3);
		usleep(100000);
	}
	stop = 1;
	return 0;
}
