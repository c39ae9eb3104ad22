# Node tier: the PMEM preload (page-level placement), the init program and Debian's real Redis.
# (issue 4; docs/node.md)

# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user: the preload built
# for aarch64 and its C tests run under qemu-aarch64 (preload/arm64_test.go).
NODE_APT_PACKAGES := redis-server redis-tools gcc libc6-dev binutils musl-tools \
	gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
NODE_PKGS := ./preload/... ./memkindinit/... ./cmd/pmem-memkind-init/... ./cmd/pmem-stage/... ./test/node/...

.PHONY: node-deps preload stage-memkind test-node bench-redis bench-fork

## node-deps: apt-get install what the node tier needs (redis-server, redis-tools, gcc...) when missing
node-deps:
	@missing=""; for p in $(NODE_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "node-deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## preload: build bin/libpmem-preload.so with gcc
preload: $(BIN)/libpmem-preload.so
$(BIN)/libpmem-preload.so: preload/csrc/pmem_preload.c
	@mkdir -p $(BIN)
	gcc -O2 -g -fPIC -shared -nostdlib -ffreestanding -fno-builtin -fno-stack-protector -fvisibility=hidden -Wl,-z,defs -Wall -Wextra -Werror -o $@ $<

## stage-memkind: stage the preload closure into bin/pmem-memkind (what the memkind image ships at /usr/lib/pmem-memkind)
stage-memkind:
	rm -rf $(BIN)/pmem-memkind
	$(GO) run ./cmd/pmem-stage --out $(BIN)/pmem-memkind

## test-node: preload semantics, init program, real redis-server under the webhook's env (missing tools fail, not skip)
test-node: node-deps
	PMEM_NODE_REQUIRED=1 $(GO) test -count=1 -timeout 15m $(NODE_PKGS)

## bench-redis: redis-benchmark SET/GET -d 10240 and 102400, DRAM vs fsdax vs kmem, table of medians (~3 min)
BENCH_ROUNDS ?= 5
bench-redis: node-deps
	PMEM_BENCH_REDIS=1 PMEM_BENCH_ROUNDS=$(BENCH_ROUNDS) PMEM_BENCH_OUT=$(BIN)/bench-redis.txt \
	  $(GO) test -count=1 -timeout 20m -run '^TestBenchRedis$$' -v ./test/node
	@echo "table saved in $(BIN)/bench-redis.txt"

## bench-fork: BGSAVE cost under a SET load, DRAM vs fsdax vs kmem: fork stall, p99/max latency, fsdax write-back pause (~2 min)
bench-fork: node-deps
	PMEM_BENCH_FORK=1 PMEM_BENCH_ROUNDS=$(if $(filter command line environment,$(origin BENCH_ROUNDS)),$(BENCH_ROUNDS),3) \
	  PMEM_BENCH_OUT=$(BIN)/bench-fork.txt \
	  $(GO) test -count=1 -timeout 20m -run '^TestBenchFork$$' -v ./test/node
	@echo "table saved in $(BIN)/bench-fork.txt"
