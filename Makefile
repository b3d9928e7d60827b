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

# First what the tests need from the system (.ci/system-packages: through apt as root, else
# named), then the venv, in that order even under `make -j`. Then two pytest processes at once
# and a third alone (tests/conftest.py says why): the tests on the session's local Ray print as
# they go; the others write test-output/not-ray.log, printed when both are done; the
# multi-host ones follow and print as they go.
test:
	PYTHON=$(PYTHON) bash .ci/system-packages
	$(MAKE) --no-print-directory install
	mkdir -p test-output
	$(BIN)/pytest -q -m "not ray and not multihost" -p no:cacheprovider --durations=10 \
	  > test-output/not-ray.log 2>&1 & computing=$$!; \
	trap 'kill $$computing 2>/dev/null' INT TERM; \
	$(BIN)/pytest -q -m "ray and not multihost" --durations=15; on_ray=$$?; \
	wait $$computing; not_on_ray=$$?; \
	echo "--- test-output/not-ray.log ---"; cat test-output/not-ray.log; \
	$(BIN)/pytest -q -m multihost -p no:cacheprovider --durations=10; multihost=$$?; \
	test $$on_ray -eq 0 && test $$not_on_ray -eq 0 && test $$multihost -eq 0

test-fast:
	PYTHON=$(PYTHON) bash .ci/system-packages --venv-only
	$(MAKE) --no-print-directory install
	$(BIN)/pytest -q -m "not ray and not browser"

# gpu_bench measures on a CUDA device and runs its CPU smoke sizes where there is none. The last,
# chaos_bench (hours, bounded by its --timeout), needs root and `ip netns`; without them it says
# why and exits 2.
bench: install
	$(BIN)/python bench/queue_bench.py
	$(BIN)/python bench/stress_bench.py
	$(BIN)/python bench/models_bench.py
	$(BIN)/python bench/recipe_bench.py
	$(BIN)/python bench/sampling_bench.py
	$(BIN)/python bench/ray_bench.py
	$(BIN)/python bench/sweep_bench.py
	$(BIN)/python bench/dashboard_bench.py
	$(BIN)/python bench/footprint_bench.py
	$(BIN)/python bench/data_path_bench.py
	$(BIN)/python bench/gpu_bench.py
	$(BIN)/python bench/chaos_bench.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output *.egg-info
