"""Real pretrained source models, loaded offline from installed packages.

- ``efficientnet_lite0(backend="mxnet"|"torch", image_size=224)``: ImageNet EfficientNet-Lite0,
  an MXNet symbolic graph with readable layer names or the PyTorch module.
- ``efficientnet_lite0_preprocess(images, image_size=224)``: images -> the float32
  N x 3 x S x S input both backends expect (grey images replicated to RGB).
- ``minilm(max_length=None)``: the all-MiniLM-L6-v2 sentence encoder, a PyTorch module that takes
  a list of strings.
- ``torch_to_mxnet(model, input_shape)``: your own PyTorch CNN -> an MXNet symbolic graph with
  its weights (through ``torch.fx``; see :mod:`xfer.zoo.convert`).

The model packages are optional: ``bash scripts/setup.sh`` installs them (see
the ``assets`` extra of the package and ``requirements/assets-nodeps.txt``). A missing one raises
:class:`xfer.exceptions.MissingDependencyError` with the pip command. Nothing downloads.
"""

from __future__ import annotations

from xfer.zoo.convert import torch_to_mxnet, torch_to_mxnet_symbol
from xfer.zoo.efficientnet import (
    efficientnet_lite0,
    efficientnet_lite0_params,
    efficientnet_lite0_symbol,
    same_padding,
)
from xfer.zoo.preprocess import efficientnet_lite0_preprocess, to_rgb

_LAZY = {"minilm": "xfer.zoo.text_encoder", "MiniLM": "xfer.zoo.text_encoder"}


def __getattr__(name: str):
    # minilm imports torch at module level: load it on first use, keep ``import xfer.zoo`` light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xfer.zoo' has no attribute {name!r}")


__all__ = [
    "MiniLM",
    "efficientnet_lite0",
    "efficientnet_lite0_params",
    "efficientnet_lite0_preprocess",
    "efficientnet_lite0_symbol",
    "minilm",
    "same_padding",
    "to_rgb",
    "torch_to_mxnet",
    "torch_to_mxnet_symbol",
]
