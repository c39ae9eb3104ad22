// libpmem-preload.so: page-level placement of a target process's heap on PMEM.
//
// Why page level. Allocators differ (Debian's redis links libjemalloc.so.2,
// the official image bundles a static je_ jemalloc, Alpine builds use musl),
// but all of them get their pages with mmap/munmap/madvise/mremap through the
// PLT. Interposing those four reaches every dynamically linked allocator; a
// malloc interposer reaches only the first kind.
//
// Why freestanding. LD_PRELOAD is container-wide: this library loads into the
// entrypoint shell, gosu, grep... of images built on any libc. It therefore
// has no DT_NEEDED and no versioned symbol at all (built with -nostdlib
// -ffreestanding): system calls are raw (inline asm), the only libc symbols
// it touches are weak and unversioned (__errno_location, __register_atfork,
// pthread_atfork), which glibc of any version and musl all resolve.
//
// Activation. Only in a process whose /proc/self/comm is listed in
// PMEM_TARGET_PROCESSES (comma list, default "redis-server,valkey-server").
// Elsewhere every interposed call is the bare system call (pthread_sigmask
// and sigprocmask, also interposed, with the libc's semantics: see "the
// signal mask").
//
// Threads. At its first fork an FS_DAX target starts one thread of the
// preload's own, which writes the heap back after the children (see "the
// write-back thread").
//
// Configuration: MEMKIND_MEM_TIERS as the webhook writes it (memkind syntax),
// read from /proc/self/environ (no getenv: no libc).
//   FS_DAX:   a VA range of PMEM_SIZE_LIMIT bytes (0: 64 GiB) is reserved
//             PROT_NONE; one sparse file PATH/pmem-heap.<pid> backs it with
//             file offset == address - base, so neighbouring extents merge
//             into one VMA. The file is unlinked at once: a crashed or killed
//             process never leaks PMEM capacity on the volume.
//             Private anonymous RW mmaps are served MAP_SHARED|MAP_FIXED
//             from the range; munmap/madvise(DONTNEED|FREE|REMOVE) punch a
//             hole (allocators expect zeros) and re-reserve PROT_NONE.
//   KMEM_DAX: set_mempolicy(MPOL_BIND) to the PMEM NUMA nodes (CPU-less
//             nodes, or MEMKIND_DAX_KMEM_NODES); with a DRAM tier,
//             MPOL_WEIGHTED_INTERLEAVE over DRAM and PMEM nodes in the ratio.
//   DRAM tier beside FS_DAX: each request goes to DRAM or the file so that
//             mapped bytes follow the ratio.
//
// Fork (FS_DAX). A MAP_SHARED heap must never be shared with a child. The
// atfork prepare handler remaps every heap extent MAP_PRIVATE|MAP_FIXED over
// the same file offsets: earlier stores are in the file, later ones on either
// side copy into private DRAM pages. While a child may still read the file
// the parent never writes it (an untouched private page of the child reads
// through to the file): new requests are anonymous memory in the range and frees
// replace pages with anonymous zero pages instead of punching. The child never
// touches the file. After the last child exits (pipe EOF), the parent writes
// its copied pages back and remaps the heap shared (see "back to shared";
// its pre-copy may finish a batch after a new fork: it writes only offsets
// where the parent, and so the new child, has a private copy).
//
// Observability: one stderr line at activation and a status file
// PATH/pmem-status.<container>.<pid> (key=value lines), rewritten with pwrite
// when the mapped bytes moved by >= 4 MiB, on fallback and on fork: bounded
// cost. <container> is PMEM_CONTAINER_NAME, which the webhook sets to the
// container's name: two containers of a pod share the volume but not the pid
// namespace (both are pid 1), so the pid alone would name one file for both.
// Without it (an older injection), or if it is not a DNS label ([a-z0-9-],
// at most 63), the file is PATH/pmem-status.<pid>.

typedef unsigned long size_t;
typedef long ssize_t;
typedef unsigned long uintptr_t;
typedef unsigned long uint64_t;
typedef int pid_t;
typedef long off_t;

#define EXPORT __attribute__((visibility("default")))
#define HIDDEN __attribute__((visibility("hidden")))

// ---- raw system calls ----------------------------------------------------------

#if defined(__x86_64__)
enum {
	SYS_read = 0, SYS_write = 1, SYS_open = 2, SYS_close = 3, SYS_fstat = 5,
	SYS_mmap = 9, SYS_munmap = 11, SYS_mremap = 25, SYS_madvise = 28,
	SYS_getpid = 39, SYS_getppid = 110, SYS_getsid = 124, SYS_ftruncate = 77, SYS_unlink = 87, SYS_set_mempolicy = 238,
	SYS_openat = 257, SYS_fallocate = 285, SYS_pipe2 = 293, SYS_pwrite64 = 18,
	SYS_pread64 = 17, SYS_getdents64 = 217, SYS_tgkill = 234, SYS_rt_sigaction = 13,
	SYS_gettid = 186, SYS_clock_gettime = 228, SYS_sched_yield = 24,
	SYS_geteuid = 107, SYS_mkdirat = 258, SYS_fchmod = 91, SYS_ioctl = 16, SYS_userfaultfd = 323, SYS_rt_sigprocmask = 14, SYS_futex = 202,
	SYS_clone = 56, SYS_exit = 60, SYS_prctl = 157, SYS_ppoll = 271, SYS_fcntl = 72,
	SYS_readv = 19, SYS_rt_sigtimedwait = 128,
};
static long sc6(long n, long a, long b, long c, long d, long e, long f)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}
#elif defined(__aarch64__)
enum {
	SYS_read = 63, SYS_write = 64, SYS_close = 57, SYS_fstat = 80,
	SYS_mmap = 222, SYS_munmap = 215, SYS_mremap = 216, SYS_madvise = 233,
	SYS_getpid = 172, SYS_getppid = 173, SYS_getsid = 156, SYS_ftruncate = 46, SYS_unlinkat = 35, SYS_set_mempolicy = 237,
	SYS_openat = 56, SYS_fallocate = 47, SYS_pipe2 = 59, SYS_pwrite64 = 68,
	SYS_geteuid = 175, SYS_mkdirat = 34, SYS_fchmod = 52, SYS_ioctl = 29, SYS_userfaultfd = 282, SYS_rt_sigprocmask = 135, SYS_futex = 98,
	SYS_clone = 220, SYS_exit = 93, SYS_prctl = 167, SYS_ppoll = 73, SYS_fcntl = 25,
	SYS_readv = 65, SYS_rt_sigtimedwait = 137,
	SYS_pread64 = 67, SYS_getdents64 = 61, SYS_tgkill = 131, SYS_rt_sigaction = 134,
	SYS_gettid = 178, SYS_clock_gettime = 113, SYS_sched_yield = 124,
};
static long sc6(long n, long a, long b, long c, long d, long e, long f)
{
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;
	register long x4 __asm__("x4") = e;
	register long x5 __asm__("x5") = f;
	__asm__ volatile("svc 0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
			 : "memory");
	return x0;
}
#else
#error "libpmem-preload: x86_64 or aarch64 only"
#endif

#define sc(n, a, b, c) sc6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)

// Flags. Most are the same on x86_64 and aarch64; O_DIRECTORY and
// O_NOFOLLOW are not (TestKernelConstants compares every one with the
// target libc's headers).
#define PROT_NONE 0
#define PROT_READ 1
#define PROT_WRITE 2
#define MAP_SHARED 0x01
#define MAP_PRIVATE 0x02
#define MAP_TYPE 0x0f
#define MAP_FIXED 0x10
#define MAP_ANONYMOUS 0x20
#define MAP_GROWSDOWN 0x100
#define MAP_NORESERVE 0x4000
#define MAP_STACK 0x20000
#define MAP_HUGETLB 0x40000
#define MAP_FIXED_NOREPLACE 0x100000
#define MAP_FAILED ((void *)-1)
#define MREMAP_MAYMOVE 1
#define MREMAP_FIXED 2
#define MADV_FREE 8
#define MADV_REMOVE 9
#define MADV_DONTNEED 4
#define O_RDONLY 0
#define O_RDWR 2
#define O_CREAT 0100
#define O_EXCL 0200
#define O_NONBLOCK 04000
#define O_CLOEXEC 02000000
#ifdef __aarch64__
#define O_DIRECTORY 040000
#define O_NOFOLLOW 0100000
#else
#define O_DIRECTORY 0200000
#define O_NOFOLLOW 0400000
#endif
#define O_PATH 010000000
#define AT_FDCWD (-100)
#define FALLOC_FL_KEEP_SIZE 1
#define FALLOC_FL_PUNCH_HOLE 2
#define EAGAIN 11
#define ENOMEM 12
#define EINVAL 22
#define EPERM 1
#define ESRCH 3
#define EACCES 13
#define EROFS 30
#define ENOENT 2
#define ENOTDIR 20
#define EFBIG 27
#define ENOSPC 28
#define MPOL_PREFERRED 1
#define MPOL_BIND 2
#define MPOL_INTERLEAVE 3
#define MPOL_PREFERRED_MANY 5
#define MPOL_WEIGHTED_INTERLEAVE 6
#define SIG_BLOCK 0
#define SIG_UNBLOCK 1
#define SIG_SETMASK 2
#define SIGKILL 9
#define SIGSTOP 19
#define CLONE_VM 0x100
#define CLONE_FS 0x200
#define CLONE_FILES 0x400
#define CLONE_SIGHAND 0x800
#define CLONE_THREAD 0x10000
#define CLONE_SYSVSEM 0x40000
#define PR_SET_NAME 15
#define F_DUPFD_CLOEXEC 1030
#define POLLIN 1

#define PAGE 4096UL

// errno through the one libc function both glibc and musl export for it.
extern int *__errno_location(void) __attribute__((weak));
extern int __register_atfork(void (*)(void), void (*)(void), void (*)(void), void *) __attribute__((weak));
extern int pthread_atfork(void (*)(void), void (*)(void), void (*)(void)) __attribute__((weak));

static long set_errno(long r)
{
	if (r < 0 && r > -4096) {
		if (__errno_location)
			*__errno_location() = (int)-r;
		return -1;
	}
	return r;
}

static int sys_open(const char *p, int fl, int mode)
{
	return (int)sc6(SYS_openat, AT_FDCWD, (long)p, fl, mode, 0, 0);
}
static void *sys_mmap(void *a, size_t l, int prot, int fl, int fd, off_t off)
{
	return (void *)sc6(SYS_mmap, (long)a, (long)l, prot, fl, fd, off);
}
static int is_err(void *p) { return (uintptr_t)p > (uintptr_t)-4096; }
static int sys_unlink(const char *p)
{
#ifdef __x86_64__
	return (int)sc(SYS_unlink, p, 0, 0);
#else
	return (int)sc(SYS_unlinkat, AT_FDCWD, p, 0);
#endif
}

// gcc may emit calls to these even with -fno-builtin (struct copies).
HIDDEN void *memcpy(void *d, const void *s, size_t n)
{
	char *dd = d;
	const char *ss = s;
	while (n--)
		*dd++ = *ss++;
	return d;
}
HIDDEN void *memset(void *d, int c, size_t n)
{
	char *dd = d;
	while (n--)
		*dd++ = (char)c;
	return d;
}
static void copy_pages(void *d, const void *s, size_t n)
{
	uint64_t *dd = d;
	const uint64_t *ss = s;
	for (n /= 8; n; n--)
		*dd++ = *ss++;
}

// ---- tiny string helpers ---------------------------------------------------------

static size_t slen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}
static int prefix(const char *s, size_t n, const char *p)
{
	size_t pl = slen(p);
	if (pl > n)
		return 0;
	for (size_t i = 0; i < pl; i++)
		if (s[i] != p[i])
			return 0;
	return 1;
}

struct buf {
	char b[1536]; // the status file at its longest (paths, reasons) is ~1.1 KiB
	size_t n;
};
static void bput(struct buf *b, const char *s, size_t n)
{
	for (size_t i = 0; i < n && b->n < sizeof b->b - 1; i++)
		b->b[b->n++] = s[i];
}
static void bs(struct buf *b, const char *s) { bput(b, s, slen(s)); }
static void bu(struct buf *b, unsigned long v)
{
	char t[24];
	int i = 24;
	do {
		t[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	bput(b, t + i, 24 - i);
}

static int parse_u(const char *s, size_t n, unsigned long *out)
{
	unsigned long v = 0;
	if (n == 0 || n > 19)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	*out = v;
	return 0;
}

// ---- state -----------------------------------------------------------------------

enum mode { OFF, FSDAX, KMEM };

static struct {
	int mode;
	char comm[17];
	char path[256];   // FS_DAX dir (PATH)
	char dir[264];    // where the heap file went: PATH or PATH/heap
	char container[64]; // PMEM_CONTAINER_NAME if a DNS label, else ""
	char status[352];   // status file path: dir, "/pmem-status.", container, ".", pid
	char why[200];    // why not placed, if so
	int fd;           // heap file
	int status_fd;
	char *base;       // reserved range
	size_t size;
	uint64_t *bits;   // 1 = page in use (mapped from the file, or deferred)
	size_t npages, hint;
	size_t nwords;    // words of bits ever used: the restore's bitmap scans stop here
	unsigned dram_ratio, pmem_ratio;
	int lock;
	unsigned long lock_waits;      // futex waits for the lock, ever
	unsigned long lock_waits_last; // ... during the last write-back's pauses and gaps
	// counters (under lock)
	size_t mapped, dram_bytes, fallback_bytes, fallback_calls, last_written;
	unsigned long forks;
	int privat;  // heap extents are MAP_PRIVATE since a fork: never write the file
	int child;   // we are a forked child
	uint64_t *zbits; // private mode: page replaced by anonymous zeros (punch at restore)
	uint64_t *dbits; // private mode: page freed, offset kept out of use (punch at restore)
	int kids[8];     // read ends of one pipe per child that may still map the file
	int nkids;
	int norestore;   // the heap stays private for good (reason in why)
	unsigned long restores, restore_fail, calls_since_try, restore_max_ms;
	// The last write-back, split into phases (µs), to see where a pause goes.
	// Sums over the pauses of the last write-back (stop + write + remap =
	// pause), its longest single pause, how many, and the time the threads
	// ran between them (gaps).
	unsigned long ph_precopy, ph_stop, ph_write, ph_remap, ph_punch, ph_pause;
	unsigned long ph_longest, ph_longest_stop, ph_gaps, pauses; // longest_stop: its stop phase
	unsigned long stop_retries; // pauses given up because stopping the threads took too long
	unsigned long bytes_pause, bytes_precopy, rounds_precopy;
	long budget_us;        // a pause writes until this much of it is used (PMEM_PAUSE_BUDGET_US)
	int restoring;         // one thread is in try_restore (maybe without the lock)
	int noprecopy;         // PMEM_PRECOPY=0: the whole write-back in the pause
	unsigned long moves, move_fails; // remap_shared: mremap moved / could not move
	int scrap;             // try_restore moved private copies to scratch: free them
	int uffd_close;        // then close this userfaultfd + 1 (0: none)
	char *scratch;         // PROT_NONE range of size bytes: remap_shared moves private maps here
	size_t scr_lo, scr_hi; // pages of scratch in use until scrap_scratch
	int pid;
	int ppid;         // a forked child: its parent's pid at the fork
	int orphan_noted; // a forked child: its parent's exit was looked into
	unsigned long nodes_pmem, nodes_dram;
	// The write-back thread (see "the write-back thread"): its tid, or 0
	// (not started: no fork yet, a forked child, or clone failed: then
	// wb_err is the errno and the write-back runs in interposed calls).
	int wb_tid;
	long wb_err;  // > 0: clone's errno; -1: PMEM_WRITEBACK_THREAD=0
	int last_by; // the last write-back ran on: 0 none yet, 1 the write-back thread, 2 an application thread
} st;

static void cpu_relax(void)
{
#ifdef __x86_64__
	__asm__ volatile("pause");
#else
	__asm__ volatile("yield");
#endif
}

// Raw futex calls (async-signal-safe, no allocation). Paused threads, the
// pausing thread and threads waiting for the lock sleep in them.
#define FUTEX_WAIT_PRIVATE 128
#define FUTEX_WAKE_PRIVATE 129
// futex_wait sleeps while *w == v, at most ns nanoseconds. The timespec's
// nanoseconds must stay below 1e9 (else EINVAL and no wait at all: a gap
// after a pause of a second or more would vanish).
static void futex_wait(int *w, int v, long ns)
{
	long ts[2] = {ns / 1000000000L, ns % 1000000000L};
	sc6(SYS_futex, (long)w, FUTEX_WAIT_PRIVATE, v, (long)ts, 0, 0);
}
static void futex_wake_n(int *w, int n) { sc6(SYS_futex, (long)w, FUTEX_WAKE_PRIVATE, n, 0, 0, 0); }
static void futex_wake(int *w) { futex_wake_n(w, 0x7fffffff); }

// The lock: a three-state futex mutex (0 free, 1 held, 2 held and maybe
// waited for; Drepper, "Futexes Are Tricky", mutex 3). It is held for
// microseconds in the interposed calls, so a waiter spins briefly first;
// but the write-back holds it across its whole sequence of short pauses
// and the gaps between them (milliseconds), and a waiter spinning through
// a gap would take a core from the application threads the gap is for.
static void lock(void)
{
	int c = 0;
	if (__atomic_compare_exchange_n(&st.lock, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
		return;
	for (int k = 0; k < 200; k++) {
		cpu_relax();
		c = 0;
		if (__atomic_load_n(&st.lock, __ATOMIC_RELAXED) == 0 &&
		    __atomic_compare_exchange_n(&st.lock, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			return;
	}
	// 2: the holder must wake someone at unlock. Each wait is bounded
	// (50 ms) and followed by another try, so a lost wake-up only costs time.
	while (__atomic_exchange_n(&st.lock, 2, __ATOMIC_ACQUIRE) != 0) {
		__atomic_add_fetch(&st.lock_waits, 1, __ATOMIC_RELAXED);
		futex_wait(&st.lock, 2, 50000000);
	}
}
static void unlock(void)
{
	if (__atomic_exchange_n(&st.lock, 0, __ATOMIC_RELEASE) == 2)
		futex_wake_n(&st.lock, 1);
}

static void logline(struct buf *b)
{
	bs(b, "\n");
	sc(SYS_write, 2, b->b, b->n);
}
static void logp(struct buf *b)
{
	bs(b, "pmem-preload[");
	bu(b, (unsigned long)st.pid);
	bs(b, "] ");
	bs(b, st.comm);
	bs(b, ": ");
}

// write_status rewrites the status file. Called with the lock held.
static void write_status(void)
{
	if (st.status_fd < 0)
		return;
	struct buf b = {.n = 0};
	static const char *modes[] = {"off", "fsdax", "kmem"};
	bs(&b, "pid=");
	bu(&b, (unsigned long)st.pid);
	bs(&b, "\ncomm=");
	bs(&b, st.comm);
	bs(&b, "\nmode=");
	bs(&b, modes[st.mode]);
	bs(&b, "\nmechanism=");
	bs(&b, st.mode == FSDAX ? "page-level mmap from file" : "set_mempolicy");
	bs(&b, "\npath=");
	bs(&b, st.dir);
	bs(&b, "\nlimit_bytes=");
	bu(&b, st.size);
	bs(&b, "\nbytes_mapped_pmem=");
	bu(&b, st.mapped);
	// What the file really holds: allocated blocks (resident on PMEM).
	struct {
		unsigned long pad[8];
		long blocks;
		unsigned long pad2[9];
	} sb;
	long fr = sc(SYS_fstat, st.fd, &sb, 0);
	bs(&b, "\nbytes_resident_pmem=");
	bu(&b, fr == 0 ? (unsigned long)sb.blocks * 512 : 0);
	bs(&b, "\nbytes_dram_tier=");
	bu(&b, st.dram_bytes);
	bs(&b, "\nbytes_fallback_dram=");
	bu(&b, st.fallback_bytes);
	bs(&b, "\nfallback_calls=");
	bu(&b, st.fallback_calls);
	bs(&b, "\nforks=");
	bu(&b, st.forks);
	bs(&b, "\nrestores=");
	bu(&b, st.restores);
	bs(&b, "\nrestore_retries=");
	bu(&b, st.restore_fail);
	bs(&b, "\nchildren_sharing=");
	bu(&b, (unsigned long)st.nkids);
	bs(&b, "\nrestore_max_ms=");
	bu(&b, st.restore_max_ms);
	// Where the last write-back went (µs): pre-copy with the threads
	// running, then the pauses: stop the threads, write, remap, summed
	// over the pauses (pause: the total paused time), the longest single
	// pause, the gaps the threads ran between pauses, after the last one.
	bs(&b, "\nrestore_last_us=precopy:");
	bu(&b, st.ph_precopy);
	bs(&b, ",stop:");
	bu(&b, st.ph_stop);
	bs(&b, ",write:");
	bu(&b, st.ph_write);
	bs(&b, ",remap:");
	bu(&b, st.ph_remap);
	bs(&b, ",pause:");
	bu(&b, st.ph_pause);
	bs(&b, ",longest:");
	bu(&b, st.ph_longest);
	bs(&b, ",longest_stop:");
	bu(&b, st.ph_longest_stop);
	bs(&b, ",gaps:");
	bu(&b, st.ph_gaps);
	bs(&b, ",after:");
	bu(&b, st.ph_punch);
	bs(&b, "\nrestore_last_pauses=");
	bu(&b, st.pauses);
	bs(&b, "\nrestore_last_stops_given_up=");
	bu(&b, st.stop_retries);
	bs(&b, "\nrestore_last_lock_waits=");
	bu(&b, st.lock_waits_last);
	bs(&b, "\nrestore_moves=");
	bu(&b, st.moves);
	bs(&b, ",");
	bu(&b, st.move_fails);
	bs(&b, "\nrestore_last_precopy_rounds=");
	bu(&b, st.rounds_precopy);
	bs(&b, "\nrestore_last_bytes_precopy=");
	bu(&b, st.bytes_precopy);
	bs(&b, "\nrestore_last_bytes_pause=");
	bu(&b, st.bytes_pause);
	bs(&b, "\nwriteback_thread=");
	bu(&b, (unsigned long)st.wb_tid);
	if (st.wb_err) {
		if (st.wb_err < 0)
			bs(&b, " (off: PMEM_WRITEBACK_THREAD=0");
		else {
			bs(&b, " (clone: errno ");
			bu(&b, (unsigned long)st.wb_err);
		}
		bs(&b, "; the write-back runs in the application's mmap/munmap/madvise calls)");
	}
	bs(&b, "\nrestore_last_thread=");
	bs(&b, st.last_by == 1 ? "writeback" : st.last_by == 2 ? "app" : "none");
	bs(&b, "\nheap_shared=");
	if (!st.privat)
		bs(&b, "1");
	else if (st.norestore) {
		bs(&b, "0 (private copy-on-write for good: ");
		bs(&b, st.why);
		bs(&b, "; pages written since the fork are on DRAM)");
	} else
		bs(&b, "0 (private copy-on-write since a fork: pages written since are on DRAM until the write-back "
		       "after the children exit)");
	bs(&b, "\n");
	// Pad with spaces over a longer earlier text (no ftruncate: cheap, bounded).
	while (b.n < 1400 && b.n < sizeof b.b - 1)
		b.b[b.n++] = ' ';
	sc6(SYS_pwrite64, st.status_fd, (long)b.b, (long)b.n, 0, 0, 0);
	st.last_written = st.mapped + st.fallback_bytes;
}

static void maybe_status(void)
{
	size_t now = st.mapped + st.fallback_bytes;
	size_t d = now > st.last_written ? now - st.last_written : st.last_written - now;
	if (d >= (4UL << 20))
		write_status();
}

// ---- bitmap ----------------------------------------------------------------------

static int bit(size_t i) { return (st.bits[i / 64] >> (i % 64)) & 1; }
static int mbit(const uint64_t *m, size_t i) { return (m[i / 64] >> (i % 64)) & 1; }
static void msetbits(uint64_t *m, size_t i, size_t n, int v)
{
	for (; n; i++, n--) {
		if (v)
			m[i / 64] |= 1UL << (i % 64);
		else
			m[i / 64] &= ~(1UL << (i % 64));
	}
}
static void setbits(size_t i, size_t n, int v)
{
	if (v && n && (i + n - 1) / 64 + 1 > st.nwords)
		st.nwords = (i + n - 1) / 64 + 1; // the restore scans only this far
	for (; n; i++, n--) {
		if (v)
			st.bits[i / 64] |= 1UL << (i % 64);
		else
			st.bits[i / 64] &= ~(1UL << (i % 64));
	}
}
static int range_free(size_t i, size_t n)
{
	if (i + n > st.npages || i + n < i)
		return 0;
	for (size_t j = 0; j < n; j++)
		if (bit(i + j))
			return 0;
	return 1;
}
// find returns a free run of n pages (aligned to 2 MiB when n >= 2 MiB, so
// jemalloc's aligned requests do not need its map-bigger-and-trim path), or -1.
static long find(size_t n)
{
	size_t step = n >= 512 ? 512 : 1;
	for (int pass = 0; pass < 2; pass++) {
		size_t i = pass == 0 ? (st.hint + step - 1) / step * step : 0;
		size_t end = pass == 0 ? st.npages : st.hint + n;
		while (i + n <= st.npages && i < end) {
			if (bit(i)) {
				i += step;
				continue;
			}
			if (step == 1 && (i % 64) == 0 && st.bits[i / 64] == ~0UL) {
				i += 64;
				continue;
			}
			size_t j = 0;
			while (j < n && !bit(i + j))
				j++;
			if (j == n) {
				st.hint = i + n;
				return (long)i;
			}
			i = (i + j + 1 + step - 1) / step * step;
		}
	}
	return -1;
}

static int ours(const void *a, size_t len)
{
	return st.mode == FSDAX && (char *)a >= st.base && (char *)a < st.base + st.size &&
	       len <= (size_t)(st.base + st.size - (char *)a);
}
static int overlaps(const void *a, size_t len)
{
	return st.mode == FSDAX && (char *)a < st.base + st.size && (char *)a + len > st.base;
}

// release turns [a, a+len) of the range back into reserved address space.
// The file is punched only while no child can see it.
static void release(char *a, size_t len, int keep_bits)
{
	if (!st.privat && !st.child) {
		sc6(SYS_fallocate, st.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, a - st.base, (long)len, 0, 0);
	}
	sys_mmap(a, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
	if (!keep_bits)
		setbits((size_t)(a - st.base) / PAGE, len / PAGE, 0);
	else
		msetbits(st.dbits, (size_t)(a - st.base) / PAGE, len / PAGE, 1);
}

// ---- the interposed calls ---------------------------------------------------------

static int want(int prot, int flags)
{
	return (flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_PRIVATE &&
	       !(flags & (MAP_STACK | MAP_GROWSDOWN | MAP_HUGETLB)) &&
	       prot == (PROT_READ | PROT_WRITE);
}

enum { MISS_NO_RUN = 1, MISS_HINT_TAKEN, MISS_MMAP };
static int place_miss;
static long place_err; // MISS_MMAP: the mmap's -errno

// place serves a request from the range, or returns NULL (caller falls back).
// While the heap is private (a child may read the file) the pages are
// anonymous memory at their place in the range, not the file: the write-back
// after the last child then copies them into the file at their identity
// offsets (free offsets are holes) and maps them shared like the rest, so
// what the allocator maps during a save ends up on PMEM too. Why it
// returned NULL is in place_miss (read right after, under the lock).
static void *place(void *hint, size_t len, int flags)
{
	size_t n = (len + PAGE - 1) / PAGE;
	long i = -1;
	if (hint && ours(hint, n * PAGE) && ((uintptr_t)hint % PAGE) == 0) {
		size_t h = (size_t)((char *)hint - st.base) / PAGE;
		if (range_free(h, n))
			i = (long)h;
		else if (flags & MAP_FIXED_NOREPLACE) {
			place_miss = MISS_HINT_TAKEN;
			return 0;
		}
	}
	if (i < 0)
		i = find(n);
	if (i < 0) {
		place_miss = MISS_NO_RUN;
		return 0;
	}
	char *a = st.base + (size_t)i * PAGE;
	void *r = st.privat ? sys_mmap(a, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
			    : sys_mmap(a, n * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, st.fd, (off_t)i * (off_t)PAGE);
	if (is_err(r)) {
		sys_mmap(a, n * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
		place_miss = MISS_MMAP;
		place_err = (long)r;
		return 0;
	}
	setbits((size_t)i, n, 1);
	st.mapped += n * PAGE;
	return r;
}

static int use_dram_tier(size_t len)
{
	if (!st.dram_ratio)
		return 0;
	// Keep dram_bytes : mapped close to dram_ratio : pmem_ratio.
	return (st.dram_bytes + len) * st.pmem_ratio <= (st.mapped + len) * st.dram_ratio ||
	       st.dram_bytes * st.pmem_ratio < st.mapped * st.dram_ratio;
}

static void maybe_restore(void);
static void setwhy(const char *w);
static void open_status(void);

// note_orphan runs in a forked child's interposed calls until it has
// spoken. A child whose parent has exited and that made itself a session
// leader (setsid: what Redis's daemonize yes and daemon(3) do after the
// fork; a save child does not) is a daemonizing server: the parent exits,
// the child serves. A child places nothing: what it writes or allocates is
// on DRAM, while the parent's log said PMEM. Say so once, on stderr and in
// a status file of its own. Until all three hold (the setsid may come
// after the parent's exit) it looks again at the next call.
static void note_orphan(void)
{
	if ((int)sc(SYS_getppid, 0, 0, 0) == st.ppid)
		return; // the parent still runs
	// A grandchild whose own fork_child has not run yet (a library's
	// atfork handler making this call) still has its parent's st: not
	// its to judge, and the lock may be held by a thread it lacks.
	if ((int)sc(SYS_getpid, 0, 0, 0) != st.pid || (int)sc(SYS_getsid, 0, 0, 0) != st.pid)
		return;
	lock();
	if (!st.orphan_noted) {
		st.orphan_noted = 1;
		st.norestore = 1;
		setwhy("this process forked and its parent exited (a daemonizing server: Redis daemonize yes): what it "
		       "writes or allocates is on DRAM; run the server in the foreground (daemonize no)");
		open_status();
		write_status();
		struct buf b = {.n = 0};
		logp(&b);
		bs(&b, "heap on DRAM: ");
		bs(&b, st.why);
		logline(&b);
	}
	unlock();
}

static const char *errno_text(long err);

// note_fallback says once per cause on stderr that heap requests go to
// DRAM (the status file counts them): the range has no free run that long
// (full, or too fragmented for the size), or mapping the file failed.
// Lock held.
static void note_fallback(size_t len)
{
	static int said; // bit per cause
	if (said & (1 << place_miss))
		return;
	said |= 1 << place_miss;
	struct buf b = {.n = 0};
	logp(&b);
	if (place_miss == MISS_NO_RUN) {
		bs(&b, "FS_DAX heap: no free run of ");
		bu(&b, (len + PAGE - 1) / PAGE * PAGE);
		bs(&b, " bytes (");
		bu(&b, st.mapped);
		bs(&b, " of PMEM_SIZE_LIMIT ");
		bu(&b, st.size);
		bs(&b, " bytes mapped): requests that do not fit go to DRAM");
	} else {
		bs(&b, "FS_DAX heap: mapping the heap file failed: errno ");
		bu(&b, (unsigned long)-place_err);
		bs(&b, errno_text(place_err));
		bs(&b, ": such requests go to DRAM");
	}
	bs(&b, " (status file bytes_fallback_dram, fallback_calls)");
	logline(&b);
}

// on_call runs first in every interposed mmap/munmap/madvise: the parent's
// write-back where it runs in these calls, a forked child's look at its
// parent.
static void on_call(void)
{
	if (!st.child) {
		if (st.privat)
			maybe_restore();
	} else if (!st.orphan_noted && st.mode == FSDAX) {
		note_orphan();
	}
}

static void *do_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	on_call();
	if (st.mode == FSDAX && len && want(prot, flags) && !st.child &&
	    (!(flags & MAP_FIXED) || ours(addr, len))) {
		void *r = 0;
		lock();
		if (flags & MAP_FIXED) {
			// A fixed anonymous map over our range replaces pages of ours.
			size_t n = (len + PAGE - 1) / PAGE;
			if (!st.privat) {
				size_t i = (size_t)((char *)addr - st.base) / PAGE;
				size_t was = 0;
				for (size_t j = 0; j < n; j++)
					was += bit(i + j);
				sc6(SYS_fallocate, st.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (long)(i * PAGE), (long)(n * PAGE), 0, 0);
				r = sys_mmap(addr, n * PAGE, prot, MAP_SHARED | MAP_FIXED, st.fd, (off_t)(i * PAGE));
				if (!is_err(r)) {
					setbits(i, n, 1);
					st.mapped += (n - was) * PAGE;
				}
			} else {
				r = sys_mmap(addr, len, prot, flags, fd, off); // anon private: correct after fork
				if (!is_err(r)) {
					size_t i = (size_t)((char *)addr - st.base) / PAGE;
					msetbits(st.zbits, i, n, 1);
					msetbits(st.dbits, i, n, 0); // in use again: written back, not punched
					for (size_t j = 0; j < n; j++)
						if (!bit(i + j)) {
							setbits(i + j, 1, 1);
							st.mapped += PAGE;
						}
				}
			}
			unlock();
			return (void *)set_errno((long)r);
		}
		if (use_dram_tier(len)) {
			r = 0;
			st.dram_bytes += (len + PAGE - 1) / PAGE * PAGE;
			unlock();
			return (void *)set_errno((long)sys_mmap(addr, len, prot, flags, fd, off));
		} else {
			r = place(addr, len, flags);
		}
		if (!r && place_miss != MISS_HINT_TAKEN) {
			// (A MAP_FIXED_NOREPLACE hint on pages in use gets the
			// kernel's EEXIST below, as without the preload: no
			// fallback.)
			st.fallback_bytes += (len + PAGE - 1) / PAGE * PAGE;
			st.fallback_calls++;
			if (st.fallback_calls == 1)
				write_status();
			note_fallback(len);
		}
		maybe_status();
		unlock();
		if (r)
			return r;
		return (void *)set_errno((long)sys_mmap(addr, len, prot, flags, fd, off));
	}
	if (st.mode == FSDAX && (flags & MAP_FIXED) && overlaps(addr, len) && !st.child) {
		// Someone maps over our range (not anonymous RW): never hand those
		// pages out again.
		lock();
		char *lo = (char *)addr < st.base ? st.base : (char *)addr;
		char *hi = (char *)addr + len > st.base + st.size ? st.base + st.size : (char *)addr + len;
		setbits((size_t)(lo - st.base) / PAGE, (size_t)(hi - lo + PAGE - 1) / PAGE, 1);
		unlock();
	}
	return (void *)set_errno((long)sys_mmap(addr, len, prot, flags, fd, off));
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return do_mmap(addr, len, prot, flags, fd, off);
}
EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return do_mmap(addr, len, prot, flags, fd, off);
}

static int do_munmap(void *addr, size_t len)
{
	on_call();
	if (overlaps(addr, len) && ((uintptr_t)addr % PAGE) == 0 && len) {
		if (!ours(addr, len))
			return (int)set_errno(-EINVAL); // straddles our range: never in practice
		len = (len + PAGE - 1) / PAGE * PAGE;
		lock();
		size_t i = (size_t)((char *)addr - st.base) / PAGE, was = 0;
		for (size_t j = 0; j < len / PAGE; j++)
			was += bit(i + j);
		if (st.child) {
			sys_mmap(addr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
		} else {
			// After a fork the pages stay marked: the child may still read
			// those offsets through the file.
			release(addr, len, st.privat);
			if (!st.privat)
				st.mapped -= was * PAGE;
		}
		maybe_status();
		unlock();
		return 0;
	}
	return (int)set_errno(sc(SYS_munmap, addr, len, 0));
}
EXPORT int munmap(void *addr, size_t len) { return do_munmap(addr, len); }

static int do_madvise(void *addr, size_t len, int advice)
{
	on_call();
	if (overlaps(addr, len) && ours(addr, len) && ((uintptr_t)addr % PAGE) == 0) {
		if (advice == MADV_DONTNEED || advice == MADV_FREE || advice == MADV_REMOVE) {
			len = (len + PAGE - 1) / PAGE * PAGE;
			// Private or shared is decided under the lock: the
			// write-back may make the heap shared while this call
			// waits for it, and anonymous zeros in a shared heap would
			// be mapped over by the next fork_prepare (remap_private
			// maps every in-use page from the file), losing what the
			// allocator stores there meanwhile.
			lock();
			if (st.privat || st.child) {
				// Zero pages without touching the file.
				sys_mmap(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
				if (!st.child) {
					// Only pages in use: a zbit is a punch at the restore.
					size_t i = (size_t)((char *)addr - st.base) / PAGE;
					for (size_t j = 0; j < len / PAGE; j++)
						if (bit(i + j))
							msetbits(st.zbits, i + j, 1, 1);
				}
			} else {
				sc6(SYS_fallocate, st.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				    (char *)addr - st.base, (long)len, 0, 0);
			}
			unlock();
			return 0;
		}
		sc(SYS_madvise, addr, len, advice); // hints: errors do not matter
		return 0;
	}
	return (int)set_errno(sc(SYS_madvise, addr, len, advice));
}
EXPORT int madvise(void *addr, size_t len, int advice) { return do_madvise(addr, len, advice); }
EXPORT int posix_madvise(void *addr, size_t len, int advice)
{
	if (advice == MADV_DONTNEED) // POSIX_MADV_DONTNEED is only a hint: never discard
		return 0;
	long r = sc(SYS_madvise, addr, len, advice);
	return r < 0 ? (int)-r : 0;
}

EXPORT void *mremap(void *old, size_t olen, size_t nlen, int flags, ...)
{
	__builtin_va_list ap;
	__builtin_va_start(ap, flags);
	void *naddr = (flags & MREMAP_FIXED) ? __builtin_va_arg(ap, void *) : 0;
	__builtin_va_end(ap);
	if (!overlaps(old, olen ? olen : 1) && !(naddr && overlaps(naddr, nlen)))
		return (void *)set_errno(sc6(SYS_mremap, (long)old, (long)olen, (long)nlen, flags, (long)naddr, 0));
	if (!ours(old, olen) || (flags & MREMAP_FIXED) || ((uintptr_t)old % PAGE) || !nlen)
		return (void *)set_errno(-EINVAL);
	size_t op = (olen + PAGE - 1) / PAGE * PAGE, np = (nlen + PAGE - 1) / PAGE * PAGE;
	if (np <= op) {
		if (np < op)
			do_munmap((char *)old + np, op - np);
		return old;
	}
	if (!st.child) {
		lock();
		size_t i = (size_t)((char *)old - st.base + op) / PAGE, n = (np - op) / PAGE;
		// Shared or not is read under the lock (see do_madvise): a shared
		// mapping of the file in a private heap would be shared with a child.
		if (!st.privat && range_free(i, n)) {
			void *r = sys_mmap((char *)old + op, np - op, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
					   st.fd, (off_t)(i * PAGE));
			if (!is_err(r)) {
				setbits(i, n, 1);
				st.mapped += np - op;
				unlock();
				return old;
			}
		}
		unlock();
	}
	if (!(flags & MREMAP_MAYMOVE))
		return (void *)set_errno(-ENOMEM);
	void *n = do_mmap(0, np, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (n == MAP_FAILED)
		return n;
	copy_pages(n, old, op);
	do_munmap(old, op);
	return n;
}

// ---- fork (FS_DAX) -----------------------------------------------------------------

// remap_private turns every in-use extent of the range into a private mapping
// of the same file offsets. Runs in the prepare handler with the lock held.
static void remap_private(void)
{
	size_t i = 0;
	while (i < st.npages) {
		if ((i % 64) == 0 && st.bits[i / 64] == 0) {
			i += 64;
			continue;
		}
		if (!bit(i)) {
			i++;
			continue;
		}
		size_t j = i;
		while (j < st.npages && bit(j))
			j++;
		// Only pages that are a file mapping now; an anonymous zero page
		// (from madvise after an earlier fork) is already private.
		sys_mmap(st.base + i * PAGE, (j - i) * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, st.fd,
			 (off_t)(i * PAGE));
		i = j;
	}
}

// ---- back to shared PMEM after the last child ---------------------------------------
//
// A child may read any heap page through the file until it exits or execs:
// each fork gets an O_CLOEXEC pipe whose write end only the child keeps, so
// EOF on the read end means "no longer sharing" without touching wait().
// Then, on the preload's write-back thread (see "the write-back thread"; or,
// without it, in the next interposed call on a thread that can pause the
// others):
// 1. pre-copy, with every thread running: pages zeroed meanwhile are
//    punched, then rounds of "list the private pages written since the last
//    round and write-protect them (PAGEMAP_SCAN + userfaultfd, asynchronous
//    write-protect: the kernel only records writes), pwrite them" until few
//    are left (try_restore, precopy);
// 2. short pauses, in address order (see "chunked pauses"): the other
//    threads wait in a signal handler (real-time signal 62, futex wait;
//    bounded, retried later on timeout); the pages written since the last
//    round are written from where the last pause stopped until the pause's
//    budget is used; each private mapping of that chunk is moved out of
//    the heap (mremap) and the heap file mapped MAP_SHARED in its place;
//    the threads resume and run for a while; the next chunk;
// 3. after the last pause: the moved private copies are freed, deferred
//    frees punched.
// Without userfaultfd or PAGEMAP_SCAN (seccomp, kernels before 6.7) step 1
// is skipped and the pauses write every private page. Nothing here allocates:
// buffers are static, one thread restores at a time (st.restoring).
//
// Locks: try_restore is entered with the lock held and returns with it
// held; it drops it only for the pre-copy (st.restoring keeps every other
// restore out meanwhile, and a fork then makes it start over), and holds it
// from the first pause to the last, gaps included. fork_prepare takes and
// releases it (never held across the fork). The write-back thread takes it
// to reap and read the state, and never waits for anything else while
// holding it; it ppolls and sleeps without it.

static void join(char *out, size_t cap, const char *a, const char *b, unsigned long n);
static int read_file(const char *path, char *out, size_t cap);

static void setwhy(const char *w)
{
	size_t n = slen(w);
	if (n >= sizeof st.why)
		n = sizeof st.why - 1;
	memcpy(st.why, w, n);
	st.why[n] = 0;
}

#define PAUSE_SIG 62
static int paused, hold;

// Paused threads and the pausing thread sleep in futex waits, not spin: on
// a machine with fewer cores than threads, spinning threads take the CPU
// that the threads still to be paused, and then the write-back, need
// (measured here: the pause's stop and remap phases varied 3-15 ms with
// spinning).
static int blocker; // a thread that blocks PAUSE_SIG: it must run the write-back
static int handler_ok; // 0 unknown, 1 installed, -1 unavailable

void pmem_restorer(void) __attribute__((visibility("hidden")));
#ifdef __x86_64__
__asm__(".pushsection .text\n"
	".hidden pmem_restorer\n"
	".globl pmem_restorer\n"
	".type pmem_restorer,@function\n"
	"pmem_restorer:\n"
	"	mov $15, %eax\n" // rt_sigreturn
	"	syscall\n"
	".popsection\n");
#else
// aarch64: the kernel (and qemu-user) would use the vDSO's trampoline
// without SA_RESTORER; ours is the same two instructions, so both archs
// take one path.
__asm__(".pushsection .text\n"
	".hidden pmem_restorer\n"
	".globl pmem_restorer\n"
	".type pmem_restorer,%function\n"
	"pmem_restorer:\n"
	"	mov x8, #139\n" // rt_sigreturn
	"	svc 0\n"
	".popsection\n");
#endif

static void on_pause(int sig)
{
	(void)sig;
	__atomic_add_fetch(&paused, 1, __ATOMIC_SEQ_CST);
	futex_wake(&paused);
	// Bounded: 10 ms waits, at most 60 s in all (a write-back takes ms).
	for (int k = 0; __atomic_load_n(&hold, __ATOMIC_ACQUIRE) && k < 6000; k++)
		futex_wait(&hold, 1, 10000000);
	__atomic_sub_fetch(&paused, 1, __ATOMIC_SEQ_CST);
}

static int install_handler(void)
{
	struct {
		void (*h)(int);
		unsigned long flags;
		void (*restorer)(void);
		unsigned long mask;
	} act = {on_pause, 0x04000000UL | 0x10000000UL /* SA_RESTORER|SA_RESTART */, pmem_restorer, ~0UL}, old;
	// Only if the application does not use the signal itself.
	if (sc6(SYS_rt_sigaction, PAUSE_SIG, 0, (long)&old, 8, 0, 0) < 0 || old.h != 0)
		return -1;
	return sc6(SYS_rt_sigaction, PAUSE_SIG, (long)&act, 0, 8, 0, 0) < 0 ? -1 : 1;
}

// pause_action returns the current handler of PAUSE_SIG (0: SIG_DFL), or
// (void *)1 when it cannot be read. The application may install its own
// handler after ours: a tgkill would then run its handler, not on_pause.
static void *pause_action(void)
{
	struct {
		void *h;
		unsigned long flags, restorer, mask;
	} old;
	if (sc6(SYS_rt_sigaction, PAUSE_SIG, 0, (long)&old, 8, 0, 0) < 0)
		return (void *)1;
	return old.h;
}

// ---- the signal mask: keeping PAUSE_SIG deliverable ----------------------------------
//
// A thread that blocks PAUSE_SIG cannot be paused, so the write-back could
// only run on that thread (see others_pausable). jemalloc creates its
// background thread with every signal blocked (pthread_sigmask(SIG_SETMASK,
// sigfillset) around pthread_create: the thread inherits the mask), and with
// Redis that thread then had to run every write-back, at its next purge,
// which same-size overwrites never bring (no write-back in 70 s, measured).
// So the preload exports pthread_sigmask and sigprocmask and leaves
// PAUSE_SIG out of a set that blocks "everything" (every asynchronous
// signal 1-31: the sigfillset pattern, also with the synchronous ones
// SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV, SIGSYS taken out again, which
// blocking would not stop anyway), in an FS_DAX target that is not a forked
// child, while signal 62 is not the application's. A set that names 62 on
// purpose without blocking everything (to sigwait it, say) is left as is.
// Otherwise the calls are libc's: glibc never blocks its internal signals
// 32 (SIGCANCEL) and 33 (SIGSETXID) and returns the kernel's old mask; musl
// (no __register_atfork) blocks what it is given and clears 32-34 from the
// old mask it returns. The kernel checks `how` (EINVAL) only when there is
// a new set, as both libcs do. Only the first 8 bytes of a sigset_t are the
// kernel's (64 signals), as in both libcs.

#define SIGBIT(s) (1UL << ((s) - 1))
// SIGKILL, SIGSTOP (never blockable) and SIGILL 4, SIGTRAP 5, SIGBUS 7,
// SIGFPE 8, SIGSEGV 11, SIGSYS 31 (raised by the faulting instruction).
#define ASYNC_1_31                                                                                                   \
	(0x7fffffffUL & ~(SIGBIT(SIGKILL) | SIGBIT(SIGSTOP) | SIGBIT(4) | SIGBIT(5) | SIGBIT(7) | SIGBIT(8) |          \
			  SIGBIT(11) | SIGBIT(31)))

static long sigmask_call(int how, const unsigned long *set, unsigned long *old)
{
	unsigned long n = 0;
	const unsigned long *p = 0;
	int glibc = __register_atfork != 0;
	if (set) {
		n = set[0];
		if (glibc)
			n &= ~((1UL << 31) | (1UL << 32)); // signals 32, 33
		if (st.mode == FSDAX && !st.child && handler_ok >= 0 && (how == SIG_BLOCK || how == SIG_SETMASK) &&
		    (n & ASYNC_1_31) == ASYNC_1_31 && (n >> (PAUSE_SIG - 1)) & 1) {
			void *h = pause_action();
			if (h == 0 || h == (void *)on_pause)
				n &= ~(1UL << (PAUSE_SIG - 1));
		}
		p = &n;
	}
	long r = sc6(SYS_rt_sigprocmask, how, (long)p, (long)old, 8, 0, 0);
	if (r == 0 && old && !glibc)
		old[0] &= ~(7UL << 31); // signals 32-34
	return r;
}

EXPORT int pthread_sigmask(int how, const unsigned long *set, unsigned long *old)
{
	long r = sigmask_call(how, set, old);
	return r < 0 ? (int)-r : 0;
}
EXPORT int sigprocmask(int how, const unsigned long *set, unsigned long *old)
{
	return (int)set_errno(sigmask_call(how, set, old));
}

static long now_us(void)
{
	long ts[2] = {0, 0};
	sc(SYS_clock_gettime, 1 /* CLOCK_MONOTONIC */, ts, 0);
	return ts[0] * 1000000 + ts[1] / 1000;
}
static long now_ms(void) { return now_us() / 1000; }

// hex_digits parses the lowercase hex digits at b[*i] (as /proc writes
// them), moving *i past them.
static unsigned long hex_digits(const char *b, int n, int *i)
{
	unsigned long v = 0;
	int j = *i;
	for (; j < n && ((b[j] >= '0' && b[j] <= '9') || (b[j] >= 'a' && b[j] <= 'f')); j++)
		v = v * 16 + (unsigned long)(b[j] <= '9' ? b[j] - '0' : b[j] - 'a' + 10);
	*i = j;
	return v;
}

// hex_field finds the line "key<hex>" in the n bytes of b (a /proc status
// or fdinfo file; key ends with its separator) and parses its value.
// Returns 0 if there is no such line, else 1.
static int hex_field(const char *b, int n, const char *key, unsigned long *out)
{
	int kl = (int)slen(key);
	for (int i = 0; i + kl < n; i++)
		if ((i == 0 || b[i - 1] == '\n') && prefix(b + i, (size_t)(n - i), key)) {
			i += kl;
			*out = hex_digits(b, n, &i);
			return 1;
		}
	return 0;
}

// blocks_pause reports whether thread tid blocks PAUSE_SIG (SigBlk in its
// status): such a thread (jemalloc's background thread blocks every signal)
// cannot be paused, so the write-back may only run on that thread itself.
static int blocks_pause(unsigned long tid)
{
	static char b[4096];
	char path[64];
	join(path, sizeof path, "/proc/self/task/", "", tid);
	struct buf x = {.n = 0};
	bs(&x, path);
	bs(&x, "/status");
	x.b[x.n] = 0;
	int n = read_file(x.b, b, sizeof b);
	unsigned long m;
	if (hex_field(b, n, "SigBlk:\t", &m))
		return (m >> (PAUSE_SIG - 1)) & 1;
	return 1; // unknown: assume it cannot be paused
}

// hex_at parses the 0x-prefixed hex number at b[*i] (as /proc writes
// them), moving *i past it and one separator. Returns 0 if there is none.
static unsigned long hex_at(const char *b, int n, int *i)
{
	int j = *i;
	if (j + 2 > n || b[j] != '0' || b[j + 1] != 'x')
		return 0;
	j += 2;
	unsigned long v = hex_digits(b, n, &j);
	*i = j + 1;
	return v;
}

// takes_pause_sig reports whether thread tid sits in a system call that
// would take PAUSE_SIG as its own result, so that on_pause never runs:
// sigwait/sigwaitinfo/sigtimedwait (rt_sigtimedwait) on a set with 62, or a
// blocking read of a signalfd whose mask has 62. Such a wait shows its set
// as unblocked in SigBlk, so blocks_pause counts the usual "signal thread"
// (every signal blocked, then sigwaitinfo on all of them) as pausable, and
// each pause's tgkill came back to the application as a signal 62 while
// the pause timed out (found in review: 267 in 5 s). The thread may enter
// such a wait after this check; then a pause times out and the retry finds
// it here. /proc/self/task/TID/syscall: "NR 0xARG1 ... 0xSP 0xPC" while in a
// system call, "running" or "-1 ..." otherwise (readable within the thread
// group). The wait set is read through /proc/self/mem: the other thread's
// memory may be gone by then, and pread fails where a load would fault.
static int takes_pause_sig(unsigned long tid)
{
	static char b[256];
	struct buf x = {.n = 0};
	bs(&x, "/proc/self/task/");
	bu(&x, tid);
	bs(&x, "/syscall");
	x.b[x.n] = 0;
	int n = read_file(x.b, b, sizeof b), i = 0;
	unsigned long nr = 0;
	for (; i < n && b[i] >= '0' && b[i] <= '9'; i++)
		nr = nr * 10 + (unsigned long)(b[i] - '0');
	if (i == 0 || i >= n || b[i] != ' ')
		return 0; // "running", "-1 ...": not in a system call
	i++;
	unsigned long arg1 = hex_at(b, n, &i);
	if (nr == SYS_rt_sigtimedwait) {
		unsigned long set = 0;
		int mem = sys_open("/proc/self/mem", O_RDONLY | O_CLOEXEC, 0);
		if (mem < 0)
			return 1; // cannot tell: assume it takes the signal
		long r = arg1 ? sc6(SYS_pread64, mem, (long)&set, 8, (long)arg1, 0, 0) : -1;
		sc(SYS_close, mem, 0, 0);
		return r != 8 || ((set >> (PAUSE_SIG - 1)) & 1);
	}
	if (nr == SYS_read || nr == SYS_readv) {
		// fdinfo of a signalfd has "sigmask:\t<hex>"; other files have none.
		static char f[1024];
		struct buf y = {.n = 0};
		bs(&y, "/proc/self/fdinfo/");
		bu(&y, arg1);
		y.b[y.n] = 0;
		int m = read_file(y.b, f, sizeof f);
		unsigned long v;
		if (hex_field(f, m, "sigmask:\t", &v))
			return (v >> (PAUSE_SIG - 1)) & 1;
	}
	return 0;
}

// others_pausable reports whether every other thread accepts PAUSE_SIG; if
// one blocks it, or waits for it (takes_pause_sig), that thread is
// remembered: the write-back runs when it calls.
// The other threads: /proc/self/task read with getdents into a static
// buffer (nothing here allocates), each numeric entry once, this thread and
// the write-back thread left out (it blocks every signal, and pauses the
// others itself or waits for the lock while another does).
struct others {
	int fd, self;
	long n, o; // bytes in buf, offset of the next entry
	int reads; // bounded: 64 getdents calls of 4 KiB
	char buf[4096];
};
static int others_open(struct others *t)
{
	t->self = (int)sc(SYS_gettid, 0, 0, 0);
	t->n = t->o = 0;
	t->reads = 0;
	t->fd = sys_open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
	return t->fd;
}
// others_next sets *tid to the next other thread's id; 0 at the end.
static int others_next(struct others *t, unsigned long *tid)
{
	for (;;) {
		if (t->o >= t->n) {
			if (t->reads++ == 64 || (t->n = sc(SYS_getdents64, t->fd, t->buf, sizeof t->buf)) <= 0)
				return 0;
			t->o = 0;
		}
		unsigned short reclen = *(unsigned short *)(t->buf + t->o + 16);
		const char *name = t->buf + t->o + 19;
		t->o += reclen;
		if (name[0] != '.' && parse_u(name, slen(name), tid) == 0 && (int)*tid != t->self && (int)*tid != st.wb_tid)
			return 1;
	}
}
static void others_close(struct others *t) { sc(SYS_close, t->fd, 0, 0); }

static int others_pausable(void)
{
	static struct others t;
	if (others_open(&t) < 0)
		return 0;
	for (unsigned long tid; others_next(&t, &tid);) {
		if (blocks_pause(tid) || takes_pause_sig(tid)) {
			others_close(&t);
			blocker = (int)tid; // retry when that thread calls us
			return 0;
		}
	}
	others_close(&t);
	blocker = 0;
	return 1;
}

static void resume_others(void)
{
	__atomic_store_n(&hold, 0, __ATOMIC_SEQ_CST);
	futex_wake(&hold);
}

// pause_others signals every other thread and waits (<= limit_us) until all
// wait in the handler (others_pausable checked first; a thread started
// since that blocks the signal makes this time out). Returns the number
// paused, -1 (resumed again: retry later) or -2 (more threads than
// PAUSE_MAX_THREADS: they cannot all be paused).
//
// One listing of /proc/self/task is not enough: a thread that was in
// pthread_create when it was listed (glibc and musl block every signal
// around clone) makes a new thread and then pauses, and the new thread was
// never signalled: it would run through the pause, its stores between a
// chunk's pwrite and its remap lost, or fault on a piece being remapped
// (TestWriteBackNewThreads). So once every thread signalled waits in the
// handler the tasks are listed again, and new ones signalled, until a
// listing finds none. A paused thread creates no thread, so that listing
// misses only a thread that exits during it (getdents offsets shift),
// which cannot run either.
#define PAUSE_MAX_THREADS 4096
#define PAUSE_SLOTS 8192 // open addressing, at most half full
static uint64_t pause_slot[PAUSE_SLOTS]; // pause number << 32 | tid signalled by that pause
static unsigned pause_gen;

// signalled_before records tid as signalled by this pause and reports
// whether it already was (1), or that the table is full (-1: at most
// PAUSE_MAX_THREADS tids per pause, so a probe always ends at a free
// slot). A pause number in each slot means the table is never cleared
// (one pause at a time: the restoring thread's).
static unsigned pause_used;
static int signalled_before(int tid)
{
	uint64_t key = (uint64_t)pause_gen << 32 | (unsigned)tid;
	for (unsigned h = ((unsigned)tid * 2654435761u) & (PAUSE_SLOTS - 1);; h = (h + 1) & (PAUSE_SLOTS - 1)) {
		if (pause_slot[h] == key)
			return 1;
		if (pause_slot[h] >> 32 != pause_gen) { // free: empty or an older pause's
			if (pause_used == PAUSE_MAX_THREADS)
				return -1;
			pause_used++;
			pause_slot[h] = key;
			return 0;
		}
	}
}

static int pause_others(long limit_us)
{
	static struct others t;
	int n = 0;
	if (++pause_gen == 0) { // wrapped: slots of pause 0 would look current
		memset(pause_slot, 0, sizeof pause_slot);
		pause_gen = 1;
	}
	pause_used = 0;
	__atomic_store_n(&hold, 1, __ATOMIC_SEQ_CST);
	long t0 = 0;
	for (int pass = 0; pass < 64; pass++) {
		if (others_open(&t) < 0) {
			resume_others();
			return -1;
		}
		int fresh = 0, fail = 0;
		for (unsigned long tid; !fail && others_next(&t, &tid);) {
			int seen = signalled_before((int)tid);
			if (seen < 0) {
				fail = -2;
			} else if (!seen) {
				// ESRCH: the thread has exited. Any other failure
				// (EAGAIN: RLIMIT_SIGPENDING used up) would leave a
				// running thread out of the pause: give the pause up.
				long e = sc(SYS_tgkill, st.pid, tid, PAUSE_SIG);
				if (e == 0) {
					n++;
					fresh++;
				} else if (e != -ESRCH) {
					fail = -1;
				}
			}
		}
		others_close(&t);
		if (fail) {
			resume_others();
			return fail;
		}
		if (pass > 0 && !fresh)
			return n;
		if (pass == 0)
			t0 = now_us(); // the limit is for the threads to arrive
		for (int p; (p = __atomic_load_n(&paused, __ATOMIC_SEQ_CST)) < n;) {
			long left = limit_us - (now_us() - t0);
			if (left <= 0) {
				resume_others();
				return -1;
			}
			futex_wait(&paused, p, (left < 1000 ? left : 1000) * 1000);
		}
	}
	resume_others(); // threads kept appearing: give this pause up
	return -1;
}


// ---- finding the pages to write back --------------------------------------------
//
// Two ways to list the parent's private copies (anonymous pages in the heap
// range: copy-on-write copies of the file's pages, zero pages from a purge,
// mappings made while private), both as coalesced address ranges in regs[],
// so that every contiguous run is one pwrite:
// - PAGEMAP_SCAN (Linux 6.7+): the kernel returns the ranges itself, and can
//   write-protect what it reports in the same step (userfaultfd async
//   write-protect): a page written after that shows up again as "written" in
//   the next scan, with no race between the report and the protection. This
//   is what lets the write-back copy most pages before the pause.
// - /proc/self/pagemap read in batches of 512 entries (older kernels).
// regs[] is static: nothing on this path allocates, and only one thread
// restores at a time (st.restoring).

#define PAGEMAP_SCAN_IOC 0xc0606610UL // _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_WRITTEN (1UL << 1)
#define PAGE_IS_FILE (1UL << 2)
#define PAGE_IS_PRESENT (1UL << 3)
#define PAGE_IS_SWAPPED (1UL << 4)
#define PM_SCAN_WP_MATCHING 1UL
#define UFFD_API 0xAAUL
#define UFFDIO_API_IOC 0xc018aa3fUL      // _IOWR(0xAA, 0x3F, struct uffdio_api)
#define UFFDIO_REGISTER_IOC 0xc020aa00UL // _IOWR(0xAA, 0x00, struct uffdio_register)
#define UFFDIO_REGISTER_MODE_WP 2UL
#define UFFD_FEATURE_WP_UNPOPULATED (1UL << 13)
#define UFFD_FEATURE_WP_ASYNC (1UL << 15)
#define UFFD_USER_MODE_ONLY 1

struct region {
	uint64_t start, end, categories; // struct page_region
};
static struct region regs[1024];
static int scan_kind; // 0 untried, 1 PAGEMAP_SCAN, -1 pagemap reads only

// scan lists the written anonymous pages of [lo, hi) into regs[] and returns
// their count (or -1); *next is where to continue when regs[] filled up.
// wp: write-protect what is reported (PAGEMAP_SCAN with userfaultfd only);
// that includes the file's own pages (reported with PAGE_IS_FILE, for the
// caller to skip), so that after a pre-copy the pause can ask for "written"
// alone: telling file pages from copies costs a page lookup each (2-3 ms
// per 256 MiB here), "written" is a bit of the page table entry (0.15 ms).
// A file page mapped after the last pre-copy round is then written back
// unchanged: harmless.
// anon_only: report only copies (the check that costs), for a pause without
// pre-copy.
static long scan(int pm, uint64_t lo, uint64_t hi, int wp, int anon_only, uint64_t *next)
{
	*next = hi;
	if (scan_kind >= 0) {
		struct {
			uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, inverted, mask, anyof, ret;
		} a = {96, wp ? PM_SCAN_WP_MATCHING : 0, lo, hi, 0, (uint64_t)regs, 1024, 0,
		       anon_only ? PAGE_IS_FILE : 0, anon_only ? PAGE_IS_WRITTEN | PAGE_IS_FILE : PAGE_IS_WRITTEN,
		       PAGE_IS_PRESENT | PAGE_IS_SWAPPED, wp ? PAGE_IS_WRITTEN | PAGE_IS_FILE : PAGE_IS_WRITTEN};
		// Written, not a file page, and present or swapped: an unpopulated
		// page of a registered anonymous mapping counts as "written" too.
		long n = sc(SYS_ioctl, pm, PAGEMAP_SCAN_IOC, &a);
		if (n >= 0) {
			scan_kind = 1;
			*next = a.walk_end > lo ? a.walk_end : hi;
			return n;
		}
		if (scan_kind == 1 || wp)
			return -1;
		scan_kind = -1; // not this kernel: read pagemap
	}
	if (wp)
		return -1;
	static uint64_t ent[512];
	long n = 0;
	for (uint64_t p = lo; p < hi;) {
		size_t k = (hi - p) / PAGE < 512 ? (hi - p) / PAGE : 512;
		if (sc6(SYS_pread64, pm, (long)ent, (long)(k * 8), (long)(p / PAGE * 8), 0, 0) != (long)(k * 8))
			return -1;
		for (size_t i = 0; i < k; i++, p += PAGE) {
			uint64_t e = ent[i];
			int present = (e >> 63) & 1, swapped = (e >> 62) & 1, filepage = (e >> 61) & 1;
			if (!((present || swapped) && !filepage))
				continue;
			if (n > 0 && regs[n - 1].end == p) {
				regs[n - 1].end = p + PAGE;
				continue;
			}
			if (n == 1024) {
				*next = p;
				return n;
			}
			regs[n].start = p;
			regs[n].end = p + PAGE;
			regs[n].categories = 0;
			n++;
		}
	}
	return n;
}

// pwrite_all writes [a, a+len) to its identity offset in the heap file.
static int pwrite_all(char *a, size_t len)
{
	for (int k = 0; len && k < 64; k++) { // bounded: a short write is rare
		long r = sc6(SYS_pwrite64, st.fd, (long)a, (long)len, (long)(a - st.base), 0, 0);
		if (r <= 0)
			return -1;
		a += r;
		len -= (size_t)r;
	}
	return len ? -1 : 0;
}

// write_regions writes regs[0..n) back, in the pre-copy (threads running,
// no lock): every reported page (the bitmaps may change under us; a page
// freed meanwhile is punched at the end anyway). The pauses write with
// write_pause.
static int write_regions(long n, unsigned long *bytes)
{
	for (long k = 0; k < n; k++) {
		if (regs[k].categories & PAGE_IS_FILE)
			continue; // the file's own page (protected by a pre-copy scan)
		char *a = (char *)regs[k].start, *e = (char *)regs[k].end;
		if (a < st.base)
			a = st.base;
		if (e > st.base + st.size)
			e = st.base + st.size;
		if (a < e && pwrite_all(a, (size_t)(e - a)))
			return -1;
		*bytes += a < e ? (unsigned long)(e - a) : 0;
	}
	return 0;
}

// span returns the first in-use page and one past the last (0, 0 if none).
static void span(size_t *lo, size_t *hi)
{
	size_t w = 0, nw = st.nwords;
	while (w < nw && !st.bits[w])
		w++;
	*lo = *hi = 0;
	if (w == nw)
		return;
	*lo = w * 64;
	for (size_t v = w; v < nw; v++)
		if (st.bits[v])
			*hi = (v + 1) * 64 < st.npages ? (v + 1) * 64 : st.npages;
}

// punch_runs punches the file under every run of pages marked in m (within
// the used part of the bitmaps) and clears the marks. give_back: they are
// deferred frees, whose offsets become free again.
static void punch_runs(uint64_t *m, int give_back)
{
	size_t np = st.nwords * 64 < st.npages ? st.nwords * 64 : st.npages;
	for (size_t i = 0; i < np; i++) {
		if ((i % 64) == 0 && m[i / 64] == 0) {
			i += 63;
			continue;
		}
		if (mbit(m, i)) {
			size_t j = i;
			while (j < np && mbit(m, j))
				j++;
			sc6(SYS_fallocate, st.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (long)(i * PAGE),
			    (long)((j - i) * PAGE), 0, 0);
			msetbits(m, i, j - i, 0);
			if (give_back) {
				setbits(i, j - i, 0);
				st.mapped -= (j - i) * PAGE;
			}
			i = j;
		}
	}
}

// punch_zbits punches the pages replaced by anonymous zeros while private
// and forgets them: after this their file offsets read zero, and whatever
// was written there since is an anonymous page the scan reports.
static void punch_zbits(void) { punch_runs(st.zbits, 0); }

// uffd_wp opens a userfaultfd in asynchronous write-protect mode (no fault
// is ever delivered to us: the kernel just records "written" per page) and
// registers [lo, hi). -1 when the kernel or a seccomp profile refuses it
// (the default container profiles block userfaultfd): then there is no
// pre-copy and the whole write-back happens in the pause.
static int uffd_wp(char *lo, char *hi)
{
	int fd = (int)sc(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY, 0, 0);
	if (fd < 0)
		return -1;
	struct {
		uint64_t api, features, ioctls;
	} api = {UFFD_API, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, 0};
	struct {
		uint64_t start, len, mode, ioctls;
	} reg = {(uint64_t)lo, (uint64_t)(hi - lo), UFFDIO_REGISTER_MODE_WP, 0};
	if (sc(SYS_ioctl, fd, UFFDIO_API_IOC, &api) < 0 || sc(SYS_ioctl, fd, UFFDIO_REGISTER_IOC, &reg) < 0) {
		sc(SYS_close, fd, 0, 0);
		return -1;
	}
	return fd;
}

// precopy runs before the pause, without the lock, while the other threads
// run: rounds of "report the pages written since the last round and
// write-protect them, then pwrite them" until the set is small (like a live
// migration). Bounded: 8 rounds, 2 s. A fork meanwhile stops it (the caller
// then starts over after that child). Returns -1 if a pwrite failed (a page
// unmapped under us): then the final pass must not trust the write
// protection.
static int precopy(int pm, char *lo, char *hi, unsigned long forks0)
{
	long t0 = now_ms();
	unsigned long prev = ~0UL;
	for (int round = 0; round < 8; round++) {
		unsigned long bytes = 0;
		uint64_t a = (uint64_t)lo;
		for (int k = 0; a < (uint64_t)hi && k < (1 << 20); k++) {
			uint64_t next;
			long n = scan(pm, a, (uint64_t)hi, 1, 0, &next);
			if (n < 0 || write_regions(n, &bytes)) {
				st.bytes_precopy += bytes;
				return -1;
			}
			if (__atomic_load_n(&st.forks, __ATOMIC_ACQUIRE) != forks0)
				return -1;
			if (next <= a)
				break;
			a = next;
		}
		st.rounds_precopy++;
		st.bytes_precopy += bytes;
		// Small enough, not shrinking, or out of time: the rest in the pause.
		if (bytes < (1UL << 20) || bytes * 2 > prev || now_ms() - t0 > 2000)
			break;
		prev = bytes;
	}
	return 0;
}

// vma_end returns the end of the mapping that holds a (PROCMAP_QUERY on
// /proc/self/maps, Linux 6.11+), or 0.
#define PROCMAP_QUERY_IOC 0xc0686611UL // _IOWR('f', 17, struct procmap_query)
static uint64_t vma_end(int maps, char *a)
{
	struct {
		uint64_t size, flags, addr, start, end, vflags, pagesize, offset, inode;
		unsigned dev_major, dev_minor, name_size, build_id_size;
		uint64_t name_addr, build_id_addr;
	} q = {104, 0, (uint64_t)a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
	if (maps < 0 || sc(SYS_ioctl, maps, PROCMAP_QUERY_IOC, &q) < 0 || q.end <= (uint64_t)a)
		return 0;
	return q.end;
}

// remap_shared maps [i, j) MAP_SHARED from the file again. Replacing the
// private mapping in place frees its anonymous pages inside the pause, which
// costs about as much as writing them; so the private mappings are first
// moved (mremap: page tables move, pages are not freed; 1 ms for 256 MiB
// here against 27 ms to free them) to the same offset in the scratch range,
// and freed after the pause (scrap_scratch). mremap moves one mapping at a
// time while userfaultfd is registered, so [i, j) is moved mapping by
// mapping (maps: /proc/self/maps for vma_end; -1: try the whole run). What
// cannot be moved is replaced in place, the slow way.
static int remap_shared(int maps, size_t i, size_t j)
{
	char *a = st.base + i * PAGE, *e = st.base + j * PAGE;
	for (int k = 0; st.scratch && a < e && k < (1 << 20); k++) {
		uint64_t ve = vma_end(maps, a);
		char *end = ve && ve < (uint64_t)e ? (char *)ve : e;
		char *to = st.scratch + (a - st.base);
		void *r = (void *)sc6(SYS_mremap, (long)a, (long)(end - a), (long)(end - a), MREMAP_MAYMOVE | MREMAP_FIXED,
				      (long)to, 0);
		if (!is_err(r)) {
			st.moves++;
			size_t lo = (size_t)(a - st.base) / PAGE, hi = (size_t)(end - st.base) / PAGE;
			if (lo < st.scr_lo)
				st.scr_lo = lo;
			if (hi > st.scr_hi)
				st.scr_hi = hi;
		} else {
			// Still in place: replaced below. A failed MREMAP_FIXED
			// may have unmapped the destination: reserve it again.
			st.move_fails++;
			sys_mmap(to, (size_t)(end - a), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
		}
		a = end;
	}
	return is_err(sys_mmap(st.base + i * PAGE, (j - i) * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, st.fd,
			       (off_t)(i * PAGE)))
		       ? -1
		       : 0;
}

// scrap_scratch frees what remap_shared moved away (after the pause).
static void scrap_scratch(void)
{
	if (st.scr_hi > st.scr_lo)
		sys_mmap(st.scratch + st.scr_lo * PAGE, (st.scr_hi - st.scr_lo) * PAGE, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
	st.scr_lo = ~0UL;
	st.scr_hi = 0;
}

// ---- chunked pauses ---------------------------------------------------------------
//
// The pause part of the write-back is split into chunks in address order,
// each its own short stop-the-world pause: stop the other threads, write
// the private pages of [a, cut) until the pause has used its budget
// (st.budget_us), map [a, cut) shared, resume, let the threads run for a
// gap as long as that pause, go on from cut. Without a pre-copy (seccomp
// refuses userfaultfd) that bounds the longest pause instead of writing
// every private page in one; after a pre-copy it bounds what a pre-copy
// that stopped early leaves.
//
// The lock stays held across the whole sequence, gaps included, so no
// interposed call sees the mixed state (chunks below a shared, the rest
// private): mmap/munmap/madvise/mremap on the heap and fork_prepare wait
// until the write-back is done (a fork then finds the heap shared and
// remaps it private as usual); only plain stores run in the gaps. A store
// into a chunk already shared goes to the file; a store into a later
// chunk makes a private copy (or, after a pre-copy, marks the page
// written), which that chunk's scan finds. Nothing here allocates.

#define PIECE (64 * PAGE)          // the longest pwrite between two looks at the clock
// One scan walks at most this much (1 MiB: 10-20 µs to tell copies from
// file pages): a chunk rescans from its start (stores in the gap made new
// copies), so a window much larger than what a pause writes is walked again
// and again (with 32 MiB windows, bench-fork's pauses spent more time
// scanning than writing: 0.65 MiB/ms written against 5 in one pause).
#define SCAN_WINDOW (256 * PAGE)
#define GAP_MIN_US 100             // shortest gap: enough for a paused thread to get a core
#define CHUNKS_FOR_US 10000000L    // after 10 s of chunks the budget doubles every second (to 1 s at most)
#define BUDGET_DEFAULT_US 1000
#define STOP_SOFT_US 2000          // a stop that takes longer is given up and retried
#define STOP_SOFT_TRIES 32         // ... this many times in a row, then waited for (200 ms)

// write_pause writes the private pages of pages [a, hi), in address order,
// until now_us() - t0 >= budget (0: no budget), and returns the cut: every
// private page below it is in the file. At least one piece is written (or
// one scan window passed) before the budget is looked at, so each chunk
// makes progress. Returns (size_t)-1 when a scan or pwrite failed.
// anon_only: no pre-copy (report private copies); else "written" pages.
static size_t write_pause(int pm, int anon_only, size_t a, size_t hi, long t0, long budget)
{
	uint64_t p = (uint64_t)(st.base + a * PAGE), e = (uint64_t)(st.base + hi * PAGE);
	for (int k = 0; p < e && k < (1 << 24); k++) {
		uint64_t we = e - p > SCAN_WINDOW ? p + SCAN_WINDOW : e, next;
		long n = scan(pm, p, we, 0, anon_only, &next);
		if (n < 0)
			return (size_t)-1;
		for (long r = 0; r < n; r++) {
			if (regs[r].categories & PAGE_IS_FILE)
				continue;
			uint64_t ra = regs[r].start < p ? p : regs[r].start, re = regs[r].end > we ? we : regs[r].end;
			// Only pages in use and not freed meanwhile, in pieces.
			for (size_t i = (size_t)((char *)ra - st.base) / PAGE, j = (size_t)((char *)re - st.base) / PAGE; i < j;) {
				if (!bit(i) || mbit(st.dbits, i)) {
					i++;
					continue;
				}
				size_t m = i;
				while (m < j && m - i < PIECE / PAGE && bit(m) && !mbit(st.dbits, m))
					m++;
				if (pwrite_all(st.base + i * PAGE, (m - i) * PAGE))
					return (size_t)-1;
				st.bytes_pause += (m - i) * PAGE;
				i = m;
				if (budget && now_us() - t0 >= budget)
					return i;
			}
		}
		if (next <= p || next > we)
			next = we;
		p = next;
		if (budget && now_us() - t0 >= budget)
			return (size_t)((char *)p - st.base) / PAGE;
	}
	// Where the loop's bound (not the range) ended it, only [a, p) is
	// written: the caller must not map more than that shared.
	return p < e ? (size_t)((char *)p - st.base) / PAGE : hi;
}

// remap_runs maps the in-use, not deferred pages of [a, b) shared
// (remap_shared per run); shared = 0 maps them private again instead
// (unshare: see try_restore). Threads paused for shared = 1 (a moved piece
// is unmapped for a moment); private needs no pause, as in fork_prepare:
// the file holds what the shared mapping showed, so a store lands in the
// file before the switch or in a private copy after it.
static int remap_runs(int maps, size_t a, size_t b, int shared)
{
	int ok = 1;
	for (size_t i = a; i < b;) {
		if ((i % 64) == 0 && st.bits[i / 64] == 0) {
			i += 64; // sparse bitmap: skip empty words
			continue;
		}
		if (!bit(i) || mbit(st.dbits, i)) {
			i++;
			continue;
		}
		size_t j = i;
		while (j < b && bit(j) && !mbit(st.dbits, j))
			j++;
		if (shared) {
			if (remap_shared(maps, i, j))
				ok = 0; // cannot happen for a file we mapped before
		} else {
			sys_mmap(st.base + i * PAGE, (j - i) * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, st.fd,
				 (off_t)(i * PAGE));
		}
		i = j;
	}
	return ok ? 0 : -1;
}

// gap lets the other threads run for us microseconds (a futex wait nobody
// wakes: a sleep with no libc).
static int gapw;
static void gap(long us) { futex_wait(&gapw, 0, us * 1000); }
static void reap(void);

// try_restore runs with the lock held and no child left. It may drop the
// lock for the pre-copy (st.restoring keeps other threads out meanwhile).
static int stop_timed_out; // the last try_restore gave up a full-length stop (costly: retry slowly)
static void try_restore(void)
{
	stop_timed_out = 0;
	if (handler_ok == 0)
		handler_ok = install_handler();
	if (handler_ok < 0) {
		st.norestore = 1;
		setwhy("signal 62 in use by the application or unsupported arch");
		write_status();
		return;
	}
	if (pause_action() != (void *)on_pause) {
		handler_ok = -1; // and pthread_sigmask no longer unblocks it
		st.norestore = 1;
		setwhy("the application replaced the preload's signal 62 handler");
		write_status();
		return;
	}
	// A thread that cannot be paused: wait for it to call us (no pre-copy
	// on a thread that then cannot finish the job).
	if (!others_pausable()) {
		st.restore_fail++;
		write_status(); // bounded: the write-back thread retries at most every second
		return;
	}
	int pm = sys_open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC, 0);
	if (pm < 0) {
		st.norestore = 1;
		setwhy("cannot open /proc/self/pagemap");
		write_status();
		return;
	}
	st.restoring = 1;
	st.bytes_precopy = st.rounds_precopy = st.bytes_pause = 0;
	long tp = now_us();
	// Pre-copy: punch what was zeroed (no child reads the file any more),
	// then copy with the other threads running.
	size_t lo, hi;
	span(&lo, &hi);
	int uffd = -1;
	unsigned long forks0 = st.forks;
	if (hi > lo && scan_kind >= 0 && !st.noprecopy && (uffd = uffd_wp(st.base + lo * PAGE, st.base + hi * PAGE)) >= 0) {
		punch_zbits();
		unlock();
		int r = precopy(pm, st.base + lo * PAGE, st.base + hi * PAGE, forks0);
		lock();
		reap();
		if (st.forks != forks0 || st.nkids) {
			// Forked meanwhile: that child reads the file; start over
			// after it. (Nothing written so far is wrong: only offsets
			// of pages the parent has its own copy of.)
			sc(SYS_close, uffd, 0, 0);
			sc(SYS_close, pm, 0, 0);
			st.restoring = 0;
			return;
		}
		if (r < 0) {
			// Closing unregisters and drops the write protection:
			// the final scan then reports every private page.
			sc(SYS_close, uffd, 0, 0);
			uffd = -1;
		}
	}
	st.ph_precopy = (unsigned long)(now_us() - tp);
	int maps = sys_open("/proc/self/maps", O_RDONLY | O_CLOEXEC, 0);
	// No signal handler of this thread may run in a pause: between a move
	// and the shared map a piece of the heap is not mapped at all. The
	// signals stay blocked in the gaps too: this thread holds the lock
	// throughout, and a handler that called into the allocator here would
	// wait for it forever. Process-directed signals go to the other
	// threads meanwhile (they run in the gaps).
	unsigned long all = ~0UL, mask = 0;
	sc6(SYS_rt_sigprocmask, 0 /* SIG_BLOCK */, (long)&all, (long)&mask, 8, 0, 0);
	// Pages zeroed while private read zero from the file from now on
	// (lock held: no madvise adds one before the end), then the chunks.
	punch_zbits();
	span(&lo, &hi);
	st.ph_stop = st.ph_write = st.ph_remap = st.ph_pause = st.ph_longest = st.ph_longest_stop = st.ph_gaps = st.pauses = st.stop_retries = 0;
	int ok = 1, timeout = 0, soft = 0, lost = 0, toomany = 0;
	unsigned long w0 = __atomic_load_n(&st.lock_waits, __ATOMIC_RELAXED);
	size_t a = lo;
	long ts = now_us(), t3 = ts;
	for (int k = 0; a < hi && k < (1 << 24); k++) {
		long t0 = now_us();
		// Stopping takes 0.1-0.3 ms, unless a thread waits for a CPU
		// (an overloaded machine: 40-90 ms seen in bench-fork at load
		// 14), and the threads already stopped wait with it. So give up
		// after STOP_SOFT_US, let everyone run and try again; only after
		// STOP_SOFT_TRIES such tries in a row wait the full 200 ms.
		int hard = soft >= STOP_SOFT_TRIES;
		if (pause_action() != (void *)on_pause) {
			// The application took signal 62 between two pauses: a
			// tgkill would run its handler. Undo, and stop for good.
			lost = 1;
			ok = 0;
			break;
		}
		int n = pause_others(hard ? 200000 : STOP_SOFT_US);
		if (n == -2) {
			// More threads than a pause can track: no pause will
			// ever stop them all. Undo, and stay private for good.
			toomany = 1;
			ok = 0;
			break;
		}
		if (n < 0) {
			// The threads that did stop were stopped this long: it
			// counts as a pause (restore_max_ms).
			long tf = now_us();
			st.pauses++;
			st.stop_retries++;
			st.ph_stop += (unsigned long)(tf - t0);
			st.ph_pause += (unsigned long)(tf - t0);
			if ((unsigned long)(tf - t0) > st.ph_longest)
				st.ph_longest = st.ph_longest_stop = (unsigned long)(tf - t0);
			if (hard) {
				timeout = 1;
				break;
			}
			soft++;
			long tg = now_us();
			gap(tf - t0 > GAP_MIN_US ? tf - t0 : GAP_MIN_US);
			st.ph_gaps += (unsigned long)(now_us() - tg);
			continue;
		}
		soft = 0;
		long t1 = now_us();
		// Alone (no other thread): the rest in one pause (with nobody to
		// let run, gaps only cost time). After 10 s of chunks the budget
		// grows, so a large dirty set finishes, but a pause stays far below
		// the 60 s after which a paused thread leaves on_pause by itself.
		long budget = 0;
		if (n > 0) {
			long over = (t0 - ts - CHUNKS_FOR_US) / 1000000L;
			budget = st.budget_us;
			for (long d = 0; d <= over && budget < 1000000L; d++)
				budget *= 2;
		}
		size_t cut = write_pause(pm, uffd < 0, a, hi, t0, budget);
		long t2 = now_us();
		if (cut == (size_t)-1) {
			resume_others();
			ok = 0;
			break;
		}
		if (remap_runs(maps, a, cut, 1)) {
			// Only if the file cannot be mapped any more: [a, cut) is
			// then partly shared, partly private, all in the file.
			ok = 0;
			a = cut;
			resume_others();
			break;
		}
		t3 = now_us();
		resume_others();
		st.pauses++;
		st.ph_stop += (unsigned long)(t1 - t0);
		st.ph_write += (unsigned long)(t2 - t1);
		st.ph_remap += (unsigned long)(t3 - t2);
		st.ph_pause += (unsigned long)(t3 - t0);
		if ((unsigned long)(t3 - t0) > st.ph_longest) {
			st.ph_longest = (unsigned long)(t3 - t0);
			st.ph_longest_stop = (unsigned long)(t1 - t0);
		}
		a = cut;
		if (a < hi) {
			// The application gets at least half of the time.
			long g = t3 - t0 > GAP_MIN_US ? t3 - t0 : GAP_MIN_US;
			long tg = now_us();
			gap(g);
			st.ph_gaps += (unsigned long)(now_us() - tg);
		}
	}
	st.lock_waits_last = __atomic_load_n(&st.lock_waits, __ATOMIC_RELAXED) - w0;
	if (ok && a < hi)
		timeout = 1; // the loop's bound ended it: never st.privat = 0 with pages unwritten
	if (!ok || timeout) {
		// [lo, a) is shared, the rest private: not a state a fork may see
		// (fork_prepare remaps nothing while st.privat is set). Map the
		// shared chunks private again (no pause needed, see remap_runs):
		// the heap is then as before the write-back, all private, with
		// the file holding at least what it showed.
		remap_runs(maps, lo, a, 0);
	}
	sc6(SYS_rt_sigprocmask, 2 /* SIG_SETMASK */, (long)&mask, 0, 8, 0, 0);
	// maybe_restore frees the moved-away copies after unlocking, then
	// closes the userfaultfd (which clears the write protection of what is
	// still registered: cheaper once the copies are gone).
	st.scrap = 1;
	st.uffd_close = uffd + 1;
	sc(SYS_close, pm, 0, 0);
	if (maps >= 0)
		sc(SYS_close, maps, 0, 0);
	long ms = ((long)st.ph_longest + 999) / 1000;
	if ((unsigned long)ms > st.restore_max_ms)
		st.restore_max_ms = (unsigned long)ms;
	if (timeout) {
		st.restore_fail++; // retried later; the heap stays private meanwhile
		stop_timed_out = 1;
		write_status();
		return;
	}
	if (!ok) {
		// A failed pwrite leaves the private pages authoritative: stay private.
		st.norestore = 1;
		if (lost)
			handler_ok = -1;
		setwhy(lost      ? "the application replaced the preload's signal 62 handler"
		       : toomany ? "more than 4096 threads to pause"
				 : "write-back to the heap file failed");
		write_status();
		return;
	}
	// Punch what was freed meanwhile and give the offsets back.
	punch_runs(st.dbits, 1);
	st.privat = 0;
	st.restores++;
	st.last_by = st.wb_tid && (int)sc(SYS_gettid, 0, 0, 0) == st.wb_tid ? 1 : 2;
	st.ph_punch = (unsigned long)(now_us() - t3);
	write_status();
}

// reap closes the pipes of children that are gone. Lock held.
static void reap(void)
{
	for (int k = 0; k < st.nkids;) {
		char b[16];
		long r = sc(SYS_read, st.kids[k], b, sizeof b);
		if (r == 0) { // EOF: the child exited or exec'd
			sc(SYS_close, st.kids[k], 0, 0);
			st.kids[k] = st.kids[--st.nkids];
			continue;
		}
		k++;
	}
}

// finish_restore frees what a write-back moved out of the heap; after
// try_restore, with the lock released.
static void finish_restore(void)
{
	// The private copies moved out of the heap: freeing them is the
	// costly part of replacing a mapping, so it happens here, with
	// neither the pause nor the lock held (st.restoring keeps every
	// other restore out until it is done).
	scrap_scratch();
	if (st.uffd_close > 0)
		sc(SYS_close, st.uffd_close - 1, 0, 0);
	st.uffd_close = 0;
	__atomic_store_n(&st.restoring, 0, __ATOMIC_RELEASE);
}

// maybe_restore runs the write-back in an interposed call: only where there
// is no write-back thread (clone failed), or on a thread that still blocks
// PAUSE_SIG (the application blocked it on purpose, or blocked it some way
// the preload does not see): only that thread can then do it.
static void maybe_restore(void)
{
	if (st.norestore || !st.privat || st.restoring)
		return;
	if (st.wb_tid && (!blocker || (int)sc(SYS_gettid, 0, 0, 0) != blocker))
		return;
	lock();
	reap();
	if (st.privat && st.nkids == 0 && !st.norestore && !st.restoring) {
		// After a failed attempt (a thread did not pause in time) retry
		// only every 256 calls: bounded cost.
		if (st.restore_fail == 0 || ++st.calls_since_try >= 256 ||
		    (blocker && (int)sc(SYS_gettid, 0, 0, 0) == blocker)) {
			st.calls_since_try = 0;
			try_restore();
		}
	}
	int scrap = st.scrap;
	st.scrap = 0;
	unlock();
	if (scrap)
		finish_restore();
}

// ---- the write-back thread ---------------------------------------------------------
//
// The write-back used to run only inside an interposed mmap/munmap/madvise
// call: an idle process, or a Redis whose allocator had nothing to purge,
// kept its heap private (on DRAM) for good, and when the main thread was the
// caller, clients waited through the whole pre-copy. So at its first fork an
// FS_DAX target starts a thread of the preload's own (not every process:
// the preload is in the entrypoint shell, grep, ... too) that waits for the
// children's pipes and runs the write-back as soon as the last one is gone,
// off the application's threads.
//
// It is a raw clone (no libc: no pthread_create), with the flags of a
// thread (qemu-user accepts exactly this set as one), a stack from
// sys_mmap (never the heap), and every signal blocked from its first
// instruction: the creating thread blocks them all around the clone and
// the new thread inherits that mask; it pauses the others and never needs
// to be paused (pause_others and others_pausable skip its tid). fork copies
// only the calling thread: a child has none (fork_child) and, being a
// child, never starts one.

// pmem_clone(flags, stack_top, fn, SYS_clone, SYS_exit): the numbers come
// from the enum (TestKernelConstants checks them per architecture) rather
// than being spelled in the assembly.
long pmem_clone(unsigned long flags, void *stack_top, void (*fn)(void), long nr_clone, long nr_exit)
	__attribute__((visibility("hidden")));
#ifdef __x86_64__
// rdi flags, rsi stack top, rdx fn, rcx nr_clone, r8 nr_exit. The child
// starts on the new stack with fn and nr_exit at its top (16-byte aligned
// at the call, as the ABI wants), and exits the thread (not the process)
// if fn returns.
__asm__(".pushsection .text\n"
	".hidden pmem_clone\n"
	".globl pmem_clone\n"
	".type pmem_clone,@function\n"
	"pmem_clone:\n"
	"	and $-16, %rsi\n"
	"	sub $16, %rsi\n"
	"	mov %rdx, (%rsi)\n"
	"	mov %r8, 8(%rsi)\n"
	"	mov %rcx, %rax\n" // clone(flags, stack, 0, 0, 0)
	"	xor %edx, %edx\n"
	"	xor %r10d, %r10d\n"
	"	xor %r8d, %r8d\n"
	"	syscall\n"
	"	test %rax, %rax\n"
	"	jnz 1f\n"
	"	xor %ebp, %ebp\n"
	"	call *(%rsp)\n"
	"	mov 8(%rsp), %rax\n" // exit(0): this thread only
	"	xor %edi, %edi\n"
	"	syscall\n"
	"	hlt\n"
	"1:	ret\n"
	".popsection\n");
#else
// x0 flags, x1 stack top, x2 fn, x3 nr_clone, x4 nr_exit.
__asm__(".pushsection .text\n"
	".hidden pmem_clone\n"
	".globl pmem_clone\n"
	".type pmem_clone,%function\n"
	"pmem_clone:\n"
	"	and x1, x1, #-16\n"
	"	sub x1, x1, #16\n"
	"	str x2, [x1]\n"
	"	str x4, [x1, #8]\n"
	"	mov x8, x3\n" // clone(flags, stack, 0, 0, 0)
	"	mov x2, #0\n"
	"	mov x3, #0\n"
	"	mov x4, #0\n"
	"	svc 0\n"
	"	cbnz x0, 1f\n"
	"	ldr x9, [sp]\n"
	"	mov x29, #0\n"
	"	mov x30, #0\n"
	"	blr x9\n"
	"	ldr x8, [sp, #8]\n" // exit(0): this thread only
	"	mov x0, #0\n"
	"	svc 0\n"
	"1:	ret\n"
	".popsection\n");
#endif

#define WB_STACK (256UL << 10)
static int wb_seq; // bumped (and woken) by fork_parent

struct pollfd_k {
	int fd;
	short events, revents;
};

// wb_main is the write-back thread. It has no thread descriptor of its own:
// without CLONE_SETTLS it shares the TLS pointer of the thread that made
// it, so nothing on its path may touch TLS: no errno (set_errno), no libc
// call, no stack protector (the build has -fno-stack-protector). It blocks
// every signal, so no handler ever runs on it. Nothing here allocates.
static void wb_main(void)
{
	sc(SYS_prctl, PR_SET_NAME, "pmem-writeback", 0); // top -H, ps -T
	long backoff_ms = 0;
	for (;;) {
		lock();
		reap();
		int seq = __atomic_load_n(&wb_seq, __ATOMIC_ACQUIRE);
		if (st.privat && st.nkids == 0 && !st.norestore && !st.restoring) {
			unsigned long r0 = st.restores;
			try_restore();
			int scrap = st.scrap;
			st.scrap = 0;
			int again = st.restores != r0 || st.norestore || !st.privat || st.nkids > 0;
			unlock();
			if (scrap)
				finish_restore();
			if (again) {
				backoff_ms = 0;
				continue;
			}
			// A thread blocks the signal or waits for it (it may run
			// the write-back itself, see maybe_restore): a cheap check,
			// tried again after 50 ms doubling to 1 s. A thread that
			// looked pausable but did not stop in time cost every other
			// thread a stop of up to 200 ms: 1 s doubling to 64 s, so
			// such a process is not stalled for good every second
			// (found in review). A fork wakes us either way.
			long lo = stop_timed_out ? 1000 : 50, hi = stop_timed_out ? 64000 : 1000;
			backoff_ms = backoff_ms < lo ? lo : (backoff_ms * 2 > hi ? hi : backoff_ms * 2);
			futex_wait(&wb_seq, seq, backoff_ms * 1000000L);
			continue;
		}
		if (st.privat && st.nkids > 0 && !st.norestore) {
			// Wait for EOF on our own copies of the read ends: another
			// thread's reap() may close the originals meanwhile, and a
			// number closed and reused for a socket would wake us up
			// again and again. The timeout covers a fork adding a pipe.
			struct pollfd_k p[8];
			int n = 0;
			for (int k = 0; k < st.nkids && n < 8; k++) {
				long d = sc(SYS_fcntl, st.kids[k], F_DUPFD_CLOEXEC, 0);
				if (d >= 0) {
					p[n].fd = (int)d;
					p[n].events = POLLIN;
					p[n].revents = 0;
					n++;
				}
			}
			unlock();
			long ts[2] = {1, 0};
			sc6(SYS_ppoll, (long)p, n, (long)ts, 0, 8, 0);
			for (int k = 0; k < n; k++)
				sc(SYS_close, p[k].fd, 0, 0);
			continue;
		}
		int busy = st.restoring; // an application thread is restoring
		unlock();
		futex_wait(&wb_seq, seq, busy ? 50000000L : 10000000000L);
	}
}

// start_writeback_thread runs in fork_parent (lock held) at the first fork.
// If clone fails (seccomp, EPERM, ENOSYS), the write-back stays in the
// interposed calls, as before, and the status file says why.
static void start_writeback_thread(void)
{
	char *stk = sys_mmap(0, WB_STACK, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (is_err(stk)) {
		st.wb_err = -(long)stk;
		return;
	}
	// The lowest page stays PROT_NONE: an overflow faults instead of
	// writing into whatever lies below.
	void *rw = sys_mmap(stk + PAGE, WB_STACK - PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (is_err(rw)) {
		st.wb_err = -(long)rw;
		sc(SYS_munmap, stk, WB_STACK, 0);
		return;
	}
	unsigned long all = ~0UL, old = 0;
	sc6(SYS_rt_sigprocmask, SIG_BLOCK, (long)&all, (long)&old, 8, 0, 0);
	long r = pmem_clone(CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM, stk + WB_STACK,
			    wb_main, SYS_clone, SYS_exit);
	sc6(SYS_rt_sigprocmask, SIG_SETMASK, (long)&old, 0, 8, 0, 0);
	if (r < 0) {
		st.wb_err = -r;
		sc(SYS_munmap, stk, WB_STACK, 0);
		return;
	}
	st.wb_tid = (int)r;
	st.wb_err = 0;
}

// ---- fork (FS_DAX) -----------------------------------------------------------------

// The write end of each fork's pipe, by the forking thread: the parent
// closes its copy in fork_parent. The lock is not held from prepare to
// parent, so two threads forking at once must not share one slot (a
// single variable let one thread close the other's write end and leak its
// own: that child's exit would never be seen).
static struct {
	int tid, fd;
} pipe_w[8];

// The lock is not held across the fork. Prepare handlers run in the reverse
// order of registration, and a library loaded as a dependency of the
// program (Debian's libjemalloc.so.2) registers its handlers in its
// constructor, before ours: its prepare handler then runs after this one
// and takes the allocator's mutexes, one of which its background thread
// holds while it purges (madvise: an interposed call that needs the lock).
// Holding the lock here deadlocked Redis 6.0 in BGSAVE (test/matrix,
// bullseye-root: main thread in jemalloc's prefork, jemalloc_bg_thd spinning
// in lock()). Released here, what other threads do until the fork is
// already the private mode's (new maps anonymous, frees zero pages, no
// write to the file), no write-back starts (the new child's pipe is
// registered), and the child resets a lock it may inherit held (it uses no
// bookkeeping that a half-done call could leave inconsistent).
static void fork_prepare(void)
{
	lock();
	if (st.mode != FSDAX || st.child) {
		unlock();
		return;
	}
	if (!st.privat) {
		// msync is not needed: a MAP_SHARED store is in the page cache
		// (or on the DAX media) already.
		remap_private();
		st.privat = 1;
	}
	reap();
	int fds[2];
	int slot = -1, tid = (int)sc(SYS_gettid, 0, 0, 0);
	for (int k = 0; k < 8 && slot < 0; k++)
		if (pipe_w[k].tid == 0)
			slot = k;
	if (st.nkids < 8 && slot >= 0 && sc(SYS_pipe2, fds, O_CLOEXEC | O_NONBLOCK, 0) == 0) {
		st.kids[st.nkids++] = fds[0];
		pipe_w[slot].tid = tid;
		pipe_w[slot].fd = fds[1];
	} else if (!st.norestore) {
		st.norestore = 1; // cannot tell when this child is gone
		setwhy("more than 8 concurrent children");
	}
	unlock();
}
static void fork_parent(void)
{
	lock();
	st.forks++;
	if (st.mode == FSDAX && !st.child) {
		int tid = (int)sc(SYS_gettid, 0, 0, 0);
		for (int k = 0; k < 8; k++)
			if (pipe_w[k].tid == tid) {
				sc(SYS_close, pipe_w[k].fd, 0, 0);
				pipe_w[k].tid = 0;
			}
		// EAGAIN (a pids limit: the fork just took a pid) and ENOMEM
		// pass: try again at the next fork. EPERM, ENOSYS (seccomp) and
		// PMEM_WRITEBACK_THREAD=0 (-1) are for good.
		if (!st.wb_tid && (st.wb_err == 0 || st.wb_err == EAGAIN || st.wb_err == ENOMEM))
			start_writeback_thread();
		__atomic_add_fetch(&wb_seq, 1, __ATOMIC_RELEASE);
		futex_wake(&wb_seq);
		write_status();
		if (st.forks == 1) {
			struct buf b = {.n = 0};
			logp(&b);
			bs(&b, "fork: FS_DAX heap remapped private copy-on-write; back to shared PMEM after the child "
			       "exits (status file heap_shared, restores)");
			logline(&b);
		}
	}
	unlock();
}
// fork_child resets the lock, which the child may inherit held by a thread
// of the parent (fork_prepare does not hold it across the fork). Child
// handlers run in registration order, so one registered before ours (a
// library's constructor) that made an interposed mmap/munmap/madvise call on
// the heap would wait for that lock first: none of the allocators tested
// does (test/matrix forks every image class). Taking the lock over when the
// pid changed would be wrong for a vfork child, which shares the parent's
// memory while the parent's other threads run.
static void fork_child(void)
{
	st.child = 1;
	st.ppid = st.pid;
	st.orphan_noted = 0;
	st.pid = (int)sc(SYS_getpid, 0, 0, 0);
	st.status_fd = -1; // the parent's record stays the parent's
	// Keep the write ends open (closed by exit or exec: that is the signal); the
	// read ends are the parent's.
	for (int k = 0; k < st.nkids; k++)
		sc(SYS_close, st.kids[k], 0, 0);
	st.nkids = 0;
	// fork copied only the calling thread: the parent's write-back thread
	// is not here (a child never starts one: st.child).
	st.wb_tid = 0;
	blocker = 0;
	__atomic_store_n(&st.lock, 0, __ATOMIC_RELEASE);
}

// ---- activation -------------------------------------------------------------------

static int read_file(const char *path, char *out, size_t cap)
{
	int fd = sys_open(path, O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	size_t n = 0;
	for (int k = 0; k < 64 && n < cap - 1; k++) { // bounded
		long r = sc(SYS_read, fd, out + n, cap - 1 - n);
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	sc(SYS_close, fd, 0, 0);
	out[n] = 0;
	return (int)n;
}

// env returns the value of name in environ (NUL-separated), or 0.
static const char *env(const char *environ, int n, const char *name)
{
	size_t nl = slen(name);
	for (int i = 0; i < n;) {
		const char *e = environ + i;
		size_t l = slen(e);
		if (l > nl && prefix(e, l, name) && e[nl] == '=')
			return e + nl + 1;
		i += (int)l + 1;
	}
	return 0;
}

static int listed(const char *list, const char *name)
{
	size_t nl = slen(name);
	for (const char *p = list;;) {
		const char *c = p;
		while (*c && *c != ',')
			c++;
		if ((size_t)(c - p) == nl && prefix(p, nl, name))
			return 1;
		if (!*c)
			return 0;
		p = c + 1;
	}
}

// errno_text says what the errors a setup step can meet mean (the preload
// has no strerror); "" for others.
static const char *errno_text(long err)
{
	switch (-err) {
	case ENOENT:
		return " (no such file or directory: does PATH exist, is the PMEM volume mounted?)";
	case ENOTDIR:
		return " (not a directory)";
	case EACCES:
		return " (permission denied)";
	case EPERM:
		return " (operation not permitted)";
	case EROFS:
		return " (read-only filesystem)";
	case ENOSPC:
		return " (no space left on the device)";
	case EFBIG:
		return " (file too large: past the filesystem's largest file, or RLIMIT_FSIZE)";
	case ENOMEM:
		return " (not enough memory or address space)";
	case EINVAL:
		return " (invalid argument)";
	}
	return "";
}

static void fail_hint(const char *what, const char *val, long err, const char *hint)
{
	struct buf b = {.n = 0};
	logp(&b);
	bs(&b, what);
	if (val) {
		bs(&b, val);
	}
	if (err) {
		bs(&b, ": errno ");
		bu(&b, (unsigned long)-err);
		bs(&b, errno_text(err));
	}
	if (hint)
		bs(&b, hint);
	bs(&b, "; heap stays on DRAM");
	logline(&b);
}
static void fail(const char *what, const char *val, long err) { fail_hint(what, val, err, 0); }

#define LOWER_LIMIT "; lower PMEM_SIZE_LIMIT (the pod's pmem.alibabacloud.com/size)"

// parse_tiers fills st from MEMKIND_MEM_TIERS. Returns 0 or -1 (logged).
static int parse_tiers(const char *t, unsigned long *limit)
{
	int kinds = 0;
	const char *p = t;
	while (*p) {
		const char *e = p;
		while (*e && *e != ';')
			e++;
		// one tier: KEY:VAL,KEY:VAL
		const char *kind = 0;
		size_t kindn = 0;
		unsigned long ratio = 1;
		const char *q = p;
		while (q < e) {
			const char *f = q;
			while (f < e && *f != ',')
				f++;
			const char *colon = q;
			while (colon < f && *colon != ':')
				colon++;
			const char *v = colon + 1;
			size_t vn = colon < f ? (size_t)(f - v) : 0;
			if (prefix(q, (size_t)(f - q), "KIND:")) {
				kind = v;
				kindn = vn;
			} else if (prefix(q, (size_t)(f - q), "PATH:")) {
				if (vn >= sizeof st.path - 1) {
					fail("MEMKIND_MEM_TIERS: PATH too long", 0, 0);
					return -1;
				}
				memcpy(st.path, v, vn);
				st.path[vn] = 0;
			} else if (prefix(q, (size_t)(f - q), "PMEM_SIZE_LIMIT:")) {
				// Below 2^62: rounded up to 2 MiB, doubled for the scratch
				// range's address space, it still fits a long.
				if (parse_u(v, vn, limit) || *limit >= (1UL << 62)) {
					fail("MEMKIND_MEM_TIERS: PMEM_SIZE_LIMIT must be a decimal byte count below 2^62 (0: 64 GiB): ", t, 0);
					return -1;
				}
			} else if (prefix(q, (size_t)(f - q), "RATIO:")) {
				if (parse_u(v, vn, &ratio) || ratio == 0 || ratio > 1000) {
					fail("MEMKIND_MEM_TIERS: RATIO must be 1..1000: ", t, 0);
					return -1;
				}
			} // POLICY and unknown keys: memkind's, not ours
			q = f < e ? f + 1 : e;
		}
		if (kind) {
			kinds++;
			if (kindn == 4 && prefix(kind, kindn, "DRAM"))
				st.dram_ratio = (unsigned)ratio;
			else if (kindn == 6 && prefix(kind, kindn, "FS_DAX")) {
				st.mode = FSDAX;
				st.pmem_ratio = (unsigned)ratio;
			} else if (kindn == 8 && prefix(kind, kindn, "KMEM_DAX")) {
				st.mode = KMEM;
				st.pmem_ratio = (unsigned)ratio;
			} else {
				fail("MEMKIND_MEM_TIERS: KIND must be DRAM, FS_DAX or KMEM_DAX: ", t, 0);
				return -1;
			}
		}
		p = *e ? e + 1 : e;
	}
	if (st.mode == OFF) {
		fail("MEMKIND_MEM_TIERS has no FS_DAX or KMEM_DAX tier: ", t, 0);
		return -1;
	}
	return 0;
}

// dns_label reports whether s is 1 to 63 of [a-z0-9-]: a container name,
// safe as part of a file name.
static int dns_label(const char *s)
{
	size_t n = slen(s);
	if (n == 0 || n > 63)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!(s[i] >= 'a' && s[i] <= 'z') && !(s[i] >= '0' && s[i] <= '9') && s[i] != '-')
			return 0;
	return 1;
}

static void join(char *out, size_t cap, const char *a, const char *b, unsigned long n)
{
	struct buf x = {.n = 0};
	bs(&x, a);
	bs(&x, b);
	bu(&x, n);
	if (x.n >= cap)
		x.n = cap - 1;
	memcpy(out, x.b, x.n);
	out[x.n] = 0;
}

// open_heap creates DIR/pmem-heap.<pid> (path into file) and returns its fd
// or -errno.
static int open_heap(const char *dir, char *file, size_t cap)
{
	join(file, cap, dir, "/pmem-heap.", (unsigned long)st.pid);
	sys_unlink(file); // a stale file of an earlier process with our pid
	return sys_open(file, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
}

// prepare_heap_dir runs in a process with euid 0 (an entrypoint shell, gosu:
// not target processes, but they load the preload too) whose env configures
// an FS_DAX PATH. It makes PATH/heap with mode 01777, like /tmp: every uid
// can create its own heap file there and nobody can remove another's. This is
// what lets a server that an entrypoint drops to another uid (gosu resets
// supplementary groups, so fsGroup does not reach it) use a volume whose root
// is root:root 0755, without the volume root itself becoming writable.
// Silent and best effort: EEXIST (done before, by us or anyone) or any error
// leaves things as they are; the target then says what it found.
static void prepare_heap_dir(const char *environ, int en)
{
	const char *tiers = env(environ, en, "MEMKIND_MEM_TIERS");
	if (!tiers)
		return;
	// The FS_DAX tier's PATH:, found without parse_tiers (which logs and
	// fills st: this process is not a target).
	for (const char *p = tiers; *p;) {
		const char *e = p;
		while (*e && *e != ';')
			e++;
		int fsdax = 0;
		const char *path = 0;
		size_t pn = 0;
		for (const char *q = p; q < e;) {
			const char *f = q;
			while (f < e && *f != ',')
				f++;
			if ((size_t)(f - q) == 11 && prefix(q, 11, "KIND:FS_DAX"))
				fsdax = 1;
			else if (prefix(q, (size_t)(f - q), "PATH:")) {
				path = q + 5;
				pn = (size_t)(f - path);
			}
			q = f < e ? f + 1 : e;
		}
		if (fsdax && path && pn > 0 && pn < sizeof st.path - 1) {
			char d[sizeof st.path + 8];
			memcpy(d, path, pn);
			memcpy(d + pn, "/heap", 6);
			if (sc6(SYS_mkdirat, AT_FDCWD, (long)d, 01777, 0, 0, 0) != 0)
				return; // EEXIST: made before; never chmod what we did not make
			// The umask cut the mode; set it on the directory we just
			// made, by fd and without following a symlink, so that a
			// swap between the two calls cannot redirect the chmod.
			int fd = sys_open(d, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0);
			if (fd >= 0) {
				sc(SYS_fchmod, fd, 01777, 0);
				sc(SYS_close, fd, 0, 0);
			}
			return;
		}
		p = *e ? e + 1 : e;
	}
}

// open_status opens (creates) this process's status file,
// st.dir/pmem-status.<container>.<pid>: the container's name before the pid,
// see "Observability".
static void open_status(void)
{
	struct buf sp = {.n = 0};
	bs(&sp, "/pmem-status.");
	if (st.container[0]) {
		bs(&sp, st.container);
		bs(&sp, ".");
	}
	sp.b[sp.n] = 0;
	join(st.status, sizeof st.status, st.dir, sp.b, (unsigned long)st.pid);
	st.status_fd = sys_open(st.status, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
}

static int setup_fsdax(unsigned long limit)
{
	if (limit == 0)
		limit = 64UL << 30;
	limit = (limit + (2UL << 20) - 1) & ~((2UL << 20) - 1);
	char file[320];
	int fd = open_heap(st.path, file, sizeof file);
	if (fd == -EACCES || fd == -EPERM || fd == -EROFS) {
		// The volume root is not ours to write (root:root 0755 and an
		// image that drops to a uid fsGroup does not reach, e.g. gosu):
		// PATH/heap, made 01777 by a root process of the pod (see
		// prepare_heap_dir), is.
		char alt[320];
		size_t pl = slen(st.path); // < sizeof st.path: parse_tiers checks
		memcpy(st.dir, st.path, pl);
		memcpy(st.dir + pl, "/heap", 6);
		int fd2 = open_heap(st.dir, alt, sizeof alt);
		if (fd2 < 0) {
			// Say which it is. O_PATH needs no permission on the last
			// component, only search permission on the directories
			// above it: EACCES for PATH means a directory above PATH
			// denies it (no heap dir would help), for PATH/heap that
			// PATH itself does.
			long pfd = sys_open(st.path, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
			if (pfd >= 0)
				sc(SYS_close, pfd, 0, 0);
			long hfd = pfd >= 0 ? sys_open(st.dir, O_PATH | O_DIRECTORY | O_CLOEXEC, 0) : pfd;
			if (hfd >= 0 && pfd >= 0)
				sc(SYS_close, hfd, 0, 0);
			struct buf b = {.n = 0};
			logp(&b);
			bs(&b, "FS_DAX tier: open ");
			bs(&b, file);
			bs(&b, ": errno ");
			bu(&b, (unsigned long)-fd);
			bs(&b, ", and open ");
			bs(&b, alt);
			bs(&b, ": errno ");
			bu(&b, (unsigned long)-fd2);
			if (pfd == -EACCES) {
				bs(&b, " (this uid cannot reach ");
				bs(&b, st.path);
				bs(&b, ": a directory above it denies search permission)");
			} else if (hfd == -EACCES) {
				bs(&b, " (");
				bs(&b, st.path);
				bs(&b, " denies this uid search permission)");
			} else if (fd2 == -ENOENT) {
				bs(&b, " (the volume root is not writable by this uid and no root process of the pod made ");
				bs(&b, st.dir);
				bs(&b, " 01777)");
			} else {
				bs(&b, " (neither the volume root nor ");
				bs(&b, st.dir);
				bs(&b, " is writable by this uid)");
			}
			bs(&b, "; heap stays on DRAM");
			logline(&b);
			return -1;
		}
		fd = fd2;
		memcpy(file, alt, sizeof file);
	} else if (fd < 0) {
		fail("FS_DAX tier: open ", file, fd);
		return -1;
	} else {
		memcpy(st.dir, st.path, sizeof st.path);
	}
	long r = sc(SYS_ftruncate, fd, limit, 0);
	sys_unlink(file); // capacity returns to the volume when the process ends, however it ends
	if (r < 0) {
		struct buf x = {.n = 0};
		bs(&x, file);
		bs(&x, " to ");
		bu(&x, limit);
		bs(&x, " bytes (PMEM_SIZE_LIMIT, 0 read as 64 GiB, rounded up to 2 MiB)");
		x.b[x.n] = 0;
		fail_hint("FS_DAX tier: ftruncate ", x.b, r, r == -EFBIG ? LOWER_LIMIT : 0);
		sc(SYS_close, fd, 0, 0);
		return -1;
	}
	// 2 MiB-aligned base: the file's huge pages (DAX PMD faults) line up.
	// One PROT_NONE guard page stays reserved on each side: no other
	// mapping is ever adjacent to the range, so an allocator cannot merge
	// a DRAM extent with a heap extent and then purge or unmap a range
	// that straddles the edge (the part inside would get no punch: old
	// data where the allocator expects zeros).
	size_t rl = limit + (2UL << 20) + 2 * PAGE;
	char *res = sys_mmap(0, rl, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (is_err(res)) {
		struct buf x = {.n = 0};
		bu(&x, limit);
		bs(&x, " bytes");
		x.b[x.n] = 0;
		fail_hint("FS_DAX tier: reserve address space for PMEM_SIZE_LIMIT ", x.b, (long)res, LOWER_LIMIT);
		sc(SYS_close, fd, 0, 0);
		return -1;
	}
	char *base = (char *)(((uintptr_t)res + PAGE + (2UL << 20) - 1) & ~((2UL << 20) - 1));
	if (base - PAGE > res)
		sc(SYS_munmap, res, base - PAGE - res, 0);
	if (res + rl > base + limit + PAGE)
		sc(SYS_munmap, base + limit + PAGE, (res + rl) - (base + limit + PAGE), 0);
	st.npages = limit / PAGE;
	size_t bl = (st.npages / 64 + 1) * 8;
	uint64_t *bits = sys_mmap(0, 3 * bl, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (is_err(bits)) {
		fail("FS_DAX tier: bitmap", 0, (long)bits);
		sc(SYS_munmap, base - PAGE, limit + 2 * PAGE, 0);
		sc(SYS_close, fd, 0, 0);
		return -1;
	}
	// Scratch: as large as the heap, same 2 MiB alignment, so that mremap
	// moves whole page tables (see remap_shared). Optional.
	char *scr = sys_mmap(0, limit + (2UL << 20), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (!is_err(scr)) {
		char *sb = (char *)(((uintptr_t)scr + (2UL << 20) - 1) & ~((2UL << 20) - 1));
		if (sb > scr)
			sc(SYS_munmap, scr, sb - scr, 0);
		sc(SYS_munmap, sb + limit, (scr + limit + (2UL << 20)) - (sb + limit), 0);
		st.scratch = sb;
	}
	st.scr_lo = ~0UL;
	st.bits = bits;
	st.zbits = bits + bl / 8;
	st.dbits = bits + 2 * bl / 8;
	st.fd = fd;
	st.size = limit;
	open_status();
	st.base = base; // last: from here on the hooks serve from the range
	return 0;
}

static unsigned long cpuless_nodes(void)
{
	unsigned long m = 0;
	char p[64], buf[64];
	for (unsigned n = 0; n < 64; n++) {
		join(p, sizeof p, "/sys/devices/system/node/node", "", n);
		struct buf x = {.n = 0};
		bs(&x, p);
		bs(&x, "/cpulist");
		x.b[x.n] = 0;
		int r = read_file(x.b, buf, sizeof buf);
		if (r < 0)
			continue;
		if (r == 0 || buf[0] == '\n')
			m |= 1UL << n;
	}
	return m;
}

static int parse_nodes(const char *s, unsigned long *m)
{
	*m = 0;
	while (*s) {
		const char *c = s;
		while (*c && *c != ',')
			c++;
		unsigned long n;
		if (parse_u(s, (size_t)(c - s), &n) || n >= 64)
			return -1;
		*m |= 1UL << n;
		s = *c ? c + 1 : c;
	}
	return *m ? 0 : -1;
}

static int setup_kmem(const char *nodes)
{
	unsigned long m;
	if (nodes) {
		if (parse_nodes(nodes, &m)) {
			fail("MEMKIND_DAX_KMEM_NODES must be a comma list of node numbers < 64: ", nodes, 0);
			return -1;
		}
	} else if (!(m = cpuless_nodes())) {
		fail("KMEM_DAX tier: no CPU-less (PMEM) NUMA node in /sys/devices/system/node", 0, 0);
		return -1;
	}
	st.nodes_pmem = m;
	long r;
	if (st.dram_ratio) {
		// Weighted interleave (Linux 6.9+) uses the system's per-node weights
		// (/sys/kernel/mm/mempolicy/weighted_interleave); the webhook's
		// ratio is not enforced per process. Older kernels: prefer PMEM.
		unsigned long all = m;
		for (unsigned n = 0; n < 64; n++) {
			char p[64], buf[8];
			join(p, sizeof p, "/sys/devices/system/node/node", "", n);
			struct buf x = {.n = 0};
			bs(&x, p);
			bs(&x, "/cpulist");
			x.b[x.n] = 0;
			if (read_file(x.b, buf, sizeof buf) > 0 && buf[0] != '\n')
				all |= 1UL << n;
		}
		r = sc(SYS_set_mempolicy, MPOL_WEIGHTED_INTERLEAVE, &all, 65);
		if (r < 0)
			r = sc(SYS_set_mempolicy, MPOL_PREFERRED_MANY, &m, 65);
	} else {
		r = sc(SYS_set_mempolicy, MPOL_BIND, &m, 65);
	}
	if (r < 0) {
		fail("KMEM_DAX tier: set_mempolicy", 0, r);
		return -1;
	}
	return 0;
}

__attribute__((constructor)) static void init(void)
{
	static char environ[32768];
	st.fd = -1;
	st.status_fd = -1;
	st.pid = (int)sc(SYS_getpid, 0, 0, 0);
	int n = read_file("/proc/self/comm", st.comm, sizeof st.comm);
	if (n <= 0)
		return;
	if (st.comm[n - 1] == '\n')
		st.comm[n - 1] = 0;
	int en = read_file("/proc/self/environ", environ, sizeof environ);
	if (en <= 0)
		return;
	if (sc(SYS_geteuid, 0, 0, 0) == 0)
		prepare_heap_dir(environ, en);
	const char *targets = env(environ, en, "PMEM_TARGET_PROCESSES");
	if (!targets)
		targets = "redis-server,valkey-server";
	if (!listed(targets, st.comm))
		return;
	const char *tiers = env(environ, en, "MEMKIND_MEM_TIERS");
	if (!tiers)
		return; // not configured: nothing to say
	// PMEM_CONTAINER_NAME names the status file (see "Observability");
	// anything but a DNS label is ignored, silently: the old name is kept.
	const char *cn = env(environ, en, "PMEM_CONTAINER_NAME");
	if (cn && dns_label(cn))
		memcpy(st.container, cn, slen(cn) + 1);
	// PMEM_PRECOPY=0 turns the pre-copy off: what a seccomp profile that
	// blocks userfaultfd gives (to measure it, and a way out if the
	// pre-copy ever misbehaves).
	const char *pc = env(environ, en, "PMEM_PRECOPY");
	st.noprecopy = pc && pc[0] == '0' && !pc[1];
	// PMEM_PAUSE_BUDGET_US: how long one pause of the write-back may write
	// before it maps what it wrote shared and lets the threads run (0,
	// unset, not a number or over 10 s: the default). Tests set 1 to force a chunk
	// per piece.
	// PMEM_WRITEBACK_THREAD=0: no write-back thread; the write-back runs
	// in interposed calls, as when clone is refused (a way out, and what
	// the tests use to keep that path covered).
	const char *wt = env(environ, en, "PMEM_WRITEBACK_THREAD");
	if (wt && wt[0] == '0' && !wt[1])
		st.wb_err = -1;
	const char *pb = env(environ, en, "PMEM_PAUSE_BUDGET_US");
	unsigned long budget = 0;
	if (!pb || parse_u(pb, slen(pb), &budget) || budget == 0 || budget > 10000000)
		budget = BUDGET_DEFAULT_US;
	st.budget_us = (long)budget;
	unsigned long limit = 0;
	if (parse_tiers(tiers, &limit)) {
		st.mode = OFF;
		return;
	}
	int mode = st.mode;
	st.mode = OFF; // hooks stay inert until setup is complete
	if (mode == FSDAX) {
		if (!st.path[0]) {
			fail("MEMKIND_MEM_TIERS: FS_DAX tier without PATH: ", tiers, 0);
			return;
		}
		if (setup_fsdax(limit))
			return;
	} else if (setup_kmem(env(environ, en, "MEMKIND_DAX_KMEM_NODES"))) {
		return;
	}
	if (__register_atfork)
		__register_atfork(fork_prepare, fork_parent, fork_child, 0);
	else if (pthread_atfork)
		pthread_atfork(fork_prepare, fork_parent, fork_child);
	struct buf b = {.n = 0};
	logp(&b);
	if (mode == FSDAX) {
		bs(&b, "heap on FS_DAX PMEM: anonymous mappings from ");
		bs(&b, st.dir);
		bs(&b, "/pmem-heap.");
		bu(&b, (unsigned long)st.pid);
		bs(&b, " (unlinked), limit ");
		bu(&b, st.size);
		bs(&b, " bytes");
		if (st.dram_ratio) {
			bs(&b, ", DRAM:PMEM ratio ");
			bu(&b, st.dram_ratio);
			bs(&b, ":");
			bu(&b, st.pmem_ratio);
		}
		bs(&b, "; status in ");
		bs(&b, st.status);
	} else {
		bs(&b, st.dram_ratio ? "heap on KMEM_DAX: set_mempolicy interleave DRAM+PMEM nodes, PMEM nodes mask "
				     : "heap on KMEM_DAX: set_mempolicy MPOL_BIND to PMEM nodes mask ");
		bu(&b, st.nodes_pmem);
	}
	logline(&b);
	st.mode = mode;
	if (mode == FSDAX) {
		lock();
		write_status();
		unlock();
	}
}
