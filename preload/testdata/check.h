// check.h: the test programs' one assertion: print what failed and where,
// exit 1 (the Go test shows stderr).
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond, what)                                                          \
	do {                                                                       \
		if (!(cond)) {                                                     \
			fprintf(stderr, "FAIL %s (%s:%d)\n", what, __FILE__, __LINE__); \
			exit(1);                                                   \
		}                                                                  \
	} while (0)
