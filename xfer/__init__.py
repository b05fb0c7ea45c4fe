"""xfer: transfer learning for pretrained MXNet and PyTorch networks."""

from xfer._version import __version__
from xfer.repurposers import (
    BnnRepurposer,
    GpRepurposer,
    LrRepurposer,
    MetaModelRepurposer,
    NeuralNetworkFineTuneRepurposer,
    NeuralNetworkRandomFreezeRepurposer,
    NeuralNetworkRepurposer,
    Repurposer,
    SvmRepurposer,
)
from xfer.serialization import load

__all__ = [
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
    "load",
]
