# placeid: every target sets up what it needs on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The edge package under the older runtime: tflite-runtime 2.14 needs numpy < 2, so it has its own venv.
TFLITE_VENV  ?= .venv-tflite
TFLITE_STAMP := $(TFLITE_VENV)/.installed
# checkov has a large dependency tree of its own: its own venv.
TOOLS_VENV  ?= .venv-tools
TOOLS_STAMP = $(TOOLS_VENV)/.checkov-$(CHECKOV_VERSION)
CHECKOV_VERSION := 3.3.30

# The page's offline runtime (LiteRT.js) from npm, pinned by web/package-lock.json (placeid/web_assets.py).
WEB_STAMP := placeid/data/web/vendor/versions.json

.PHONY: setup browser web demo test test-fast package stack-up stack-down stack-status bench clean

# The training image's pins (training/requirements.txt) constrain the venv too: the suite runs what the image runs,
# and a new upstream release cannot change it between runs.
$(STAMP): pyproject.toml edge/pyproject.toml training/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c training/requirements.txt -e ./edge -e '.[dev,train]'
	touch $(STAMP)

$(TFLITE_STAMP): edge/pyproject.toml
	$(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TFLITE_VENV)/bin/python -m pip install --quiet -e './edge[tflite-runtime]'  # editable: runs this checkout's code
	touch $(TFLITE_STAMP)

$(TOOLS_STAMP):
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $(TOOLS_STAMP)

# Headless Chromium for the page test (Debian's packages); installed when missing and we may.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q --no-install-recommends chromium chromium-driver \
	    || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver; }; \
	  else echo "make: the page test needs chromium and chromium-driver: sudo apt-get install chromium chromium-driver" >&2; exit 1; fi; }

$(WEB_STAMP): web/package.json web/package-lock.json placeid/web_assets.py | $(STAMP)
	$(PY) -m placeid.web_assets

web: $(WEB_STAMP)

setup: $(STAMP) $(TFLITE_STAMP) $(TOOLS_STAMP) $(WEB_STAMP) browser

demo: $(STAMP) $(WEB_STAMP)  ## local stack up, catalog, ingest world30 with progress, summary
	@$(MAKE) --no-print-directory browser || echo "make: no Chromium: the demo skips the page's offline step"
	$(VENV)/bin/placeid demo

test: $(STAMP) $(TFLITE_STAMP) $(TOOLS_STAMP) $(WEB_STAMP) browser  ## the whole suite against the real emulators (and the edge package under both runtimes)
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## seconds, while editing: the tests that need no emulator, Java, gcloud, trained model or slow subprocess
	$(PY) -m pytest -q -m "not slow"

package: $(STAMP) $(WEB_STAMP)  ## each function's deployable folder and .zip in dist/ (what Terraform and Cloud Build deploy)
	$(VENV)/bin/placeid package --out dist

stack-up: $(STAMP)
	$(VENV)/bin/placeid stack up

stack-down: $(STAMP)
	$(VENV)/bin/placeid stack down

stack-status: $(STAMP)
	$(VENV)/bin/placeid stack status

bench: $(STAMP)  ## benchmarks (slow; prints tables, saves bench/results/*.json)
	$(PY) bench/ingest_bench.py
	$(PY) bench/training_bench.py
	$(PY) bench/serving_bench.py
	$(PY) bench/hostile_bench.py

clean:
	-$(VENV)/bin/placeid stack down
	rm -rf $(VENV) $(TFLITE_VENV) $(TOOLS_VENV) dist .placeid .pytest_cache web/node_modules placeid/data/web/vendor
