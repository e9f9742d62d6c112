# Two entry points, both from a fresh clone with only Python and pip:
#   make demo   the main job: a short long-lag experiment and the gate viewer
#   make test   the whole test suite
#   make lint   ruff's lint and format checks (CI runs them before the tests)
#   make docs   the documentation site into site/ (runs the tutorial and examples; warnings are errors)
# torch is pinned here (a CPU build) so that pip does not pull a multi-GB CUDA build;
# pyproject.toml itself accepts torch>=2.4.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test lint docs install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,triton,lint]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gatedrnn demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

# -E: a fresh build every time, so every warning of every page is seen (and is an error)
docs: $(DOCS_STAMP)
	$(BIN)/python -m sphinx -E -W --keep-going -b html docs site

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) site docs/generated docs/sg_execution_times.rst
