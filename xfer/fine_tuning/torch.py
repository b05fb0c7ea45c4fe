"""The training loop of the fine-tuning repurposers for PyTorch source networks.

The twin of :mod:`xfer.fine_tuning.mxnet`; both take their backend-neutral pieces
from :mod:`xfer.fine_tuning` (:class:`~xfer.fine_tuning.history.History`,
:class:`~xfer.fine_tuning.run.Phase`, :class:`~xfer.fine_tuning.run.Settings`, the per-epoch learning-rate schedules, the
stateless shuffling order and seed derivation, the bookkeeping of each epoch, the checkpoint
files). What is torch's own: the target network is a ``torch.nn.Module`` from
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
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from xfer.exceptions import InvalidArgumentError
from xfer.fine_tuning import checkpoint, loop
from xfer.fine_tuning.run import (
    Phase,
    Progress,
    Result,
    Settings,
    derived_seed,
    epoch_order,
    scheduled_lr,
)

logger = logging.getLogger("xfer.fine_tuning.torch")

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
    directory: Path, progress: Progress, model: Any, optimizer: Any, settings: Settings
) -> None:
    layout, optimizer_arrays = _optimizer_state(optimizer)
    arrays = {"params": _to_arrays(model.state_dict()), "optimizer": optimizer_arrays}
    if progress.best_params is not None:
        arrays["best"] = _to_arrays(progress.best_params)
    checkpoint.write_checkpoint(
        directory, progress, settings, arrays, layout, CHECKPOINT_VERSION, backend="torch"
    )


def read_checkpoint(directory: Path, fingerprint: str) -> Progress:
    return checkpoint.read_checkpoint(
        directory, fingerprint, CHECKPOINT_VERSION, _from_arrays, backend="torch"
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
    progress = loop.initial_progress(settings, read_checkpoint, logger)
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
        bar = loop.progress_bar(total_epochs, batches_per_epoch, len(progress.history))
    global_epoch = len(progress.history)
    try:
        with seeded(derived_seed(settings.seed, 3), device):
            for phase_index, phase, resuming_here in loop.phases_to_run(phases, progress):
                model = handler.get_module(
                    fixed_layer_parameters=list(phase.fixed_parameters),
                    random_layer_parameters=list(phase.random_parameters)
                    if phase_index == 0
                    else None,
                    context=device,
                    seed=derived_seed(settings.seed, 0),
                )
                if resuming_here:
                    model.load_state_dict(_from_arrays(progress.params), strict=True)
                    progress.params = None
                    if progress.epochs_done >= phase.num_epochs:
                        # Interrupted at a phase boundary: finish the phase as the run would have.
                        loop.restore_best(progress, patience, partial(model.load_state_dict, strict=True))
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
                for epoch in range(progress.epochs_done, phase.num_epochs):
                    if bar is not None:
                        bar.set_description(
                            f"Epoch {global_epoch + 1}/{total_epochs} ({phase.name})"
                        )
                    lr = scheduled_lr(settings.lr_schedule, base_lr, epoch, phase.num_epochs)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * group["lr_mult"]
                    torch.manual_seed(derived_seed(settings.seed, 2, phase_index, epoch))
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
                    stopped = loop.record_epoch(
                        progress,
                        phase,
                        epoch,
                        global_epoch,
                        loss=loss,
                        accuracy=accuracy,
                        val_loss=val_loss,
                        val_accuracy=val_accuracy,
                        learning_rate=lr,
                        seconds=seconds,
                        patience=patience,
                        copy_params=partial(_state_copy, model),
                        bar=bar,
                        log=logger,
                    )
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
                        loop.stop_early(progress, global_epoch, logger)
                        break
                loop.restore_best(progress, patience, partial(model.load_state_dict, strict=True))
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
