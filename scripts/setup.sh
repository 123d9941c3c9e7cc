#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test tools.
# Safe to rerun: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# The PyTorch build to install. Override, for example, with
#   CAST_TORCH="torch torchvision --index-url <your wheel index>" bash scripts/setup.sh
CAST_TORCH=${CAST_TORCH:-"torch==2.14.1 torchvision==0.29.1"}

if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    echo "setup: installing $CAST_TORCH (a few minutes on first run)"
    # shellcheck disable=SC2086
    .venv/bin/python -m pip install --quiet $CAST_TORCH
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
