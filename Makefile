# make demo — set up .venv and run the main job; make test — set up .venv and run the tests.
# make docs — build the documentation site into build/site (mkdocs build --strict).
# make test-recsim-ng — set up .venv-recsim-ng (the recsim-ng extra: TensorFlow 2.15, NumPy < 2) and run
# the tests marked recsim_ng.
PYTHON ?= python3
VENV ?= .venv
# RecSim NG installs only on Python 3.11 with its pins; it gets its own venv.
RECSIM_PYTHON ?= python3.11
RECSIM_VENV ?= .venv-recsim-ng
PY := $(VENV)/bin/python
# The tested torch build (CPU wheel). The library itself asks only torch>=2.3.
TORCH_PIN ?= torch==2.13.0
# The demo needs the core install only; the tests also need the extras they test and the test tools.
DEMO_STAMP := $(VENV)/.metarec-core-installed
STAMP := $(VENV)/.metarec-installed
RECSIM_STAMP := $(RECSIM_VENV)/.metarec-installed

.PHONY: demo test test-all test-recsim-ng docs lint bench clean

$(DEMO_STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e .
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(PY) -m pip install -q -e ".[test,sb3,calibrate,text,export,offline,docs]"
	touch $(STAMP)

$(RECSIM_STAMP): pyproject.toml Makefile
	test -x $(RECSIM_VENV)/bin/python || $(RECSIM_PYTHON) -m venv $(RECSIM_VENV)
	$(RECSIM_VENV)/bin/python -m pip install -q --upgrade pip
	$(RECSIM_VENV)/bin/python -m pip install -q "$(TORCH_PIN)"
	$(RECSIM_VENV)/bin/python -m pip install -q -e ".[recsim-ng,sb3]" "pytest>=8"
	touch $(RECSIM_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/metarec demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not recsim_ng" -n 2

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not recsim_ng" -n 2

test-recsim-ng: $(RECSIM_STAMP)
	$(RECSIM_VENV)/bin/python -m pytest -q -m recsim_ng tests/test_recsim_ng.py

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(RECSIM_VENV) runs .pytest_cache
