# Real clients (issue 16): the README's install commands run as written with kubectl (built from
# the Kubernetes source by test/controlplane/build.sh), helm and kustomize (Go tools pinned in
# tools/go.mod, their own module) and the kubectl-pmem plugin, against a real kube-apiserver.
# See docs/deploy.md, "Tested with the real clients".

GO ?= go
BIN ?= $(CURDIR)/bin
TOOLS_BIN := $(BIN)/tools
# Warm, the tests take about a minute (seven control planes, a few seconds each).
CLIENTS_TEST_TIMEOUT ?= 10m

.PHONY: tools test-clients

## tools: build helm and kustomize, pinned as Go tools in tools/go.mod, into bin/tools (same as `go tool -modfile=tools/go.mod helm`)
tools:
	cd tools && $(GO) build -o $(TOOLS_BIN)/ tool

## test-clients: the README's install lines with the real kubectl, helm, kustomize and plugin against a real apiserver; their renderings vs the in-process ones
test-clients: controlplane-bins tools
	PMEM_CONTROLPLANE_BIN_DIR="$(CONTROLPLANE_BIN)" PMEM_CLIENTS_BIN_DIR="$(TOOLS_BIN)" PMEM_E2E_REQUIRE=1 \
		$(GO) test -count=1 -timeout $(CLIENTS_TEST_TIMEOUT) -v ./test/clients/
