# Benchmarks of the admission path (issue 6). Included by the top Makefile.

BENCH_COUNT ?= 8
BENCH_TIME ?= 1s

.PHONY: bench

## bench: admission benchmarks, ours vs a kubebuilder CustomDefaulter doing the same mutation (benchstat table)
bench:
	@mkdir -p $(BIN)
	$(GO) test -run '^$$' -bench 'BenchmarkAdmission' -benchmem -benchtime $(BENCH_TIME) -count $(BENCH_COUNT) ./webhook > $(BIN)/bench.txt
	$(GO) tool benchstat -col /impl $(BIN)/bench.txt
