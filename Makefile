# The two commands of the README: `make demo` and `make test`. Both set up .venv first (skipped when done).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean-venv

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/bratsbench demo --out demo-output

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
