# pmem-webhook. `make demo` runs the local demo, `make test` runs every test
# tier that runs on this kind of machine (what .ci/run calls).

GO ?= go
BIN := $(CURDIR)/bin
# Absolute, whatever the command line says (`make tools BIN=bin`): recipes cd (tools/, test/...)
# and a relative path would then name a directory there.
override BIN := $(abspath $(BIN))
export GOFLAGS ?= -buildvcs=false

# bin/ holds build caches (Kubernetes binaries, image root filesystems);
# a go.mod there makes it a separate module, so `go ... ./...` never walks it.
$(shell mkdir -p $(BIN) && test -f $(BIN)/go.mod || printf 'module ignored.bin\n' > $(BIN)/go.mod)

.DEFAULT_GOAL := help
.PHONY: help build test unit lint fmt vet tidy install-plugin clean

## help: list the targets
help:
	@grep -hE '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'
	@echo "  (here PLUGIN_DIR is $(PLUGIN_DIR))"

## build: build pmem-webhook, pmem-inject and pmem-memkind-init into bin/
build:
	$(GO) build -o $(BIN)/ ./cmd/pmem-webhook ./cmd/pmem-inject ./cmd/pmem-memkind-init

## install-plugin: install pmem-inject as the kubectl plugin `kubectl pmem` into PLUGIN_DIR (default: GOBIN, else GOPATH/bin, where `go install` puts programs); says so when that is not on PATH
# `go env GOPATH` may be a list; `go install` uses its first entry.
PLUGIN_DIR ?= $(or $(shell $(GO) env GOBIN),$(firstword $(subst :, ,$(shell $(GO) env GOPATH)))/bin)
install-plugin:
	$(GO) build -o $(PLUGIN_DIR)/kubectl-pmem ./cmd/pmem-inject
	@echo "installed $(PLUGIN_DIR)/kubectl-pmem"
	@# kubectl finds plugins on PATH only; Debian's Go, for one, does not put GOPATH/bin there.
	@case ":$$PATH:" in \
	*":$(PLUGIN_DIR):"*|*":$(PLUGIN_DIR)/:"*) echo "try: kubectl pmem inject -f deploy/examples/redis-pmem.yaml" ;; \
	*) echo "$(PLUGIN_DIR) is not on PATH, so kubectl will not find the plugin: export PATH=\"\$$PATH:$(PLUGIN_DIR)\" (or make install-plugin PLUGIN_DIR=<a directory on PATH>)" >&2 ;; \
	esac

## test: lint, unit tests, then the node, image-matrix, control-plane, real-clients, self-signed, reliability and running-pods tiers (the README's test command)
test: lint vet-kind unit test-node test-matrix test-controlplane test-clients test-selfsigned test-reliability e2e

## unit: fast tests: every package except the tiers under test/, -short (no control plane)
unit:
	$(GO) test -short -count=1 $$($(GO) list ./... | grep -v '/test/')

## lint: gofmt, go vet, tidy go.mod/go.sum (main module, tools/) and the import rules (mk/imports.mk), failing on any finding
lint: fmt vet tidy

# test/controlplane is left out: tidying it needs test-only modules of Kubernetes' dependencies
# that no build downloads. No GOPROXY=off: lint runs first in `make test`, and on a fresh machine
# the module cache is empty (tidy -diff fetches what it reads but writes nothing).
tidy:
	@for m in . tools; do (cd $$m && $(GO) mod tidy -diff) || { echo "go.mod/go.sum of $$m not tidy: cd $$m && go mod tidy"; exit 1; }; done

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './bin/*')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

## clean: remove bin/ (including the cached Kubernetes binaries)
clean:
	rm -rf $(BIN)

include $(wildcard mk/*.mk)
