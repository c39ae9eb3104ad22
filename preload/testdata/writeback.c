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
// Usage: writeback PMEMDIR. Prints "PASS rounds=R bytes_pause=B
// bytes_precopy=C cycles=N" or exits 1. Cycles repeat (at most 8) until one
// had a pre-copy round and pages written in the pause (the case under test).
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

#include "check.h"

enum { PAGES = 4096, PG = 4096, NEWPAGES = 1024 };

static unsigned char *heap;
static uint64_t ver[PAGES]; // last version stored in each page (not in the heap)
static int stop, pfd[2];

static void stamp(unsigned char *p, uint64_t i, uint64_t v) {
	memcpy(p, &i, 8);
	memcpy(p + 8, &v, 8);
	memcpy(p + PG - 8, &v, 8);
}

static void *writer(void *arg) {
	(void)arg;
	uint64_t n = 0;
	for (size_t i = 0; !__atomic_load_n(&stop, __ATOMIC_ACQUIRE); i = (i + 7) % PAGES, n++) {
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

static void status(const char *dir, const char *key, char *out, size_t cap) {
	char path[512], buf[4096];
	snprintf(path, sizeof path, "%s/pmem-status.%d", dir, (int)getpid());
	FILE *f = fopen(path, "r");
	CHECK(f != NULL, "open the status file");
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	out[0] = 0;
	size_t kl = strlen(key);
	for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		if (strncmp(l, key, kl) == 0 && l[kl] == '=') {
			size_t m = strcspn(l + kl + 1, "\n ");
			if (m >= cap)
				m = cap - 1;
			memcpy(out, l + kl + 1, m);
			out[m] = 0;
			return;
		}
	}
}

static long status_num(const char *dir, const char *key) {
	char v[64];
	status(dir, key, v, sizeof v);
	return atol(v);
}

// in_heap_file: the mapping holding p is a mapping of the heap file.
static int in_heap_file(const void *p) {
	FILE *f = fopen("/proc/self/maps", "r");
	CHECK(f != NULL, "open maps");
	char line[512];
	int found = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && (uintptr_t)p >= lo && (uintptr_t)p < hi) {
			found = strstr(line, "pmem-heap.") != NULL;
			break;
		}
	}
	fclose(f);
	return found;
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
	CHECK(argc == 2, "usage: writeback PMEMDIR");
	const char *dir = argv[1];
	CHECK(pipe(pfd) == 0, "pipe");
	heap = mmap(NULL, (size_t)PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(heap != MAP_FAILED, "mmap heap");
	CHECK(in_heap_file(heap), "heap placed in the heap file");
	for (size_t i = 0; i < PAGES; i++)
		stamp(heap + i * PG, i, 0);

	long rounds = 0, inpause = 0, pre = 0;
	int cycle;
	for (cycle = 1; cycle <= 8; cycle++) {
		long restores = status_num(dir, "restores");
		pthread_t w;
		__atomic_store_n(&stop, 0, __ATOMIC_RELEASE);
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
		// A mapping made while private: served from the heap range as
		// anonymous memory, back in the file after the write-back.
		unsigned char *young = mmap(NULL, (size_t)NEWPAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(young != MAP_FAILED, "mmap while private");
		memset(young, 0x40 + cycle, (size_t)NEWPAGES * PG);
		int st;
		CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child saw the fork-time heap");
		// The write-back runs in an interposed call once the child is gone.
		struct timespec t0, t;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (;;) {
			void *q = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			CHECK(q != MAP_FAILED && munmap(q, PG) == 0, "trigger mmap");
			if (status_num(dir, "restores") > restores)
				break;
			clock_gettime(CLOCK_MONOTONIC, &t);
			CHECK(t.tv_sec - t0.tv_sec < 10, "write-back within 10 s");
			usleep(1000);
		}
		__atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
		CHECK(pthread_join(w, NULL) == 0, "pthread_join");
		char shared[8];
		status(dir, "heap_shared", shared, sizeof shared);
		CHECK(strcmp(shared, "1") == 0, "heap_shared=1 after the write-back");
		verify("after the write-back");
		CHECK(in_heap_file(young), "a mapping made while private is in the heap file afterwards");
		for (size_t k = 0; k < (size_t)NEWPAGES * PG; k += 512)
			CHECK(young[k] == 0x40 + cycle, "its contents survived the write-back");
		CHECK(munmap(young, (size_t)NEWPAGES * PG) == 0, "munmap");
		rounds = status_num(dir, "restore_last_precopy_rounds");
		inpause = status_num(dir, "restore_last_bytes_pause");
		pre = status_num(dir, "restore_last_bytes_precopy");
		if (rounds > 0 && inpause > 0)
			break;
	}
	printf("PASS rounds=%ld bytes_pause=%ld bytes_precopy=%ld cycles=%d\n", rounds, inpause, pre, cycle > 8 ? 8 : cycle);
	return 0;
}
