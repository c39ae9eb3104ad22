// daemonize.c: a server that daemonizes (fork, the parent exits, the child
// serves: Redis's daemonize yes) with an FS_DAX heap. A forked child places
// nothing, so the serving process's heap is private, on DRAM, while the
// parent's log line said PMEM (found in the field re-run, 2026-12-01). The
// preload must say so in the child, which made itself a session leader
// (setsid, as daemonize() and daemon(3) do): a stderr line and a status file
// of its own whose heap_shared names the cause. A child that did not (a
// save child whose parent died) is not a daemon: silent.
//
// Usage: daemonize PMEMDIR [savechild]. The parent exits 0 at once; the
// child waits for that, makes an interposed call, checks its status file
// (or, as a save child, that it has none) and prints "PASS child=PID"
// (stdout stays open until then, so the caller's read ends with it). The
// child gives up after 30 s (SIGALRM).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "heapcheck.h"

int main(int argc, char **argv) {
	CHECK(argc == 2 || argc == 3, "usage: daemonize PMEMDIR [savechild]");
	const char *dir = argv[1];
	int savechild = argc == 3 && strcmp(argv[2], "savechild") == 0;
	heap = mmap(NULL, (size_t)PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(heap != MAP_FAILED, "mmap heap");
	CHECK(in_heap_file(heap), "heap placed in the heap file");
	memset(heap, 0x5a, (size_t)PAGES * PG);
	pid_t parent = getpid();
	pid_t pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid > 0)
		_exit(0); // the parent leaves at once, as a daemonizing server's does
	alarm(30);
	if (!savechild)
		CHECK(setsid() == getpid(), "setsid");
	for (int k = 0; k < 5000 && getppid() == parent; k++)
		usleep(1000);
	CHECK(getppid() != parent, "the parent exited within 5 s");
	// An interposed call: the preload looks at its parent there.
	unsigned char *q = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(q != MAP_FAILED, "mmap in the daemon");
	memset(q, 1, 1 << 20);
	CHECK(munmap(q, 1 << 20) == 0, "munmap in the daemon");
	for (size_t i = 0; i < (size_t)PAGES * PG; i += PG)
		CHECK(heap[i] == 0x5a, "the daemon's heap holds what the parent wrote");
	char path[512];
	snprintf(path, sizeof path, "%s/pmem-status.%d", dir, (int)getpid());
	if (savechild) {
		CHECK(access(path, F_OK) != 0, "a save child whose parent exited writes no status file");
	} else {
		char shared[300];
		status(dir, "heap_shared", shared, sizeof shared);
		if (strncmp(shared, "0 (", 3) != 0 || !strstr(shared, "its parent exited")) {
			fprintf(stderr, "FAIL the daemon's status heap_shared=%s: want 0 and the reason\n", shared);
			exit(1);
		}
	}
	printf("PASS child=%d\n", (int)getpid());
	return 0;
}
