# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
REFERENCE_VENV ?= .venv-llm2vec

.PHONY: setup demo demo-mntp test lab clean-demo llm2vec-reference

setup: $(INSTALLED)

# Re-installs only when the pins change: every package at requirements.lock's version (torch==2.13.0
# among them: an unpinned torch pulls a multi-GB CUDA build); pyproject.toml holds the ranges.
$(INSTALLED): pyproject.toml requirements.lock
	@echo "[make] setting up $(VENV): the exact versions of requirements.lock (once; torch is the largest download)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[notebooks,test]'
	touch $@

# The whole pipeline (01→05) on the synthetic MIMIC-III twin with the tiny backbone, on CPU: one
# fine-tuning, without params/tiny.yaml's MNTP comparison (an MNTP stage and a second fine-tuning,
# three times as long on 2 cores), which `make demo-mntp` runs into outputs/demo-mntp/.
DEMO_PARAMS := -p mntp_steps=0 -p mntp_compare=none
demo: setup
	$(PY) -m icdlib run --backbone tiny --run demo $(DEMO_PARAMS)

demo-mntp: setup
	$(PY) -m icdlib run --backbone tiny --run demo-mntp

# Two workers (this project's machines have 2 cores), a test file at a time each, the long files
# first (tests/conftest.py); `make test PYTEST_WORKERS=0` runs the suite in one process, and
# PYTEST_ARGS adds pytest options (`make test PYTEST_ARGS="--durations=10"`).
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=
test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean-demo:
	rm -rf outputs/demo outputs/demo-mntp

# llm2vec 0.2.3's own outputs on the hub replica, made in its pinned 2024 environment (built here
# into .venv-llm2vec), into tests/llm2vec_reference/: what `make test` compares icdlib with.
llm2vec-reference:
	test -x $(REFERENCE_VENV)/bin/python || $(PYTHON) -m venv $(REFERENCE_VENV)
	$(REFERENCE_VENV)/bin/python -m pip install --quiet -r tests/llm2vec_reference/requirements.txt
	$(REFERENCE_VENV)/bin/python tests/llm2vec_reference/make_reference.py
