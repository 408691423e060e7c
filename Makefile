# Transferline: `make demo` sets up and runs the demo pipeline; `make test` sets up and runs the tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= demo_work
EPOCHS ?= 30
IMAGE_SIZE ?= 96
export TF_USE_LEGACY_KERAS := 1

.PHONY: setup demo lint test clean

setup: $(STAMP)

# TFX 1.16 needs Python 3.10: the first candidate that really runs 3.10
# (PATH, then pyenv's installed versions; a pyenv shim alone may not run).
$(STAMP): setup.py constraints.txt
	@if [ ! -x $(PY) ]; then \
	  py=""; \
	  for candidate in "$$(command -v python3.10)" \
	      $$(ls -d "$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)"/versions/3.10*/bin/python3.10 2>/dev/null | sort -rV); do \
	    if [ -n "$$candidate" ] && "$$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then \
	      py="$$candidate"; break; fi; \
	  done; \
	  if [ -z "$$py" ]; then echo "error: Python 3.10 not found; install it (e.g. 'pyenv install 3.10') and retry" >&2; exit 1; fi; \
	  echo "Creating $(VENV) with $$py"; \
	  "$$py" -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip wheel "setuptools<70"
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pipeline.demo_data --output demo_data
	$(VENV)/bin/transferline run --data demo_data --workdir $(WORKDIR) --epochs $(EPOCHS) --image-size $(IMAGE_SIZE)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Two workers, one per core: much of a pipeline run is single-threaded orchestration.
# Each worker that runs a test of the shared pipeline run makes that run once.
test: lint
	$(PY) -m pytest -n 2

clean:
	rm -rf $(VENV) $(WORKDIR) demo_data
