#!/usr/bin/env bash
# Create .venv (if missing) and install sam3lt with its test extra. Idempotent; no network beyond PyPI.
# torch 2.14.1 + torchvision 0.29.1 are a CUDA 13.0 build: with nvcc present the CUDA extension is built too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate

pipi() {  # pip install, minus the local-index "is ignored" noise; fails when pip fails (pipefail)
  python -m pip install -q "$@" 2>&1 | { grep -v "is ignored" || true; }
}
pipi --upgrade pip
# build: makes the sdist and the wheel (tests/test_packaging.py, scripts/check_dist.py)
pipi "torch==2.14.1" "torchvision==0.29.1" ninja setuptools wheel build
# --no-build-isolation: setup.py imports the installed torch to build the CUDA extension against it.
# transformers is pinned for the reference tests: parity is checked against this exact release.
pipi --no-build-isolation -e ".[test]" "transformers==5.23.*"
python -c "import torch, torchvision, triton, transformers, sam3lt, sam3lt._ext as ext; print('sam3lt', sam3lt.__version__, '| torch', torch.__version__, '| triton', triton.__version__, '| transformers', transformers.__version__, '| CUDA extension:', ext.status())"
