# One command per job. `make bench` runs every benchmark in bench/ (each in fresh processes) and
# writes bench/RESULTS.md, bench/results/results.json and bench/plots/*.png (see README, "Benchmarks").

PYTHON := .venv/bin/python
BENCH_ARGS ?=

.PHONY: bench bench-quick

bench:
	bash scripts/bootstrap.sh
	$(PYTHON) bench/run_all.py $(BENCH_ARGS)

# A fast smoke test of the orchestration (fewer repeats, smaller sizes); writes bench/_work/quick/.
bench-quick:
	bash scripts/bootstrap.sh
	$(PYTHON) bench/run_all.py --quick $(BENCH_ARGS)
