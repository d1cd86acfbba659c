# Two commands set up everything on a fresh machine:
#   make demo   create .venv, install the pinned dependencies, run the main job on bundled data
#   make test   same setup, then the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= out/demo

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: setup
	$(VENV)/bin/edgevit info
	$(VENV)/bin/edgevit predict src/edgevit/data/sample.jpg --model edgevit_xxs --topk 3

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) out .pytest_cache
