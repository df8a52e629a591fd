#!/usr/bin/env bash
# One-call GPU benchmark of `anglerank score` (see `python benchmarks/gpu_check.py --help`).
#   bash benchmarks/gpu_check.sh prepare            # here: tokenizer + GSM8K prompts -> benchmarks/gpu_bundle/
#   bash benchmarks/gpu_check.sh run --out "$OUT"   # on the GPU machine (needs only the repo and the bundle)
#   bash benchmarks/gpu_check.sh run --smoke        # every code path on CPU with tiny shapes
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's venv where there is one (this machine); the system python on the GPU machine,
# which has torch, transformers, typer, rich, pyarrow and safetensors but not anglerank installed.
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=$(command -v python3 || command -v python); fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py "$@"
