// semantics.c: mmap/munmap/madvise/mremap/fork semantics under libpmem-preload.so.
//
// Usage: semantics MODE [PMEM_DIR]
//   plain     the preload stays out of the way: anonymous maps stay anonymous
//   fsdax     anonymous RW maps come from a file under PMEM_DIR; partial
//             munmap, madvise zeroing, mremap and fork keep anonymous-memory
//             semantics
//   kmem      anonymous memory (placement is the kernel's policy); fork works
//   fallback  the preload could not activate: anonymous memory
//   fsdax-private  fsdax, where the write-back after a fork cannot run (a
//             thread that blocks the pause signal never calls the preload:
//             qemu-user's own RCU thread): the heap must stay a private
//             mapping of the heap file, contents intact (the documented
//             fallback), instead of being shared again
// Prints "PASS <checks>" on stdout.
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static int checks, failures;
static const char *pmem_dir;

#define CHECK(cond, ...)                                                              \
	do {                                                                          \
		checks++;                                                             \
		if (!(cond)) {                                                        \
			failures++;                                                   \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                 \
			fputc('\n', stderr);                                          \
		}                                                                     \
	} while (0)

// mapping_of returns the path of the mapping holding p ("" for anonymous),
// "?" when unmapped.
// maps_entry finds the mapping holding p in /proc/self/maps: its
// permissions ("rw-p", "---p"; "?" if none) and path ("" for anonymous).
static const char *maps_entry(const void *p, char perms[5], char *out, size_t len)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[4096];
	snprintf(out, len, "?");
	snprintf(perms, 5, "?");
	while (f && fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		int off = 0;
		if (sscanf(line, "%lx-%lx %4s %*s %*s %*s %n", &lo, &hi, perms, &off) < 3)
			continue;
		if ((uintptr_t)p >= lo && (uintptr_t)p < hi) {
			char *path = line + off;
			path[strcspn(path, "\n")] = '\0';
			snprintf(out, len, "%s", path);
			break;
		}
		snprintf(perms, 5, "?");
	}
	if (f)
		fclose(f);
	return out;
}

static const char *mapping_of(const void *p, char *out, size_t len)
{
	char perms[5];
	return maps_entry(p, perms, out, len);
}

static int on_pmem(const void *p)
{
	char buf[4096];
	return pmem_dir && strncmp(mapping_of(p, buf, sizeof buf), pmem_dir, strlen(pmem_dir)) == 0;
}

// shared reports whether p is in a MAP_SHARED mapping ("rw-s").
static int shared(const void *p)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[4096], perms[8];
	int res = 0;
	while (f && fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && (uintptr_t)p >= lo && (uintptr_t)p < hi) {
			res = perms[3] == 's';
			break;
		}
	}
	if (f)
		fclose(f);
	return res;
}

static int all(const unsigned char *p, size_t n, unsigned char v)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != v)
			return 0;
	return 1;
}

// status_of copies the value of key in this process's status file (PMEM_DIR/
// pmem-status.PID) into out ("" if absent).
static const char *status_of(const char *key, char *out, size_t len)
{
	char path[4096], line[4096];
	snprintf(path, sizeof path, "%s/pmem-status.%d", pmem_dir ? pmem_dir : ".", (int)getpid());
	FILE *f = fopen(path, "r");
	snprintf(out, len, "%s", "");
	size_t kl = strlen(key);
	while (f && fgets(line, sizeof line, f)) {
		if (strncmp(line, key, kl) == 0 && line[kl] == '=') {
			line[strcspn(line, "\n")] = '\0';
			snprintf(out, len, "%s", line + kl + 1);
			break;
		}
	}
	if (f)
		fclose(f);
	return out;
}

static void *anon(size_t n)
{
	return mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "plain";
	pmem_dir = argc > 2 ? argv[2] : NULL;
	int stays_private = strcmp(mode, "fsdax-private") == 0;
	int fsdax = strcmp(mode, "fsdax") == 0 || stays_private;
	const size_t P = 4096, M = 1 << 20;
	char buf[4096];

	// 1. A fresh mapping reads zeros and is placed (or not) as the mode says.
	unsigned char *a = anon(8 * M);
	CHECK(a != MAP_FAILED, "mmap 8 MiB");
	CHECK(all(a, 8 * M, 0), "fresh mapping not zero");
	memset(a, 0xab, 8 * M);
	CHECK(on_pmem(a) == fsdax, "8 MiB mapping at %p is %s", (void *)a, mapping_of(a, buf, sizeof buf));
	if (fsdax) {
		// The first placement is at the range's base, which has a
		// reserved PROT_NONE guard page below it (and one above the
		// range): no other mapping is adjacent, so no allocator extent
		// can straddle the edge of the range.
		char perms[5];
		maps_entry(a - P, perms, buf, sizeof buf);
		CHECK(strcmp(perms, "---p") == 0 && buf[0] == 0, "the page below the heap range at %p is %s %s, want a ---p guard",
		      (void *)a, perms, buf);
		// The page above it: the limit as the preload reads it from
		// MEMKIND_MEM_TIERS's PMEM_SIZE_LIMIT (rounded up to 2 MiB).
		const char *t = getenv("MEMKIND_MEM_TIERS"), *l = t ? strstr(t, "PMEM_SIZE_LIMIT:") : NULL;
		CHECK(l != NULL, "PMEM_SIZE_LIMIT in MEMKIND_MEM_TIERS");
		size_t limit = strtoul(l + 16, NULL, 10);
		if (limit == 0)
			limit = (size_t)64 << 30; // 0: 64 GiB of address space
		limit = (limit + (2 * M - 1)) & ~(2 * M - 1);
		maps_entry(a + limit, perms, buf, sizeof buf);
		CHECK(strcmp(perms, "---p") == 0 && buf[0] == 0, "the page above the heap range at %p is %s %s, want a ---p guard",
		      (void *)(a + limit), perms, buf);
	}

	// 2. Partial munmap (jemalloc trims head and tail): the middle survives,
	// the ends are gone, and their pages come back as zeros when reused.
	CHECK(munmap(a, M) == 0, "munmap head");
	CHECK(munmap(a + 7 * M, M) == 0, "munmap tail");
	CHECK(all(a + M, 6 * M, 0xab), "middle changed by partial munmap");
	CHECK(strcmp(mapping_of(a, buf, sizeof buf), "") == 0 || strcmp(buf, "?") == 0 || !fsdax,
	      "unmapped head still a file mapping: %s", buf);
	unsigned char *b = anon(2 * M);
	CHECK(b != MAP_FAILED && all(b, 2 * M, 0), "a reused range is not zero");
	memset(b, 0x11, 2 * M);

	// 3. madvise(MADV_DONTNEED) zeroes (allocators rely on it); MADV_FREE
	// either keeps or zeroes; other advice succeeds.
	CHECK(madvise(a + 2 * M, M, MADV_DONTNEED) == 0, "MADV_DONTNEED");
	CHECK(all(a + 2 * M, M, 0), "MADV_DONTNEED did not zero");
	CHECK(all(a + 3 * M, 4 * M, 0xab), "MADV_DONTNEED touched its neighbours");
	CHECK(madvise(a + 3 * M, P, MADV_WILLNEED) == 0, "MADV_WILLNEED");
	CHECK(madvise(a + 4 * M, M, MADV_FREE) == 0, "MADV_FREE");
	CHECK(all(a + 4 * M, M, 0xab) || all(a + 4 * M, M, 0), "MADV_FREE left garbage");

	// 4. mremap: shrink in place, grow (in place or moved) keeps the data,
	// new bytes are zero.
	unsigned char *r = anon(4 * P);
	memset(r, 0x5a, 4 * P);
	unsigned char *r2 = mremap(r, 4 * P, 2 * P, 0);
	CHECK(r2 == r && all(r, 2 * P, 0x5a), "mremap shrink");
	unsigned char *r3 = mremap(r, 2 * P, 64 * P, MREMAP_MAYMOVE);
	CHECK(r3 != MAP_FAILED && all(r3, 2 * P, 0x5a) && all(r3 + 2 * P, 62 * P, 0), "mremap grow");
	CHECK(on_pmem(r3) == fsdax, "mremapped block at %p is %s", (void *)r3, mapping_of(r3, buf, sizeof buf));
	CHECK(munmap(r3, 64 * P) == 0, "munmap mremapped");

	// 5. Non-heap mappings are never taken: MAP_SHARED anonymous, read-only,
	// stacks.
	unsigned char *s = mmap(NULL, M, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(s != MAP_FAILED && !on_pmem(s), "shared anonymous mapping placed");
	unsigned char *ro = mmap(NULL, M, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ro != MAP_FAILED && !on_pmem(ro), "read-only mapping placed");

	// 6. fork: the child sees the fork-time heap and its writes stay its
	// own; the parent's writes after fork are invisible to the child.
	memset(s, 0, P);
	pid_t pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid == 0) {
		int ok = all(a + 3 * M, M, 0xab) && all(b, 2 * M, 0x11);
		usleep(200 * 1000); // the parent writes meanwhile
		ok = ok && all(a + 3 * M, M, 0xab) && all(b, 2 * M, 0x11);
		memset(b, 0x22, 2 * M); // must not reach the parent
		unsigned char *c = anon(M);
		ok = ok && c != MAP_FAILED && all(c, M, 0);
		memset(c, 0x33, M);
		ok = ok && munmap(a + 5 * M, M) == 0;
		s[0] = ok ? 1 : 2;
		_exit(0);
	}
	memset(a + 3 * M, 0xcd, M);
	int status = 0;
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
	CHECK(s[0] == 1, "the child saw a changed heap (%d)", s[0]);
	CHECK(all(b, 2 * M, 0x11), "the child's writes reached the parent");
	CHECK(all(a + 3 * M, M, 0xcd) && all(a + 5 * M, 2 * M, 0xab), "the parent's heap changed across fork");
	// The child is gone: the preload's write-back thread writes the
	// parent's private copies back and remaps the heap shared (without a
	// thread of its own, clone refused, the next interposed call does:
	// this one). Contents must not change, and the heap is a shared file
	// mapping again. Where the write-back cannot run, it must have been
	// tried. Bounded: 20 s.
	munmap(mmap(NULL, P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), P);
	for (int k = 0; fsdax && k < 2000; k++) {
		char v[64];
		if (stays_private ? atoi(status_of("restore_retries", v, sizeof v)) >= 1 : shared(a + 3 * M))
			break;
		usleep(10000);
	}
	CHECK(all(a + 3 * M, M, 0xcd) && all(a + 5 * M, 2 * M, 0xab) && all(b, 2 * M, 0x11),
	      "the heap changed across the write-back");
	if (stays_private)
		CHECK(!shared(a + 3 * M) && on_pmem(a + 3 * M), "heap not a private mapping of the heap file: %s",
		      mapping_of(a + 3 * M, buf, sizeof buf));
	else if (fsdax)
		CHECK(shared(a + 3 * M), "heap not shared again after the child exited: %s", mapping_of(a + 3 * M, buf, sizeof buf));
	CHECK(madvise(a + 5 * M, M, MADV_DONTNEED) == 0 && all(a + 5 * M, M, 0), "MADV_DONTNEED after fork");
	unsigned char *d = anon(M);
	CHECK(d != MAP_FAILED && all(d, M, 0), "mapping after fork");
	CHECK(munmap(a + M, 6 * M) == 0 && munmap(b, 2 * M) == 0 && munmap(d, M) == 0, "munmap after fork");

	// 7. A second fork works too; while its child lives the status file
	// says the heap is private and shared with one child.
	int hold[2];
	CHECK(pipe(hold) == 0, "pipe");
	pid = fork();
	if (pid == 0) {
		char c;
		close(hold[1]);
		_exit(read(hold[0], &c, 1) == 0 ? 0 : 1);
	}
	close(hold[0]);
	if (fsdax) {
		char v[256];
		CHECK(strncmp(status_of("heap_shared", v, sizeof v), "0 ", 2) == 0, "heap_shared=%s while a child lives", v);
		CHECK(strcmp(status_of("children_sharing", v, sizeof v), "1") == 0, "children_sharing=%s while a child lives", v);
	}
	close(hold[1]);
	CHECK(waitpid(pid, &status, 0) == pid && status == 0, "second fork");

	if (failures) {
		fprintf(stderr, "%d of %d checks failed\n", failures, checks);
		return 1;
	}
	printf("PASS %d\n", checks);
	return 0;
}
