"""The one place that imports MXNet.

MXNet 1.9.1 still refers to ``np.bool``, which NumPy removed in 1.24. The alias is applied here,
once, before the first ``import mxnet``; every other module does ``from xfer._mxnet import mx``.
"""

from __future__ import annotations

import os

import numpy as np

if "bool" not in vars(np):  # hasattr() would trigger NumPy's FutureWarning
    np.bool = np.bool_  # type: ignore[attr-defined]  # MXNet 1.9.1 needs the pre-1.24 alias

# Silence the per-bind "Subgraph backend MKLDNN is activated" log line (users can override).
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")

import mxnet as mx  # noqa: E402

__all__ = ["mx"]
