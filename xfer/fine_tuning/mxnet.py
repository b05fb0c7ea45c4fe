"""The training loop of the fine-tuning repurposers (MXNet ``Module`` API).

One loop serves every :class:`~xfer.repurposers.neural_network.NeuralNetworkRepurposer`: epochs
over shuffled NumPy batches, a per-epoch :class:`History`, validation, early stopping that
restores the best epoch, per-epoch learning-rate schedules, per-parameter learning-rate
multipliers, several *phases* (freeze-then-unfreeze: each phase rebuilds the module and the
optimiser from the parameters that are trainable in it), checkpoints written atomically at each
epoch end, exact resumption from them, seeding, data parallelism over a list of contexts through
MXNet's kvstore, and a progress bar. What does not depend on MXNet (history, phases, settings,
schedules, shuffling, per-epoch bookkeeping, checkpoint files) is in
the backend-neutral modules of :mod:`xfer.fine_tuning`, shared with the PyTorch loop.

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
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from xfer._mxnet import mx
from xfer.exceptions import SerializationError
from xfer.fine_tuning import checkpoint, loop
from xfer.fine_tuning.history import finite_or_none
from xfer.fine_tuning.run import (
    Phase,
    Progress,
    Result,
    Settings,
    derived_seed,
    epoch_order,
    scheduled_lr,
)

logger = logging.getLogger("xfer.fine_tuning.mxnet")

CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Randomness and learning-rate schedules (the stateless parts are in run.py)
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    mx.random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)


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
    seed_everything(derived_seed(settings.seed, 0))
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
        "lr": finite_or_none(optimizer.lr) if optimizer.lr is not None else None,
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


def write_checkpoint(directory: Path, progress: Progress, module: Any, settings: Settings) -> None:
    args, auxs = module.get_params()
    params_arrays = _params_to_arrays(args, auxs)
    params_arrays.update(_per_device_aux(module))
    layout, optimizer_arrays = optimizer_state(module)
    arrays = {"params": params_arrays, "optimizer": optimizer_arrays}
    if progress.best_params is not None:
        arrays["best"] = _params_to_arrays(*progress.best_params)
    checkpoint.write_checkpoint(directory, progress, settings, arrays, layout, CHECKPOINT_VERSION)


def read_checkpoint(directory: Path, fingerprint: str) -> Progress:
    return checkpoint.read_checkpoint(directory, fingerprint, CHECKPOINT_VERSION, _arrays_to_params)


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
    progress = loop.initial_progress(settings, read_checkpoint, logger)
    monitor_validation = validation is not None
    patience = settings.early_stopping_patience
    train_labels = train_labels.astype(np.float32)
    num_examples = len(train_data)
    batch_size = settings.batch_size
    batches_per_epoch = -(-num_examples // batch_size)
    total_epochs = sum(p.num_epochs for p in phases)
    bar = None
    if settings.verbose:
        bar = loop.progress_bar(total_epochs, batches_per_epoch, len(progress.history))
    global_epoch = len(progress.history)
    module = None
    try:
        for phase_index, phase, resuming_here in loop.phases_to_run(phases, progress):
            if resuming_here and progress.epochs_done >= phase.num_epochs:
                # The interruption came at a phase boundary: finish the phase as the run would have.
                module = build_module(
                    handler, phase, settings, train_data.shape[1:], first=phase_index == 0
                )
                module.set_params(
                    *_arrays_to_params(progress.params), allow_missing=False, force_init=True
                )
                loop.restore_best(progress, patience, partial(_load_best, module))
                _update_handler(handler, module)
                progress.params = None
                continue
            module = build_module(
                handler, phase, settings, train_data.shape[1:], first=phase_index == 0
            )
            if resuming_here:
                module.set_params(
                    *_arrays_to_params(progress.params), allow_missing=False, force_init=True
                )
                if len(settings.contexts) == len(module._context):
                    _restore_per_device_aux(module, progress.params)
            base_lr = init_optimizer(module, phase, settings)
            if resuming_here:
                restore_optimizer_state(
                    module, progress.optimizer_layout, progress.optimizer_arrays
                )
                progress.params = None
            uses_scheduler = isinstance(settings.lr_schedule, mx.lr_scheduler.LRScheduler)
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
                seed_everything(derived_seed(settings.seed, 2, phase_index, epoch))
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
                    copy_params=partial(_params_copy, module),
                    bar=bar,
                    log=logger,
                )
                if settings.checkpoint_dir is not None:
                    write_checkpoint(settings.checkpoint_dir, progress, module, settings)
                if epoch_end is not None:
                    epoch_end(global_epoch)
                if stopped:
                    loop.stop_early(progress, global_epoch, logger)
                    break
            loop.restore_best(progress, patience, partial(_load_best, module))
            _update_handler(handler, module)
    finally:
        if bar is not None:
            bar.close()
    args, auxs = handler.arg_params, handler.aux_params
    return Result(dict(args), dict(auxs), progress.history)


def _load_best(module: Any, best_params: Any) -> None:
    module.set_params(*best_params, force_init=True)


def _update_handler(handler: Any, module: Any) -> None:
    args, auxs = module.get_params()
    handler.arg_params.update({k: v.copy() for k, v in args.items()})
    handler.aux_params.update({k: v.copy() for k, v in auxs.items()})


__all__ = ["train", "build_module", "evaluate"]
