# The two commands of the README: `make demo` and `make test`. Both set up .venv first (skipped when done), for
# PYTHON (default python3: 3.11 or 3.12 get TensorFlow 2.18 + Horovod, 3.13 gets TensorFlow 2.21, MWMS only).
# `make test` then runs the Horovod-free tests on the Python 3.13 stack too (.venv-py313), where 3.13 exists.
VENV ?= .venv
BIN := $(VENV)/bin
# pytest-xdist workers for `make test` (0: one process); tests/parallel.py says how they share the cores. The SLURM
# test-cluster modules run after, in one plain process: under an xdist worker a requeued task's new job step was
# cancelled by SLURM in 2 of 4 runs (never in a plain process)
TEST_WORKERS ?= 2

.PHONY: setup demo test bench clean-venv

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/bratsbench demo --out demo-output

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 --ignore-glob='*/test_slurm*.py' tests
	$(BIN)/python -m pytest -q --durations=5 tests/test_slurm*.py
	@TEST_WORKERS=$(TEST_WORKERS) bash scripts/test-py313.sh

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
