# One command per job. `make bench` runs every benchmark in bench/ (each in fresh processes) and
# writes bench/RESULTS.md, bench/results/results.json and bench/plots/*.png (see README, "Benchmarks").

PYTHON := .venv/bin/python
BENCH_ARGS ?=

.PHONY: bench bench-quick rehearse

bench:
	bash scripts/bootstrap.sh
	$(PYTHON) bench/run_all.py $(BENCH_ARGS)

# A fast smoke test of the orchestration (fewer repeats, smaller sizes); writes bench/_work/quick/.
bench-quick:
	bash scripts/bootstrap.sh
	$(PYTHON) bench/run_all.py --quick $(BENCH_ARGS)

# Real-size rehearsal on the CPU (not part of the tests or CI): random weights at the real widths in
# the real files, each stage in a fresh process, peak RSS vs the planner (README, "Real-size rehearsal").
# Partial depth by default; REHEARSE_ARGS="--double 20 --single 40 --llm-layers 32" for the full model.
# The second step runs the shipped workflows through a real ComfyUI on the files the first wrote
# (give both the same --work if you move it).
REHEARSE_ARGS ?=
REHEARSE_SERVER_ARGS ?=

rehearse:
	bash scripts/bootstrap.sh
	$(PYTHON) scripts/rehearse.py $(REHEARSE_ARGS)
	$(PYTHON) scripts/rehearse_server.py $(REHEARSE_SERVER_ARGS)
