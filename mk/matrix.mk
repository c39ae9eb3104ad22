# Image matrix (issue 11): Redis/Valkey image classes built from Debian
# packages and source, cached under bin/variants/, each run under the
# webhook's env. (docs/node.md, "Image matrix")

# What test/matrix runs beside the variants: redis-benchmark (the load),
# gosu (the official image's drop to uid 999). build.sh installs what the
# builds need (dpkg-dev, gcc, make, musl-tools, linux-libc-dev, debootstrap).
MATRIX_APT_PACKAGES := redis-tools gosu

# Bounds: a cold build measured ~8 min here (docs/node.md), a warm one under
# a second; the rows take about a minute (each row's fork step, 5 BGSAVEs
# under a write load and its write-back, 2-7 s of it).
VARIANTS_TIMEOUT := 45m
MATRIX_TIMEOUT := 10m

.PHONY: matrix-deps variants test-matrix

## matrix-deps: apt-get install what test/matrix runs (redis-tools, gosu) when missing
matrix-deps:
	@$(MAKE) --no-print-directory node-deps NODE_APT_PACKAGES="$(MATRIX_APT_PACKAGES)"

## variants: build (or reuse) the matrix's images into bin/variants/ (first run ~10 min; apt-get, debootstrap)
variants:
	timeout $(VARIANTS_TIMEOUT) test/variants/build.sh $(BIN)

## test-matrix: every image class under the webhook's env: placement from smaps, tools, SHUTDOWN, 5 BGSAVEs under writes with exact dumps and the write-back (missing variants fail)
test-matrix: matrix-deps variants preload stage-memkind
	PMEM_MATRIX_REQUIRED=1 PMEM_MATRIX_BIN=$(BIN) $(GO) test -count=1 -timeout $(MATRIX_TIMEOUT) -v ./test/matrix
