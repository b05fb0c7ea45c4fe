"""The PyTorch training backend of the fine-tuners.

:class:`TorchTrainingBackend` builds the target network from a ``torch.nn.Module`` source: the
layers above the cut are dropped (:func:`cut_network`), and the new head is ``Flatten`` +
``Linear`` giving logits (:func:`add_linear_head`; ``predict_proba`` is their softmax). Its
:class:`TorchTrainer` trains the network from :meth:`TorchModelHandler.get_module
<xfer.model_handler.TorchModelHandler.get_module>` (fixed parameters ``requires_grad=False``,
fixed BatchNorm layers in eval mode) for :func:`xfer.fine_tuning.loop.train`: MXNet optimiser
names and parameters map onto ``torch.optim`` (:func:`torch_optimizer`), per-parameter
learning-rate multipliers become parameter groups, training minimises the cross-entropy of the
logits, and torch's global random state is restored after the fit.

Distributed training: when ``torch.distributed`` is initialised (``torchrun``), the network is
wrapped in ``DistributedDataParallel``. Parameters kept fixed have ``requires_grad=False`` and DDP
leaves them out of its gradient buckets, so frozen layers need neither
``find_unused_parameters=True`` nor ``static_graph``. Each rank trains on its own part of the data
with batches of ``batch_size`` (DDP averages the gradients over the ranks, so a step sees
``world_size * batch_size`` examples); only rank 0 writes checkpoints. See
``docs/distributed.md``.

Saved files: ``P-target.safetensors`` and ``P-target.json`` (weights and layer list). The
architecture is code and is not saved: the manifest records the edits, and loading re-applies
them to the source model given to ``xfer.load(..., source_model=...)``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xfer.context import Device, to_torch
from xfer.distributed.world import World, torch_world
from xfer.exceptions import InvalidArgumentError, ModelError, SerializationError
from xfer.fine_tuning.backend import Trainer, TrainingBackend, register_training_backend
from xfer.fine_tuning.run import LR_SCHEDULES, Phase, derived_seed
from xfer.model_handler.consts import OUTPUT_LAYER_TYPES

logger = logging.getLogger("xfer.fine_tuning.torch")

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

#: Layer types that make a torch network's output probabilities (not a place to cut).
TORCH_OUTPUT_TYPES = frozenset({"Softmax", "LogSoftmax", "Softmin"})

#: Suffix of the files of a torch target network (``P-target.safetensors``, ``P-target.json``).
TARGET_SUFFIX = "-target"


# --------------------------------------------------------------------------------------------
# The target network
# --------------------------------------------------------------------------------------------


def _free_name(handler: Any, preferred: str) -> str:
    """``preferred`` or, when the network already uses it, ``preferred_1``, ``preferred_2``..."""
    model = handler.model
    taken = {name.split("#")[0] for name in handler.layer_names}
    taken |= {name for name, _ in model.named_modules()} | set(dir(model))
    candidate, number = preferred, 1
    while candidate in taken:
        candidate, number = f"{preferred}_{number}", number + 1
    return candidate


def add_linear_head(handler: Any, fc_name: str, num_classes: int) -> list[str]:
    """Add ``Flatten`` + ``Linear(num_classes)`` (logits) on top of a torch network.

    The input size of the new ``Linear`` is read by running one zero example of
    ``handler.input_shape`` (the training examples' shape) through the network.
    """
    from torch import nn

    if handler.input_shape is None:
        raise ModelError("The shape of the training examples is needed to size the new layer.")
    top = handler.layer_names[-1]
    sample = np.zeros((1, *handler.input_shape), dtype=np.float32)
    features, _ = handler.get_layer_output(sample, [top], context="cpu")
    flatten_name = _free_name(handler, f"{fc_name}_flatten")
    fc_name = _free_name(handler, fc_name)
    handler.add_layer_top(
        [
            (flatten_name, nn.Flatten()),
            (fc_name, nn.Linear(int(features[top].shape[1]), int(num_classes))),
        ]
    )
    return [flatten_name, fc_name]


def cut_network(handler: Any, layer_name: str) -> None:
    """Drop the layers of a torch network above ``layer_name`` (its output becomes the top)."""
    names = handler.layer_names
    above = [n for n in names[names.index(layer_name) + 1 :] if n != "output"]
    if above:
        handler.drop_layer_top(len(above))
    if handler.layer_names[-1] != layer_name:
        following = [n for n in names[names.index(layer_name) + 1 :] if n != "output"][:1]
        hint = f" (for example {following[0]!r})" if following else ""
        raise ModelError(
            f"Cutting the network at {layer_name!r} leaves {handler.layer_names[-1]!r} on top: the "
            "layers above it are not a single chain of modules (a function call such as flatten "
            "between layers cannot be cut off). Cut at a later module that every path to the "
            f"output goes through{hint}."
        )


def _target_prefix(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + TARGET_SUFFIX)


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
    loss, hits = torch.stack([loss_sum, correct.double()]).tolist()
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
# Optimiser state and parameters as arrays (checkpoints)
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


def _update_handler(handler: Any, model: Any) -> None:
    """Copy the trained values into the handler's network (its own tensors, never the source's)."""
    import torch

    with torch.no_grad():
        handler.model.load_state_dict(model.state_dict(), strict=True)


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------


class TorchTrainer(Trainer):
    """One fit on one ``torch.device`` (one process of a distributed run)."""

    def __init__(self, *args: Any):
        import torch

        super().__init__(*args)
        settings = self.settings
        self.device = settings.contexts[0]
        self.spec = torch_optimizer(settings.optimizer, settings.optimizer_params)
        self.data = torch.as_tensor(np.ascontiguousarray(self.data, dtype=np.float32))
        self.labels = torch.as_tensor(np.asarray(self.labels, dtype=np.int64))
        if self.device.type == "cuda":
            self.data, self.labels = self.data.pin_memory(), self.labels.pin_memory()
        if self.validation is not None:
            self.validation = (
                torch.as_tensor(np.ascontiguousarray(self.validation[0], dtype=np.float32)),
                torch.as_tensor(np.asarray(self.validation[1]).astype(np.int64)),
            )
        self.model: Any = None
        self.trained: Any = None  # the model, or its DistributedDataParallel wrapper
        self.optimizer: Any = None
        self._random_scope: Any = None

    def __enter__(self) -> TorchTrainer:
        # The whole fit runs on its own random stream; torch's global state is restored after.
        self._random_scope = seeded(derived_seed(self.settings.seed, 3), self.device)
        self._random_scope.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._random_scope.__exit__(*exc_info)

    def start_phase(self, phase: Phase, first: bool, params: dict[str, np.ndarray] | None) -> None:
        self.phase = phase
        self.model = self.handler.get_module(
            fixed_layer_parameters=list(phase.fixed_parameters),
            random_layer_parameters=list(phase.random_parameters) if first else None,
            context=self.device,
            seed=derived_seed(self.settings.seed, 0),
        )
        self.trained, self.optimizer = self.model, None
        if params is not None:
            self.model.load_state_dict(_from_arrays(params), strict=True)

    def start_optimizer(self) -> float:
        self.optimizer, base_lr = _build_optimizer(self.model, self.phase, self.spec)
        return base_lr

    def restore_optimizer(self, layout: dict, arrays: dict[str, np.ndarray]) -> None:
        _restore_optimizer(self.optimizer, layout, arrays)

    def set_learning_rate(self, learning_rate: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate * group["lr_mult"]
        return learning_rate

    def seed(self, seed: int) -> None:
        import torch

        torch.manual_seed(seed)

    def run_epoch(self, order: np.ndarray, progress: Any) -> tuple[float, float]:
        if self.settings.world.backend == "torch" and self.trained is self.model:
            import torch

            self.trained = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        result = _run_epoch(
            self.trained, self.optimizer, self.spec, self.data, self.labels, order,
            self.settings.batch_size, len(self.data), self.device, progress,
        )  # fmt: skip
        world = self.settings.world
        if world.size > 1:  # BatchNorm statistics of every rank's batches, the same everywhere
            import torch
            import torch.distributed as dist

            with torch.no_grad():
                for buffer in self.model.buffers():
                    if buffer.is_floating_point():
                        dist.all_reduce(buffer)
                        buffer /= world.size
        return result

    def evaluate(self) -> tuple[float, float]:
        return evaluate(self.model, *self.validation, self.settings.batch_size, self.device)

    def copy_params(self) -> dict[str, Any]:
        return _state_copy(self.model)

    def load_params(self, params: Any) -> None:
        self.model.load_state_dict(params, strict=True)

    def params_to_arrays(self, params: Any) -> dict[str, np.ndarray]:
        return _to_arrays(params)

    def arrays_to_params(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        return _from_arrays(arrays)

    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        return _to_arrays(self.model.state_dict())

    def optimizer_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return _optimizer_state(self.optimizer)

    def end_phase(self) -> None:
        _update_handler(self.handler, self.model)


@register_training_backend
class TorchTrainingBackend(TrainingBackend):
    """Fine-tunes :class:`~xfer.model_handler.TorchModelHandler` networks."""

    key = "torch"
    file_key = "torch"
    display_name = "a PyTorch network"
    network_file_endings = (f"{TARGET_SUFFIX}.json", f"{TARGET_SUFFIX}.safetensors")
    trainer_class = TorchTrainer
    output_layer_types = OUTPUT_LAYER_TYPES | TORCH_OUTPUT_TYPES
    needs_source_to_load = True
    source_model_hint = "the torch.nn.Module"
    output_is_logits = True

    def check_optimizer(self, name: str, params: dict[str, Any]) -> None:
        torch_optimizer(name, params)

    def check_lr_schedule(self, schedule: Any) -> None:
        raise InvalidArgumentError(
            f"lr_schedule must be None or one of {LR_SCHEDULES} for a PyTorch source, got "
            f"{schedule!r} (an mx.lr_scheduler object drives MXNet optimisers only)."
        )

    def contexts(self, devices: list[Device]) -> list:
        """The one ``torch.device`` of a fit or prediction (several need torch.distributed)."""
        if len(devices) > 1:
            raise InvalidArgumentError(
                f"A PyTorch source trains on one device per process, but {len(devices)} were "
                f"given ({[str(d) for d in devices]}). For several GPUs launch one process per GPU "
                "with torchrun and pass each its own context (see docs/distributed.md)."
            )
        return [to_torch(devices)]

    def world(self, kvstore: str) -> World:
        """The ranks of ``torch.distributed`` when it is initialised (``kvstore`` is MXNet's)."""
        return torch_world()

    @contextlib.contextmanager
    def seeded(self, seed: int) -> Iterator[None]:
        with seeded(seed):
            yield

    # ------------------------------------------------------------------ the target network
    def editable_copy(self, source: Any, sample_shape: tuple | None) -> Any:
        from xfer.model_handler import TorchModelHandler

        handler = TorchModelHandler(source)  # edits build new containers, sharing tensors
        handler.input_shape = None if sample_shape is None else tuple(sample_shape)
        return handler

    def cut(self, handler: Any, layer_name: str) -> None:
        cut_network(handler, layer_name)

    def add_head(self, handler: Any, fc_name: str, output_name: str, num_classes: int) -> list[str]:
        return add_linear_head(handler, fc_name, num_classes)  # logits: no output layer

    def finish_target(self, network: Any) -> None:
        # Training writes into the target network: it must own its tensors, not the source's.
        network.handler.update_sym(copy.deepcopy(network.handler.model))

    def parameter_names(self, handler: Any) -> list[str]:
        return list(handler.arg_params) + list(handler.aux_params)

    def target_model(self, handler: Any, output_layer: str, devices: list[Device]) -> Any:
        return handler.model

    def save_network(self, handler: Any, prefix: Path) -> list[str]:
        handler.save_checkpoint(str(_target_prefix(prefix)))
        return [f"{prefix.name}{TARGET_SUFFIX}{e}" for e in (".json", ".safetensors")]

    def network_state(self, handler: Any, new_layers: list[str]) -> dict[str, Any]:
        # The architecture is code: loading re-applies these edits to a fresh source model.
        return {
            "target_network": {
                "layer_names": handler.layer_names,
                "new_layers": list(new_layers),
                "new_parameters": {
                    name: list(handler.arg_params[name].shape)
                    for name in handler.get_layer_parameters(list(new_layers))
                    if name in handler.arg_params
                },
            }
        }

    def load_network(
        self, repurposer: Any, prefix: Path, config: dict[str, Any]
    ) -> tuple[Any, list[str] | None]:
        """Rebuild the target network from the source model and load the saved weights into it."""
        from xfer.fine_tuning.backend import training_backend
        from xfer.model_handler import TorchModelHandler

        if (
            repurposer.source_model is None
            or training_backend(repurposer._get_model_handler()) is not self
        ):
            raise InvalidArgumentError(
                f"{prefix}.json was fine-tuned from a PyTorch source: pass that network, freshly "
                "built, as xfer.load(..., source_model=<the torch.nn.Module>)."
            )
        saved = config["target_network"]
        with seeded(0):
            network = repurposer._target_network(
                None,
                len(repurposer.classes_),
                preferred="softmax",
                sample_shape=repurposer.sample_shape_,
            )
        if network.handler.layer_names != list(saved["layer_names"]):
            raise SerializationError(
                f"The source model given to xfer.load does not rebuild the saved target network "
                f"of {prefix}.json (layers {network.handler.layer_names} instead of "
                f"{saved['layer_names']}): pass the source network the repurposer was fitted on."
            )
        handler = TorchModelHandler.load_checkpoint(
            str(_target_prefix(prefix)),
            model=network.handler,
            context_function=repurposer.context_function,
        )
        return handler, list(saved["new_layers"])


__all__ = [
    "TorchTrainingBackend",
    "TorchTrainer",
    "TORCH_OPTIMIZERS",
    "TorchOptimizer",
    "torch_optimizer",
    "seeded",
    "evaluate",
    "add_linear_head",
    "cut_network",
]
