"""Helpers shared by the fine-tuning tests (``tests/repurposers/test_fine_tune.py`` and the
backends' own tests in ``tests/fine_tuning/``)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from xfer.repurposers import NeuralNetworkFineTuneRepurposer

#: Options of a quick fit of the toy CNN.
FAST = dict(
    batch_size=16, optimizer="adam", optimizer_params={"learning_rate": 0.01}, random_state=0
)
#: The new layer of NeuralNetworkFineTuneRepurposer (Xfer's name).
HEAD = "fc_from_fine_tune_repurposer"


@functools.lru_cache(maxsize=1)
def trained_torch_digits_cnn() -> Any:
    """The torch toy CNN trained on digits 0-4 (once per session; tests never write into it)."""
    from xfer.toy_models import train_torch_digits_cnn

    return train_torch_digits_cnn(classes=(0, 1, 2, 3, 4), num_epochs=5, seed=0)


class Interrupted(Exception):
    """Raised from the epoch-end hook to simulate a crash."""


def fine_tune(source: Any, cls: type = NeuralNetworkFineTuneRepurposer, **kwargs: Any) -> Any:
    """A fine-tuner of ``source`` cut at relu2 for 5 classes, with :data:`FAST` options."""
    options = {**FAST, **kwargs}
    return cls(
        source,
        options.pop("transfer_layer_name", "relu2"),
        options.pop("target_class_count", 5),
        **options,
    )


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "asnumpy"):
        return value.asnumpy()
    return value.detach().cpu().numpy().copy()


def parameters(handler: Any) -> dict[str, np.ndarray]:
    """Every parameter and auxiliary state of a handler's network, as arrays."""
    return {k: _as_array(v) for k, v in {**handler.arg_params, **handler.aux_params}.items()}


def params_of(repurposer: Any) -> dict[str, np.ndarray]:
    return parameters(repurposer.target_handler_)


def assert_same_params(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
