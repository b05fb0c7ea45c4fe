"""Inspect, edit and read features from pretrained networks (MXNet symbolic graphs and PyTorch modules).

``ModelHandler(model)`` picks the backend from the model's type.
"""

from xfer.model_handler import consts, exceptions
from xfer.model_handler.base import ModelHandler
from xfer.model_handler.mxnet import MXNetModelHandler
from xfer.model_handler.torch import TorchModelHandler  # imports torch lazily, on first use

__all__ = ["ModelHandler", "MXNetModelHandler", "TorchModelHandler", "consts", "exceptions"]
