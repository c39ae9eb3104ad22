// semantics.c: malloc-family semantics under libpmem-preload.so.
//
// Usage: semantics MODE [PMEM_DIR]
//   MODE plain   the preload must stay out of the way (no libmemkind mapped)
//   MODE fsdax   the heap must be on a file under PMEM_DIR; fork is refused
//   MODE kmem    the heap is tiered (anonymous memory); fork works
//   MODE mixed   tiered with an FS_DAX tier among others; fork is refused
//   MODE fallback  the preload could not activate: glibc heap, fork works
// Linked against libearly.so, whose constructor allocated blocks from glibc
// before the preload activated; they are checked, reallocated and freed here.
// Prints "PASS <checks>" on stdout (fully buffered when piped: the exit-time
// flush of a buffer living on the tiered heap is part of the test).
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern void *early_ptrs[4];
extern void *early_many[10000];
extern size_t early_sizes[4];
extern char **environ;

static int checks, failures;
static const char *mode, *pmem_dir;

#define CHECK(cond, ...)                                                   \
	do {                                                               \
		checks++;                                                  \
		if (!(cond)) {                                             \
			failures++;                                        \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                      \
			fputc('\n', stderr);                               \
		}                                                          \
	} while (0)

// Returns the path of the mapping holding p ("" for anonymous), or NULL.
static const char *mapping_of(const void *p, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return NULL;
	char line[4096];
	const char *res = NULL;
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		int off = 0;
		if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &lo, &hi, &off) < 2)
			continue;
		if ((uintptr_t)p >= lo && (uintptr_t)p < hi) {
			char *path = line + off;
			path[strcspn(path, "\n")] = '\0';
			snprintf(out, len, "%s", path);
			res = out;
			break;
		}
	}
	fclose(f);
	return res;
}

static int on_pmem(const void *p)
{
	char buf[4096];
	const char *m = mapping_of(p, buf, sizeof buf);
	return m && pmem_dir && strncmp(m, pmem_dir, strlen(pmem_dir)) == 0;
}

static int memkind_loaded(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[4096];
	int found = 0;
	while (f && fgets(line, sizeof line, f))
		if (strstr(line, "libmemkind"))
			found = 1;
	if (f)
		fclose(f);
	return found;
}

static int aligned_to(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static void test_basic(void)
{
	void *a = malloc(0), *b = malloc(0);
	CHECK(a && b && a != b, "malloc(0) must return unique pointers: %p %p", a, b);
	free(a);
	free(b);
	free(NULL);

	void *c = realloc(NULL, 0);
	CHECK(c != NULL, "realloc(NULL, 0) must behave as malloc(0)");
	free(c);

	void *d = malloc(10);
	CHECK(realloc(d, 0) == NULL, "realloc(p, 0) frees p and returns NULL (glibc)");

	errno = 0;
	void *e = calloc(SIZE_MAX / 2, 3);
	CHECK(e == NULL && errno == ENOMEM, "calloc overflow: %p errno %d", e, errno);

	// Dirty memory, free it, then calloc must still return zeroes.
	for (int i = 0; i < 64; i++) {
		char *x = malloc(4096);
		memset(x, 0xAB, 4096);
		free(x);
	}
	unsigned char *z = calloc(1000, 10);
	int zero = z != NULL;
	for (int i = 0; z && i < 10000; i++)
		zero &= z[i] == 0;
	CHECK(zero, "calloc memory must be zeroed");
	free(z);
	void *z0 = calloc(0, 5);
	CHECK(z0 != NULL, "calloc(0, n) returns a unique pointer");
	free(z0);

	char *r = malloc(16);
	strcpy(r, "fifteen chars..");
	errno = 0;
	void *ra = reallocarray(r, SIZE_MAX / 4, 8);
	CHECK(ra == NULL && errno == ENOMEM, "reallocarray overflow: %p errno %d", ra, errno);
	CHECK(strcmp(r, "fifteen chars..") == 0, "reallocarray failure keeps the block");
	r = reallocarray(r, 1024, 1024);
	CHECK(r && strcmp(r, "fifteen chars..") == 0, "reallocarray grows and keeps content");
	r = realloc(r, 10);
	CHECK(r && memcmp(r, "fifteen ch", 10) == 0, "realloc shrink keeps content");
	free(r);

	void *u = malloc(100);
	CHECK(malloc_usable_size(u) >= 100, "usable size %zu < 100", malloc_usable_size(u));
	CHECK(malloc_usable_size(NULL) == 0, "usable size of NULL");
	free(u);

	char *s = strdup("hello");
	CHECK(s && strcmp(s, "hello") == 0, "strdup");
	free(s);

	errno = 0;
	void *huge = malloc(SIZE_MAX - 4096);
	CHECK(huge == NULL && errno == ENOMEM, "malloc(huge): %p errno %d", huge, errno);
}

static void test_aligned(void)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	void *p;

	p = aligned_alloc(64, 100);
	CHECK(p && aligned_to(p, 64), "aligned_alloc(64): %p", p);
	free(p);
	p = aligned_alloc(4096, 5000);
	CHECK(p && aligned_to(p, 4096), "aligned_alloc(4096): %p", p);
	p = realloc(p, 100000);
	CHECK(p != NULL, "realloc of an aligned block");
	free(p);
	errno = 0;
	p = aligned_alloc(3, 10);
	CHECK(p == NULL && errno == EINVAL, "aligned_alloc(3): %p errno %d", p, errno);

	p = memalign(32, 10);
	CHECK(p && aligned_to(p, 32), "memalign(32): %p", p);
	free(p);
	p = memalign(48, 10); // glibc rounds up to 64
	CHECK(p && aligned_to(p, 64), "memalign(48): %p", p);
	free(p);
	p = memalign(1, 10);
	CHECK(p != NULL, "memalign(1)");
	free(p);

	p = valloc(10);
	CHECK(p && aligned_to(p, page), "valloc: %p", p);
	free(p);
	p = pvalloc(10);
	CHECK(p && aligned_to(p, page) && malloc_usable_size(p) >= page, "pvalloc: %p usable %zu", p,
	      p ? malloc_usable_size(p) : 0);
	free(p);

	p = NULL;
	int rc = posix_memalign(&p, 256, 1000);
	CHECK(rc == 0 && p && aligned_to(p, 256), "posix_memalign(256): rc %d %p", rc, p);
	free(p);
	rc = posix_memalign(&p, 3, 10);
	CHECK(rc == EINVAL, "posix_memalign(3): rc %d", rc);
	rc = posix_memalign(&p, 4, 10);
	CHECK(rc == EINVAL, "posix_memalign(4) (not a multiple of sizeof(void*)): rc %d", rc);
	rc = posix_memalign(&p, 64, 0);
	CHECK(rc == 0, "posix_memalign(64, 0): rc %d", rc);
	if (rc == 0)
		free(p);
}

// Blocks allocated by glibc before the preload activated.
static void test_early(void)
{
	for (int i = 0; i < 4; i++) {
		unsigned char *p = early_ptrs[i];
		int ok = p != NULL;
		for (size_t k = 0; ok && k < early_sizes[i]; k++)
			ok = p[k] == 'a' + i;
		CHECK(ok, "early block %d content", i);
		CHECK(malloc_usable_size(p) >= early_sizes[i], "early block %d usable size %zu", i,
		      malloc_usable_size(p));
		CHECK(!on_pmem(p), "early block %d must come from glibc, it is on PMEM", i);
	}
	char *q = realloc(early_ptrs[0], 200000);
	int ok = q != NULL;
	for (size_t k = 0; ok && k < early_sizes[0]; k++)
		ok = q[k] == 'a';
	CHECK(ok, "realloc of an early block keeps its content");
	if (strcmp(mode, "fsdax") == 0)
		CHECK(on_pmem(q), "an early block reallocated after activation moves to PMEM");
	free(q);
	for (int i = 1; i < 4; i++)
		free(early_ptrs[i]);
	int bad = 0;
	for (int i = 0; i < 10000; i++) {
		int v;
		memcpy(&v, early_many[i], sizeof v);
		bad += v != i || malloc_usable_size(early_many[i]) < 24;
		if (i % 2)
			early_many[i] = realloc(early_many[i], 5000);
		free(early_many[i]);
	}
	CHECK(bad == 0, "%d of 10000 early blocks damaged", bad);
}

static void test_placement(void)
{
	void *p = malloc(1 << 20);
	memset(p, 1, 1 << 20);
	if (strcmp(mode, "fsdax") == 0) {
		CHECK(on_pmem(p), "fsdax: malloc must return PMEM under %s", pmem_dir);
		CHECK(memkind_loaded(), "fsdax: libmemkind must be loaded");
	} else if (strcmp(mode, "kmem") == 0 || strcmp(mode, "mixed") == 0) {
		CHECK(memkind_loaded(), "%s: libmemkind must be loaded", mode);
	} else if (strcmp(mode, "fallback") == 0) {
		CHECK(!on_pmem(p), "fallback: heap must not be on PMEM");
	} else {
		CHECK(!memkind_loaded(), "plain: libmemkind must not be loaded");
		CHECK(!on_pmem(p), "plain: heap must not be on PMEM");
	}
	free(p);
}

static void test_fork(void)
{
	errno = 0;
	pid_t pid = fork();
	if (pid == 0) {
		char *c = malloc(1000);
		memset(c, 7, 1000);
		free(c);
		_exit(42);
	}
	if (strcmp(mode, "fsdax") == 0 || strcmp(mode, "mixed") == 0) {
		CHECK(pid == -1 && errno == ENOMEM, "fsdax: fork must fail with ENOMEM: pid %d errno %d", pid, errno);
	} else {
		int st = 0;
		CHECK(pid > 0, "fork must work in %s mode: errno %d", mode, errno);
		if (pid > 0) {
			waitpid(pid, &st, 0);
			CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 42, "child status %d", st);
		}
	}
	// posix_spawn (clone + exec) is always allowed.
	pid_t sp;
	char *argv[] = { "true", NULL };
	int rc = posix_spawnp(&sp, "true", NULL, NULL, argv, environ);
	int st = 0;
	if (rc == 0)
		waitpid(sp, &st, 0);
	CHECK(rc == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "posix_spawn: rc %d status %d", rc, st);
}

struct worker {
	unsigned seed;
	int bad;
};

// Random malloc/realloc/free with content checks across threads.
static void *work(void *arg)
{
	struct worker *w = arg;
	enum { SLOTS = 256 };
	unsigned char *slot[SLOTS] = { 0 };
	size_t len[SLOTS] = { 0 };
	for (int i = 0; i < 100000; i++) {
		int k = (int)(rand_r(&w->seed) % SLOTS);
		size_t n = rand_r(&w->seed) % 3 == 0 ? rand_r(&w->seed) % 70000 : rand_r(&w->seed) % 512;
		if (slot[k]) {
			for (size_t j = 0; j < len[k]; j += 61)
				if (slot[k][j] != (unsigned char)(k + len[k]))
					w->bad++;
			if (rand_r(&w->seed) % 2) {
				free(slot[k]);
				slot[k] = NULL;
				continue;
			}
			unsigned char *q = realloc(slot[k], n + 1);
			if (!q) {
				w->bad++;
				continue;
			}
			slot[k] = q;
		} else {
			switch (rand_r(&w->seed) % 3) {
			case 0:
				slot[k] = malloc(n + 1);
				break;
			case 1:
				slot[k] = calloc(1, n + 1);
				break;
			default:
				slot[k] = aligned_alloc(64, n + 1);
			}
			if (!slot[k]) {
				w->bad++;
				continue;
			}
		}
		len[k] = n + 1;
		memset(slot[k], (unsigned char)(k + len[k]), len[k]);
	}
	for (int k = 0; k < SLOTS; k++)
		free(slot[k]);
	return NULL;
}

static void test_threads(void)
{
	pthread_t t[4];
	struct worker w[4];
	for (int i = 0; i < 4; i++) {
		w[i] = (struct worker){ .seed = 1234u + (unsigned)i };
		pthread_create(&t[i], NULL, work, &w[i]);
	}
	int bad = 0;
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		bad += w[i].bad;
	}
	CHECK(bad == 0, "threads: %d corrupted or failed blocks", bad);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: semantics plain|fsdax|kmem [PMEM_DIR]\n");
		return 2;
	}
	mode = argv[1];
	pmem_dir = argc > 2 ? argv[2] : NULL;
	test_early();
	test_basic();
	test_aligned();
	test_placement();
	test_fork();
	test_threads();
	if (failures) {
		fprintf(stderr, "%d of %d checks failed\n", failures, checks);
		return 1;
	}
	printf("PASS %d\n", checks); // flushed by exit(), from a tiered buffer
	return 0;
}
