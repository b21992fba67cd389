# Each target sets itself up: creates .venv if missing and installs the pinned requirements
# (a stamp file makes this a no-op when nothing changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.modelloop-installed
DEV_STAMP := $(VENV)/.modelloop-dev-installed
EXTRAS_STAMP := $(VENV)/.modelloop-extras-installed

.PHONY: setup extras-setup dev-setup system-deps bench-deps demo test lint bench bench-train bench-serve clean

# setup: what modelloop needs to run (make demo); extras-setup adds the optional extras
# (requirements-extras.txt); dev-setup adds those, the test and lint tools and the Ray backend (the
# tests run a real Ray cluster).
setup: $(STAMP)
extras-setup: $(EXTRAS_STAMP)
dev-setup: $(DEV_STAMP)

# Debian packages the tests need (installed once; needs root): Chromium for the web UI tests,
# PostgreSQL for the multi-process feedback store tests (the tests start their own server),
# espeak-ng and sox for the spoken-keyword dataset ('modelloop data keywords') the audio tests make,
# iproute2 for the loopback-only network namespace the Ray test cluster runs in.
system-deps:
	@{ command -v chromium >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && \
	   command -v espeak-ng >/dev/null 2>&1 && command -v sox >/dev/null 2>&1 && command -v ip >/dev/null 2>&1; } || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium postgresql espeak-ng sox \
	  iproute2; }

# wrk drives the serving benchmark.
bench-deps:
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }

# scripts/install-requirements.py does what `pip install -r` does (same resolution, same files),
# with the downloads in parallel and the byte-compiling on all cores; if that fails it says so and
# runs plain pip. INSTALL_PLAIN=1 runs plain pip from the start.
INSTALL := $(BIN)/python scripts/install-requirements.py $(if $(INSTALL_PLAIN),--plain)

$(STAMP): requirements.txt requirements-data.txt pyproject.toml scripts/install-requirements.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(INSTALL) -r requirements.txt --no-deps-r requirements-data.txt -e .
	touch $(STAMP)

# The optional extras (Parquet, PostgreSQL) and sentence-transformers: the tests and benchmarks use them.
$(EXTRAS_STAMP): $(STAMP) requirements-extras.txt
	$(INSTALL) -r requirements.txt -r requirements-extras.txt
	touch $(EXTRAS_STAMP)

$(DEV_STAMP): $(EXTRAS_STAMP) requirements-dev.txt requirements-ray.txt
	$(INSTALL) -r requirements.txt -r requirements-extras.txt -r requirements-dev.txt -r requirements-ray.txt
	touch $(DEV_STAMP)

demo: setup
	$(BIN)/modelloop demo modelloop-demo --fresh

# Two pytest-xdist workers (the suite's heavy parts are processes and servers that leave a core
# idle); tests/conftest.py keeps each file, and each shared session project, on one worker.
TEST_WORKERS ?= 2

test: dev-setup system-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=30

lint: dev-setup
	$(BIN)/ruff check src tests bench scripts

# Every side-by-side benchmark (tens of minutes on 2 cores); figures go to bench/RESULTS.md.
bench: extras-setup bench-deps
	$(BIN)/python bench/train.py
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/text.py
	$(BIN)/python bench/fewshot.py
	$(BIN)/python bench/distill.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/keywords.py
	$(BIN)/python bench/tabular.py
	$(BIN)/python bench/regression.py
	$(BIN)/python bench/recommend.py

bench-train: extras-setup
	$(BIN)/python bench/train.py

bench-serve: extras-setup bench-deps
	$(BIN)/python bench/serve.py

clean:
	rm -rf modelloop-demo test-artifacts .pytest_cache
