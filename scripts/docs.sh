#!/usr/bin/env bash
# Build the documentation site into docs/_build/html, with warnings as errors.
#
#   bash scripts/docs.sh                 # execute the tutorials while building (a few minutes)
#   bash scripts/docs.sh --no-execute    # API pages and tutorials without outputs (fast)
#
# Extra arguments go to sphinx-build. Open docs/_build/html/index.html when it is done.
set -euo pipefail
cd "$(dirname "$0")/.."
execute=force
if [[ "${1:-}" == "--no-execute" ]]; then
    execute=off
    shift
fi
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${XFER_VENV:-.venv}/bin/activate"
python -c "import sphinx, myst_nb, pydata_sphinx_theme, numpydoc" 2>/dev/null || {
    echo "The docs need their extra dependencies: pip install -e '.[docs]'" >&2
    exit 1
}
export XFER_DOCS_EXECUTE="$execute"
exec python -m sphinx -W --keep-going -b html -d docs/_build/doctrees docs docs/_build/html "$@"
