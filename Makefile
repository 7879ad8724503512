# trackerdcs: the two commands of the README, plus benchmarks.
#   make run    install what is missing, start the local stack on simulated hardware
#   make test   install what is missing, lint, run the whole test suite
#   make bench  run every benchmark, print a table, write bench/results.json
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= examples/lab.yml

.PHONY: setup run test lint format bench clean

setup:
	@scripts/setup.sh

run: setup
	@$(PY) -m trackerdcs.cli stack --config $(CONFIG)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The suite runs in TEST_WORKERS pytest-xdist workers, one test module per worker at a time
# (tests/conftest.py): most tests wait on real processes, so more workers than cores pay off.
# TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 4
test: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
