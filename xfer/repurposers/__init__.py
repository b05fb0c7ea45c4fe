"""Repurposers: turn a source model into a predictor for a target task.

The names below are imported on first use (PEP 562), each from its own module, so a user pays
only for the head they use: ``from xfer.repurposers import LrRepurposer`` loads scikit-learn's
logistic regression, not PyTorch, GPyTorch or the fine-tuning backends.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from xfer._lazy import lazy_attributes

#: Public name -> the module that defines it (imported on first use).
_EXPORTS = {
    "Repurposer": "xfer.repurposers.base",
    "MetaModelData": "xfer.repurposers.meta_model",
    "MetaModelRepurposer": "xfer.repurposers.meta_model",
    "LrRepurposer": "xfer.repurposers.lr",
    "SvmRepurposer": "xfer.repurposers.svm",
    "GpRepurposer": "xfer.repurposers.gp",
    "BnnRepurposer": "xfer.repurposers.bnn",
    "LaplaceRepurposer": "xfer.repurposers.laplace",
    "AutoRepurposer": "xfer.repurposers.auto",
    "SelectionReport": "xfer.repurposers.auto",
    "NeuralNetworkRepurposer": "xfer.repurposers.neural_network",
    "NeuralNetworkFineTuneRepurposer": "xfer.repurposers.fine_tune",
    "NeuralNetworkRandomFreezeRepurposer": "xfer.repurposers.fine_tune",
    "TargetNetwork": "xfer.repurposers.neural_network",
    "History": "xfer.fine_tuning.history",
    "Uncertainty": "xfer.repurposers._uncertainty",
    "UncertaintyMixin": "xfer.repurposers._uncertainty",
}

#: Serialization key of each built-in head -> its module (``xfer.load`` imports only that one).
BUILTIN_KEYS = {
    "xfer.LrRepurposer": "xfer.repurposers.lr",
    "xfer.SvmRepurposer": "xfer.repurposers.svm",
    "xfer.GpRepurposer": "xfer.repurposers.gp",
    "xfer.BnnRepurposer": "xfer.repurposers.bnn",
    "xfer.LaplaceRepurposer": "xfer.repurposers.laplace",
    "xfer.AutoRepurposer": "xfer.repurposers.auto",
    "xfer.NeuralNetworkFineTuneRepurposer": "xfer.repurposers.fine_tune",
    "xfer.NeuralNetworkRandomFreezeRepurposer": "xfer.repurposers.fine_tune",
}

__all__ = [
    "Repurposer",
    "MetaModelData",
    "MetaModelRepurposer",
    "LrRepurposer",
    "SvmRepurposer",
    "GpRepurposer",
    "BnnRepurposer",
    "LaplaceRepurposer",
    "AutoRepurposer",
    "SelectionReport",
    "NeuralNetworkRepurposer",
    "NeuralNetworkFineTuneRepurposer",
    "NeuralNetworkRandomFreezeRepurposer",
    "TargetNetwork",
    "History",
    "Uncertainty",
    "UncertaintyMixin",
]

if TYPE_CHECKING:  # what static tools see
    from xfer.fine_tuning.history import History
    from xfer.repurposers._uncertainty import Uncertainty, UncertaintyMixin
    from xfer.repurposers.auto import AutoRepurposer, SelectionReport
    from xfer.repurposers.base import Repurposer
    from xfer.repurposers.bnn import BnnRepurposer
    from xfer.repurposers.fine_tune import (
        NeuralNetworkFineTuneRepurposer,
        NeuralNetworkRandomFreezeRepurposer,
    )
    from xfer.repurposers.gp import GpRepurposer
    from xfer.repurposers.laplace import LaplaceRepurposer
    from xfer.repurposers.lr import LrRepurposer
    from xfer.repurposers.meta_model import MetaModelData, MetaModelRepurposer
    from xfer.repurposers.neural_network import NeuralNetworkRepurposer, TargetNetwork
    from xfer.repurposers.svm import SvmRepurposer


def register_builtin(key: str | None = None) -> None:
    """Import the built-in head saved under ``key`` (every built-in head when ``key`` is None or
    not a built-in one), so that it is in :mod:`xfer.serialization`'s registry.

    Parameters
    ----------
    key : str, optional
        A serialization key, e.g. ``"xfer.LrRepurposer"``.
    """
    modules = [BUILTIN_KEYS[key]] if key in BUILTIN_KEYS else sorted(set(BUILTIN_KEYS.values()))
    for module in modules:
        importlib.import_module(module)


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
