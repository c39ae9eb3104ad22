# Control-plane tier (issue 3): etcd, kube-apiserver and kube-controller-manager built from source
# by the separate module test/controlplane, the e2e features against them, and `make demo`.
# See docs/controlplane.md.

GO ?= go
BIN ?= $(CURDIR)/bin

# Binaries are keyed by the Kubernetes version test/controlplane/go.mod pins, so a version bump
# never reuses stale ones. (awk, not `go list`: this runs on every make invocation.)
K8S_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" { print $$2; exit }' test/controlplane/go.mod)
CONTROLPLANE_BIN := $(BIN)/k8s-$(K8S_VERSION)
CONTROLPLANE_TEST_TIMEOUT ?= 15m

.PHONY: controlplane-bins test-controlplane demo clean-controlplane

## controlplane-bins: build etcd, kube-apiserver, kube-controller-manager into bin/k8s-<version> (reused when present)
controlplane-bins:
	GO="$(GO)" test/controlplane/build.sh "$(BIN)"

## test-controlplane: run the harness tests and every e2e feature against a real control plane (never skips)
test-controlplane: controlplane-bins
	PMEM_CONTROLPLANE_BIN_DIR="$(CONTROLPLANE_BIN)" PMEM_E2E_REQUIRE=1 E2E_PROVIDER=local \
		$(GO) test -count=1 -timeout $(CONTROLPLANE_TEST_TIMEOUT) ./test/cluster/... ./test/e2e/... ./test/demo/... ./deploy/...

## demo: start the control plane and the webhook, apply deploy/examples/redis-pmem.yaml, show the pod and PVC, stop
demo: controlplane-bins
	PMEM_CONTROLPLANE_BIN_DIR="$(CONTROLPLANE_BIN)" $(GO) run ./test/demo

## clean-controlplane: remove the built control-plane binaries (all versions)
clean-controlplane:
	rm -rf "$(BIN)"/k8s-*
