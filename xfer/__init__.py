"""xfer: transfer learning for pretrained MXNet and PyTorch networks.

``import xfer`` is light: the public names below and the submodules (``xfer.zoo``,
``xfer.datasets``, ``xfer.files``, ``xfer.metrics``, ``xfer.model_handler``...) are imported on
first use, so MXNet, PyTorch and the model packages load only when something needs them.

Progress bars and logs
----------------------
Every repurposer, fine-tuner and ``get_layer_output`` takes ``verbose``: ``0``/``False`` (the
default) shows nothing, ``1``/``True`` (or any larger int) shows tqdm progress bars on the long
loops (feature extraction, training) on stderr. Log records go to loggers named ``xfer.<module>``
whatever ``verbose`` is (INFO: one line per fit or epoch; DEBUG: finer steps; MXNet's own Module
messages under ``xfer.mxnet``) and show when your application configures logging, e.g.
``logging.basicConfig(level=logging.INFO)``; xfer never configures the root logger. While a bar
is open, console log lines print above it instead of breaking it. In Jupyter, bars are widgets
when ``ipywidgets`` is installed and text otherwise.
"""

from __future__ import annotations

import importlib
import sys as _sys
from typing import TYPE_CHECKING

import xfer._numpy_compat  # noqa: F401  (refuses NumPy >= 2; the alias MXNet needs)
from xfer._lazy import lazy_attributes
from xfer._version import __version__

if "mxnet" in _sys.modules:  # imported before xfer: its import left OpenMP on 1 thread (xfer._mxnet)
    importlib.import_module("xfer._mxnet")

#: Public name -> the module that defines it (imported on first use).
_EXPORTS = {
    "Repurposer": "xfer.repurposers",
    "MetaModelRepurposer": "xfer.repurposers",
    "NeuralNetworkRepurposer": "xfer.repurposers",
    "NeuralNetworkFineTuneRepurposer": "xfer.repurposers",
    "NeuralNetworkRandomFreezeRepurposer": "xfer.repurposers",
    "LrRepurposer": "xfer.repurposers",
    "SvmRepurposer": "xfer.repurposers",
    "GpRepurposer": "xfer.repurposers",
    "BnnRepurposer": "xfer.repurposers",
    "LaplaceRepurposer": "xfer.repurposers",
    "AutoRepurposer": "xfer.repurposers",
    "load": "xfer.serialization",
    "set_num_threads": "xfer.threads",
    "get_num_threads": "xfer.threads",
}
#: Submodules reachable as attributes after ``import xfer`` (imported on first use).
_SUBMODULES = (
    "cli", "context", "data", "datasets", "distributed", "exceptions", "feature_store", "files",
    "fine_tuning", "meta_model_repurposer",
    "metrics", "model_handler", "repurposers", "serialization", "testing", "threads", "toy_models",
    "transferability", "utils", "zoo",
)  # fmt: skip

__all__ = [  # the names of _EXPORTS, spelled out for static tools
    "__version__",
    "Repurposer",
    "MetaModelRepurposer",
    "NeuralNetworkRepurposer",
    "NeuralNetworkFineTuneRepurposer",
    "NeuralNetworkRandomFreezeRepurposer",
    "LrRepurposer",
    "SvmRepurposer",
    "GpRepurposer",
    "BnnRepurposer",
    "LaplaceRepurposer",
    "AutoRepurposer",
    "load",
    "set_num_threads",
    "get_num_threads",
]

if TYPE_CHECKING:  # what static tools see
    from xfer.repurposers import (
        AutoRepurposer,
        BnnRepurposer,
        GpRepurposer,
        LaplaceRepurposer,
        LrRepurposer,
        MetaModelRepurposer,
        NeuralNetworkFineTuneRepurposer,
        NeuralNetworkRandomFreezeRepurposer,
        NeuralNetworkRepurposer,
        Repurposer,
        SvmRepurposer,
    )
    from xfer.serialization import load
    from xfer.threads import get_num_threads, set_num_threads


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, _SUBMODULES)
