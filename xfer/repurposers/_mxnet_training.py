"""The training loop of the fine-tuning repurposers (MXNet ``Module`` API).

One loop serves every :class:`~xfer.repurposers.neural_network.NeuralNetworkRepurposer`: epochs
over shuffled NumPy batches, a per-epoch :class:`History`, validation, early stopping that
restores the best epoch, per-epoch learning-rate schedules, per-parameter learning-rate
multipliers, several *phases* (freeze-then-unfreeze: each phase rebuilds the module and the
optimiser from the parameters that are trainable in it), checkpoints written atomically at each
epoch end, exact resumption from them, seeding, data parallelism over a list of contexts through
MXNet's kvstore, and a progress bar.

Reproducibility is built on *stateless* randomness: the shuffling order and MXNet's random seed
of each epoch are derived from ``(seed, phase, epoch)``; learning-rate schedules are functions of
the epoch. A resumed run therefore needs only the parameters, the optimiser's states and counters
and the epoch number to continue exactly where the interrupted run stopped.

Checkpoint files (in ``checkpoint_dir``) contain no pickle:

``checkpoint.json``
    Strict JSON, written last: phase and epoch reached, history, early-stopping counters, the
    optimiser's update counters and learning-rate scheduler attributes, the names and SHA-256 of
    the array files below, and a fingerprint of the data and settings.
``params-P-E.npz``, ``optimizer-P-E.npz``, ``best-P-E.npz``
    Parameters, optimiser states (momentum, Adam moments...) and the best parameters so far, read
    back with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xfer import serialization
from xfer._mxnet import mx
from xfer.exceptions import InvalidArgumentError, ModelFileNotFoundError, SerializationError

logger = logging.getLogger("xfer.repurposers.training")

CHECKPOINT_FORMAT = "xfer-training-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_MANIFEST = "checkpoint.json"

#: Names accepted for ``lr_schedule`` besides an ``mx.lr_scheduler.LRScheduler``.
LR_SCHEDULES = ("constant", "step", "cosine")


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
# Randomness
# --------------------------------------------------------------------------------------------


def _derived_seed(seed: int, *parts: int) -> int:
    return int(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *parts]).generate_state(1)[0] & 0x7FFFFFFF
    )


def seed_everything(seed: int) -> None:
    mx.random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)


def epoch_order(
    seed: int, phase: int, epoch: int, num_examples: int, batch_size: int
) -> np.ndarray:
    """Shuffled example indices of one epoch, padded to whole batches by wrapping around."""
    order = np.random.default_rng(_derived_seed(seed, 1, phase, epoch)).permutation(num_examples)
    remainder = (-num_examples) % batch_size
    if remainder:
        order = np.concatenate([order, order[:remainder]])
    return order


# --------------------------------------------------------------------------------------------
# Learning-rate schedules (per epoch; stateless)
# --------------------------------------------------------------------------------------------


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


def _scheduler_state(scheduler: Any) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(scheduler).items()
        if isinstance(v, (bool, int, float, str))
        or (isinstance(v, list) and all(isinstance(i, (int, float)) for i in v))
    }


# --------------------------------------------------------------------------------------------
# Module construction
# --------------------------------------------------------------------------------------------


def _with_lr_mults(symbol: Any, lr_mults: dict[str, float]) -> Any:
    """``symbol`` with ``__lr_mult__`` attributes on the named parameter variables."""
    mults = {k: v for k, v in lr_mults.items() if v != 1.0}
    if not mults:
        return symbol
    graph = json.loads(symbol.tojson())
    for node in graph["nodes"]:
        if node["op"] == "null" and node["name"] in mults:
            node.setdefault("attrs", {})["__lr_mult__"] = repr(float(mults[node["name"]]))
    return mx.sym.load_json(json.dumps(graph))


def _shape_iterator(handler: Any, sample_shape: tuple, batch_size: int, label_name: str) -> Any:
    data = np.zeros((batch_size, *sample_shape), dtype=np.float32)
    return mx.io.NDArrayIter(
        data,
        np.zeros(batch_size, dtype=np.float32),
        batch_size,
        data_name=handler.data_name,
        label_name=label_name,
    )


def build_module(
    handler: Any, phase: Phase, settings: Settings, sample_shape: tuple, first: bool
) -> Any:
    """A bound module for ``phase`` (frozen parameters fixed, new ones initialised with the seed)."""
    from xfer.model_handler import MXNetModelHandler

    working = MXNetModelHandler(handler)
    working.update_sym(_with_lr_mults(handler.symbol, phase.lr_mults))
    seed_everything(_derived_seed(settings.seed, 0))
    return working.get_module(
        _shape_iterator(handler, sample_shape, settings.batch_size, settings.label_name),
        fixed_layer_parameters=list(phase.fixed_parameters),
        random_layer_parameters=list(phase.random_parameters) if first else None,
        context=settings.contexts,
    )


def _updater_of(module: Any) -> Any:
    if module._updater is not None:
        return module._updater
    kvstore = module._kvstore
    return getattr(kvstore, "_updater", None) if kvstore is not None else None


def init_optimizer(module: Any, phase: Phase, settings: Settings) -> float:
    """Create the optimiser of a phase (on the phase's trainable parameters); returns the base lr."""
    params = dict(settings.optimizer_params)
    base_lr = float(params.pop("learning_rate", 0.01)) * phase.lr_factor
    if isinstance(settings.lr_schedule, mx.lr_scheduler.LRScheduler):
        params["lr_scheduler"] = settings.lr_schedule
    params["learning_rate"] = base_lr
    kvstore = settings.kvstore if len(settings.contexts) > 1 or "dist" in settings.kvstore else None
    module.init_optimizer(
        kvstore=kvstore, optimizer=settings.optimizer, optimizer_params=params, force_init=True
    )
    return base_lr


# --------------------------------------------------------------------------------------------
# Epochs
# --------------------------------------------------------------------------------------------


def _run_epoch(
    module: Any,
    data: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    num_real: int,
    progress: Any,
) -> tuple[float, float]:
    """Train one epoch; returns (mean loss, accuracy) over the real (non-wrapped) examples."""
    # One gather per epoch, then cheap views per batch (as NDArrayIter does after its shuffle).
    epoch_data = mx.nd.array(data[order], dtype=data.dtype)
    epoch_labels = labels[order]
    epoch_labels_nd = mx.nd.array(epoch_labels)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        stop = start + batch_size
        batch = mx.io.DataBatch(data=[epoch_data[start:stop]], label=[epoch_labels_nd[start:stop]])
        module.forward_backward(batch)
        module.update()
        real = min(batch_size, num_real - start)
        # Reading the outputs syncs once per batch, as Module.fit's accuracy metric does.
        probabilities = module.get_outputs()[0].asnumpy()[:real]
        target = epoch_labels[start : start + real].astype(np.int64)
        picked = probabilities[np.arange(real), target]
        loss_sum += float(-np.log(np.maximum(picked, 1e-12)).sum())
        correct += int((probabilities.argmax(axis=1) == target).sum())
        if progress is not None:
            progress.update(1)
    return loss_sum / num_real, correct / num_real


def evaluate(
    module: Any, data: np.ndarray, labels: np.ndarray, batch_size: int
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``module`` (inference mode) on ``data``."""
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        chunk = data[start : start + batch_size]
        real = len(chunk)
        if real < batch_size:
            chunk = np.concatenate(
                [chunk, np.zeros((batch_size - real, *chunk.shape[1:]), chunk.dtype)]
            )
        module.forward(mx.io.DataBatch(data=[mx.nd.array(chunk)], label=None), is_train=False)
        probabilities = module.get_outputs()[0].asnumpy()[:real]
        target = labels[start : start + real].astype(np.int64)
        picked = probabilities[np.arange(real), target]
        loss_sum += float(-np.log(np.maximum(picked, 1e-12)).sum())
        correct += int((probabilities.argmax(axis=1) == target).sum())
    return loss_sum / len(data), correct / len(data)


def _params_copy(module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    args, auxs = module.get_params()
    return ({k: v.copy() for k, v in args.items()}, {k: v.copy() for k, v in auxs.items()})


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _flatten_state(state: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    if state is None:
        return None
    if isinstance(state, mx.nd.NDArray):
        name = f"s{len(arrays)}"
        arrays[name] = state.asnumpy()
        return {"array": name, "prefix": prefix}
    if isinstance(state, (list, tuple)):
        return {
            "sequence": [_flatten_state(s, f"{prefix}.{i}", arrays) for i, s in enumerate(state)],
            "tuple": isinstance(state, tuple),
        }
    raise SerializationError(
        f"Cannot checkpoint an optimiser state of type {type(state).__name__}: only NDArrays, "
        "None and tuples of them are supported."
    )


def _unflatten_state(layout: Any, arrays: dict[str, np.ndarray]) -> Any:
    if layout is None:
        return None
    if "array" in layout:
        return mx.nd.array(arrays[layout["array"]], dtype=arrays[layout["array"]].dtype)
    items = [_unflatten_state(item, arrays) for item in layout["sequence"]]
    return tuple(items) if layout["tuple"] else items


def optimizer_state(module: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The optimiser's states and counters as (JSON-safe layout, arrays): no pickle."""
    updater = _updater_of(module)
    optimizer = module._optimizer
    arrays: dict[str, np.ndarray] = {}
    states = []
    if updater is not None:
        for key in sorted(updater.states, key=lambda k: (isinstance(k, str), str(k))):
            states.append([key, _flatten_state(updater.states[key], str(key), arrays)])
    counts = [
        [int(device), key, int(count)]
        for device, per_key in optimizer._all_index_update_counts.items()
        for key, count in per_key.items()
    ]
    layout = {
        "states": states,
        "index_update_counts": counts,
        "num_update": int(optimizer.num_update),
        "lr": _finite_or_none(optimizer.lr) if optimizer.lr is not None else None,
        "lr_scheduler": _scheduler_state(optimizer.lr_scheduler)
        if optimizer.lr_scheduler is not None
        else None,
        "restorable": updater is not None,
    }
    return layout, arrays


def restore_optimizer_state(
    module: Any, layout: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    optimizer = module._optimizer
    updater = _updater_of(module)
    if updater is None or not layout.get("restorable", False):
        logger.warning(
            "Optimiser states are not restored (distributed kvstore keeps them on the servers); "
            "training resumes from the checkpointed parameters with fresh optimiser states."
        )
    else:
        for key, state_layout in layout["states"]:
            updater.states[key] = _unflatten_state(state_layout, arrays)
            updater.states_synced[key] = False  # moved to the weight's device on first use
    optimizer._all_index_update_counts = {}
    for device, key, count in layout["index_update_counts"]:
        optimizer._all_index_update_counts.setdefault(int(device), {})[key] = int(count)
    optimizer._all_index_update_counts.setdefault(0, {})
    optimizer._index_update_count = optimizer._all_index_update_counts[0]
    optimizer.num_update = int(layout["num_update"])
    if layout.get("lr_scheduler") and optimizer.lr_scheduler is not None:
        for name, value in layout["lr_scheduler"].items():
            setattr(optimizer.lr_scheduler, name, value)


def _params_to_arrays(args: dict, auxs: dict) -> dict[str, np.ndarray]:
    arrays = {f"arg:{k}": v.asnumpy() for k, v in args.items()}
    arrays.update({f"aux:{k}": v.asnumpy() for k, v in auxs.items()})
    return arrays


def _per_device_aux(module: Any) -> dict[str, np.ndarray]:
    """Each device's own auxiliary states (BatchNorm statistics): MXNet keeps one copy per device
    and ``get_params`` averages them, which a resumed run could only match to rounding."""
    group = module._exec_group
    if len(module._context) < 2:
        return {}
    return {
        f"device{i}:{name}": block[i].asnumpy()
        for name, block in zip(group.aux_names, group.aux_arrays)
        for i in range(len(block))
    }


def _restore_per_device_aux(module: Any, arrays: dict[str, np.ndarray]) -> None:
    group = module._exec_group
    for name, block in zip(group.aux_names, group.aux_arrays):
        for i, array in enumerate(block):
            saved = arrays.get(f"device{i}:{name}")
            if saved is not None:
                array[:] = saved


def _arrays_to_params(arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
    args = {k[4:]: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items() if k.startswith("arg:")}
    auxs = {k[4:]: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items() if k.startswith("aux:")}
    return args, auxs


@dataclass
class _Progress:
    """Where a run stands: enough to continue it exactly."""

    phase_index: int = 0
    epochs_done: int = 0  # in the current phase
    history: History = field(default_factory=History)
    best_metric: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    best_params: tuple[dict, dict] | None = None
    params: tuple[dict, dict] | None = None
    optimizer_layout: dict | None = None
    optimizer_arrays: dict | None = None
    device_aux: dict | None = None


def write_checkpoint(directory: Path, progress: _Progress, module: Any, settings: Settings) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tag = f"{progress.phase_index}-{progress.epochs_done:04d}"
    files: dict[str, str] = {}
    args, auxs = module.get_params()
    params_arrays = _params_to_arrays(args, auxs)
    params_arrays.update(_per_device_aux(module))
    writes = {f"params-{tag}.npz": params_arrays}
    layout, optimizer_arrays = optimizer_state(module)
    writes[f"optimizer-{tag}.npz"] = optimizer_arrays
    if progress.best_params is not None:
        writes[f"best-{tag}.npz"] = _params_to_arrays(*progress.best_params)
    for name, arrays in writes.items():
        serialization.atomic_write_bytes(
            directory / name, serialization.arrays_to_npz_bytes(arrays)
        )
        files[name.split("-")[0]] = name
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "fingerprint": settings.fingerprint,
        "seed": settings.seed,
        "phase_index": progress.phase_index,
        "epochs_done": progress.epochs_done,
        "history": progress.history.to_dict(),
        "best_metric": _finite_or_none(progress.best_metric),
        "best_epoch": progress.best_epoch,
        "wait": progress.wait,
        "optimizer": layout,
        "files": {
            kind: {"name": name, "sha256": serialization.sha256_of(directory / name)}
            for kind, name in files.items()
        },
    }
    # The manifest is the commit point: until it is replaced, the previous checkpoint stands.
    serialization.atomic_write_json(directory / CHECKPOINT_MANIFEST, manifest)
    keep = set(files.values()) | {CHECKPOINT_MANIFEST}
    for path in directory.glob("*.npz"):
        if path.name not in keep and path.name.split("-")[0] in ("params", "optimizer", "best"):
            path.unlink(missing_ok=True)


def read_checkpoint(directory: Path, fingerprint: str) -> _Progress:
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
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise SerializationError(f"{manifest_path} is not an xfer training checkpoint.")
    if manifest.get("format_version") != CHECKPOINT_VERSION:
        raise SerializationError(
            f"{manifest_path} has checkpoint format version {manifest.get('format_version')!r}; "
            f"this xfer reads version {CHECKPOINT_VERSION}."
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
    progress = _Progress(
        phase_index=int(manifest["phase_index"]),
        epochs_done=int(manifest["epochs_done"]),
        history=History.from_dict(manifest["history"]),
        best_metric=manifest["best_metric"],
        best_epoch=manifest["best_epoch"],
        wait=int(manifest["wait"]),
        params=_arrays_to_params(arrays["params"]),
        device_aux={k: v for k, v in arrays["params"].items() if k.startswith("device")},
        optimizer_layout=manifest["optimizer"],
        optimizer_arrays=arrays.get("optimizer", {}),
    )
    if "best" in arrays:
        progress.best_params = _arrays_to_params(arrays["best"])
    return progress


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
        if path.name.split("-")[0] in ("params", "optimizer", "best"):
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(
    handler: Any,
    phases: list[Phase],
    train_data: np.ndarray,
    train_labels: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
    settings: Settings,
    epoch_end: Callable[[int], None] | None = None,
) -> Result:
    """Train ``handler``'s graph through ``phases``; the handler's parameters are the start.

    ``epoch_end(global_epoch)`` is called after each epoch's checkpoint (tests use it to simulate
    an interruption).
    """
    progress = _Progress()
    if settings.resume:
        if settings.checkpoint_dir is None:
            raise InvalidArgumentError(
                "resume=True needs checkpoint_dir: the directory of the checkpoint."
            )
        progress = read_checkpoint(settings.checkpoint_dir, settings.fingerprint)
        logger.info("Resuming from phase %d, epoch %d.", progress.phase_index, progress.epochs_done)
    monitor_validation = validation is not None
    patience = settings.early_stopping_patience
    train_labels = train_labels.astype(np.float32)
    num_examples = len(train_data)
    batch_size = settings.batch_size
    batches_per_epoch = -(-num_examples // batch_size)
    total_epochs = sum(p.num_epochs for p in phases)
    bar = None
    if settings.verbose:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total_epochs * batches_per_epoch,
            desc="Training",
            unit="batch",
            initial=len(progress.history) * batches_per_epoch,
        )
    global_epoch = len(progress.history)
    module = None
    try:
        for phase_index, phase in enumerate(phases):
            if phase_index < progress.phase_index:
                continue
            resuming_here = progress.params is not None and phase_index == progress.phase_index
            if phase_index > progress.phase_index:
                progress.phase_index = phase_index
                progress.epochs_done, progress.wait = 0, 0
                progress.best_metric, progress.best_epoch, progress.best_params = None, None, None
            if resuming_here and progress.epochs_done >= phase.num_epochs:
                # The interruption came at a phase boundary: finish the phase as the run would have.
                module = build_module(
                    handler, phase, settings, train_data.shape[1:], first=phase_index == 0
                )
                module.set_params(*progress.params, allow_missing=False, force_init=True)
                if progress.best_params is not None and patience is not None:
                    module.set_params(*progress.best_params, force_init=True)
                _update_handler(handler, module)
                progress.params = None
                continue
            module = build_module(
                handler, phase, settings, train_data.shape[1:], first=phase_index == 0
            )
            if resuming_here:
                module.set_params(*progress.params, allow_missing=False, force_init=True)
                if len(settings.contexts) == len(module._context) and progress.device_aux:
                    _restore_per_device_aux(module, progress.device_aux)
            base_lr = init_optimizer(module, phase, settings)
            if resuming_here:
                restore_optimizer_state(
                    module, progress.optimizer_layout, progress.optimizer_arrays
                )
                progress.params = None
            uses_scheduler = isinstance(settings.lr_schedule, mx.lr_scheduler.LRScheduler)
            stopped = False
            for epoch in range(progress.epochs_done, phase.num_epochs):
                if bar is not None:
                    bar.set_description(f"Epoch {global_epoch + 1}/{total_epochs} ({phase.name})")
                lr = scheduled_lr(
                    None if uses_scheduler else settings.lr_schedule,
                    base_lr,
                    epoch,
                    phase.num_epochs,
                )
                if not uses_scheduler:
                    module._optimizer.set_learning_rate(lr)
                else:
                    lr = float(module._optimizer.lr_scheduler(module._optimizer.num_update))
                seed_everything(_derived_seed(settings.seed, 2, phase_index, epoch))
                order = epoch_order(settings.seed, phase_index, epoch, num_examples, batch_size)
                started = time.perf_counter()
                loss, accuracy = _run_epoch(
                    module, train_data, train_labels, order, batch_size, num_examples, bar
                )
                seconds = time.perf_counter() - started
                val_loss = val_accuracy = None
                if monitor_validation:
                    val_loss, val_accuracy = evaluate(
                        module, validation[0], validation[1], batch_size
                    )
                global_epoch += 1
                progress.history.append(
                    epoch=global_epoch,
                    phase=phase.name,
                    loss=loss,
                    accuracy=accuracy,
                    val_loss=val_loss,
                    val_accuracy=val_accuracy,
                    learning_rate=lr,
                    seconds=seconds,
                )
                logger.info(
                    "Epoch %d (%s): loss %.4f, accuracy %.4f%s",
                    global_epoch,
                    phase.name,
                    loss,
                    accuracy,
                    ""
                    if val_loss is None
                    else f", val_loss {val_loss:.4f}, val_accuracy {val_accuracy:.4f}",
                )
                if bar is not None:
                    bar.set_postfix(
                        {
                            k: round(v, 4)
                            for k, v in (
                                ("loss", loss),
                                ("acc", accuracy),
                                ("val_loss", val_loss),
                                ("val_acc", val_accuracy),
                            )
                            if v is not None
                        }
                    )
                progress.epochs_done = epoch + 1
                if patience is not None:
                    metric = (
                        val_loss if val_loss is not None and math.isfinite(val_loss) else math.inf
                    )
                    if progress.best_metric is None or metric < progress.best_metric:
                        progress.best_metric, progress.best_epoch, progress.wait = (
                            metric,
                            global_epoch,
                            0,
                        )
                        progress.best_params = _params_copy(module)
                    else:
                        progress.wait += 1
                    stopped = progress.wait >= patience
                    if stopped:
                        # Jump to the end of the phase so that a resumed run does not train on.
                        progress.epochs_done = phase.num_epochs
                if settings.checkpoint_dir is not None:
                    write_checkpoint(settings.checkpoint_dir, progress, module, settings)
                if epoch_end is not None:
                    epoch_end(global_epoch)
                if stopped:
                    logger.info(
                        "Early stopping after epoch %d; best epoch %d.",
                        global_epoch,
                        progress.best_epoch,
                    )
                    progress.history.stopped_early = True
                    break
            if patience is not None and progress.best_params is not None:
                module.set_params(*progress.best_params, force_init=True)
                progress.history.best_epoch = progress.best_epoch
            _update_handler(handler, module)
    finally:
        if bar is not None:
            bar.close()
    args, auxs = handler.arg_params, handler.aux_params
    return Result(dict(args), dict(auxs), progress.history)


def _update_handler(handler: Any, module: Any) -> None:
    args, auxs = module.get_params()
    handler.arg_params.update({k: v.copy() for k, v in args.items()})
    handler.aux_params.update({k: v.copy() for k, v in auxs.items()})


__all__ = [
    "History",
    "Phase",
    "Settings",
    "Result",
    "train",
    "scheduled_lr",
    "LR_SCHEDULES",
    "clear_checkpoint",
]
