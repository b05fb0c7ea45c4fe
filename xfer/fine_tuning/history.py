"""What happened in each epoch of a fine-tuning run: :class:`History` (``history_`` of a fit)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class History:
    """What happened in each epoch of a fit.

    Every list has one entry per epoch run. ``val_loss``/``val_accuracy`` are None where there was
    no validation data. Losses are mean cross-entropies; accuracies are fractions.

    Attributes
    ----------
    epoch : list of int
        Epoch number, counted from 1 over all phases.
    phase : list of str
        ``"head"`` (new layers only, transferred layers frozen) or ``"full"``.
    loss, accuracy : list of float
        Training loss and accuracy, measured on the fly during the epoch (as Keras does).
    val_loss, val_accuracy : list of float or None
        On the validation data at the end of the epoch.
    learning_rate : list of float
        Base learning rate used in the epoch (before per-layer multipliers).
    seconds : list of float
        Wall-clock time of the epoch's training (validation excluded).
    best_epoch : int or None
        The epoch whose weights were kept by early stopping (None without early stopping).
    stopped_early : bool
        Whether early stopping ended a phase before its last epoch.
    """

    epoch: list[int] = field(default_factory=list)
    phase: list[str] = field(default_factory=list)
    loss: list[float | None] = field(default_factory=list)
    accuracy: list[float | None] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    val_accuracy: list[float | None] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def __len__(self) -> int:
        return len(self.epoch)

    def __getitem__(self, key: str) -> Any:
        """``history["val_loss"]``: the attributes also read like a dict (Keras habit)."""
        if key not in self.keys():
            raise KeyError(f"{key!r} is not in the history; its keys are {self.keys()}.")
        return getattr(self, key)

    @staticmethod
    def keys() -> list[str]:
        """The per-epoch fields, in order.

        Returns
        -------
        list of str
        """
        return [
            "epoch",
            "phase",
            "loss",
            "accuracy",
            "val_loss",
            "val_accuracy",
            "learning_rate",
            "seconds",
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN and infinity become None).

        Returns
        -------
        dict
        """
        raw = asdict(self)
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"):
            raw[key] = [finite_or_none(v) for v in raw[key]]
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> History:
        """The history :meth:`to_dict` wrote (unknown keys are ignored).

        Parameters
        ----------
        raw : dict

        Returns
        -------
        History

        Raises
        ------
        ValueError
            The per-epoch entries are not lists of one length, or ``best_epoch`` or
            ``stopped_early`` has the wrong type (a damaged file).
        """
        known = {f for f in cls.__dataclass_fields__}
        history = cls(**{k: v for k, v in raw.items() if k in known})
        columns = [getattr(history, key) for key in cls.keys()]
        if not all(isinstance(column, list) for column in columns) or len(
            {len(column) for column in columns}
        ) > 1:
            raise ValueError("the per-epoch entries of the history are not lists of one length")
        if not (history.best_epoch is None or type(history.best_epoch) is int) or not isinstance(
            history.stopped_early, bool
        ):
            raise ValueError("the history's best_epoch or stopped_early has the wrong type")
        return history

    def append(self, **values: Any) -> None:
        """Record one epoch.

        Parameters
        ----------
        **values
            One value for each of :meth:`keys`.
        """
        for key in self.keys():
            getattr(self, key).append(values[key])

    def plot(self, ax: Any = None) -> Any:
        """Plot loss and accuracy per epoch (training and validation) with matplotlib.

        Parameters
        ----------
        ax : matplotlib Axes or array of two Axes, optional
            One Axes draws the losses only; two draw losses and accuracies. Default: a new figure
            with two Axes side by side.

        Returns
        -------
        numpy.ndarray of Axes
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        axes = np.atleast_1d(ax)
        epochs = np.asarray(self.epoch)
        panels = [("loss", "val_loss", "loss"), ("accuracy", "val_accuracy", "accuracy")]
        for axis, (train_key, val_key, label) in zip(axes, panels):
            train = _as_float(getattr(self, train_key))
            axis.plot(epochs, train, marker="o", label=f"training {label}")
            val = _as_float(getattr(self, val_key))
            if np.isfinite(val).any():
                axis.plot(epochs, val, marker="o", label=f"validation {label}")
            changes = [
                e for e, prev, cur in zip(self.epoch[1:], self.phase, self.phase[1:]) if prev != cur
            ]
            for change in changes:
                axis.axvline(change - 0.5, color="grey", linestyle=":", label="unfreeze")
            if self.best_epoch is not None:
                axis.axvline(self.best_epoch, color="green", linestyle="--", label="best epoch")
            axis.set_xlabel("epoch")
            axis.set_ylabel(label)
            axis.legend()
        return axes


def finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _as_float(values: list) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


__all__ = ["History", "finite_or_none"]
