# Reliability and security tier (issue 7) and the load benchmark through the apiserver (issue 6):
# bad input, certificate rotation under load, graceful shutdown, outage behaviour, the TLS surface,
# all against the real control plane of test/cluster. See docs/reliability.md.

GO ?= go
BIN ?= $(CURDIR)/bin
RELIABILITY_TEST_TIMEOUT ?= 10m

# make bench-apiserver knobs: pods per second and seconds of load (bounded in the test: 500/s, 600 s).
BENCH_APISERVER_RATE ?= 50
BENCH_APISERVER_SECONDS ?= 60

.PHONY: test-reliability bench-apiserver

## test-reliability: bad inputs, cert rotation under load, SIGTERM under load, outage (Fail/Ignore), TLS surface (~2.5 min)
test-reliability: controlplane-bins
	PMEM_CONTROLPLANE_BIN_DIR="$(CONTROLPLANE_BIN)" PMEM_E2E_REQUIRE=1 \
		$(GO) test -count=1 -timeout $(RELIABILITY_TEST_TIMEOUT) -v ./test/reliability/

## bench-apiserver: annotated pods at 50/s for 60 s through kube-apiserver; its webhook latency histogram + webhook RSS
bench-apiserver: controlplane-bins
	@mkdir -p $(BIN)
	PMEM_CONTROLPLANE_BIN_DIR="$(CONTROLPLANE_BIN)" PMEM_E2E_REQUIRE=1 PMEM_BENCH_APISERVER=1 \
		PMEM_BENCH_RATE=$(BENCH_APISERVER_RATE) PMEM_BENCH_SECONDS=$(BENCH_APISERVER_SECONDS) \
		PMEM_BENCH_OUT=$(BIN)/bench-apiserver.txt \
		$(GO) test -count=1 -timeout 15m -run '^TestBenchAPIServer$$' -v ./test/reliability/
	@echo "table saved in $(BIN)/bench-apiserver.txt"
