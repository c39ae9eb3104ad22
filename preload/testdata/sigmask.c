// sigmask.c: the preload exports pthread_sigmask and sigprocmask (to keep
// its pause signal, 62, deliverable in threads that block "everything").
// They must behave as the libc's own: the same return value, errno, old
// mask (every byte of the caller's sigset_t) and resulting thread mask, for
// every `how` (bad ones too) and a range of sets and starting masks. The
// libc's functions are called through dlsym on the libc itself (the
// program's own references go to the preload), so whichever libc the
// program is built for (glibc, musl) is the reference.
//
// MODE libc: the preload is inert here (not a target): identical in every
// case. MODE fsdax: an FS_DAX target: identical, except that a set which
// blocks every asynchronous signal 1-31 (synchronous SIGILL, SIGTRAP,
// SIGBUS, SIGFPE, SIGSEGV, SIGSYS may be left out) leaves 62 out (SIG_BLOCK, SIG_SETMASK)
// — unless 62 was blocked already (SIG_BLOCK) — and, once the application
// installs a handler of its own for 62, identical again.
//
// Usage: sigmask libc|fsdax. Prints "PASS cases=N stripped=M" or exits 1.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "check.h"

typedef int (*maskfn)(int, const sigset_t *, sigset_t *);

static uint64_t cur(void) {
	uint64_t m = 0;
	CHECK(syscall(SYS_rt_sigprocmask, SIG_SETMASK, NULL, &m, 8) == 0, "read the mask");
	return m;
}
static void setraw(uint64_t m) { CHECK(syscall(SYS_rt_sigprocmask, SIG_SETMASK, &m, NULL, 8) == 0, "set the mask"); }

struct result {
	int ret, err;
	unsigned char old[sizeof(sigset_t)];
	uint64_t after;
};

static struct result run(maskfn f, uint64_t base, int how, const sigset_t *set, int with_old) {
	struct result r;
	sigset_t old;
	memset(&old, 0xa5, sizeof old);
	setraw(base);
	errno = 4242;
	r.ret = f(how, set, with_old ? &old : NULL);
	r.err = errno;
	r.after = cur();
	memcpy(r.old, &old, sizeof old);
	setraw(0);
	return r;
}

static int app_handler_ran;
static void app_handler(int s) {
	(void)s;
	app_handler_ran = 1;
}

int main(int argc, char **argv) {
	CHECK(argc == 2, "usage: sigmask libc|fsdax");
	int fsdax = strcmp(argv[1], "fsdax") == 0;
#ifdef __GLIBC__
	void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
#else
	void *libc = dlopen("libc.so", RTLD_LAZY | RTLD_NOLOAD);
#endif
	CHECK(libc != NULL, "dlopen the libc");
	maskfn libc_fns[2] = {(maskfn)dlsym(libc, "pthread_sigmask"), (maskfn)dlsym(libc, "sigprocmask")};
	maskfn our_fns[2] = {pthread_sigmask, sigprocmask};
	const char *names[2] = {"pthread_sigmask", "sigprocmask"};
	CHECK(libc_fns[0] && libc_fns[1], "dlsym the libc's functions");
	CHECK(libc_fns[0] != our_fns[0] && libc_fns[1] != our_fns[1], "the program's calls go to the preload, not the libc");

	// The sets: filled sets the libc's way (sigfillset), by hand, and
	// others that must never be changed.
	enum { NSETS = 11 };
	sigset_t sets[NSETS];
	const char *setnames[NSETS] = {"empty", "USR1", "62", "USR1+62", "sigfillset", "sigfillset-USR1",
				       "all 64 bits", "32,33,34", "sigfillset-62", "1-31 only",
				       "sigfillset-SEGV,BUS,FPE,ILL"};
	for (int i = 0; i < NSETS; i++)
		sigemptyset(&sets[i]);
	sigaddset(&sets[1], SIGUSR1);
	sigaddset(&sets[2], 62);
	sigaddset(&sets[3], SIGUSR1);
	sigaddset(&sets[3], 62);
	sigfillset(&sets[4]);
	sigfillset(&sets[5]);
	sigdelset(&sets[5], SIGUSR1);
	memset(&sets[6], 0xff, sizeof sets[6]);
	uint64_t raw = 7ULL << 31;
	memcpy(&sets[7], &raw, 8);
	sigfillset(&sets[8]);
	sigdelset(&sets[8], 62);
	for (int s = 1; s <= 31; s++)
		sigaddset(&sets[9], s);
	// Blocking the synchronous signals stops nothing (the faulting
	// instruction raises them): a filled set without them still blocks
	// "everything".
	sigfillset(&sets[10]);
	sigdelset(&sets[10], SIGSEGV);
	sigdelset(&sets[10], SIGBUS);
	sigdelset(&sets[10], SIGFPE);
	sigdelset(&sets[10], SIGILL);
	// Which of them block every asynchronous signal 1-31 and 62.
	int filled[NSETS] = {0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1};
	uint64_t bases[4] = {0, 1ULL << 61, 1ULL << (SIGUSR2 - 1), (1ULL << (SIGUSR2 - 1)) | (1ULL << 33)};
	int hows[6] = {SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK, 3, -1, 1000};

	int cases = 0, stripped = 0;
	for (int pass = 0; pass < 2; pass++) {
		if (pass == 1) {
			// The application takes signal 62: from now on the
			// calls are the libc's in every case.
			struct sigaction sa;
			memset(&sa, 0, sizeof sa);
			sa.sa_handler = app_handler;
			CHECK(sigaction(62, &sa, NULL) == 0, "the application's handler for 62");
		}
		for (int f = 0; f < 2; f++)
			for (int h = 0; h < 6; h++)
				for (int s = -1; s < NSETS; s++)
					for (int b = 0; b < 4; b++)
						for (int o = 0; o < 2; o++) {
							const sigset_t *set = s < 0 ? NULL : &sets[s];
							struct result want = run(libc_fns[f], bases[b], hows[h], set, o);
							struct result got = run(our_fns[f], bases[b], hows[h], set, o);
							int strip = fsdax && pass == 0 && s >= 0 && filled[s] &&
								    (hows[h] == SIG_BLOCK || hows[h] == SIG_SETMASK) &&
								    !(hows[h] == SIG_BLOCK && (bases[b] & (1ULL << 61)));
							if (strip && (want.after & (1ULL << 61))) {
								want.after &= ~(1ULL << 61);
								stripped++;
							}
							cases++;
							if (got.ret != want.ret || got.err != want.err || got.after != want.after ||
							    memcmp(got.old, want.old, sizeof got.old) != 0) {
								uint64_t go, wo;
								memcpy(&go, got.old, 8);
								memcpy(&wo, want.old, 8);
								fprintf(stderr,
									"FAIL %s(how=%d, set=%s, old=%s) from mask %016llx (pass %d): "
									"returned %d errno %d old %016llx mask after %016llx%s; "
									"the libc: %d errno %d old %016llx mask after %016llx\n",
									names[f], hows[h], s < 0 ? "NULL" : setnames[s], o ? "yes" : "NULL",
									(unsigned long long)bases[b], pass, got.ret, got.err,
									(unsigned long long)go, (unsigned long long)got.after,
									memcmp(got.old, want.old, sizeof got.old) ? " (old differs)" : "",
									want.ret, want.err, (unsigned long long)wo,
									(unsigned long long)want.after);
								exit(1);
							}
						}
	}
	// Spelled out, whatever the libc says: a bad how with a set is
	// EINVAL; a set comes back as the old mask.
	sigset_t one, back;
	sigemptyset(&one);
	sigaddset(&one, SIGUSR1);
	CHECK(pthread_sigmask(7, &one, NULL) == EINVAL, "pthread_sigmask: bad how -> EINVAL");
	errno = 0;
	CHECK(sigprocmask(7, &one, NULL) == -1 && errno == EINVAL, "sigprocmask: bad how -> -1, EINVAL");
	CHECK(pthread_sigmask(SIG_SETMASK, &one, NULL) == 0 && pthread_sigmask(SIG_SETMASK, NULL, &back) == 0 &&
		      sigismember(&back, SIGUSR1) && !sigismember(&back, SIGUSR2),
	      "round trip of a set");
	CHECK(!app_handler_ran, "nothing sent signal 62");
	if (fsdax && stripped == 0) {
		fprintf(stderr, "FAIL an FS_DAX target, and no filled set lost signal 62: the case under test did not happen\n");
		exit(1);
	}
	printf("PASS cases=%d stripped=%d\n", cases, stripped);
	return 0;
}
