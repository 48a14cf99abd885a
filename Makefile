# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: setup demo test lab clean-demo

setup: $(INSTALLED)

# Re-installs only when the pins change. torch==2.13.0 is pinned: an unpinned torch pulls a
# multi-GB CUDA build.
$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The whole pipeline (01→05) on the synthetic MIMIC-III twin with the tiny backbone, on CPU.
demo: setup
	$(PY) -m icdlib run --backbone tiny --run demo

test: setup
	$(PY) -m pytest -q

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean-demo:
	rm -rf outputs/demo
