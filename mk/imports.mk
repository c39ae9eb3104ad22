# Import rules (issue 15), part of `make lint`: the product never builds in the
# test harness, and the offline injector needs only patch, not the admission
# side. `go list -deps` is what the binaries link, so a rule broken through
# any chain of imports fails here.

# The product packages: everything that ships in a binary or image, and the
# manifests' renderer.
PRODUCT_PKGS := ./cmd/... ./patch/... ./webhook/... ./server/... ./config/... ./certs/... ./memkindinit/... ./preload/... ./deploy/...

.PHONY: lint-imports
lint: lint-imports

## lint-imports: no product package depends on test/...; cmd/pmem-inject does not depend on webhook
lint-imports:
	@mod=$$($(GO) list -m); \
	bad=$$($(GO) list -f '{{.ImportPath}} {{join .Deps " "}}' $(PRODUCT_PKGS) | \
	  awk -v m="$$mod" '{ for (i = 2; i <= NF; i++) if (index($$i, m "/test/") == 1) print "  " $$1 " -> " $$i }'; \
	  $(GO) list -deps ./cmd/pmem-inject/... | grep -x "$$mod/webhook" | sed "s|^|  $$mod/cmd/pmem-inject -> |"); \
	if [ -n "$$bad" ]; then echo "lint-imports: forbidden dependencies:"; echo "$$bad"; exit 1; fi
