"""Argument and saved-state checks shared by the GP and BNN cores (clear errors from :mod:`xfer.exceptions`).

The integer and number checkers are the package's one set (:mod:`xfer._arguments`), re-exported
here as ``check_int`` and ``check_positive_float``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xfer._arguments import check_int as check_int  # re-exported for the GP and BNN cores
from xfer._arguments import check_positive as check_positive_float
from xfer.exceptions import InvalidArgumentError, InvalidTypeError, SerializationError


def core_from_state(cls: type, config: Any, label: str, version: int) -> Any:
    """A core built from a saved state's options, with ``n_classes_`` and ``n_features_`` set.

    Checks that ``config`` was written by ``cls.get_state`` (its ``class`` key) in a format
    version this library reads; ``label`` names the model in messages (``"GP"``, ``"BNN"``).
    """
    if not isinstance(config, dict) or config.get("class") != cls.__name__:
        raise SerializationError(f"Not a {cls.__name__} state (config 'class' key).")
    if int(config["format_version"]) > version:
        raise SerializationError(
            f"{label} state format {config['format_version']} is newer than this library "
            f"supports ({version}); upgrade xfer."
        )
    core = cls(**config["options"])
    core.n_classes_ = int(config["n_classes"])
    core.n_features_ = int(config["n_features"])
    return core


def check_features(features: Any, n_features: int | None = None) -> np.ndarray:
    if not isinstance(features, np.ndarray):
        raise InvalidTypeError(
            f"features must be a numpy array of shape (n_samples, n_features), got {type(features).__name__}."
        )
    if features.ndim != 2:
        raise InvalidArgumentError(
            f"features must be 2-D (n_samples, n_features), got shape {features.shape}."
        )
    if features.shape[0] == 0:
        raise InvalidArgumentError("features is empty: give at least one row.")
    if not np.issubdtype(features.dtype, np.number) or np.issubdtype(features.dtype, np.complexfloating):
        raise InvalidTypeError(f"features must be a real numeric array, got dtype {features.dtype}.")
    if n_features is not None and features.shape[1] != n_features:
        raise InvalidArgumentError(
            f"features has {features.shape[1]} columns but the model was fitted on {n_features}."
        )
    if not np.all(np.isfinite(features)):
        raise InvalidArgumentError("features contains NaN or infinite values.")
    return features


def check_device(device: Any) -> torch.device:
    if isinstance(device, str):
        raise InvalidTypeError(
            f"device must be a torch.device (resolve strings such as {device!r} with "
            "xfer.context.to_torch first)."
        )
    if not isinstance(device, torch.device):
        raise InvalidTypeError(f"device must be a torch.device, got {type(device).__name__}.")
    return device


__all__ = [
    "check_int",
    "check_positive_float",
    "check_features",
    "check_device",
    "core_from_state",
]
