"""Inspect, edit and read features from pretrained networks (MXNet symbolic graphs and PyTorch modules).

``ModelHandler(model)`` picks the backend from the model's type. Every backend implements
:class:`ModelHandlerProtocol`; :func:`register_backend` adds one.
"""

from xfer.model_handler import consts, exceptions
from xfer.model_handler.base import ModelHandler, ModelHandlerProtocol, register_backend
from xfer.model_handler.mxnet import MXNetModelHandler
from xfer.model_handler.torch import TorchModelHandler  # imports torch lazily, on first use

__all__ = [
    "ModelHandler",
    "ModelHandlerProtocol",
    "register_backend",
    "MXNetModelHandler",
    "TorchModelHandler",
    "consts",
    "exceptions",
]
