// early.c: a library whose constructor runs before libpmem-preload.so's, so
// the pointers it allocates come from glibc before the preload decided.
// The semantics test frees and reallocates them after activation.
#define _GNU_SOURCE
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

void *early_ptrs[4];
// More blocks than the preload's initial pointer set holds (4096 slots at
// half load): recording them makes the set grow.
#define EARLY_MANY 10000
void *early_many[EARLY_MANY];
size_t early_sizes[4] = { 100, 5000, 64, 300000 };

__attribute__((constructor)) static void early_init(void)
{
	early_ptrs[0] = malloc(early_sizes[0]);
	early_ptrs[1] = calloc(1, early_sizes[1]);
	early_ptrs[2] = memalign(4096, early_sizes[2]);
	early_ptrs[3] = malloc(early_sizes[3]); // mmap-sized chunk in glibc
	for (int i = 0; i < 4; i++)
		memset(early_ptrs[i], 'a' + i, early_sizes[i]);
	for (int i = 0; i < EARLY_MANY; i++) {
		early_many[i] = malloc(24);
		memcpy(early_many[i], &i, sizeof i);
	}
}
