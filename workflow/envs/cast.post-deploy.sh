#!/usr/bin/env bash
# Snakemake runs this script inside the new conda environment, from the
# repository root. It installs the cast package in editable mode, so the rules
# run the checked-out code.
set -euo pipefail
python -m pip install --quiet -e .
