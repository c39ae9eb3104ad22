# Image matrix (issue 11): Redis/Valkey image classes built from Debian
# packages and source, cached under bin/variants/, each run under the
# webhook's env. (docs/node.md, "Image matrix")

.PHONY: variants test-matrix

## variants: build (or reuse) the matrix's images into bin/variants/ (first run ~10 min; apt-get, debootstrap)
variants:
	test/variants/build.sh $(BIN)

## test-matrix: every image class under the webhook's env: placement from smaps, tools, SHUTDOWN (missing variants fail)
test-matrix: variants preload stage-memkind
	PMEM_MATRIX_REQUIRED=1 PMEM_MATRIX_BIN=$(BIN) $(GO) test -count=1 -timeout 15m -v ./test/matrix
