"""NumPy as MXNet 1.9.1 needs it, checked and patched at ``import xfer`` (before MXNet loads).

MXNet 1.9.1 is built against NumPy 1.x: with NumPy 2 its import fails deep inside MXNet, so xfer
refuses NumPy >= 2 here with the fix. It also still refers to ``np.bool``, which NumPy removed in
1.24: the alias is applied here, once, and nowhere else.
"""

from __future__ import annotations

import numpy as np

if int(np.__version__.split(".")[0]) >= 2:
    raise ImportError(
        f"xfer needs NumPy < 2 (MXNet 1.9.1 is built against NumPy 1.x), but NumPy "
        f"{np.__version__} is installed, probably upgraded by a later `pip install`. Fix: "
        "pip install 'numpy>=1.26,<2'; then install further packages with xfer's constraints "
        "file (pip install -c requirements/constraints.txt PACKAGE, or export "
        "PIP_CONSTRAINT=<that file>) so that pip keeps NumPy 1.x."
    )

if "bool" not in vars(np):  # hasattr() would trigger NumPy's FutureWarning
    np.bool = np.bool_  # type: ignore[attr-defined]  # MXNet 1.9.1 needs the pre-1.24 alias
