# `make demo` and `make test` work on a fresh machine: each creates the virtual
# environment on first use, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint venv clean

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the release this project is tested with.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# assets: the bundled data and weights; notebook: what the demo executes the notebook with,
	# and `jupyter notebook`; test: pytest and ruff (both commands share this one environment).
	$(PY) -m pip install --quiet -e '.[assets,notebook,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m domainbed.scripts.demo

# The default run leaves out the tests marked slow (end-to-end runs, fault injection, the
# wheel build, the notebook); CI runs them as a second step with `make test-slow`.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

# ruff with the security rules; configuration in pyproject.toml.
lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) demo_output demo_sweep
