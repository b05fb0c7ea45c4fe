"""Xfer 1.1.0's module paths as other names of this package's modules.

Scripts written for Xfer import from ``xfer.lr_repurposer``, ``xfer.meta_model_repurposer``,
``xfer.model_handler.model_handler``... Each of those files calls :func:`alias`, which makes the
old path another name of the module that now holds the code: ``from xfer.lr_repurposer import
LrRepurposer`` works, and patching a name through the old path (Xfer's tests patch
``xfer.meta_model_repurposer.ModelHandler``) patches what the repurposers use.
"""

from __future__ import annotations

import importlib
import sys


def alias(old_path: str, new_path: str) -> None:
    """Make the module ``old_path`` (being imported) the module ``new_path``."""
    sys.modules[old_path] = importlib.import_module(new_path)
