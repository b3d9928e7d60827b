# genfleet: `make up` runs everything locally, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test test-fast bench lint format clean

install: $(STAMP)

# Reinstall only when the project's dependencies change: a no-op `make install` takes < 1 s.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: install
	$(BIN)/genfleet up

test: install
	$(BIN)/pytest -q --durations=15

test-fast: install
	$(BIN)/pytest -q -m "not ray and not browser"

bench: install
	$(BIN)/python bench/queue_bench.py
	$(BIN)/python bench/stress_bench.py
	$(BIN)/python bench/models_bench.py
	$(BIN)/python bench/recipe_bench.py
	$(BIN)/python bench/sampling_bench.py
	$(BIN)/python bench/ray_bench.py
	$(BIN)/python bench/dashboard_bench.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output *.egg-info
