# make demo — set up .venv and run the main job; make test — set up .venv and run the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The tested torch build (CPU wheel). The library itself asks only torch>=2.3.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.metarec-installed

.PHONY: demo test test-all lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[test,sb3]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/metarec demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not recsim_ng" -n 2

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not recsim_ng" -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
