#!/usr/bin/env bash
# Set up .venv and run the whole pipeline on the bundled sample with Snakemake.
# Extra arguments go to snakemake, for example --configfile or --dry-run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec snakemake --profile workflow/profiles/default "$@"
