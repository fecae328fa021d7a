# `make` sets up .venv from nothing and runs the embedded default study; `make test` runs the fast tier of the
# tests (minutes), `make test-all` every test, the end-to-end runs of the slow tier included.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: run test test-all lint setup clean rehearsal
run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)

# The paper grid rehearsed here (docs/cluster.md: Before you submit): tiny models, hub-shaped data, 2 seeds.
rehearsal: setup
	$(BIN)/lmadapt rehearsal --paper config/paper.yaml --out rehearsal $(REHEARSAL_ARGS)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --configfile rehearsal/config.yaml \
		--directory rehearsal
	$(BIN)/lmadapt check-skips --plan rehearsal/results/plan/preflight.json --tidy rehearsal/results/tables/all.parquet

# The ecosystem's own checks: ruff on the Python, snakefmt on the rules, Snakemake's linter on the workflow, and
# import-linter on the package's layers (.importlinter: no upward import, no circle; docs/design.md draws them).
lint: setup $(VENV)/.lint-installed
	$(BIN)/ruff check workflow tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --dry-run --quiet all > $(VENV)/lint.log 2>&1 || { cat $(VENV)/lint.log; exit 1; }

$(VENV)/.lint-installed: envs/requirements-lint.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r envs/requirements-lint.txt
	touch $@

setup: $(VENV)/.installed

$(VENV)/.installed: envs/requirements.txt envs/requirements-data.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r envs/requirements.txt
	$(BIN)/pip install --quiet --no-deps -r envs/requirements-data.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

PYTEST = PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q $(PYTEST_ARGS)
test: setup
	$(PYTEST) -m "not slow"

# Both tiers on two pytest workers (pytest-xdist): each study run uses both cores only part of the time, so the
# default study and the rehearsal, started first on separate workers, fill each other's idle core.
test-all: setup $(VENV)/.test-installed
	$(PYTEST) -n 2 --dist loadgroup --no-loadscope-reorder

$(VENV)/.test-installed: envs/requirements-test.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r envs/requirements-test.txt
	touch $@

clean:
	rm -rf results/* .snakemake
