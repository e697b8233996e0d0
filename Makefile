# placeid: every target sets up what it needs on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test stack-up stack-down stack-status bench clean

$(STAMP): pyproject.toml edge/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./edge -e '.[dev,train]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)  ## local stack up, catalog, ingest world30 with progress, summary
	$(VENV)/bin/placeid demo

test: $(STAMP)  ## the whole suite against the real emulators
	$(PY) -m pytest -q

stack-up: $(STAMP)
	$(VENV)/bin/placeid stack up

stack-down: $(STAMP)
	$(VENV)/bin/placeid stack down

stack-status: $(STAMP)
	$(VENV)/bin/placeid stack status

bench: $(STAMP)  ## benchmarks (slow; prints tables, saves bench/results/*.json)
	$(PY) bench/ingest_bench.py
	$(PY) bench/training_bench.py

clean:
	-$(VENV)/bin/placeid stack down
	rm -rf $(VENV) .placeid .pytest_cache
