"""The one place that imports MXNet.

MXNet 1.9.1 still refers to ``np.bool``, which NumPy removed in 1.24. The alias is applied here,
once, before the first ``import mxnet``; every other module does ``from xfer._mxnet import mx``.
"""

from __future__ import annotations

import numpy as np

if not hasattr(np, "bool"):
    np.bool = np.bool_  # type: ignore[attr-defined]  # MXNet 1.9.1 needs the pre-1.24 alias

import mxnet as mx  # noqa: E402

__all__ = ["mx"]
