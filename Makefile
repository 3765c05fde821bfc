# `make demo` and `make test` work on a fresh machine: each creates the virtual
# environment on first use, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the release this project is tested with.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[assets,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m domainbed.scripts.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

# ruff with the security rules; configuration in pyproject.toml.
lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) demo_output demo_sweep
