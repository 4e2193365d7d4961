# forestream: `make demo` runs the product end to end on a local real broker; `make test` tests it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-extra unit integration lint format demo bench kafka-jars kcat clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP) kafka-jars kcat

# The broker's jars come from Maven Central into ~/.cache/forestream (outside the repo), once.
kafka-jars: $(STAMP)
	$(BIN)/python -c 'from forestream.local.kafka import ensure_jars; print("kafka jars:", ensure_jars())'

# kcat is the outside client of the interop test (librdkafka, not kafka-python).
kcat:
	@command -v kcat >/dev/null || command -v kafkacat >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq kcat >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq kcat >/dev/null; fi; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Two pytest-xdist workers sharing one broker (tests/conftest.py), each taking whole files: the
# tests mostly wait on brokers and worker processes, so two overlap well on two cores (the test
# durations of a full run added up to 1.96 times its wall time).
# XDIST= runs in one process.
XDIST ?= -n 2 --dist loadfile

# Unit tests, the edge suite on both clients, every end-to-end flow on kafka-python.
test: setup lint
	$(BIN)/pytest tests $(XDIST)

# The librdkafka variants of the flows named in tests/conftest.py LIBRDKAFKA_FLOWS; CI runs both.
test-extra: setup
	$(BIN)/pytest tests --clients extra $(XDIST)

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: setup
	$(BIN)/pytest tests/integration $(XDIST)

demo: setup
	$(BIN)/forestream demo

bench: setup
	$(BIN)/python -m bench.throughput

clean:
	rm -rf $(VENV) .forestream .pytest_cache .ruff_cache
