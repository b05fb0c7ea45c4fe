"""Tiny fine-tuners shared by the reliability tests (``tests/test_serialization.py``,
``tests/test_serialization_crash.py``): fitted once per session on blob features."""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import pytest

from xfer.testing import make_blob_features, make_tiny_source_model

#: The blob features (8 per class, 3 classes, 6 columns) the tiny fine-tuners are fitted on.
BLOBS = make_blob_features(8, 3, 6)


def torch_mlp(seed: int = 0) -> Any:
    """A freshly built torch MLP 6 -> 8 -> 3 (layers fc1, relu1, fc2); skips without torch."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        OrderedDict(fc1=torch.nn.Linear(6, 8), relu1=torch.nn.ReLU(), fc2=torch.nn.Linear(8, 3))
    )


def tiny_fine_tuner(backend: str, **options: Any) -> Any:
    """An unfitted fine-tuner of a tiny ``backend`` ("mxnet" or "torch") network, one epoch."""
    from xfer import NeuralNetworkFineTuneRepurposer

    source = make_tiny_source_model(6) if backend == "mxnet" else torch_mlp()
    options = {"num_epochs": 1, "batch_size": 8, "random_state": 0, **options}
    return NeuralNetworkFineTuneRepurposer(
        source, transfer_layer_name="relu1", target_class_count=None, **options
    )


@functools.cache
def fitted_tiny_fine_tuner(backend: str) -> Any:
    """:func:`tiny_fine_tuner` fitted on :data:`BLOBS` (once per session: never modify it)."""
    return tiny_fine_tuner(backend).fit(*BLOBS)


def load_source(backend: str) -> Any:
    """What ``xfer.load`` needs as ``source_model`` for a saved tiny fine-tuner."""
    return torch_mlp() if backend == "torch" else None

