"""What the two fine-tuning loops share: the MXNet one (:mod:`~xfer.repurposers._mxnet_training`)
and the PyTorch one (:mod:`~xfer.repurposers._torch_training`).

Backend-neutral pieces only: the vocabulary of a run (:class:`History`, :class:`Phase`,
:class:`Settings`, :class:`Result`), the stateless randomness (seed derivation, shuffling order)
and per-epoch learning-rate schedules, where a run stands (:class:`Progress`) and the bookkeeping
at the end of each epoch (history, log line, progress bar, early stopping), and the checkpoint
files: ``checkpoint.json`` (strict JSON, written last: the commit point) with the names and
SHA-256 of ``params-P-E.npz``, ``optimizer-P-E.npz`` and ``best-P-E.npz``. Each loop keeps its
backend's own work: forward/backward/optimiser step, getting and setting parameters, and the
optimiser's state to and from arrays.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xfer import serialization
from xfer.exceptions import InvalidArgumentError, ModelFileNotFoundError, SerializationError

CHECKPOINT_FORMAT = "xfer-training-checkpoint"
CHECKPOINT_MANIFEST = "checkpoint.json"

#: The array files of a checkpoint, each ``KIND-P-E.npz`` (phase P, epochs done E).
CHECKPOINT_KINDS = ("params", "optimizer", "best")

#: Names accepted for ``lr_schedule`` (the MXNet loop also takes an ``mx.lr_scheduler.LRScheduler``).
LR_SCHEDULES = ("constant", "step", "cosine")

#: How a checkpoint's ``"backend"`` key reads in messages (MXNet checkpoints have no such key).
_BACKEND_NAMES = {"torch": "a PyTorch network"}


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------


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
        """A JSON-safe dict (NaN and infinity become None)."""
        raw = asdict(self)
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"):
            raw[key] = [_finite_or_none(v) for v in raw[key]]
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> History:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def append(self, **values: Any) -> None:
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


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _as_float(values: list) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


# --------------------------------------------------------------------------------------------
# Specification of a run
# --------------------------------------------------------------------------------------------


@dataclass
class Phase:
    """One stage of training: which parameters are trainable and at which rate.

    Attributes
    ----------
    name : str
        ``"head"`` or ``"full"`` (shown in the history).
    num_epochs : int
    fixed_parameters : list of str
        Parameters kept bit-identical (BatchNorm layers whose parameters are all fixed use their
        stored statistics and never update them).
    random_parameters : list of str
        Parameters re-initialised before the first phase (ignored in later phases).
    lr_factor : float
        Multiplies the base learning rate in this phase.
    lr_mults : dict of str to float
        Per-parameter learning-rate multipliers (written as ``__lr_mult__`` on the graph, which
        MXNet's optimisers read, on every kvstore including distributed ones).
    """

    name: str
    num_epochs: int
    fixed_parameters: list[str]
    random_parameters: list[str] = field(default_factory=list)
    lr_factor: float = 1.0
    lr_mults: dict[str, float] = field(default_factory=dict)


@dataclass
class Settings:
    """How to train (validated by the repurposer)."""

    batch_size: int
    optimizer: str
    optimizer_params: dict[str, Any]
    contexts: list
    seed: int
    lr_schedule: Any = None
    early_stopping_patience: int | None = None
    kvstore: str = "device"
    checkpoint_dir: Path | None = None
    resume: bool = False
    fingerprint: str = ""
    verbose: bool = False
    label_name: str = "softmax_label"


@dataclass
class Result:
    arg_params: dict[str, Any]
    aux_params: dict[str, Any]
    history: History


# --------------------------------------------------------------------------------------------
# Randomness and learning-rate schedules (stateless)
# --------------------------------------------------------------------------------------------


def _derived_seed(seed: int, *parts: int) -> int:
    return int(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *parts]).generate_state(1)[0] & 0x7FFFFFFF
    )


def epoch_order(
    seed: int, phase: int, epoch: int, num_examples: int, batch_size: int
) -> np.ndarray:
    """Shuffled example indices of one epoch, padded to whole batches by wrapping around."""
    order = np.random.default_rng(_derived_seed(seed, 1, phase, epoch)).permutation(num_examples)
    remainder = (-num_examples) % batch_size
    if remainder:
        order = np.concatenate([order, order[:remainder]])
    return order


def scheduled_lr(schedule: Any, base_lr: float, epoch: int, num_epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based) of a phase of ``num_epochs``."""
    if schedule is None or schedule == "constant":
        return base_lr
    if schedule == "step":  # x0.1 at half and at three quarters of the phase
        drops = (
            sum(epoch >= math.ceil(num_epochs * f) for f in (0.5, 0.75)) if num_epochs > 1 else 0
        )
        return base_lr * 0.1**drops
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(num_epochs, 1)))
    raise InvalidArgumentError(f"Unknown lr_schedule {schedule!r}: use one of {LR_SCHEDULES}.")


# --------------------------------------------------------------------------------------------
# Where a run stands, and the bookkeeping of each epoch
# --------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a run stands: enough to continue it exactly.

    ``best_params`` is the loop's own copy of the best parameters so far (in its backend's
    objects); ``params`` holds the parameter arrays of the checkpoint resumed from, until the loop
    has loaded them.
    """

    phase_index: int = 0
    epochs_done: int = 0  # in the current phase
    history: History = field(default_factory=History)
    best_metric: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    best_params: Any = None
    params: dict[str, np.ndarray] | None = None
    optimizer_layout: dict | None = None
    optimizer_arrays: dict[str, np.ndarray] | None = None

    def start_phase(self, phase_index: int) -> None:
        """Move on to a later phase: its epoch count and early-stopping state start afresh."""
        self.phase_index = phase_index
        self.epochs_done, self.wait = 0, 0
        self.best_metric, self.best_epoch, self.best_params = None, None, None


def initial_progress(
    settings: Settings, read: Callable[[Path, str], Progress], log: logging.Logger
) -> Progress:
    """A fresh run's progress, or with ``settings.resume`` the checkpoint's (``read`` reads it)."""
    if not settings.resume:
        return Progress()
    if settings.checkpoint_dir is None:
        raise InvalidArgumentError(
            "resume=True needs checkpoint_dir: the directory of the checkpoint."
        )
    progress = read(settings.checkpoint_dir, settings.fingerprint)
    log.info("Resuming from phase %d, epoch %d.", progress.phase_index, progress.epochs_done)
    return progress


def phases_to_run(phases: list[Phase], progress: Progress) -> Iterator[tuple[int, Phase, bool]]:
    """``(phase_index, phase, resuming_here)`` for each phase not finished yet.

    ``resuming_here`` is true for the phase whose checkpointed parameters (``progress.params``)
    the loop must load; a later phase starts afresh (:meth:`Progress.start_phase`).
    """
    for phase_index, phase in enumerate(phases):
        if phase_index < progress.phase_index:
            continue
        resuming_here = progress.params is not None and phase_index == progress.phase_index
        if phase_index > progress.phase_index:
            progress.start_phase(phase_index)
        yield phase_index, phase, resuming_here


def progress_bar(total_epochs: int, batches_per_epoch: int, epochs_done: int) -> Any:
    """A tqdm bar counting the batches of the whole run."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total_epochs * batches_per_epoch,
        desc="Training",
        unit="batch",
        initial=epochs_done * batches_per_epoch,
    )


def record_epoch(
    progress: Progress,
    phase: Phase,
    epoch: int,
    global_epoch: int,
    *,
    loss: float,
    accuracy: float,
    val_loss: float | None,
    val_accuracy: float | None,
    learning_rate: float,
    seconds: float,
    patience: int | None,
    copy_params: Callable[[], Any],
    bar: Any,
    log: logging.Logger,
) -> bool:
    """Book an epoch that has run: history, log line, progress bar, epochs done, early stopping.

    ``epoch`` is 0-based in ``phase``; ``global_epoch`` counts from 1 over all phases.
    ``copy_params()`` copies the current parameters when they are the best so far. Returns whether
    early stopping ends the phase.
    """
    progress.history.append(
        epoch=global_epoch,
        phase=phase.name,
        loss=loss,
        accuracy=accuracy,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        learning_rate=learning_rate,
        seconds=seconds,
    )
    log.info(
        "Epoch %d (%s): loss %.4f, accuracy %.4f%s",
        global_epoch,
        phase.name,
        loss,
        accuracy,
        "" if val_loss is None else f", val_loss {val_loss:.4f}, val_accuracy {val_accuracy:.4f}",
    )
    if bar is not None:
        shown = (
            ("loss", loss),
            ("acc", accuracy),
            ("val_loss", val_loss),
            ("val_acc", val_accuracy),
        )
        bar.set_postfix({k: round(v, 4) for k, v in shown if v is not None})
    progress.epochs_done = epoch + 1
    if patience is None:
        return False
    metric = val_loss if val_loss is not None and math.isfinite(val_loss) else math.inf
    if progress.best_metric is None or metric < progress.best_metric:
        progress.best_metric, progress.best_epoch, progress.wait = metric, global_epoch, 0
        progress.best_params = copy_params()
    else:
        progress.wait += 1
    if progress.wait < patience:
        return False
    # Jump to the end of the phase so that a resumed run does not train on.
    progress.epochs_done = phase.num_epochs
    return True


def restore_best(progress: Progress, patience: int | None, load: Callable[[Any], None]) -> None:
    """End of a phase under early stopping: ``load`` the best epoch's parameters, record which."""
    if patience is not None and progress.best_params is not None:
        load(progress.best_params)
        progress.history.best_epoch = progress.best_epoch


def stop_early(progress: Progress, global_epoch: int, log: logging.Logger) -> None:
    """Note in the history that early stopping ended the phase (after its checkpoint)."""
    log.info("Early stopping after epoch %d; best epoch %d.", global_epoch, progress.best_epoch)
    progress.history.stopped_early = True


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def write_checkpoint(
    directory: Path,
    progress: Progress,
    settings: Settings,
    arrays: dict[str, dict[str, np.ndarray]],
    optimizer_layout: dict,
    version: int,
    backend: str | None = None,
) -> None:
    """Write ``arrays`` (kind -> arrays, kinds from :data:`CHECKPOINT_KINDS`), then the manifest.

    ``optimizer_layout`` is the JSON-safe part of the optimiser's state; ``backend`` (None for
    MXNet) is recorded under the manifest's ``"backend"`` key.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tag = f"{progress.phase_index}-{progress.epochs_done:04d}"
    files: dict[str, str] = {}
    for kind, kind_arrays in arrays.items():
        name = f"{kind}-{tag}.npz"
        serialization.atomic_write_bytes(
            directory / name, serialization.arrays_to_npz_bytes(kind_arrays)
        )
        files[kind] = name
    manifest: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "format_version": version}
    if backend is not None:
        manifest["backend"] = backend
    manifest.update(
        {
            "fingerprint": settings.fingerprint,
            "seed": settings.seed,
            "phase_index": progress.phase_index,
            "epochs_done": progress.epochs_done,
            "history": progress.history.to_dict(),
            "best_metric": _finite_or_none(progress.best_metric),
            "best_epoch": progress.best_epoch,
            "wait": progress.wait,
            "optimizer": optimizer_layout,
            "files": {
                kind: {"name": name, "sha256": serialization.sha256_of(directory / name)}
                for kind, name in files.items()
            },
        }
    )
    # The manifest is the commit point: until it is replaced, the previous checkpoint stands.
    serialization.atomic_write_json(directory / CHECKPOINT_MANIFEST, manifest)
    keep = set(files.values())
    for path in directory.glob("*.npz"):
        if path.name not in keep and path.name.split("-")[0] in CHECKPOINT_KINDS:
            path.unlink(missing_ok=True)


def read_checkpoint(
    directory: Path,
    fingerprint: str,
    version: int,
    best_from_arrays: Callable[[dict[str, np.ndarray]], Any],
    backend: str | None = None,
) -> Progress:
    """Where the checkpoint of ``directory`` stands, after checking its format, ``version``,
    ``backend`` (None: MXNet, not checked), ``fingerprint`` and checksums.

    ``best_from_arrays`` turns the best parameters' arrays into the loop's own objects; the
    parameters themselves stay arrays (``Progress.params``).
    """
    manifest_path = directory / CHECKPOINT_MANIFEST
    if not manifest_path.is_file():
        raise ModelFileNotFoundError(
            f"No checkpoint to resume from in {directory} ({CHECKPOINT_MANIFEST} is missing). "
            "Fit once with checkpoint_dir set, or call fit without resume=True."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise SerializationError(
            f"{manifest_path} is not valid JSON ({error}): the checkpoint is corrupt."
        ) from error
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != CHECKPOINT_FORMAT
        or (backend is not None and manifest.get("backend") != backend)
    ):
        of_backend = "" if backend is None else f" of {_BACKEND_NAMES[backend]}"
        raise SerializationError(f"{manifest_path} is not an xfer training checkpoint{of_backend}.")
    if manifest.get("format_version") != version:
        raise SerializationError(
            f"{manifest_path} has checkpoint format version {manifest.get('format_version')!r}; "
            f"this xfer reads version {version}."
        )
    if manifest.get("fingerprint") != fingerprint:
        raise InvalidArgumentError(
            f"The checkpoint in {directory} was written by a fit with other data or settings; "
            "resume with the same data and parameters, or use another checkpoint_dir."
        )
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for kind, entry in manifest["files"].items():
        path = directory / os.path.basename(entry["name"])
        if not path.is_file():
            raise ModelFileNotFoundError(f"The checkpoint file {path} is missing.")
        if serialization.sha256_of(path) != entry["sha256"]:
            raise SerializationError(f"The checkpoint file {path} is corrupt (checksum differs).")
        arrays[kind] = serialization.read_npz(path)
    return Progress(
        phase_index=int(manifest["phase_index"]),
        epochs_done=int(manifest["epochs_done"]),
        history=History.from_dict(manifest["history"]),
        best_metric=manifest["best_metric"],
        best_epoch=manifest["best_epoch"],
        wait=int(manifest["wait"]),
        params=arrays["params"],
        best_params=best_from_arrays(arrays["best"]) if "best" in arrays else None,
        optimizer_layout=manifest["optimizer"],
        optimizer_arrays=arrays.get("optimizer", {}),
    )


def checkpoint_seed(directory: Path) -> int | None:
    """The seed recorded in the checkpoint of ``directory`` (None when there is none)."""
    try:
        manifest = json.loads((directory / CHECKPOINT_MANIFEST).read_text(encoding="utf-8"))
        return int(manifest["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_checkpoint(directory: Path) -> None:
    """Remove the checkpoint files of a finished fit (the model itself is saved with ``save``)."""
    (directory / CHECKPOINT_MANIFEST).unlink(missing_ok=True)
    for path in directory.glob("*.npz"):
        if path.name.split("-")[0] in CHECKPOINT_KINDS:
            path.unlink(missing_ok=True)
