"""Repurposers: turn a source model into a predictor for a target task."""

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
