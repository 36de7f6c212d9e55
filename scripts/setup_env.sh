#!/usr/bin/env bash
# Create .venv (if missing) and install sam3lt with its test extra. Idempotent; no network beyond PyPI.
# torch 2.14.1 + torchvision 0.29.1 (a CUDA 13.0 build: it also builds the CUDA extension where nvcc exists).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored" || true
# transformers is pinned for the reference tests: parity is checked against this exact release.
# --no-build-isolation: setup.py imports the installed torch to build the CUDA extension against it.
python -m pip install -q ninja setuptools wheel 2>&1 | grep -v "is ignored" || true
python -m pip install -q --no-build-isolation -e ".[test]" "transformers==5.23.*" 2>&1 | grep -v "is ignored" || true
python -c "import torch, torchvision, triton, sam3lt; print('sam3lt', sam3lt.__version__, '| torch', torch.__version__, '| triton', triton.__version__)"
