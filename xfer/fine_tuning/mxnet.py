"""The MXNet training backend of the fine-tuners (``Module`` API).

:class:`MXNetTrainingBackend` builds the target network by editing the symbolic graph (cut with
:func:`layer_output_symbol`, new ``FullyConnected`` + ``SoftmaxOutput`` head), and its
:class:`MXNetTrainer` trains it for :func:`xfer.fine_tuning.loop.train`: each phase binds a
``Module`` whose fixed parameters are fixed and whose per-parameter learning-rate multipliers are
``__lr_mult__`` attributes of the graph (which every MXNet optimiser and kvstore reads), batches
are gathered once per epoch from the shuffled order, and several contexts train data-parallel
through MXNet's kvstore (``kvstore="dist_sync"`` across machines). The optimiser's states and
counters, and each device's own BatchNorm statistics, go into checkpoints as arrays (no pickle).
The saved target network is a plain MXNet checkpoint: ``P-symbol.json`` and ``P-0000.params``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from xfer._mxnet import MODULE_LOGGER, mx
from xfer.context import Device, to_mxnet
from xfer.data import data_descs
from xfer.distributed.world import World, mxnet_world
from xfer.exceptions import InvalidArgumentError, InvalidTypeError, ModelError, SerializationError
from xfer.fine_tuning.backend import Trainer, TrainingBackend, register_training_backend
from xfer.fine_tuning.history import finite_or_none
from xfer.fine_tuning.run import LR_SCHEDULES, Phase, Settings, derived_seed, object_state
from xfer.model_handler.consts import OUTPUT_LAYER_TYPES

logger = logging.getLogger("xfer.fine_tuning.mxnet")


def seed_everything(seed: int) -> None:
    mx.random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)


# --------------------------------------------------------------------------------------------
# The target graph
# --------------------------------------------------------------------------------------------


def layer_output_symbol(symbol: Any, layer_name: str) -> Any:
    """The output of ``layer_name`` in ``symbol`` (the graph cut at that layer)."""
    internals = symbol.get_internals()
    outputs = internals.list_outputs()
    name = f"{layer_name}_output"
    if name not in outputs:
        raise ModelError(f"Layer {layer_name!r} has no output to cut the graph at.")
    return internals[outputs.index(name)]


def free_output_name(handler: Any, preferred: str) -> str:
    """``preferred`` or, when the graph already uses it, ``preferred_target``/``_target2``..."""
    taken = set(handler.layer_names) | set(handler.symbol.list_arguments())
    candidate, number = preferred, 1
    while candidate in taken or f"{candidate}_label" in taken:
        candidate = f"{preferred}_target{'' if number == 1 else number}"
        number += 1
    return candidate


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
    handler: Any,
    phase: Phase,
    settings: Settings,
    sample_shape: tuple,
    label_name: str,
    first: bool,
) -> Any:
    """A bound module for ``phase`` (frozen parameters fixed, new ones initialised with the seed)."""
    from xfer.model_handler import MXNetModelHandler

    working = MXNetModelHandler(handler)
    working.update_sym(_with_lr_mults(handler.symbol, phase.lr_mults))
    seed_everything(derived_seed(settings.seed, 0))
    return working.get_module(
        _shape_iterator(handler, sample_shape, settings.batch_size, label_name),
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
    """Create the optimiser of a phase (on the phase's trainable parameters); returns the base lr.

    In a distributed job the optimiser runs in every worker on the gradients summed over the
    workers (:class:`WorkerExchange`), so its states stay in the workers' checkpoints.
    """
    params = dict(settings.optimizer_params)
    base_lr = float(params.pop("learning_rate", 0.01)) * phase.lr_factor
    if isinstance(settings.lr_schedule, mx.lr_scheduler.LRScheduler):
        params["lr_scheduler"] = settings.lr_schedule
    params["learning_rate"] = base_lr
    if settings.world.backend == "mxnet":
        kvstore = None
        params.setdefault("rescale_grad", 1.0 / (settings.batch_size * settings.world.size))
    else:
        kvstore = settings.kvstore if len(settings.contexts) > 1 else None
    module.init_optimizer(
        kvstore=kvstore, optimizer=settings.optimizer, optimizer_params=params, force_init=True
    )
    return base_lr


class WorkerExchange:
    """What the workers of an MXNet ``dist_sync`` job share, through the process's kvstore.

    At the start of a phase every worker takes rank 0's parameters and auxiliary states (the
    kvstore keeps the first worker's value of a key and gives it to all). After each backward
    pass, :meth:`sum_gradients` replaces every device's gradients with their sum over the devices
    and the workers (the servers add what the workers push), so the optimiser in each worker
    makes the same update; ``rescale_grad`` is one over the examples of all workers' batches.
    :meth:`average_states` averages the BatchNorm statistics at the end of an epoch, so every
    worker holds the same network. Keys are new for every phase of every fit.
    """

    _phases = 0

    def __init__(self, module: Any):
        from xfer.distributed.world import mxnet_kvstore

        WorkerExchange._phases += 1
        self.kvstore = mxnet_kvstore()
        self.group = module._exec_group
        prefix = f"xfer.fine_tuning.{WorkerExchange._phases}"
        self.gradient_keys = []
        for index, (name, block) in enumerate(zip(self.group.param_names, self.group.param_arrays)):
            key = f"{prefix}:arg:{name}"
            self.kvstore.init(key, block[0])
            self.kvstore.pull(key, out=block)
            if self.group.grad_arrays[index][0] is not None:
                self.gradient_keys.append((key, index))
        self.state_keys = []
        for name, block in zip(self.group.aux_names, self.group.aux_arrays):
            key = f"{prefix}:aux:{name}"
            self.kvstore.init(key, block[0])
            self.kvstore.pull(key, out=block)
            self.state_keys.append((key, block))

    def sum_gradients(self) -> None:
        for key, index in self.gradient_keys:
            gradients = self.group.grad_arrays[index]
            self.kvstore.push(key, gradients, priority=-index)
            self.kvstore.pull(key, out=gradients, priority=-index)

    def average_states(self, num_workers: int) -> None:
        for key, block in self.state_keys:
            self.kvstore.push(key, block)
            self.kvstore.pull(key, out=block)
            for array in block:
                array /= num_workers * len(block)


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
    exchange: WorkerExchange | None = None,
) -> tuple[float, float]:
    """Train one epoch; returns (mean loss, accuracy) over the real (non-wrapped) examples."""
    # One gather per epoch, then cheap views per batch (as NDArrayIter does after its shuffle).
    epoch_data = mx.nd.array(data[order], dtype=data.dtype)
    epoch_labels = labels[order]
    epoch_labels_nd = mx.nd.array(epoch_labels)
    # Each batch's outputs are copied into one array on the device (an asynchronous copy), read
    # once at the end of the epoch: no wait for the engine per batch, where Module.fit's metric
    # waits twice (predictions and labels to NumPy). A progress bar waits for each batch, so that
    # it shows the batches done rather than the batches queued.
    outputs = None
    for start in range(0, len(order), batch_size):
        stop = start + batch_size
        batch = mx.io.DataBatch(data=[epoch_data[start:stop]], label=[epoch_labels_nd[start:stop]])
        module.forward_backward(batch)
        if exchange is not None:
            exchange.sum_gradients()
        module.update()
        output = module.get_outputs()[0]
        if outputs is None:
            outputs = mx.nd.empty((len(order), *output.shape[1:]), ctx=output.context)
        output.copyto(outputs[start:stop])
        if progress is not None:
            output.wait_to_read()
            progress.update(1)
    probabilities = outputs.asnumpy()[:num_real].astype(np.float64)
    target = epoch_labels[:num_real].astype(np.int64)
    picked = probabilities[np.arange(num_real), target]
    loss = float(-np.log(np.maximum(picked, 1e-12)).sum())
    correct = int((probabilities.argmax(axis=1) == target).sum())
    return loss / num_real, correct / num_real


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
# Optimiser states and parameters as arrays (checkpoints)
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
        "lr_scheduler": object_state(optimizer.lr_scheduler)
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


def _update_handler(handler: Any, module: Any) -> None:
    args, auxs = module.get_params()
    handler.arg_params.update({k: v.copy() for k, v in args.items()})
    handler.aux_params.update({k: v.copy() for k, v in auxs.items()})


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------


class MXNetTrainer(Trainer):
    """One fit: a bound ``Module`` per phase over ``settings.contexts``."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.label_name = self.network.label_name
        self.labels = self.labels.astype(np.float32)
        self.uses_scheduler = isinstance(self.settings.lr_schedule, mx.lr_scheduler.LRScheduler)
        self.module: Any = None
        self.exchange: WorkerExchange | None = None

    def start_phase(self, phase: Phase, first: bool, params: dict[str, np.ndarray] | None) -> None:
        self.phase = phase
        self.module = build_module(
            self.handler, phase, self.settings, self.data.shape[1:], self.label_name, first
        )
        if params is not None:
            self.module.set_params(*_arrays_to_params(params), allow_missing=False, force_init=True)
            _restore_per_device_aux(self.module, params)
        if self.settings.world.backend == "mxnet":
            self.exchange = WorkerExchange(self.module)

    def start_optimizer(self) -> float:
        return init_optimizer(self.module, self.phase, self.settings)

    def restore_optimizer(self, layout: dict, arrays: dict[str, np.ndarray]) -> None:
        restore_optimizer_state(self.module, layout, arrays)

    def set_learning_rate(self, learning_rate: float) -> float:
        optimizer = self.module._optimizer
        if self.uses_scheduler:  # the mx.lr_scheduler object sets the rate per update
            return float(optimizer.lr_scheduler(optimizer.num_update))
        optimizer.set_learning_rate(learning_rate)
        return learning_rate

    def seed(self, seed: int) -> None:
        seed_everything(seed)

    def run_epoch(self, order: np.ndarray, progress: Any) -> tuple[float, float]:
        result = _run_epoch(
            self.module,
            self.data,
            self.labels,
            order,
            self.settings.batch_size,
            len(self.data),
            progress,
            self.exchange,
        )
        if self.exchange is not None:
            self.exchange.average_states(self.settings.world.size)
        return result

    def evaluate(self) -> tuple[float, float]:
        return evaluate(self.module, *self.validation, self.settings.batch_size)

    def copy_params(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return _params_copy(self.module)

    def load_params(self, params: Any) -> None:
        self.module.set_params(*params, force_init=True)

    def params_to_arrays(self, params: Any) -> dict[str, np.ndarray]:
        return _params_to_arrays(*params)

    def arrays_to_params(self, arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
        return _arrays_to_params(arrays)

    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        arrays = _params_to_arrays(*self.module.get_params())
        arrays.update(_per_device_aux(self.module))
        return arrays

    def optimizer_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return optimizer_state(self.module)

    def end_phase(self) -> None:
        _update_handler(self.handler, self.module)


@register_training_backend
class MXNetTrainingBackend(TrainingBackend):
    """Fine-tunes :class:`~xfer.model_handler.MXNetModelHandler` networks."""

    key = "mxnet"
    file_key = None  # MXNet files carry no backend key (the format of xfer 0.1)
    display_name = "an MXNet network"
    network_file_endings = ("-symbol.json", "-0000.params")  # Xfer 1.1.0's P-symbol.json, ...
    trainer_class = MXNetTrainer
    output_layer_types = OUTPUT_LAYER_TYPES

    def check_optimizer(self, name: str, params: dict[str, Any]) -> None:
        registry = mx.optimizer.Optimizer.opt_registry
        if name.lower() not in registry:
            raise InvalidArgumentError(f"Unknown optimizer {name!r}: MXNet has {sorted(registry)}.")
        try:
            mx.optimizer.create(name, **params)
        except (TypeError, ValueError) as error:
            raise InvalidArgumentError(
                f"optimizer_params {params!r} are not valid for optimizer {name!r}: {error}"
            ) from error

    def check_lr_schedule(self, schedule: Any) -> None:
        if not isinstance(schedule, mx.lr_scheduler.LRScheduler):
            raise InvalidArgumentError(
                f"lr_schedule must be None, one of {LR_SCHEDULES} or an "
                f"mx.lr_scheduler.LRScheduler, got {schedule!r}."
            )

    def contexts(self, devices: list[Device]) -> list:
        return to_mxnet(devices)

    def world(self, kvstore: str) -> World:
        """The workers of the job with ``kvstore="dist_sync"`` (started by
        :mod:`xfer.distributed.launch`); a world of one otherwise.

        Raises
        ------
        InvalidArgumentError
            Another distributed kvstore (only ``dist_sync`` keeps the workers in step), or a
            process that was not started as a worker.
        """
        if "dist" not in kvstore:
            return World()
        if kvstore != "dist_sync":
            raise InvalidArgumentError(
                f"kvstore={kvstore!r} is not supported for fine-tuning: use 'dist_sync' (every "
                "worker waits for the others' gradients, so all hold the same network)."
            )
        return mxnet_world(kvstore)

    # ------------------------------------------------------------------ the target network
    def editable_copy(self, source: Any, sample_shape: tuple | None) -> Any:
        from xfer.model_handler import MXNetModelHandler

        return MXNetModelHandler(source)

    def cut(self, handler: Any, layer_name: str) -> None:
        handler.update_sym(layer_output_symbol(handler.symbol, layer_name))

    def add_head(self, handler: Any, fc_name: str, output_name: str, num_classes: int) -> list[str]:
        fc_name = free_output_name(handler, fc_name)
        output_name = free_output_name(handler, output_name)
        handler.add_layer_top(
            [
                mx.sym.FullyConnected(num_hidden=int(num_classes), name=fc_name),
                mx.sym.SoftmaxOutput(name=output_name),
            ]
        )
        return [fc_name, output_name]

    def parameter_names(self, handler: Any) -> list[str]:
        symbol = handler.symbol
        return [
            p
            for p in symbol.list_arguments() + symbol.list_auxiliary_states()
            if p != handler.data_name and not p.endswith("_label")
        ]

    def xfer_target_module(self, repurposer: Any, train_iterator: Any) -> Any:
        provided = data_descs(train_iterator.provide_label)  # DataDesc or (name, shape)
        label_name = provided[0].name if provided else "softmax_label"
        network = repurposer._target_network(label_name, repurposer._class_count_for_hook())
        return network.handler.get_module(
            train_iterator,
            fixed_layer_parameters=network.fixed_parameters,
            random_layer_parameters=network.random_parameters,
            context=to_mxnet(repurposer._current_devices()),
        )

    def network_from_xfer_module(
        self, repurposer: Any, data: np.ndarray, codes: np.ndarray, label_name: str
    ) -> Any:
        from xfer.model_handler import MXNetModelHandler
        from xfer.repurposers.neural_network import TargetNetwork

        batch_size = repurposer.batch_size
        iterator = mx.io.NDArrayIter(
            data[:batch_size],
            codes[:batch_size].astype(np.float32),
            min(batch_size, len(data)),
            label_name=label_name,
        )
        module = repurposer._create_target_module(iterator)
        args, auxs = module.get_params()
        handler = MXNetModelHandler(
            (module.symbol, args, auxs),
            context_function=repurposer.context_function,
            num_devices=repurposer.num_devices,
        )
        output = handler.layer_names[-1]
        if f"{output}_label" != label_name:
            raise ModelError(
                f"The module from _create_target_module ends in {output!r}, whose label is not "
                f"{label_name!r}: name the output layer after the iterator's label."
            )
        return TargetNetwork(
            handler, output, fixed_parameters=sorted(module._fixed_param_names or [])
        )

    def assigned_network(self, model: Any, handler: Any) -> tuple[str, int, tuple | None]:
        """An ``mx.mod.Module`` with parameters, ending in a softmax: its classes are read from
        its output shape (bound module) or from the ``FullyConnected``/``Convolution`` layer under
        the softmax."""
        if not isinstance(model, mx.mod.Module):
            raise InvalidTypeError(
                "target_model must be a trained `mxnet.mod.Module` object (e.g. "
                f"mx.mod.Module.load(prefix, epoch)), or None; got {type(model).__module__}."
                f"{type(model).__qualname__}."
            )
        if not model.params_initialized:
            raise InvalidArgumentError(
                "target_model params aren't initialized: assign a module with parameters "
                "(trained, or loaded with mx.mod.Module.load)."
            )
        output = handler.layer_names[-1]
        nodes = json.loads(handler.symbol.tojson())["nodes"]
        by_name = {node["name"]: node for node in nodes}
        if by_name[output]["op"] not in ("SoftmaxOutput", "softmax", "SoftmaxActivation"):
            raise InvalidArgumentError(
                f"The assigned module ends in {output!r} ({by_name[output]['op']}), not in a "
                "softmax layer giving class probabilities (SoftmaxOutput)."
            )
        if model.binded:
            (data_shape,) = [d.shape for d in model.data_shapes if d.name == handler.data_name]
            sample_shape = tuple(int(d) for d in data_shape[1:])
            _, (output_shape,), _ = layer_output_symbol(handler.symbol, output).infer_shape(
                **{handler.data_name: (1, *sample_shape)}
            )
            return output, int(np.prod(output_shape[1:])), sample_shape
        node = by_name[output]
        while node["op"] not in ("FullyConnected", "Convolution", "null"):
            node = nodes[node["inputs"][0][0]]
        width = node.get("attrs", {}).get("num_hidden" if node["op"] == "FullyConnected" else "num_filter")
        if width is None:
            raise InvalidArgumentError(
                f"Cannot tell how many classes the assigned module's {output!r} gives: bind it "
                "first (module.bind(data_shapes=...)) so that its output shape is known."
            )
        return output, int(width), None

    def target_model(self, handler: Any, output_layer: str, devices: list[Device]) -> Any:
        module = mx.mod.Module(
            handler.symbol,
            data_names=[handler.data_name],
            label_names=[f"{output_layer}_label"],
            context=to_mxnet(devices),
            logger=MODULE_LOGGER,
        )
        module._arg_params = dict(handler.arg_params)  # what mx.mod.Module.load does
        module._aux_params = dict(handler.aux_params)
        module.params_initialized = True
        return module

    def save_network(self, handler: Any, prefix: Path) -> list[str]:
        handler.save_checkpoint(str(prefix), 0)
        return [f"{prefix.name}-symbol.json", f"{prefix.name}-0000.params"]

    def load_network(
        self, repurposer: Any, prefix: Path, config: dict[str, Any]
    ) -> tuple[Any, list[str] | None]:
        from xfer.model_handler import MXNetModelHandler

        handler = MXNetModelHandler.load_checkpoint(
            str(prefix),
            0,
            context_function=repurposer.context_function,
            num_devices=repurposer.num_devices,
            data_name=config.get("data_name", "data"),
        )
        return handler, None


__all__ = [
    "MXNetTrainingBackend",
    "MXNetTrainer",
    "build_module",
    "evaluate",
    "layer_output_symbol",
    "free_output_name",
]
