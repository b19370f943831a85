# Two commands matter: `make demo` and `make test`. Everything else is a step of theirs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck protos kafka-up kafka-down down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)
	$(VENV)/bin/cascade kafka install

demo: setup
	$(VENV)/bin/cascade demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -ra

protos: $(STAMP)
	$(PY) -m shared.protogen

kafka-up: setup
	$(VENV)/bin/cascade kafka start

kafka-down:
	$(VENV)/bin/cascade kafka stop

down:
	$(VENV)/bin/cascade down

clean: down
	rm -rf .cascade "$${CASCADE_HOME:-$${XDG_DATA_HOME:-$$HOME/.local/share}/cascade}"
