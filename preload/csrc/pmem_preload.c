// libpmem-preload.so: put the heap of selected processes on PMEM, safely.
//
// Loaded with LD_PRELOAD into every process of a container (shells, grep,
// gosu, exporters...), it activates memkind's memtier tiering only in the
// processes named by PMEM_TARGET_PROCESSES (default "redis-server"), matched
// against the name the kernel recorded at exec (/proc/self/comm). Every other
// process keeps glibc malloc and never loads libmemkind: libmemkind is
// dlopen()ed lazily, by absolute path, from the directory this library was
// loaded from, and only in a target process.
//
// Ownership of pointers. A target process has glibc pointers too: everything
// allocated before our constructor decided (ld.so, libc start-up), everything
// allocated while libmemkind is being loaded and initialised, and whatever
// memkind's own dependencies allocate from inside a memkind call. All of them
// are recorded, at allocation, in a small open-addressing set ("foreign
// set"); free/realloc/malloc_usable_size look a pointer up there (lock-free)
// before handing it to memkind. memkind's own detect-kind is not used for
// this: it walks jemalloc's radix tree and may fault on an address jemalloc
// never saw.
//
// Fork policy (FS_DAX). An FS_DAX heap is a MAP_SHARED file mapping: after
// fork() parent and child share the very same pages and the same allocator
// state, so the child's writes and allocations corrupt the parent (measured:
// both die with SIGSEGV within a second of a Redis BGSAVE). Once an FS_DAX
// tier is active, fork() and _Fork() fail with ENOMEM and log one line to
// stderr naming the cause. posix_spawn/system/popen (CLONE_VM|CLONE_VFORK
// followed by exec) and vfork are left alone: the child does not run the
// app's code on the shared heap. KMEM_DAX and DRAM tiers are anonymous memory
// with normal copy-on-write, so fork is untouched there.
//
// Exit. memkind's destructor would unmap the PMEM/KMEM heap while other
// destructors and stdio's final flush still use it; see disarm_finalize.
//
// Build: gcc -O2 -fPIC -shared -fvisibility=hidden -o libpmem-preload.so
//            pmem_preload.c -ldl -lpthread
// It needs only libc to build and to load (the memtier prototypes are
// declared below; -DPMEM_CHECK_HEADERS checks them against memkind's headers).

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef PMEM_CHECK_HEADERS
#include <memkind.h>
#include <memkind_memtier.h>
#else
struct memkind;
typedef struct memkind *memkind_t;
struct memtier_builder;
struct memtier_memory;
typedef enum memtier_policy_t {
	MEMTIER_POLICY_STATIC_RATIO = 0,
	MEMTIER_POLICY_DYNAMIC_THRESHOLD = 1,
} memtier_policy_t;
#endif

#define EXPORT __attribute__((visibility("default")))

// glibc's allocator under its own names: always libc's, whatever else the
// process links (Debian's redis-server also loads libjemalloc.so.2, which
// exports plain malloc/free; RTLD_NEXT would find that one).
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern pid_t __fork(void);

// ---- the memkind API we use, resolved with dlsym ----------------------------

static struct {
	struct memtier_builder *(*builder_new)(memtier_policy_t);
	void (*builder_delete)(struct memtier_builder *);
	int (*builder_add_tier)(struct memtier_builder *, memkind_t, unsigned);
	struct memtier_memory *(*construct)(struct memtier_builder *);
	void *(*malloc)(struct memtier_memory *, size_t);
	void *(*calloc)(struct memtier_memory *, size_t, size_t);
	void *(*realloc)(struct memtier_memory *, void *, size_t);
	int (*posix_memalign)(struct memtier_memory *, void **, size_t, size_t);
	void (*kind_free)(memkind_t, void *); // memtier_free is an inline over it
	size_t (*usable_size)(void *);
	int (*create_pmem)(const char *, size_t, memkind_t *);
	void (*error_message)(int, char *, size_t);
	memkind_t *kind_default;
	memkind_t *kind_dax_kmem;
} mk;

#ifdef PMEM_CHECK_HEADERS
// Fails to compile if our declarations drift from memkind's.
static __attribute__((unused)) void check_prototypes(void)
{
	mk.builder_new = memtier_builder_new;
	mk.builder_delete = memtier_builder_delete;
	mk.builder_add_tier = memtier_builder_add_tier;
	mk.construct = memtier_builder_construct_memtier_memory;
	mk.malloc = memtier_malloc;
	mk.calloc = memtier_calloc;
	mk.realloc = memtier_realloc;
	mk.posix_memalign = memtier_posix_memalign;
	mk.kind_free = memtier_kind_free;
	mk.usable_size = memtier_usable_size;
	mk.create_pmem = memkind_create_pmem;
	mk.error_message = memkind_error_message;
	mk.kind_default = &MEMKIND_DEFAULT;
	mk.kind_dax_kmem = &MEMKIND_DAX_KMEM;
}
#endif

// ---- state -------------------------------------------------------------------

// ST_EXITING: memkind's destructor has run (process exit). Its heap stays
// mapped (see disarm_finalize) but memkind must not be called any more.
enum { ST_UNDECIDED = 0, ST_PLAIN = 1, ST_TIERED = 2, ST_EXITING = 3 };

static _Atomic int state;
static int fsdax_active;             // an FS_DAX tier is in use: refuse fork
static char fsdax_path[PATH_MAX];    // for the fork refusal message
static char comm[32];                // our process name, for log lines
static struct memtier_memory *memory;
static size_t (*glibc_usable_size)(void *);
static pid_t (*real__Fork)(void);
static atomic_ulong fork_refusals;

// Depth of memkind calls on this thread: allocations made from inside memkind
// (its libraries) go to glibc, so memkind is never re-entered.
static __thread int in_memkind __attribute__((tls_model("initial-exec")));

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
	char buf[768];
	int n = snprintf(buf, sizeof buf, "pmem-preload[%d] %s: ", (int)getpid(), comm);
	va_list ap;
	va_start(ap, fmt);
	if (n > 0 && (size_t)n < sizeof buf)
		n += vsnprintf(buf + n, sizeof buf - n, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof buf - 1)
		n = sizeof buf - 2;
	buf[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
	(void)w;
}

// ---- foreign set: glibc pointers living in a target process ------------------
//
// Open addressing, linear probing. Slots: 0 empty, 1 deleted, else a pointer.
// Lookups are lock-free; inserts, deletes and growth take the mutex. A grown
// table is published with a release store and the old one is never unmapped,
// so a concurrent reader never touches freed memory.

#define SLOT_EMPTY ((uintptr_t)0)
#define SLOT_TOMB ((uintptr_t)1)

struct ftab {
	size_t mask;
	_Atomic uintptr_t *slot;
};

static _Atomic uintptr_t ftab0_slots[4096];
static struct ftab ftab0 = { 4095, ftab0_slots };
static _Atomic(struct ftab *) ftab_cur = &ftab0;
static size_t ftab_filled; // live + tombstones in ftab_cur, under ftab_mu
static size_t ftab_live;
static pthread_mutex_t ftab_mu = PTHREAD_MUTEX_INITIALIZER;

static inline size_t ftab_hash(uintptr_t p, size_t mask)
{
	return (size_t)(((uint64_t)(p >> 4) * 0x9E3779B97F4A7C15ULL) >> 29) & mask;
}

static _Atomic uintptr_t *ftab_find(struct ftab *t, uintptr_t p)
{
	size_t i = ftab_hash(p, t->mask);
	for (size_t n = 0; n <= t->mask; n++, i = (i + 1) & t->mask) {
		uintptr_t v = atomic_load_explicit(&t->slot[i], memory_order_acquire);
		if (v == p)
			return &t->slot[i];
		if (v == SLOT_EMPTY)
			return NULL;
	}
	return NULL;
}

static int ftab_contains(const void *p)
{
	struct ftab *t = atomic_load_explicit(&ftab_cur, memory_order_acquire);
	return ftab_find(t, (uintptr_t)p) != NULL;
}

// Called with ftab_mu held. Rehashes into a table at least 4x the live count.
static int ftab_grow(void)
{
	struct ftab *old = atomic_load_explicit(&ftab_cur, memory_order_relaxed);
	size_t cap = old->mask + 1;
	while (cap < 4 * (ftab_live + 1))
		cap *= 2;
	size_t bytes = sizeof(struct ftab) + cap * sizeof(uintptr_t);
	void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return -1;
	struct ftab *t = mem;
	t->mask = cap - 1;
	t->slot = (_Atomic uintptr_t *)(t + 1);
	for (size_t i = 0; i <= old->mask; i++) {
		uintptr_t v = atomic_load_explicit(&old->slot[i], memory_order_relaxed);
		if (v == SLOT_EMPTY || v == SLOT_TOMB)
			continue;
		size_t j = ftab_hash(v, t->mask);
		while (atomic_load_explicit(&t->slot[j], memory_order_relaxed) != SLOT_EMPTY)
			j = (j + 1) & t->mask;
		atomic_store_explicit(&t->slot[j], v, memory_order_relaxed);
	}
	ftab_filled = ftab_live;
	atomic_store_explicit(&ftab_cur, t, memory_order_release);
	return 0;
}

static int ftab_insert(void *ptr)
{
	uintptr_t p = (uintptr_t)ptr;
	int rc = 0;
	pthread_mutex_lock(&ftab_mu);
	struct ftab *t = atomic_load_explicit(&ftab_cur, memory_order_relaxed);
	if (2 * (ftab_filled + 1) > t->mask + 1) {
		if (ftab_grow() != 0) {
			rc = -1;
			goto out;
		}
		t = atomic_load_explicit(&ftab_cur, memory_order_relaxed);
	}
	size_t i = ftab_hash(p, t->mask);
	for (;;) {
		uintptr_t v = atomic_load_explicit(&t->slot[i], memory_order_relaxed);
		if (v == SLOT_EMPTY || v == SLOT_TOMB) {
			if (v == SLOT_EMPTY)
				ftab_filled++;
			ftab_live++;
			atomic_store_explicit(&t->slot[i], p, memory_order_release);
			break;
		}
		i = (i + 1) & t->mask;
	}
out:
	pthread_mutex_unlock(&ftab_mu);
	return rc;
}

// Removes ptr if it is a recorded glibc pointer; returns whether it was.
static int ftab_remove(void *ptr)
{
	if (!ftab_contains(ptr)) // the common case in a target: a memkind pointer
		return 0;
	int found = 0;
	pthread_mutex_lock(&ftab_mu);
	_Atomic uintptr_t *s = ftab_find(atomic_load_explicit(&ftab_cur, memory_order_relaxed), (uintptr_t)ptr);
	if (s) {
		atomic_store_explicit(s, SLOT_TOMB, memory_order_release);
		ftab_live--;
		found = 1;
	}
	pthread_mutex_unlock(&ftab_mu);
	return found;
}

// A fork while another thread holds ftab_mu would leave it locked forever in
// the child (kmem mode forks for every BGSAVE).
static void ftab_prefork(void) { pthread_mutex_lock(&ftab_mu); }
static void ftab_postfork(void) { pthread_mutex_unlock(&ftab_mu); }

// A glibc allocation in a process that is (or may become) a target must be
// recorded; if it cannot be, it is not handed out at all.
static void *glibc_track(void *p)
{
	if (p && atomic_load_explicit(&state, memory_order_acquire) != ST_PLAIN && ftab_insert(p) != 0) {
		__libc_free(p);
		errno = ENOMEM;
		return NULL;
	}
	return p;
}

static inline int use_memkind(void)
{
	return atomic_load_explicit(&state, memory_order_acquire) == ST_TIERED && in_memkind == 0;
}

// ---- the malloc family ---------------------------------------------------------

static void *mk_malloc(size_t n)
{
	in_memkind++;
	void *p = mk.malloc(memory, n ? n : 1); // memtier 1.14 returns NULL for 0
	in_memkind--;
	if (!p)
		errno = ENOMEM;
	return p;
}

static int mk_memalign(void **out, size_t align, size_t n)
{
	in_memkind++;
	int rc = mk.posix_memalign(memory, out, align, n ? n : 1);
	in_memkind--;
	return rc;
}

static int is_pow2(size_t x) { return x && !(x & (x - 1)); }

EXPORT void *malloc(size_t n)
{
	if (use_memkind())
		return mk_malloc(n);
	return glibc_track(__libc_malloc(n));
}

EXPORT void free(void *p)
{
	if (!p)
		return;
	int st = atomic_load_explicit(&state, memory_order_acquire);
	if (st == ST_PLAIN || ftab_remove(p)) {
		__libc_free(p);
		return;
	}
	if (st == ST_TIERED) {
		in_memkind++;
		mk.kind_free(NULL, p);
		in_memkind--;
		return;
	}
	if (st == ST_EXITING)
		return; // a memkind block during exit: the process is going away
	__libc_free(p); // undecided: every pointer handed out so far is glibc's
}

EXPORT void *calloc(size_t n, size_t size)
{
	size_t total;
	if (__builtin_mul_overflow(n, size, &total)) {
		errno = ENOMEM;
		return NULL;
	}
	if (use_memkind()) {
		in_memkind++;
		void *p = total ? mk.calloc(memory, n, size) : mk.calloc(memory, 1, 1);
		in_memkind--;
		if (!p)
			errno = ENOMEM;
		return p;
	}
	return glibc_track(__libc_calloc(n, size));
}

EXPORT void *realloc(void *p, size_t n)
{
	if (!p)
		return malloc(n);
	if (n == 0) { // glibc semantics: free and return NULL
		free(p);
		return NULL;
	}
	int st = atomic_load_explicit(&state, memory_order_acquire);
	if (st == ST_PLAIN)
		return __libc_realloc(p, n);
	if (ftab_contains(p)) {
		if (use_memkind() && glibc_usable_size) {
			// Move a pre-activation block onto the tiered heap.
			void *q = mk_malloc(n);
			if (!q)
				return NULL;
			size_t old = glibc_usable_size(p);
			memcpy(q, p, old < n ? old : n);
			ftab_remove(p);
			__libc_free(p);
			return q;
		}
		void *q = __libc_realloc(p, n);
		if (q && q != p) {
			ftab_remove(p);
			if (ftab_insert(q) != 0) {
				__libc_free(q);
				errno = ENOMEM;
				return NULL; // p is gone: glibc moved it; nothing else to do
			}
		}
		return q;
	}
	if (st == ST_TIERED) {
		in_memkind++;
		void *q = mk.realloc(memory, p, n);
		in_memkind--;
		if (!q)
			errno = ENOMEM;
		return q;
	}
	if (st == ST_EXITING) {
		// jemalloc's metadata is intact; only memkind's kinds are gone.
		size_t old = mk.usable_size(p);
		void *q = glibc_track(__libc_malloc(n));
		if (q)
			memcpy(q, p, old < n ? old : n);
		return q;
	}
	return __libc_realloc(p, n);
}

EXPORT void *reallocarray(void *p, size_t n, size_t size)
{
	size_t total;
	if (__builtin_mul_overflow(n, size, &total)) {
		errno = ENOMEM;
		return NULL;
	}
	return realloc(p, total);
}

// align: a power of two >= sizeof(void *).
static void *aligned(size_t align, size_t n)
{
	if (use_memkind()) {
		void *p = NULL;
		int rc = mk_memalign(&p, align, n);
		if (rc != 0) {
			errno = rc == EINVAL ? EINVAL : ENOMEM;
			return NULL;
		}
		return p;
	}
	return glibc_track(__libc_memalign(align, n));
}

EXPORT int posix_memalign(void **out, size_t align, size_t n)
{
	if (!is_pow2(align) || align % sizeof(void *) != 0)
		return EINVAL;
	int saved = errno;
	void *p = aligned(align, n);
	if (!p) {
		int rc = errno;
		errno = saved;
		return rc ? rc : ENOMEM;
	}
	*out = p;
	errno = saved;
	return 0;
}

EXPORT void *aligned_alloc(size_t align, size_t n)
{
	if (!is_pow2(align)) {
		errno = EINVAL;
		return NULL;
	}
	return aligned(align < sizeof(void *) ? sizeof(void *) : align, n);
}

EXPORT void *memalign(size_t align, size_t n)
{
	// glibc: a non power of two is rounded up to the next one.
	if (align < sizeof(void *))
		align = sizeof(void *);
	if (!is_pow2(align)) {
		if (align > SIZE_MAX / 2 + 1) {
			errno = EINVAL;
			return NULL;
		}
		size_t a = sizeof(void *);
		while (a < align)
			a <<= 1;
		align = a;
	}
	return aligned(align, n);
}

EXPORT void *valloc(size_t n)
{
	return aligned((size_t)sysconf(_SC_PAGESIZE), n);
}

EXPORT void *pvalloc(size_t n)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	if (n > SIZE_MAX - page) {
		errno = ENOMEM;
		return NULL;
	}
	n = n ? (n + page - 1) & ~(page - 1) : page;
	return aligned(page, n);
}

EXPORT size_t malloc_usable_size(void *p)
{
	if (!p)
		return 0;
	int st = atomic_load_explicit(&state, memory_order_acquire);
	if ((st == ST_TIERED || st == ST_EXITING) && !ftab_contains(p)) {
		in_memkind++;
		size_t n = mk.usable_size(p);
		in_memkind--;
		return n;
	}
	if (!glibc_usable_size) // called before our constructor
		*(void **)(&glibc_usable_size) = dlvsym(RTLD_NEXT, "malloc_usable_size", "GLIBC_2.2.5");
	return glibc_usable_size ? glibc_usable_size(p) : 0;
}

// ---- fork policy -----------------------------------------------------------------

static pid_t refuse_fork(void)
{
	unsigned long n = atomic_fetch_add(&fork_refusals, 1) + 1;
	// First refusal, then at powers of two: a Redis retrying BGSAVE every
	// few seconds must not flood the log.
	if (is_pow2(n))
		logf_("refusing fork() (refusal #%lu): the heap is on FS_DAX PMEM (%s), a MAP_SHARED file "
		      "mapping without copy-on-write, so a child would corrupt the parent's heap. "
		      "Run without fork-based persistence (redis: --save '' --appendonly no, no replicas) "
		      "or use pmem mode kmem",
		      n, fsdax_path);
	errno = ENOMEM;
	return -1;
}

static int heap_is_shared(void)
{
	return fsdax_active && atomic_load_explicit(&state, memory_order_acquire) >= ST_TIERED;
}

EXPORT pid_t fork(void)
{
	if (heap_is_shared())
		return refuse_fork();
	return __fork();
}

EXPORT pid_t _Fork(void)
{
	if (heap_is_shared())
		return refuse_fork();
	if (!real__Fork) // called before our constructor
		*(void **)(&real__Fork) = dlvsym(RTLD_NEXT, "_Fork", "GLIBC_2.34");
	if (!real__Fork) {
		errno = ENOSYS;
		return -1;
	}
	return real__Fork();
}

// ---- configuration -----------------------------------------------------------------

enum kind { K_DRAM, K_FS_DAX, K_KMEM_DAX };

struct tier {
	enum kind kind;
	char path[PATH_MAX];
	size_t size_limit;
	unsigned ratio;
};

#define MAX_TIERS 4

struct config {
	struct tier tier[MAX_TIERS];
	int ntiers;
	memtier_policy_t policy;
};

static int parse_uint(const char *s, unsigned long long *out)
{
	if (!*s)
		return -1;
	unsigned long long v = 0;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		if (v > (ULLONG_MAX - 9) / 10)
			return -1;
		v = v * 10 + (unsigned)(*s - '0');
	}
	*out = v;
	return 0;
}

// Parses memkind's MEMKIND_MEM_TIERS syntax, e.g.
//   KIND:DRAM,RATIO:1;KIND:FS_DAX,PATH:/mnt/pmem,PMEM_SIZE_LIMIT:1073741824,RATIO:4;POLICY:STATIC_RATIO
// into cfg. On error writes a message naming the offending item to err.
static int parse_tiers(const char *env, struct config *cfg, char *err, size_t errlen)
{
	char buf[4096];
	if (strlen(env) >= sizeof buf) {
		snprintf(err, errlen, "longer than %zu bytes", sizeof buf - 1);
		return -1;
	}
	strcpy(buf, env);
	memset(cfg, 0, sizeof *cfg);
	cfg->policy = MEMTIER_POLICY_STATIC_RATIO;
	char *save1 = NULL;
	for (char *seg = strtok_r(buf, ";", &save1); seg; seg = strtok_r(NULL, ";", &save1)) {
		if (strncmp(seg, "POLICY:", 7) == 0) {
			const char *p = seg + 7;
			if (strcmp(p, "STATIC_RATIO") == 0)
				cfg->policy = MEMTIER_POLICY_STATIC_RATIO;
			else if (strcmp(p, "DYNAMIC_THRESHOLD") == 0)
				cfg->policy = MEMTIER_POLICY_DYNAMIC_THRESHOLD;
			else {
				snprintf(err, errlen, "POLICY %.64s: allowed STATIC_RATIO, DYNAMIC_THRESHOLD", p);
				return -1;
			}
			continue;
		}
		if (cfg->ntiers == MAX_TIERS) {
			snprintf(err, errlen, "more than %d tiers", MAX_TIERS);
			return -1;
		}
		struct tier *t = &cfg->tier[cfg->ntiers];
		int have_kind = 0;
		t->ratio = 1;
		char *save2 = NULL;
		for (char *kv = strtok_r(seg, ",", &save2); kv; kv = strtok_r(NULL, ",", &save2)) {
			char *val = strchr(kv, ':');
			if (!val) {
				snprintf(err, errlen, "tier %d: %.64s is not KEY:VALUE", cfg->ntiers + 1, kv);
				return -1;
			}
			*val++ = '\0';
			unsigned long long u;
			if (strcmp(kv, "KIND") == 0) {
				if (strcmp(val, "DRAM") == 0)
					t->kind = K_DRAM;
				else if (strcmp(val, "FS_DAX") == 0)
					t->kind = K_FS_DAX;
				else if (strcmp(val, "KMEM_DAX") == 0 || strcmp(val, "DAX_KMEM") == 0)
					t->kind = K_KMEM_DAX;
				else {
					snprintf(err, errlen, "tier %d: KIND %.64s: allowed DRAM, FS_DAX, KMEM_DAX",
						 cfg->ntiers + 1, val);
					return -1;
				}
				have_kind = 1;
			} else if (strcmp(kv, "PATH") == 0) {
				if (val[0] != '/' || strlen(val) >= sizeof t->path) {
					snprintf(err, errlen, "tier %d: PATH %.64s: must be an absolute directory",
						 cfg->ntiers + 1, val);
					return -1;
				}
				strcpy(t->path, val);
			} else if (strcmp(kv, "PMEM_SIZE_LIMIT") == 0) {
				if (parse_uint(val, &u) != 0) {
					snprintf(err, errlen, "tier %d: PMEM_SIZE_LIMIT %.64s: must be a decimal byte count",
						 cfg->ntiers + 1, val);
					return -1;
				}
				t->size_limit = (size_t)u;
			} else if (strcmp(kv, "RATIO") == 0) {
				if (parse_uint(val, &u) != 0 || u == 0 || u > 1000000) {
					snprintf(err, errlen, "tier %d: RATIO %.64s: must be an integer in 1..1000000",
						 cfg->ntiers + 1, val);
					return -1;
				}
				t->ratio = (unsigned)u;
			} else {
				snprintf(err, errlen, "tier %d: unknown key %.64s (allowed KIND, PATH, PMEM_SIZE_LIMIT, RATIO)",
					 cfg->ntiers + 1, kv);
				return -1;
			}
		}
		if (!have_kind) {
			snprintf(err, errlen, "tier %d: KIND missing", cfg->ntiers + 1);
			return -1;
		}
		if (t->kind == K_FS_DAX && !t->path[0]) {
			snprintf(err, errlen, "tier %d: FS_DAX needs PATH", cfg->ntiers + 1);
			return -1;
		}
		cfg->ntiers++;
	}
	if (cfg->ntiers == 0) {
		snprintf(err, errlen, "no tier");
		return -1;
	}
	return 0;
}

// Whether our process name (/proc/self/comm: what the kernel recorded at exec,
// at most 15 bytes) is in the comma list.
static int is_target(const char *list)
{
	size_t clen = strlen(comm);
	const char *s = list;
	while (*s) {
		const char *e = strchr(s, ',');
		size_t len = e ? (size_t)(e - s) : strlen(s);
		// Names longer than 15 bytes are truncated by the kernel.
		if ((len == clen && strncmp(s, comm, len) == 0) || (len > 15 && clen == 15 && strncmp(s, comm, 15) == 0))
			return 1;
		if (!e)
			break;
		s = e + 1;
	}
	return 0;
}

static void read_comm(void)
{
	int fd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		strcpy(comm, "?");
		return;
	}
	ssize_t n = read(fd, comm, sizeof comm - 1);
	close(fd);
	if (n <= 0)
		n = 0;
	comm[n] = '\0';
	char *nl = strchr(comm, '\n');
	if (nl)
		*nl = '\0';
}

#define RESOLVE(field, name)                                              \
	do {                                                              \
		*(void **)(&mk.field) = dlsym(h, name);                   \
		if (!mk.field) {                                          \
			logf_("%s: symbol %s missing; heap stays on DRAM", lib, name); \
			return -1;                                        \
		}                                                         \
	} while (0)

static int disarm_finalize(void *h);

static int load_memkind(void)
{
	Dl_info info;
	char lib[PATH_MAX];
	if (!dladdr((void *)load_memkind, &info) || !info.dli_fname || info.dli_fname[0] != '/') {
		logf_("cannot find the directory of libpmem-preload.so (LD_PRELOAD must be an absolute path); heap stays on DRAM");
		return -1;
	}
	const char *slash = strrchr(info.dli_fname, '/');
	int n = snprintf(lib, sizeof lib, "%.*s/libmemkind.so.0", (int)(slash - info.dli_fname), info.dli_fname);
	if (n < 0 || (size_t)n >= sizeof lib)
		return -1;
	void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		logf_("cannot load %s: %s; heap stays on DRAM", lib, dlerror());
		return -1;
	}
	RESOLVE(builder_new, "memtier_builder_new");
	RESOLVE(builder_delete, "memtier_builder_delete");
	RESOLVE(builder_add_tier, "memtier_builder_add_tier");
	RESOLVE(construct, "memtier_builder_construct_memtier_memory");
	RESOLVE(malloc, "memtier_malloc");
	RESOLVE(calloc, "memtier_calloc");
	RESOLVE(realloc, "memtier_realloc");
	RESOLVE(posix_memalign, "memtier_posix_memalign");
	RESOLVE(kind_free, "memtier_kind_free");
	RESOLVE(usable_size, "memtier_usable_size");
	RESOLVE(create_pmem, "memkind_create_pmem");
	RESOLVE(error_message, "memkind_error_message");
	RESOLVE(kind_default, "MEMKIND_DEFAULT");
	RESOLVE(kind_dax_kmem, "MEMKIND_DAX_KMEM");
	if (disarm_finalize(h) != 0) {
		logf_("%s: unsupported memkind build (cannot keep the heap mapped until exit); heap stays on DRAM", lib);
		return -1;
	}
	return 0;
}

// memkind's destructor (memkind_finalize) calls ops->finalize for every kind,
// which for PMEM and KMEM kinds destroys their jemalloc arenas and unmaps the
// heap. At exit that pulls the memory from under everything that still runs:
// other destructors, stdio's final flush of buffers that live on this heap
// (stdout output vanished with EFAULT, measured). We replace the finalize
// slot of the two ops tables we use with keep_heap_at_exit, which leaves the
// heap mapped and tells our wrappers to stop calling memkind.
// struct memkind_ops is internal to memkind, so the slot is located, not
// assumed: it is the slot after the allocation functions that holds
// memkind_pmem_destroy (finalize == destroy for PMEM), and the layout is
// checked against exported functions first. If anything does not match,
// tiering is not activated.
static int keep_heap_at_exit(struct memkind *kind)
{
	(void)kind;
	atomic_store_explicit(&state, ST_EXITING, memory_order_release);
	return 0;
}

#define OPS_SLOTS 24 // sizeof(struct memkind_ops) / sizeof(void *) in memkind 1.14

static int disarm_finalize(void *h)
{
	void **pmem = dlsym(h, "MEMKIND_PMEM_OPS");
	void **kmem = dlsym(h, "MEMKIND_DAX_KMEM_OPS");
	void *destroy = dlsym(h, "memkind_pmem_destroy");
	void *am = dlsym(h, "memkind_arena_malloc");
	void *af = dlsym(h, "memkind_arena_free");
	if (!pmem || !kmem || !destroy || !am || !af || pmem[1] != destroy || pmem[2] != am || pmem[6] != af ||
	    kmem[2] != am || kmem[6] != af)
		return -1;
	int slot = -1;
	for (int i = 7; i < OPS_SLOTS; i++) {
		if (pmem[i] == destroy) {
			if (slot >= 0)
				return -1;
			slot = i;
		}
	}
	if (slot < 0)
		return -1;
	pmem[slot] = (void *)keep_heap_at_exit;
	if (kmem[slot])
		kmem[slot] = (void *)keep_heap_at_exit;
	return 0;
}

static const char *kind_name(enum kind k)
{
	switch (k) {
	case K_DRAM:
		return "DRAM";
	case K_FS_DAX:
		return "FS_DAX";
	default:
		return "KMEM_DAX";
	}
}

static int activate(const struct config *cfg)
{
	if (load_memkind() != 0)
		return -1;
	struct memtier_builder *b = mk.builder_new(cfg->policy);
	if (!b) {
		logf_("memtier_builder_new failed; heap stays on DRAM");
		return -1;
	}
	char desc[512] = "";
	int fsdax = 0;
	for (int i = 0; i < cfg->ntiers; i++) {
		const struct tier *t = &cfg->tier[i];
		memkind_t kind = NULL;
		switch (t->kind) {
		case K_DRAM:
			kind = *mk.kind_default;
			break;
		case K_KMEM_DAX:
			kind = *mk.kind_dax_kmem;
			break;
		case K_FS_DAX: {
			int err = mk.create_pmem(t->path, t->size_limit, &kind);
			if (err) {
				char msg[256];
				mk.error_message(err, msg, sizeof msg);
				logf_("FS_DAX tier on %s (limit %zu bytes): %s; heap stays on DRAM", t->path, t->size_limit, msg);
				mk.builder_delete(b);
				return -1;
			}
			fsdax = 1;
			snprintf(fsdax_path, sizeof fsdax_path, "%s", t->path);
			break;
		}
		}
		if (mk.builder_add_tier(b, kind, t->ratio) != 0) {
			logf_("cannot add %s tier; heap stays on DRAM", kind_name(t->kind));
			mk.builder_delete(b);
			return -1;
		}
		size_t l = strlen(desc);
		snprintf(desc + l, sizeof desc - l, "%s%s%s%s ratio %u", l ? ", " : "", kind_name(t->kind),
			 t->kind == K_FS_DAX ? " " : "", t->kind == K_FS_DAX ? t->path : "", t->ratio);
	}
	memory = mk.construct(b);
	mk.builder_delete(b);
	if (!memory) {
		logf_("memtier_builder_construct_memtier_memory failed (for KMEM_DAX: is there a PMEM NUMA node?); "
		      "heap stays on DRAM");
		return -1;
	}
	fsdax_active = fsdax;
	logf_("heap tiered: %s%s", desc, fsdax ? "; fork() is refused while the heap is on FS_DAX" : "");
	return 0;
}

// Runs before the program's own constructors and main. Allocations made
// before it (ld.so, libc start-up, other libraries' constructors) went to
// glibc and were recorded.
__attribute__((constructor(101))) static void pmem_preload_init(void)
{
	read_comm();
	*(void **)(&glibc_usable_size) = dlvsym(RTLD_NEXT, "malloc_usable_size", "GLIBC_2.2.5");
	*(void **)(&real__Fork) = dlvsym(RTLD_NEXT, "_Fork", "GLIBC_2.34");

	const char *tiers = getenv("MEMKIND_MEM_TIERS");
	const char *targets = getenv("PMEM_TARGET_PROCESSES");
	if (!targets || !*targets)
		targets = "redis-server";
	if (!tiers || !*tiers || !is_target(targets)) {
		atomic_store_explicit(&state, ST_PLAIN, memory_order_release);
		return;
	}
	struct config cfg;
	char err[256];
	if (parse_tiers(tiers, &cfg, err, sizeof err) != 0) {
		logf_("MEMKIND_MEM_TIERS=%.200s: %s; heap stays on DRAM", tiers, err);
		atomic_store_explicit(&state, ST_PLAIN, memory_order_release);
		return;
	}
	// Still undecided while memkind loads: its allocations go to glibc and
	// are recorded.
	pthread_atfork(ftab_prefork, ftab_postfork, ftab_postfork);
	if (activate(&cfg) != 0) {
		fsdax_active = 0;
		atomic_store_explicit(&state, ST_PLAIN, memory_order_release);
		return;
	}
	atomic_store_explicit(&state, ST_TIERED, memory_order_release);
}
