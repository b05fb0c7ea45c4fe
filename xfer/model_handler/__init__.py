"""Inspect, edit and read features from pretrained networks (MXNet symbolic graphs and PyTorch modules).

``ModelHandler(model)`` picks the backend from the model's type. Every backend implements
:class:`ModelHandlerProtocol`; :func:`register_backend` adds one. The backends load on first
need: a PyTorch model never imports MXNet, and an MXNet model never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xfer._lazy import lazy_attributes
from xfer.model_handler import consts, exceptions
from xfer.model_handler.base import ModelHandler, ModelHandlerProtocol, register_backend

#: Backend names -> the module that defines them (imported on first use).
_EXPORTS = {"MXNetModelHandler": "xfer.model_handler.mxnet", "TorchModelHandler": "xfer.model_handler.torch"}
_SUBMODULES = ("mxnet", "torch", "model_handler")

if TYPE_CHECKING:
    from xfer.model_handler.mxnet import MXNetModelHandler
    from xfer.model_handler.torch import TorchModelHandler

__all__ = [
    "ModelHandler",
    "ModelHandlerProtocol",
    "register_backend",
    "MXNetModelHandler",
    "TorchModelHandler",
    "consts",
    "exceptions",
]


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, _SUBMODULES)
