// threads_spawn.c: regression inputs replayed from other injectors' reports
// (issue 14): many threads mapping and unmapping at once, and every way a
// process starts another program (posix_spawn, system, popen, vfork+exec,
// fork+exec) while its heap is on PMEM. Prints "PASS <mode>" or exits 1.
//
// Usage: threads_spawn threads | spawn
#define _GNU_SOURCE
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#include "check.h"

enum { THREADS = 8, ROUNDS = 300, M = 1 << 20 };

static int filled(const unsigned char *p, size_t n, unsigned char v) {
	for (size_t i = 0; i < n; i += 512)
		if (p[i] != v)
			return 0;
	return p[n - 1] == v;
}

// worker: map, fill with its own byte, trim head and tail (as jemalloc does
// for alignment), purge part of it, check, unmap. Any two threads handed the
// same pages, or a purge that does not zero, shows up as a wrong byte.
static void *worker(void *arg) {
	unsigned char v = (unsigned char)(uintptr_t)arg;
	unsigned seed = v;
	for (int r = 0; r < ROUNDS; r++) {
		size_t n = ((size_t)(rand_r(&seed) % 16) + 3) * 64 * 1024;
		unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(p != MAP_FAILED, "mmap in thread");
		CHECK(filled(p, n, 0), "fresh mapping is zero");
		memset(p, v, n);
		size_t page = 4096;
		CHECK(munmap(p, page) == 0 && munmap(p + n - page, page) == 0, "trim");
		unsigned char *q = p + page;
		size_t m = n - 2 * page;
		CHECK(filled(q, m, v), "own bytes after trim");
		CHECK(madvise(q, page, MADV_DONTNEED) == 0 && filled(q, page, 0), "purge zeroes");
		CHECK(filled(q + page, m - page, v), "own bytes after purge");
		CHECK(munmap(q, m) == 0, "munmap");
	}
	return NULL;
}

static void threads(void) {
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++)
		CHECK(pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1)) == 0, "pthread_create");
	for (int i = 0; i < THREADS; i++)
		CHECK(pthread_join(t[i], NULL) == 0, "pthread_join");
}

static void reap(pid_t pid, const char *what) {
	int status;
	CHECK(pid > 0, what);
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0, what);
}

// spawn: a heap on PMEM survives every way of starting a program, and
// keeps working afterwards (the fork bookkeeping must end with the child).
static void spawn(void) {
	unsigned char *heap = mmap(NULL, 8 * M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(heap != MAP_FAILED, "mmap heap");
	memset(heap, 0x5a, 8 * M);

	char *argv[] = {"true", NULL};
	pid_t pid;
	CHECK(posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ) == 0, "posix_spawn");
	reap(pid, "posix_spawn child");
	CHECK(system("true") == 0, "system");
	FILE *f = popen("echo popen-ok", "r");
	CHECK(f != NULL, "popen");
	char line[64] = {0};
	CHECK(fgets(line, sizeof line, f) != NULL && strcmp(line, "popen-ok\n") == 0, "popen output");
	CHECK(pclose(f) == 0, "pclose");
	pid = vfork();
	if (pid == 0) {
		execl("/bin/true", "true", (char *)NULL);
		_exit(127);
	}
	reap(pid, "vfork+exec child");
	pid = fork();
	if (pid == 0) {
		// A forked child that writes its heap then execs: the parent
		// must not see these writes.
		memset(heap, 0x11, M);
		execl("/bin/true", "true", (char *)NULL);
		_exit(127);
	}
	reap(pid, "fork+exec child");
	CHECK(filled(heap, 8 * M, 0x5a), "parent heap intact after every spawn");

	memset(heap, 0x6b, 8 * M);
	CHECK(filled(heap, 8 * M, 0x6b), "parent writes after spawns");
	CHECK(madvise(heap, M, MADV_DONTNEED) == 0 && filled(heap, M, 0), "purge after spawns");
	unsigned char *more = mmap(NULL, 4 * M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(more != MAP_FAILED && filled(more, 4 * M, 0), "mapping after spawns");
	CHECK(munmap(more, 4 * M) == 0 && munmap(heap, 8 * M) == 0, "munmap after spawns");
}

int main(int argc, char **argv) {
	CHECK(argc == 2, "usage: threads_spawn threads|spawn");
	if (strcmp(argv[1], "threads") == 0)
		threads();
	else if (strcmp(argv[1], "spawn") == 0)
		spawn();
	else
		CHECK(0, "unknown mode");
	printf("PASS %s\n", argv[1]);
	return 0;
}
