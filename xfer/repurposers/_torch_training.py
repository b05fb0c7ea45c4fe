"""The training loop of the fine-tuning repurposers for PyTorch source networks.

The twin of :mod:`xfer.repurposers._mxnet_training`, sharing its vocabulary and its
backend-neutral pieces (:class:`~xfer.repurposers._mxnet_training.History`,
:class:`~xfer.repurposers._mxnet_training.Phase`,
:class:`~xfer.repurposers._mxnet_training.Settings`, the per-epoch learning-rate schedules, the
stateless shuffling order and seed derivation, the checkpoint manifest layout). What is torch's
own: the target network is a ``torch.nn.Module`` from
:meth:`TorchModelHandler.get_module <xfer.model_handler.TorchModelHandler.get_module>` (fixed
parameters ``requires_grad=False``, fixed BatchNorm layers in eval mode), MXNet optimiser names and
parameters map onto ``torch.optim`` (:func:`torch_optimizer`), per-parameter learning-rate
multipliers become parameter groups, and the network outputs logits (cross-entropy training,
softmax at prediction).

Reproducibility is stateless as in the MXNet loop: the shuffling order and torch's seed of each
epoch come from ``(seed, phase, epoch)``, schedules are functions of the epoch, and torch's global
random state is restored after the fit. A resumed run needs only the parameters, the optimiser's
state and the epoch reached.

Distributed training: when ``torch.distributed`` is initialised (``torchrun``), the network is
wrapped in ``DistributedDataParallel``. Parameters kept fixed have ``requires_grad=False`` and DDP
leaves them out of its gradient buckets, so frozen layers need neither
``find_unused_parameters=True`` nor ``static_graph``. Every global batch of ``batch_size`` examples
is split evenly over the ranks (``batch_size`` must be a multiple of the world size), so a run on
``W`` processes takes the same steps as one process would; only rank 0 writes checkpoints. See
``docs/distributed_torch.md``.

Checkpoint files (in ``checkpoint_dir``; no pickle): ``checkpoint.json`` (strict JSON, written
last: phase and epoch reached, history, early-stopping counters, the optimiser's non-tensor state,
file names and SHA-256, fingerprint) and ``params-P-E.npz``, ``optimizer-P-E.npz``,
``best-P-E.npz`` (the network's ``state_dict``, the optimiser's tensors and the best parameters
so far), read back with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xfer import serialization
from xfer.exceptions import InvalidArgumentError, ModelFileNotFoundError, SerializationError
from xfer.repurposers._mxnet_training import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_MANIFEST,
    History,
    Phase,
    Result,
    Settings,
    _derived_seed,
    _finite_or_none,
    epoch_order,
    scheduled_lr,
)

logger = logging.getLogger("xfer.repurposers.torch_training")

#: Version of the torch checkpoint layout (its manifest also says ``"backend": "torch"``).
CHECKPOINT_VERSION = 1

#: MXNet optimiser names accepted with a torch source, and the ``torch.optim`` class of each.
TORCH_OPTIMIZERS = {
    "sgd": "SGD",
    "nag": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
}

#: MXNet spellings of optimiser parameters and their torch names (torch names are accepted too).
_RENAMED = {"learning_rate": "lr", "wd": "weight_decay", "epsilon": "eps", "gamma1": "alpha"}


# --------------------------------------------------------------------------------------------
# Optimiser
# --------------------------------------------------------------------------------------------


@dataclass
class TorchOptimizer:
    """A ``torch.optim`` class with its keyword arguments (learning rate excluded)."""

    cls: Any
    kwargs: dict[str, Any]
    learning_rate: float
    clip_gradient: float | None = None


def torch_optimizer(name: str, params: dict[str, Any]) -> TorchOptimizer:
    """Map an MXNet optimiser name and its ``optimizer_params`` onto ``torch.optim``.

    ``learning_rate`` -> ``lr``, ``wd`` -> ``weight_decay`` (added to the gradient, as MXNet
    does), ``beta1``/``beta2`` -> ``betas``, ``epsilon`` -> ``eps``, ``gamma1`` -> ``alpha``
    (RMSprop), ``clip_gradient`` -> element-wise gradient clipping; ``'nag'`` is SGD with Nesterov
    momentum. Other keys must be arguments of the torch optimiser (``nesterov``, ``amsgrad``...).

    Raises
    ------
    InvalidArgumentError
        An unknown optimiser, or parameters it does not take or with invalid values.
    """
    import torch

    key = name.lower()
    if key not in TORCH_OPTIMIZERS:
        raise InvalidArgumentError(
            f"Unknown optimizer {name!r} for a PyTorch source: use one of "
            f"{sorted(TORCH_OPTIMIZERS)}."
        )
    cls = getattr(torch.optim, TORCH_OPTIMIZERS[key])
    params = dict(params)
    learning_rate = float(params.pop("learning_rate", params.pop("lr", 0.01)))
    clip = params.pop("clip_gradient", None)
    kwargs: dict[str, Any] = {}
    if "beta1" in params or "beta2" in params:
        default = (0.9, 0.999)
        kwargs["betas"] = (
            float(params.pop("beta1", default[0])),
            float(params.pop("beta2", default[1])),
        )
    for mxnet_name, value in params.items():
        kwargs[_RENAMED.get(mxnet_name, mxnet_name)] = value
    if key == "nag":
        kwargs.setdefault("momentum", 0.9)
        kwargs["nesterov"] = True
    if key == "rmsprop":
        kwargs.setdefault("alpha", 0.9)  # MXNet's gamma1
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params", "lr"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise InvalidArgumentError(
            f"optimizer_params {unknown} are not valid for optimizer {name!r} with a PyTorch "
            f"source (torch.optim.{cls.__name__} takes {sorted(accepted)}; MXNet spellings "
            f"{sorted(_RENAMED)}, beta1, beta2 and clip_gradient are translated)."
        )
    try:
        cls([torch.zeros(1, requires_grad=True)], lr=learning_rate, **kwargs)
        clip = None if clip is None else float(clip)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(
            f"optimizer_params {params!r} are not valid for optimizer {name!r}: {error}"
        ) from error
    if clip is not None and not (clip > 0 and math.isfinite(clip)):
        raise InvalidArgumentError(f"clip_gradient must be a positive number, got {clip!r}.")
    return TorchOptimizer(cls, kwargs, learning_rate, clip)


def _build_optimizer(model: Any, phase: Phase, spec: TorchOptimizer) -> tuple[Any, float]:
    """The phase's optimiser over its trainable parameters, one group per learning-rate multiplier."""
    groups: dict[float, list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault(float(phase.lr_mults.get(name, 1.0)), []).append(parameter)
    if not groups:
        raise InvalidArgumentError(
            f"Nothing to train in phase {phase.name!r}: every parameter is fixed."
        )
    base_lr = spec.learning_rate * phase.lr_factor
    param_groups = [
        {"params": params, "lr": base_lr * mult, "lr_mult": mult}
        for mult, params in sorted(groups.items())
    ]
    return spec.cls(param_groups, lr=base_lr, **spec.kwargs), base_lr


# --------------------------------------------------------------------------------------------
# Randomness and distribution
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def seeded(seed: int, device: Any = None) -> Iterator[None]:
    """Run a block with torch's generators seeded by ``seed``; the global state is restored after."""
    import torch

    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(seed))
        yield


def distributed_world() -> tuple[int, int] | None:
    """``(rank, world_size)`` when ``torch.distributed`` is initialised, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def shared_seed(seed: int) -> int:
    """Rank 0's ``seed`` on every rank under ``torch.distributed`` (``seed`` itself otherwise).

    A fit without ``random_state`` draws its seed at random; the ranks must agree on it (same
    validation split, same shuffling order, same initial head).
    """
    import torch

    if distributed_world() is None:
        return seed
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(seed)], dtype=torch.int64, device=device)
    dist.broadcast(value, src=0)
    return int(value.item())


# --------------------------------------------------------------------------------------------
# Epochs
# --------------------------------------------------------------------------------------------


def _run_epoch(
    model: Any,
    optimizer: Any,
    spec: TorchOptimizer,
    data: Any,
    labels: Any,
    order: np.ndarray,
    batch_size: int,
    num_real: int,
    device: Any,
    world: tuple[int, int] | None,
    progress: Any,
) -> tuple[float, float]:
    """Train one epoch; returns (mean loss, accuracy) over the real (non-wrapped) examples."""
    import torch
    import torch.nn.functional as F

    model.train()  # fixed BatchNorm layers stay in eval mode (get_module's frozen class)
    positions = torch.arange(len(order))
    order_tensor = torch.as_tensor(order)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(order), batch_size):
        index = order_tensor[start : start + batch_size]
        place = positions[start : start + batch_size]
        if world is not None:  # this rank's share of the global batch
            index, place = index[world[0] :: world[1]], place[world[0] :: world[1]]
        inputs = data[index].to(device, non_blocking=True)
        targets = labels[index].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        losses = F.cross_entropy(logits, targets, reduction="none")
        losses.mean().backward()
        if spec.clip_gradient is not None:
            torch.nn.utils.clip_grad_value_(
                [p for group in optimizer.param_groups for p in group["params"]],
                spec.clip_gradient,
            )
        optimizer.step()
        with torch.no_grad():
            real = (place < num_real).to(device)
            loss_sum += losses.detach().double()[real].sum()
            correct += (logits.detach().argmax(1) == targets)[real].sum()
        if progress is not None:
            progress.update(1)
    totals = torch.stack([loss_sum, correct.double()])
    if world is not None:
        import torch.distributed as dist

        dist.all_reduce(totals)
    loss, hits = totals.tolist()
    return loss / num_real, hits / num_real


def evaluate(
    model: Any, data: Any, labels: Any, batch_size: int, device: Any
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode on ``data``."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                inputs = data[start : start + batch_size].to(device)
                targets = labels[start : start + batch_size].to(device)
                logits = model(inputs).float()
                loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
                correct += int((logits.argmax(1) == targets).sum())
    finally:
        model.train(was_training)
    return loss_sum / len(data), correct / len(data)


def _state_copy(model: Any) -> dict[str, Any]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


@dataclass
class _Progress:
    """Where a run stands: enough to continue it exactly."""

    phase_index: int = 0
    epochs_done: int = 0  # in the current phase
    history: History = field(default_factory=History)
    best_metric: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    best_params: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    optimizer_layout: dict | None = None
    optimizer_arrays: dict[str, np.ndarray] | None = None


def _to_arrays(state: dict[str, Any]) -> dict[str, np.ndarray]:
    return {name: value.detach().cpu().numpy() for name, value in state.items()}


def _from_arrays(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {name: torch.from_numpy(np.array(value)) for name, value in arrays.items()}


def _optimizer_state(optimizer: Any) -> tuple[dict, dict[str, np.ndarray]]:
    """The optimiser's per-parameter state as (JSON layout, tensors); groups are rebuilt on resume."""
    import torch

    layout: dict[str, dict[str, Any]] = {}
    arrays: dict[str, np.ndarray] = {}
    for index, values in optimizer.state_dict()["state"].items():
        entry: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                arrays[f"{index}.{key}"] = value.detach().cpu().numpy()
                entry[key] = {"tensor": True}
            else:
                entry[key] = {"value": value}
        layout[str(index)] = entry
    return layout, arrays


def _restore_optimizer(optimizer: Any, layout: dict, arrays: dict[str, np.ndarray]) -> None:
    import torch

    state = {}
    for index, entry in layout.items():
        values = {}
        for key, spec in entry.items():
            values[key] = (
                torch.from_numpy(np.array(arrays[f"{index}.{key}"]))
                if spec.get("tensor")
                else spec.get("value")
            )
        state[int(index)] = values
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def write_checkpoint(
    directory: Path, progress: _Progress, model: Any, optimizer: Any, settings: Settings
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tag = f"{progress.phase_index}-{progress.epochs_done:04d}"
    layout, optimizer_arrays = _optimizer_state(optimizer)
    writes = {
        f"params-{tag}.npz": _to_arrays(model.state_dict()),
        f"optimizer-{tag}.npz": optimizer_arrays,
    }
    if progress.best_params is not None:
        writes[f"best-{tag}.npz"] = _to_arrays(progress.best_params)
    files: dict[str, str] = {}
    for name, arrays in writes.items():
        serialization.atomic_write_bytes(
            directory / name, serialization.arrays_to_npz_bytes(arrays)
        )
        files[name.split("-")[0]] = name
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "backend": "torch",
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
    keep = set(files.values())
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
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != CHECKPOINT_FORMAT
        or manifest.get("backend") != "torch"
    ):
        raise SerializationError(
            f"{manifest_path} is not an xfer training checkpoint of a PyTorch network."
        )
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
    return _Progress(
        phase_index=int(manifest["phase_index"]),
        epochs_done=int(manifest["epochs_done"]),
        history=History.from_dict(manifest["history"]),
        best_metric=manifest["best_metric"],
        best_epoch=manifest["best_epoch"],
        wait=int(manifest["wait"]),
        params=_from_arrays(arrays["params"]),
        best_params=_from_arrays(arrays["best"]) if "best" in arrays else None,
        optimizer_layout=manifest["optimizer"],
        optimizer_arrays=arrays.get("optimizer", {}),
    )


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
    """Train ``handler``'s network through ``phases``; its parameters are the start and the end.

    ``settings.contexts`` holds one ``torch.device``. The handler's model is updated in place at
    the end of each phase (with the best epoch's weights under early stopping).
    ``epoch_end(global_epoch)`` is called after each epoch's checkpoint (tests use it to simulate
    an interruption).
    """
    import torch

    device = settings.contexts[0]
    spec = torch_optimizer(settings.optimizer, settings.optimizer_params)
    world = distributed_world()
    batch_size = settings.batch_size
    if world is not None and batch_size % world[1]:
        raise InvalidArgumentError(
            f"batch_size={batch_size} cannot be split evenly over {world[1]} processes: use a "
            "multiple of the world size."
        )
    is_writer = world is None or world[0] == 0
    progress = _Progress()
    if settings.resume:
        if settings.checkpoint_dir is None:
            raise InvalidArgumentError(
                "resume=True needs checkpoint_dir: the directory of the checkpoint."
            )
        progress = read_checkpoint(settings.checkpoint_dir, settings.fingerprint)
        logger.info("Resuming from phase %d, epoch %d.", progress.phase_index, progress.epochs_done)
    patience = settings.early_stopping_patience
    data = torch.as_tensor(np.ascontiguousarray(train_data, dtype=np.float32))
    labels = torch.as_tensor(np.asarray(train_labels, dtype=np.int64))
    if device.type == "cuda":
        data, labels = data.pin_memory(), labels.pin_memory()
    val = None
    if validation is not None:
        val = (
            torch.as_tensor(np.ascontiguousarray(validation[0], dtype=np.float32)),
            torch.as_tensor(np.asarray(validation[1]).astype(np.int64)),
        )
    num_examples = len(train_data)
    batches_per_epoch = -(-num_examples // batch_size)
    total_epochs = sum(p.num_epochs for p in phases)
    bar = None
    if settings.verbose and is_writer:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total_epochs * batches_per_epoch,
            desc="Training",
            unit="batch",
            initial=len(progress.history) * batches_per_epoch,
        )
    global_epoch = len(progress.history)
    try:
        with seeded(_derived_seed(settings.seed, 3), device):
            for phase_index, phase in enumerate(phases):
                if phase_index < progress.phase_index:
                    continue
                resuming_here = progress.params is not None and phase_index == progress.phase_index
                if phase_index > progress.phase_index:
                    progress.phase_index = phase_index
                    progress.epochs_done, progress.wait = 0, 0
                    progress.best_metric, progress.best_epoch = None, None
                    progress.best_params = None
                model = handler.get_module(
                    fixed_layer_parameters=list(phase.fixed_parameters),
                    random_layer_parameters=list(phase.random_parameters)
                    if phase_index == 0
                    else None,
                    context=device,
                    seed=_derived_seed(settings.seed, 0),
                )
                if resuming_here:
                    model.load_state_dict(progress.params, strict=True)
                    progress.params = None
                    if progress.epochs_done >= phase.num_epochs:
                        # Interrupted at a phase boundary: finish the phase as the run would have.
                        if progress.best_params is not None and patience is not None:
                            model.load_state_dict(progress.best_params, strict=True)
                        _update_handler(handler, model)
                        continue
                optimizer, base_lr = _build_optimizer(model, phase, spec)
                if resuming_here:
                    _restore_optimizer(
                        optimizer, progress.optimizer_layout or {}, progress.optimizer_arrays or {}
                    )
                trained = model
                if world is not None:
                    trained = torch.nn.parallel.DistributedDataParallel(
                        model, device_ids=[device.index] if device.type == "cuda" else None
                    )
                stopped = False
                for epoch in range(progress.epochs_done, phase.num_epochs):
                    if bar is not None:
                        bar.set_description(
                            f"Epoch {global_epoch + 1}/{total_epochs} ({phase.name})"
                        )
                    lr = scheduled_lr(settings.lr_schedule, base_lr, epoch, phase.num_epochs)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * group["lr_mult"]
                    torch.manual_seed(_derived_seed(settings.seed, 2, phase_index, epoch))
                    order = epoch_order(settings.seed, phase_index, epoch, num_examples, batch_size)
                    started = time.perf_counter()
                    loss, accuracy = _run_epoch(
                        trained, optimizer, spec, data, labels, order, batch_size,
                        num_examples, device, world, bar,
                    )  # fmt: skip
                    seconds = time.perf_counter() - started
                    val_loss = val_accuracy = None
                    if val is not None:
                        val_loss, val_accuracy = evaluate(model, *val, batch_size, device)
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
                        shown = (
                            ("loss", loss),
                            ("acc", accuracy),
                            ("val_loss", val_loss),
                            ("val_acc", val_accuracy),
                        )
                        bar.set_postfix({k: round(v, 4) for k, v in shown if v is not None})
                    progress.epochs_done = epoch + 1
                    if patience is not None:
                        metric = (
                            val_loss
                            if val_loss is not None and math.isfinite(val_loss)
                            else math.inf
                        )
                        if progress.best_metric is None or metric < progress.best_metric:
                            progress.best_metric, progress.best_epoch = metric, global_epoch
                            progress.wait = 0
                            progress.best_params = _state_copy(model)
                        else:
                            progress.wait += 1
                        stopped = progress.wait >= patience
                        if stopped:
                            # Jump to the end of the phase so that a resumed run does not train on.
                            progress.epochs_done = phase.num_epochs
                    if settings.checkpoint_dir is not None:
                        if is_writer:
                            write_checkpoint(
                                settings.checkpoint_dir, progress, model, optimizer, settings
                            )
                        if world is not None:
                            import torch.distributed as dist

                            dist.barrier()
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
                    model.load_state_dict(progress.best_params, strict=True)
                    progress.history.best_epoch = progress.best_epoch
                _update_handler(handler, model)
    finally:
        if bar is not None:
            bar.close()
    return Result(dict(handler.arg_params), dict(handler.aux_params), progress.history)


def _update_handler(handler: Any, model: Any) -> None:
    """Copy the trained values into the handler's network (its own tensors, never the source's)."""
    import torch

    with torch.no_grad():
        handler.model.load_state_dict(model.state_dict(), strict=True)


__all__ = [
    "TORCH_OPTIMIZERS",
    "TorchOptimizer",
    "torch_optimizer",
    "seeded",
    "distributed_world",
    "shared_seed",
    "evaluate",
    "train",
]
