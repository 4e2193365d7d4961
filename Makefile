# forestream: `make demo` runs the product end to end on a local real broker; `make test` tests it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_RESULTS ?= bench/results/latest.json

.PHONY: wheel-check lock setup test test-extra unit integration lint format demo bench bench-report profile \
	soak kafka-jars \
	schema-registry-app tools \
	docs docs-build docs-check docs-cli clean

# Installs are the lock's, to the hash (requirements-dev.lock: every extra; `make lock` refreshes
# it from pyproject.toml), then the project itself without dependencies.
$(STAMP): pyproject.toml requirements-dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# Both locks from pyproject.toml, resolved for every Python 3.11 (requirements.lock: what the
# image installs; requirements-dev.lock: with the test, docs and bench extras).
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes -q
lock: $(STAMP)
	$(BIN)/pip install -q 'uv>=0.13,<0.14'
	$(UV_COMPILE) -o requirements.lock
	$(UV_COMPILE) --all-extras -o requirements-dev.lock

setup: $(STAMP) kafka-jars schema-registry-app tools

# The broker's jars come from Maven Central into ~/.cache/forestream (outside the repo), once.
kafka-jars: $(STAMP)
	$(BIN)/python -c 'from forestream.local.install import ensure_jars; print("kafka jars:", ensure_jars())'

# Apicurio Registry (the local Schema Registry, `forestream registry start`) the same way, once.
schema-registry-app: $(STAMP)
	$(BIN)/python -c 'from forestream.local.schema_registry import ensure_app; print("schema registry:", ensure_app())'

# Debian tools the tests use, installed once with apt when missing: kcat, the outside client of
# the interop test (librdkafka, not kafka-python); promtool, which checks the alert rules.
TOOLS_MISSING = $(strip $(if $(shell command -v kcat || command -v kafkacat),,kcat) \
	$(if $(shell command -v promtool),,prometheus))
tools:
	@missing="$(TOOLS_MISSING)"; [ -z "$$missing" ] || { \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Two pytest-xdist workers sharing one broker (tests/conftest.py), each taking whole files: the
# tests mostly wait on brokers and worker processes, so two overlap well on two cores (the test
# durations of a full run added up to 1.96 times its wall time). Files are handed out in
# collection order, the slowest first (tests/conftest.py SLOWEST_FIRST), not xdist's default of
# the files with the most tests first, which left the slow few-test files for the tail.
# XDIST= runs in one process.
XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder

# Unit tests, the edge suite on both clients, every end-to-end flow on kafka-python.
# CLIENTS=ci adds the librdkafka flow variants to the same session (.ci/run: one broker and one
# start-up instead of two sessions, and no second tail of one xdist worker waiting on the other).
CLIENTS ?= core
test: setup lint
	$(BIN)/pytest tests $(XDIST) --clients $(CLIENTS)

# The librdkafka variants of the flows named in tests/conftest.py LIBRDKAFKA_FLOWS; CI runs both.
test-extra: setup
	$(BIN)/pytest tests --clients extra $(XDIST)

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: setup
	$(BIN)/pytest tests/integration $(XDIST)

# FORMAT=avro: the same story in Avro, through a Schema Registry the demo starts and stops.
demo: setup
	$(BIN)/forestream demo $(if $(FORMAT),--format $(FORMAT))

bench: setup
	$(BIN)/python -m bench.throughput

# Where the worker's time goes: py-spy over one worker per client, its samples by category
# (bench/profile.py). PROFILE_ARGS="--worker-cwd PATH" profiles another checkout's worker.
profile: setup
	$(BIN)/python -m bench.profile $(PROFILE_ARGS)

# Two workers for SOAK_MINUTES under load, with a promotion every 2 minutes, a broker SIGKILL
# every 10 and 1 % malformed records; then every input is accounted for and RSS, fds and threads
# after warm-up are compared (bench/soak.py; the result and its chart go to bench/results/).
SOAK_MINUTES ?= 30
soak: setup
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

# docs/benchmark.md and docs/assets/benchmark.svg from what `make bench` wrote (or another
# results file: `make bench-report BENCH_RESULTS=bench/recorded/....json`)
bench-report: $(STAMP)
	$(BIN)/python -m bench.report $(BENCH_RESULTS)

# The docs site (MkDocs + Material, mkdocs.yml). `docs` serves it on the loopback only.
docs-cli: $(STAMP)
	$(BIN)/python docs/gen_cli_reference.py
	$(BIN)/python docs/gen_settings_reference.py

docs: $(STAMP) docs-cli
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

docs-build: $(STAMP) docs-cli
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# What CI runs: the strict build of the committed pages (no regeneration, no server); a stale
# CLI or settings reference is the unit tests' to catch.
docs-check: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .forestream .pytest_cache .ruff_cache .mypy_cache site

# One import root: the wheel `pip install .` builds holds one top-level package, forestream (the
# components reach it through symlinks, which the wheel stores as real folders).
wheel-check: $(STAMP)
	rm -rf build/wheel
	$(BIN)/pip wheel -q --no-deps -w build/wheel .
	$(BIN)/python -c 'import glob, sys, zipfile; \
	  names = zipfile.ZipFile(glob.glob("build/wheel/forestream-*.whl")[0]).namelist(); \
	  top = {n.split("/")[0] for n in names if ".dist-info/" not in n}; \
	  print("wheel top level:", sorted(top)); \
	  sys.exit(0 if top == {"forestream"} and all(c in names for c in ("forestream/worker/loop.py", "forestream/training/cli.py", "forestream/producer/cli.py")) else "not one root package: %s" % sorted(top))'
