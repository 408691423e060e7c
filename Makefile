# Transferline: `make demo` sets up and runs the demo pipeline; `make test` sets up and runs the tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= demo_work
EPOCHS ?= 10
IMAGE_SIZE ?= 96
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup demo test lint clean

setup: $(STAMP)

# TFX 1.16 needs Python 3.10: take python3.10 from PATH, else from pyenv.
$(STAMP): setup.py constraints.txt
	@py=$$(command -v python3.10 || true); \
	if [ -z "$$py" ] && command -v pyenv >/dev/null; then \
	  py=$$(ls -d "$$(pyenv root)"/versions/3.10*/bin/python3.10 2>/dev/null | sort -V | tail -n 1); fi; \
	if [ -z "$$py" ]; then echo "error: Python 3.10 not found (install it, e.g. 'pyenv install 3.10')" >&2; exit 1; fi; \
	echo "Using $$py"; \
	[ -x $(PY) ] || "$$py" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel "setuptools<70"
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pipeline.demo_data --output demo_data
	$(VENV)/bin/transferline run --data demo_data --workdir $(WORKDIR) --epochs $(EPOCHS) --image-size $(IMAGE_SIZE)

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) $(WORKDIR) demo_data
