"""Sphinx configuration of the xfer documentation site.

Build it with ``bash scripts/docs.sh`` (executes the tutorials, output in ``docs/_build/html``).
The test ``tests/test_docs.py`` builds it with warnings as errors and the notebooks *not*
executed (they are executed separately by the same test module).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xfer  # noqa: E402

project = "xfer"
author = "xfer contributors"
copyright = "2024-2026, xfer contributors"  # noqa: A001
release = xfer.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# --- notebooks: executed by tests/test_docs.py or scripts/docs.sh, never implicitly here
# XFER_DOCS_EXECUTE=force (scripts/docs.sh --execute) runs them during the build instead.
nb_execution_mode = os.environ.get("XFER_DOCS_EXECUTE", "off")
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_in_temp = True  # notebooks write files: never into the source tree
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# --- API pages
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc "Parameters" sections carry the types
autodoc_mock_imports: list[str] = []
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
numpydoc_xref_param_type = False
nitpicky = False

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
}
# No network in CI: intersphinx inventories are optional (a failed fetch is only a warning,
# which -W would turn into an error), so they are switched off unless asked for.
if not os.environ.get("XFER_DOCS_INTERSPHINX"):
    intersphinx_mapping = {}

# --- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"xfer {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 5,
}
html_static_path: list[str] = []
suppress_warnings = ["mystnb.unknown_mime_type"]


def _skip_generated_members(app, what, name, obj, skip, options):
    # scikit-learn adds set_{fit,predict,...}_request methods to every estimator; their
    # docstrings point into scikit-learn's own glossary, which this site does not have.
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


# Pages other engineers or tools add at the top of docs/ (benchmarks/run.py writes
# benchmarks.md, for instance) join the site's table of contents by themselves, after the
# tutorials and the API reference, so the build never depends on which of them exist.
def _extra_pages(srcdir: str | Path) -> list[str]:
    return sorted(path.stem for path in Path(srcdir).glob("*.md") if path.stem != "index")


def _add_extra_pages(app, docname, source):
    if docname != "index":
        return
    extra = _extra_pages(app.srcdir)
    if extra:
        source[0] = source[0].replace(
            "api/index\n```", "api/index\n" + "\n".join(extra) + "\n```", 1
        )


def _always_reread_index(app, env, added, changed, removed):
    return ["index"]  # an extra page may have appeared or gone since the last build


def setup(app):
    app.connect("autodoc-skip-member", _skip_generated_members)
    app.connect("env-get-outdated", _always_reread_index)
    app.connect("source-read", _add_extra_pages)
