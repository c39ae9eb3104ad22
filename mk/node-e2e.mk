# Running-pods tier (issue 8; docs/e2e.md): the e2e features on a real node on this machine
# (E2E_PROVIDER=kubelet: control plane + kubelet + kube-scheduler built from source, Debian's
# containerd, runc and CNI plugins, images built from deploy/images without Docker), and the
# same features on kind (needs Docker; not run on the project's machines).

GO ?= go
BIN ?= $(CURDIR)/bin

# What the kubelet provider needs from Debian, besides the node tier's gcc, libc6-dev,
# libmemkind0 and patchelf (NODE_APT_PACKAGES, mk/node.mk), which the memkind image is staged with.
NODE_E2E_APT_PACKAGES := containerd runc containernetworking-plugins iptables debootstrap
E2E_TIMEOUT ?= 30m

.PHONY: node-bins node-e2e-deps node-images e2e e2e-kind vet-kind clean-node-e2e

## node-bins: build kubelet and kube-scheduler into bin/k8s-<version> next to the control plane (reused when present)
node-bins:
	GO="$(GO)" test/controlplane/build-node.sh "$(BIN)"

## node-e2e-deps: apt-get install containerd, runc, CNI plugins, iptables, debootstrap when missing (root)
node-e2e-deps:
	@missing=""; for p in $(NODE_E2E_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "node-e2e-deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## node-images: build the webhook, memkind, redis-debian and pause image archives without Docker (bin/node-e2e)
node-images: node-deps node-e2e-deps
	$(GO) run ./test/images/cmd/build-images

## e2e: every e2e feature on a real node here (E2E_PROVIDER=kubelet; root; what CI runs)
e2e: controlplane-bins node-bins node-deps node-e2e-deps
	PMEM_CONTROLPLANE_BIN_DIR="$(CONTROLPLANE_BIN)" PMEM_E2E_REQUIRE=1 E2E_PROVIDER=kubelet \
		$(GO) test -count=1 -timeout $(E2E_TIMEOUT) -v ./test/e2e/... ./test/kubelet/... ./test/images/...

## e2e-kind: the same features on a kind cluster with cert-manager (needs docker and kind; not run in CI)
e2e-kind:
	PMEM_E2E_REQUIRE=1 E2E_PROVIDER=kind $(GO) test -tags kind -count=1 -timeout $(E2E_TIMEOUT) -v ./test/e2e/...

## vet-kind: compile and vet the kind provider (build tag kind), what CI checks instead of running it
vet-kind:
	$(GO) vet -tags kind ./test/e2e/...

## clean-node-e2e: remove the image cache (Debian tree, Redis image) and the last run's logs
clean-node-e2e:
	rm -rf "$(BIN)/node-e2e"
