# Each target sets itself up: creates .venv if missing and installs the pinned requirements
# (a stamp file makes this a no-op when nothing changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.modelloop-installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: setup
	$(BIN)/modelloop demo modelloop-demo --fresh

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf modelloop-demo test-artifacts .pytest_cache
