#!/usr/bin/env bash
# Set up (if needed) and run the main demo: repurpose a pretrained network on real data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${XFER_VENV:-.venv}/bin/activate"
exec python examples/demo.py "$@"
