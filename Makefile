# pmem-webhook. `make demo` runs the local demo, `make test` runs every test
# tier that runs on this kind of machine (what .ci/run calls).

GO ?= go
BIN := $(CURDIR)/bin
export GOFLAGS ?= -buildvcs=false

# bin/ holds build caches (Kubernetes binaries, image root filesystems);
# a go.mod there makes it a separate module, so `go ... ./...` never walks it.
$(shell mkdir -p $(BIN) && test -f $(BIN)/go.mod || printf 'module ignored.bin\n' > $(BIN)/go.mod)

.DEFAULT_GOAL := help
.PHONY: help build test unit lint fmt vet install-plugin clean

## help: list the targets
help:
	@grep -hE '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

## build: build pmem-webhook, pmem-inject and pmem-memkind-init into bin/
build:
	$(GO) build -o $(BIN)/ ./cmd/pmem-webhook ./cmd/pmem-inject ./cmd/pmem-memkind-init

## install-plugin: install pmem-inject as the kubectl plugin `kubectl pmem inject` into $(PLUGIN_DIR)
PLUGIN_DIR ?= $(shell $(GO) env GOPATH)/bin
install-plugin:
	$(GO) build -o $(PLUGIN_DIR)/kubectl-pmem ./cmd/pmem-inject
	@echo "installed $(PLUGIN_DIR)/kubectl-pmem; try: kubectl pmem inject -f deploy/examples/redis-pmem.yaml"

## test: lint, unit tests, then the node, image-matrix, control-plane, real-clients, self-signed, reliability and running-pods tiers (the README's test command)
test: lint vet-kind unit test-node test-matrix test-controlplane test-clients test-selfsigned test-reliability e2e

## unit: fast tests: every package except the tiers under test/, -short (no control plane)
unit:
	$(GO) test -short -count=1 $$($(GO) list ./... | grep -v '/test/')

## lint: gofmt and go vet, failing on any finding
lint: fmt vet

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './bin/*')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

## clean: remove bin/ (including the cached Kubernetes binaries)
clean:
	rm -rf $(BIN)

include $(wildcard mk/*.mk)
