# Self-signed certificate mode (certs/bootstrap, Helm certs.mode=selfSigned): its tests against a
# real kube-apiserver, using the control-plane binaries of mk/controlplane.mk. See docs/deploy.md.

.PHONY: test-selfsigned

## test-selfsigned: self-signed bootstrap tests (race, caBundle restore, rotation, binary) against a real control plane (never skips)
test-selfsigned: controlplane-bins
	PMEM_CONTROLPLANE_BIN_DIR="$(CONTROLPLANE_BIN)" PMEM_E2E_REQUIRE=1 \
		$(GO) test -count=1 -race -timeout 10m ./certs/bootstrap/...
