/* probe stands in for the non-target processes of an image that has no shell
 * built for its libc (Debian ships no musl shell): it allocates like any
 * program does (malloc(0) included, which a broken interposer gets wrong),
 * touches the memory and prints "probe ok" and its arguments. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
	void *zero = malloc(0);
	char *buf = malloc(1 << 20);
	if (buf == NULL) {
		fprintf(stderr, "probe: malloc failed\n");
		return 1;
	}
	memset(buf, 1, 1 << 20);
	free(buf);
	free(zero);
	printf("probe ok");
	for (int i = 1; i < argc; i++)
		printf(" %s", argv[i]);
	printf("\n");
	return 0;
}
