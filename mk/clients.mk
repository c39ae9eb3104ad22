# Real clients (issue 16): the README's install commands run as written with kubectl (built from
# the Kubernetes source by test/controlplane/build.sh), helm and kustomize (Go tools pinned in
# tools/go.mod, their own module) and the kubectl-pmem plugin, against a real kube-apiserver.
# See docs/deploy.md, "Tested with the real clients".

GO ?= go
TOOLS_BIN := $(BIN)/tools
# Warm, the tests take about 100 s (measured 99 s): seven control planes, a few seconds each (one per README block
# that installs, the quick start's inject | apply, and the install without cert-manager), and
# about 20 s of `make install-plugin` runs.
CLIENTS_TEST_TIMEOUT ?= 10m

.PHONY: tools test-clients

## tools: build helm and kustomize, pinned as Go tools in tools/go.mod, into bin/tools (helm stamped with its module version, as its release build does), plus the helm that stands in for a v3.14 release build
# A Go-tool build of helm leaves helm's version variable at its source default ("v3.22"); stamp
# the module version as helm's Makefile does, so `helm version` says v3.22.0. The chart reads it
# (.Capabilities.HelmVersion) to know helm's built-in Kubernetes version.
HELM_VERSION_PKG := helm.sh/helm/v3/internal/version
HELM_K8S_PKGS := helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules
# helm-v3.14-release: the same helm source, linked with the stamps helm v3.14's release binaries
# carry: version v3.14.4 and the default Kubernetes version of its client-go (0.29: v1.29.0).
# Only the link differs, so with a warm build cache it costs seconds. test/clients renders the
# chart with it offline (docs/deploy.md, "The chart's minimum Kubernetes version").
HELM_RELEASE_LIKE := v3.14.4 1 29
tools:
	cd tools && $(GO) build -o $(TOOLS_BIN)/ tool
	cd tools && v=$$($(GO) list -m -f '{{.Version}}' helm.sh/helm/v3) && \
		$(GO) build -ldflags "-X $(HELM_VERSION_PKG).version=$$v" -o $(TOOLS_BIN)/helm helm.sh/helm/v3/cmd/helm
	cd tools && set -- $(HELM_RELEASE_LIKE) && \
		$(GO) build -ldflags "-X $(HELM_VERSION_PKG).version=$$1 $(foreach p,$(HELM_K8S_PKGS),-X $(p).k8sVersionMajor=$$2 -X $(p).k8sVersionMinor=$$3)" \
		-o $(TOOLS_BIN)/helm-v3.14-release helm.sh/helm/v3/cmd/helm

## test-clients: the README's install lines with the real kubectl, helm, kustomize and plugin against a real apiserver; their renderings vs the in-process ones
test-clients: controlplane-bins tools
	PMEM_CONTROLPLANE_BIN_DIR="$(CONTROLPLANE_BIN)" PMEM_CLIENTS_BIN_DIR="$(TOOLS_BIN)" PMEM_E2E_REQUIRE=1 \
		$(GO) test -count=1 -timeout $(CLIENTS_TEST_TIMEOUT) -v ./test/clients/
