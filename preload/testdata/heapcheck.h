// heapcheck.h: what the write-back test programs (writeback.c,
// writeback_idle.c) share: the heap of PAGES version-stamped pages, the
// status file reader, and where the heap is mapped from. Nothing here
// allocates where a test thread may call it during a write-back: a malloc
// that maps memory is an interposed call (it could run the write-back on
// that thread, or wait for the preload's lock).
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

enum { PAGES = 4096, PG = 4096 };

static unsigned char *heap;

// stamp writes page i's self-description: index, version, and the version
// again in its last word (a torn page shows two versions).
static inline void stamp(unsigned char *p, uint64_t i, uint64_t v) {
	memcpy(p, &i, 8);
	memcpy(p + 8, &v, 8);
	memcpy(p + PG - 8, &v, 8);
}

// status reads one key of dir's status file of this process into out
// (the whole value, trailing spaces cut). Raw open/read.
static inline void status(const char *dir, const char *key, char *out, size_t cap) {
	char path[512], buf[4096];
	snprintf(path, sizeof path, "%s/pmem-status.%d", dir, (int)getpid());
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0, "open the status file");
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	CHECK(n >= 0, "read the status file");
	buf[n] = 0;
	out[0] = 0;
	size_t kl = strlen(key);
	for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		if (strncmp(l, key, kl) == 0 && l[kl] == '=') {
			size_t m = strcspn(l + kl + 1, "\n");
			while (m > 0 && l[kl + m] == ' ')
				m--;
			if (m >= cap)
				m = cap - 1;
			memcpy(out, l + kl + 1, m);
			out[m] = 0;
			return;
		}
	}
}

static inline long status_num(const char *dir, const char *key) {
	char v[64];
	status(dir, key, v, sizeof v);
	return atol(v);
}

// in_heap_file: the mapping holding p is a mapping of the heap file.
static inline int in_heap_file(const void *p) {
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

// heap_maps tells how the heap's pages are mapped now: *shared and
// *privat count the heap-file mappings inside [heap, heap + PAGES pages)
// that are MAP_SHARED (rw-s) and MAP_PRIVATE (rw-p). Raw read into a static
// buffer: no malloc, which could call mmap and wait for the preload's lock.
static inline void heap_maps(int *shared, int *privat) {
	static char b[1 << 16];
	*shared = *privat = 0;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0, "open maps");
	size_t n = 0;
	for (ssize_t r; n < sizeof b - 1 && (r = read(fd, b + n, sizeof b - 1 - n)) > 0;)
		n += (size_t)r;
	close(fd);
	b[n] = 0;
	for (char *l = b; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		unsigned long lo, hi;
		char perms[5];
		if (sscanf(l, "%lx-%lx %4s", &lo, &hi, perms) != 3)
			continue;
		char *eol = strchr(l, '\n');
		size_t len = eol ? (size_t)(eol - l) : strlen(l);
		if (hi <= (uintptr_t)heap || lo >= (uintptr_t)heap + (size_t)PAGES * PG || !memmem(l, len, "pmem-heap.", 10))
			continue;
		if (perms[3] == 's')
			(*shared)++;
		else
			(*privat)++;
	}
}
