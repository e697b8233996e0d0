# placeid: every target sets up what it needs on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The edge package under the older runtime: tflite-runtime 2.14 needs numpy < 2, so it has its own venv.
TFLITE_VENV  ?= .venv-tflite
TFLITE_STAMP := $(TFLITE_VENV)/.installed

.PHONY: setup demo test stack-up stack-down stack-status bench clean

$(STAMP): pyproject.toml edge/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./edge -e '.[dev,train]'
	touch $(STAMP)

$(TFLITE_STAMP): edge/pyproject.toml
	$(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TFLITE_VENV)/bin/python -m pip install --quiet './edge[tflite-runtime]'
	touch $(TFLITE_STAMP)

setup: $(STAMP) $(TFLITE_STAMP)

demo: $(STAMP)  ## local stack up, catalog, ingest world30 with progress, summary
	$(VENV)/bin/placeid demo

test: $(STAMP) $(TFLITE_STAMP)  ## the whole suite against the real emulators (and the edge package under both runtimes)
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
	rm -rf $(VENV) $(TFLITE_VENV) .placeid .pytest_cache
