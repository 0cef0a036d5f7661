# Two commands that work on a fresh clone: `make demo` and `make test`.
# Each creates .venv (if missing) and installs gbw into it first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gbw-installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	OMP_NUM_THREADS=2 $(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/gbw demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

bench: $(STAMP)
	$(VENV)/bin/gbw bench overhead

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
