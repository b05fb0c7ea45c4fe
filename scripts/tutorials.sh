#!/usr/bin/env bash
# Re-run the tutorial notebooks and store them with their outputs (see scripts/tutorials.py).
#   bash scripts/tutorials.sh                  # every notebook (several minutes)
#   bash scripts/tutorials.sh 04_uncertainty   # one
#   bash scripts/tutorials.sh --check          # only compare the stored ones with a fresh run
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${XFER_VENV:-.venv}/bin/activate"
exec python scripts/tutorials.py "$@"
