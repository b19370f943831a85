# Two commands matter: `make demo` and `make test`. Everything else is a step of theirs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINKS := $(VENV)/.linked
# shared/ installs as the package `cascade` and services/ as `cascade.services` (pyproject.toml).
# A strict editable install makes that mapping a tree of links (build/__editable__.*), which mypy
# follows; a new module needs a new link, so the tree is remade when any package folder changes.
PACKAGE_DIRS := $(shell find shared services -type d -not -name __pycache__ 2>/dev/null)
EDITABLE := --config-settings editable_mode=strict

.PHONY: setup browser demo test lint typecheck protos kafka-up kafka-down down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' $(EDITABLE)
	touch $(STAMP) $(LINKS)

$(LINKS): $(STAMP) $(PACKAGE_DIRS)
	$(PY) -m pip install --quiet --no-deps -e . $(EDITABLE)
	touch $(LINKS)

setup: $(STAMP) $(LINKS)
	$(VENV)/bin/cascade kafka install

demo: setup
	$(VENV)/bin/cascade demo

# The console's browser tests drive Debian's chromium. As root (CI) it is installed when missing;
# otherwise the tests skip, loudly, and this says how to get it.
browser:
	@if command -v chromium >/dev/null || [ -n "$${CASCADE_CHROMIUM:-}" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's chromium for the console's browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "*** No chromium: the console's browser tests will be SKIPPED (sudo apt-get install chromium) ***"; \
	fi

test: setup browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -ra --durations=20

protos: $(STAMP)
	$(PY) -m cascade.protogen

kafka-up: setup
	$(VENV)/bin/cascade kafka start

kafka-down:
	$(VENV)/bin/cascade kafka stop

down:
	$(VENV)/bin/cascade down

clean: down
	rm -rf .cascade "$${CASCADE_HOME:-$${XDG_DATA_HOME:-$$HOME/.local/share}/cascade}"
