"""A third backend that lives only in the tests: networks written as lists of torch.nn.functional calls.

It proves the seams of xfer without touching the package: a ModelHandler registered with
:func:`xfer.model_handler.register_backend` (run by the shared protocol tests,
``tests/model_handler/test_protocol.py``) and a training backend registered with
:func:`xfer.fine_tuning.register_training_backend` (run by the shared fine-tuning suite,
``tests/repurposers/test_fine_tune.py``). Only public names of xfer are used.

A :class:`FunctionalNet` is a list of :class:`Layer` (``conv2d``, ``batch_norm``, ``relu``,
``max_pool2d``, ``flatten``, ``linear``, ``softmax``) holding their tensors by name; its
parameters are named ``layer/kind`` (``conv1/weight``, ``bn1/running_mean``) and it is saved as
JSON (the architecture is data) plus an ``.npz`` of arrays. Importing this module registers both
backends under the key ``"functional"``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xfer import serialization
from xfer.context import cpu, devices_from_function, to_torch
from xfer.data import as_batches
from xfer.exceptions import (
    InvalidArgumentError,
    InvalidTypeError,
    ModelError,
    ModelFileNotFoundError,
    layer_not_found,
)
from xfer.fine_tuning import Trainer, TrainingBackend, register_training_backend
from xfer.fine_tuning.run import derived_seed
from xfer.model_handler import ModelHandler, register_backend
from xfer.model_handler.base import check_pooling, pool_spatial

logger = logging.getLogger("tests.functional_backend")

KEY = "functional"
#: Layer type (as the handler reports it) of each operation: MXNet's names, as LayerType has them.
TYPES = {
    "conv2d": "Convolution",
    "batch_norm": "BatchNorm",
    "relu": "Activation",
    "max_pool2d": "Pooling",
    "flatten": "Flatten",
    "linear": "FullyConnected",
    "softmax": "Softmax",
}
PARAMETER_KINDS = {"conv2d": ("weight", "bias"), "linear": ("weight", "bias"), "batch_norm": ("weight", "bias")}
AUX_KINDS = {"batch_norm": ("running_mean", "running_var")}


# ------------------------------------------------------------------------------------ the network
@dataclass
class Layer:
    """One call: ``op`` applied with the layer's tensors (``tensors``, by kind) and ``attrs``."""

    name: str
    op: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.op not in TYPES:
            raise InvalidArgumentError(f"Unknown operation {self.op!r}: use one of {sorted(TYPES)}.")

    def names(self) -> list[str]:
        """The layer's parameter names, then its auxiliary states (``name/kind``)."""
        kinds = PARAMETER_KINDS.get(self.op, ()) + AUX_KINDS.get(self.op, ())
        return [f"{self.name}/{kind}" for kind in kinds if kind in self.tensors]

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        t, a = self.tensors, self.attrs
        if self.op == "conv2d":
            return F.conv2d(x, t["weight"], t["bias"], padding=a.get("padding", 0))
        if self.op == "batch_norm":
            return F.batch_norm(
                x, t["running_mean"], t["running_var"], t["weight"], t["bias"],
                training=training, momentum=a.get("momentum", 0.1), eps=a.get("eps", 1e-5),
            )  # fmt: skip
        if self.op == "relu":
            return F.relu(x)
        if self.op == "max_pool2d":
            return F.max_pool2d(x, a["kernel"])
        if self.op == "flatten":
            return torch.flatten(x, 1)
        if self.op == "linear":
            return F.linear(x, t["weight"], t["bias"])
        return F.softmax(x, dim=1)


@dataclass
class FunctionalNet:
    """A chain of :class:`Layer`; ``frozen_batchnorm`` layers always use their stored statistics."""

    layers: list[Layer]
    frozen_batchnorm: set[str] = field(default_factory=set)

    def run(self, x: torch.Tensor, training: bool = False, upto: set[str] | None = None) -> dict:
        """Outputs of the layers in ``upto`` (all layers when None), running no further."""
        outputs = {}
        last = max((i for i, layer in enumerate(self.layers) if upto is None or layer.name in upto), default=-1)
        for layer in self.layers[: last + 1]:
            x = layer(x, training and layer.name not in self.frozen_batchnorm)
            outputs[layer.name] = x
        return outputs

    def __call__(self, x: torch.Tensor, training: bool = False) -> torch.Tensor:
        return list(self.run(x, training).values())[-1]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{layer.name}/{kind}": t for layer in self.layers for kind, t in layer.tensors.items()}


def from_sequential(model: Any) -> FunctionalNet:
    """A :class:`FunctionalNet` with the layers and weights (copied) of a ``torch.nn.Sequential``."""
    from torch import nn

    layers = []
    for name, module in model.named_children():
        tensors = {k: v.detach().clone() for k, v in module.state_dict().items() if k != "num_batches_tracked"}
        if isinstance(module, nn.Conv2d):
            layers.append(Layer(name, "conv2d", tensors, {"padding": module.padding[0]}))
        elif isinstance(module, nn.BatchNorm2d):
            layers.append(Layer(name, "batch_norm", tensors, {"momentum": module.momentum, "eps": module.eps}))
        elif isinstance(module, nn.ReLU):
            layers.append(Layer(name, "relu"))
        elif isinstance(module, nn.MaxPool2d):
            layers.append(Layer(name, "max_pool2d", attrs={"kernel": module.kernel_size}))
        elif isinstance(module, nn.Flatten):
            layers.append(Layer(name, "flatten"))
        elif isinstance(module, nn.Linear):
            layers.append(Layer(name, "linear", tensors))
        elif isinstance(module, nn.Softmax):
            layers.append(Layer(name, "softmax"))
        else:
            raise InvalidTypeError(f"No functional form of {type(module).__name__}.")
    return FunctionalNet(layers)


def _initialise(layer: Layer, generator: torch.Generator | None = None) -> None:
    """Kaiming-uniform weights and uniform biases (as torch's layers start), in place."""
    weight = layer.tensors.get("weight")
    if weight is None or layer.op == "batch_norm":
        if layer.op == "batch_norm":
            layer.tensors["weight"].fill_(1.0)
            layer.tensors["bias"].zero_()
        return
    fan_in = weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in)
    weight.uniform_(-bound, bound, generator=generator)
    layer.tensors["bias"].uniform_(-bound, bound, generator=generator)


# ------------------------------------------------------------------------------------ the ModelHandler
@register_backend
class FunctionalModelHandler(ModelHandler):
    """The ModelHandler of :class:`FunctionalNet` networks."""

    backend = KEY

    def __init__(self, model: Any, context_function: Any = cpu, num_devices: int = 1):
        if isinstance(model, FunctionalModelHandler):
            self.input_shape = model.input_shape
            model = model.model
        else:
            self.input_shape = None
        if not isinstance(model, FunctionalNet):
            raise InvalidTypeError(f"FunctionalModelHandler takes a FunctionalNet, got {type(model).__name__}.")
        # A copy of the layer list: edits never reach the original (tensors are shared until trained).
        self.model = FunctionalNet([copy.copy(layer) for layer in model.layers])
        for layer in self.model.layers:
            layer.tensors = dict(layer.tensors)
        self.devices = [to_torch(devices_from_function(context_function, num_devices))]
        self.data_name = None
        self._frozen: set[str] = set()

    @classmethod
    def accepts(cls, model: Any) -> bool:
        return isinstance(model, FunctionalNet)

    # ------------------------------------------------------------------ inspection
    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.model.layers]

    @property
    def layer_type_dict(self) -> OrderedDict:
        return OrderedDict((layer.name, TYPES[layer.op]) for layer in self.model.layers)

    @property
    def arg_params(self) -> dict:
        return {n: t for layer in self.model.layers for n, t in zip(layer.names(), self._values(layer)) if not self._is_aux(n)}

    @property
    def aux_params(self) -> dict:
        return {n: t for layer in self.model.layers for n, t in zip(layer.names(), self._values(layer)) if self._is_aux(n)}

    @staticmethod
    def _values(layer: Layer) -> list[torch.Tensor]:
        return [layer.tensors[name.split("/")[1]] for name in layer.names()]

    @staticmethod
    def _is_aux(name: str) -> bool:
        return name.split("/")[1].startswith("running_")

    def _layer(self, name: str) -> Layer:
        for layer in self.model.layers:
            if layer.name == name:
                return layer
        raise layer_not_found(name, self.layer_names)

    def _check_layer_names(self, layer_names: Any, argument: str = "layer_names") -> list[str]:
        if isinstance(layer_names, str) or not isinstance(layer_names, (list, tuple)):
            hint = f"; for one layer pass [{layer_names!r}]" if isinstance(layer_names, str) else ""
            raise InvalidTypeError(f"{argument} must be a list of layer names, got {layer_names!r}{hint}.")
        for name in layer_names:
            self._layer(name)
        return list(layer_names)

    def get_layer_type(self, layer_name: str) -> str:
        return TYPES[self._layer(layer_name).op]

    def get_layer_names_matching_type(self, layer_type: Any) -> list[str]:
        wanted = str(getattr(layer_type, "value", layer_type)).lower()
        return [name for name, kind in self.layer_type_dict.items() if kind.lower() == wanted]

    def get_layer_parameters(self, layer_names: list[str]) -> list[str]:
        """A layer that is not in the model has none (logged, as Xfer does)."""
        if isinstance(layer_names, str) or not isinstance(layer_names, (list, tuple)):
            self._check_layer_names(layer_names)
        present = [n for n in layer_names if n in self.layer_names]
        if len(present) < len(layer_names):
            logger.warning("Layers %s are not in the model: they have no parameters.", sorted(set(layer_names) - set(present)))
        return [n for name in present for n in self._layer(name).names()]

    # ------------------------------------------------------------------ editing
    def _check_count(self, count: Any, where: str) -> int:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidArgumentError(f"num_layers_to_drop must be a positive integer, got {count!r}.")
        total = len(self.model.layers)
        if count >= total:
            raise ModelError(
                f"Cannot drop {count} layer(s) from the {where} of a model with {total} layers: at "
                f"most {total - 1} can be dropped."
            )
        return count

    def drop_layer_top(self, num_layers_to_drop: int = 1) -> None:
        del self.model.layers[-self._check_count(num_layers_to_drop, "top") :]

    def drop_layer_bottom(self, num_layers_to_drop: int = 1) -> None:
        del self.model.layers[: self._check_count(num_layers_to_drop, "bottom")]

    def _check_new_layers(self, layer_list: Any) -> list[Layer]:
        if not isinstance(layer_list, list) or not layer_list:
            raise InvalidArgumentError("layer_list is empty: give at least one Layer.")
        taken = set(self.layer_names)
        for position, layer in enumerate(layer_list):
            if not isinstance(layer, Layer):
                raise InvalidTypeError(f"Layer {position} of the list is a {type(layer).__name__}, not a Layer.")
            if layer.name in taken:
                raise InvalidArgumentError(f"A layer named {layer.name!r} already exists in the model.")
            taken.add(layer.name)
        return layer_list

    def add_layer_top(self, layer_list: list) -> None:
        self.model.layers.extend(self._check_new_layers(layer_list))

    def add_layer_bottom(self, layer_list: list) -> None:
        self.model.layers[:0] = self._check_new_layers(layer_list)

    def update_sym(self, new_model: Any, /) -> None:
        self.model = FunctionalModelHandler(new_model).model

    # ------------------------------------------------------------------ features and training
    def get_layer_output(
        self,
        data_iterator: Any,
        layer_names: list[str],
        context: Any = None,
        batch_size: int | None = None,
        verbose: bool = False,
        pooling: str | None = None,
    ) -> tuple[OrderedDict, np.ndarray | None]:
        if isinstance(layer_names, (list, tuple)) and not layer_names:
            raise InvalidArgumentError("layer_names is empty: name at least one layer.")
        names = self._check_layer_names(layer_names)
        check_pooling(pooling)
        device = to_torch(context, default=self.devices[0])
        batches = as_batches(data_iterator, batch_size=batch_size)
        self.input_shape = tuple(batches.sample_shape)
        chunks: dict[str, list] = {name: [] for name in names}
        labels = []
        with torch.no_grad():
            for batch in batches:
                inputs = torch.as_tensor(np.asarray(batch.data, dtype=np.float32)).to(device)
                outputs = self._on(device).run(inputs, upto=set(names))
                for name in names:
                    value = pool_spatial(outputs[name][: batch.num_valid], pooling)
                    chunks[name].append(value.flatten(1).cpu().numpy())
                if batch.labels is not None:
                    labels.append(batch.labels)
        features = OrderedDict((n, np.concatenate(chunks[n]).astype(np.float32)) for n in names)
        return features, (np.concatenate(labels) if batches.has_labels and labels else None)

    def _on(self, device: torch.device) -> FunctionalNet:
        net = FunctionalNet([copy.copy(layer) for layer in self.model.layers], set(self.model.frozen_batchnorm))
        for layer in net.layers:
            layer.tensors = {k: v.to(device) for k, v in layer.tensors.items()}
        return net

    def get_module(
        self,
        iterator: Any = None,
        fixed_layer_parameters: list[str] | None = None,
        random_layer_parameters: list[str] | None = None,
        *,
        fixed_layers: list[str] | None = None,
        random_layers: list[str] | None = None,
        context: Any = None,
        seed: int | None = None,
    ) -> FunctionalNet:
        """A trainable copy: own tensors, ``requires_grad`` unless fixed, random ones re-drawn."""
        fixed = set(fixed_layer_parameters or []) | set(self.get_layer_parameters(sorted(self._frozen | set(fixed_layers or []))))
        random = set(random_layer_parameters or []) | set(self.get_layer_parameters(random_layers or []))
        fixed -= random
        net = self._on(to_torch(context, default=self.devices[0]))
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        for layer in net.layers:
            layer.tensors = {k: v.detach().clone() for k, v in layer.tensors.items()}
            own = set(layer.names())
            if own & random:
                with torch.no_grad():
                    _initialise(layer, generator)
            for kind, tensor in layer.tensors.items():
                name = f"{layer.name}/{kind}"
                tensor.requires_grad_(not self._is_aux(name) and name not in fixed)
            parameters = {n for n in own if not self._is_aux(n)}
            if layer.op == "batch_norm" and parameters and parameters <= fixed:
                net.frozen_batchnorm.add(layer.name)
        return net

    # ------------------------------------------------------------------ files
    @classmethod
    def checkpoint_files(cls, prefix: Any, epoch: int = 0) -> list[str]:
        return [f"{prefix}.functional.json", f"{prefix}.functional.npz"]

    @classmethod
    def open_checkpoint(cls, prefix: Any, epoch: int = 0, model: Any = None, **kwargs: Any) -> Any:
        if model is not None or not Path(cls.checkpoint_files(prefix)[0]).is_file():
            return None
        return cls.load_checkpoint(prefix, **kwargs)

    def save_checkpoint(self, prefix: str) -> None:
        manifest_path, arrays_path = (Path(p) for p in self.checkpoint_files(prefix))
        arrays = {name: t.detach().cpu().numpy() for name, t in self.model.tensors().items()}
        serialization.atomic_write_bytes(arrays_path, serialization.arrays_to_npz_bytes(arrays))
        layers = [{"name": layer.name, "op": layer.op, "attrs": layer.attrs, "tensors": sorted(layer.tensors)} for layer in self.model.layers]
        serialization.atomic_write_json(manifest_path, {"layers": layers, "frozen_batchnorm": sorted(self.model.frozen_batchnorm)})

    @classmethod
    def load_checkpoint(cls, prefix: Any, **kwargs: Any) -> FunctionalModelHandler:
        manifest_path, arrays_path = (Path(p) for p in cls.checkpoint_files(prefix))
        for path in (manifest_path, arrays_path):
            if not path.is_file():
                raise ModelFileNotFoundError(f"{str(path)!r} does not exist.")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        arrays = serialization.read_npz(arrays_path)
        layers = [
            Layer(
                entry["name"], entry["op"],
                {kind: torch.from_numpy(np.array(arrays[f"{entry['name']}/{kind}"])) for kind in entry["tensors"]},
                {k: tuple(v) if isinstance(v, list) else v for k, v in entry["attrs"].items()},
            )
            for entry in manifest["layers"]
        ]  # fmt: skip
        return cls(FunctionalNet(layers, set(manifest["frozen_batchnorm"])), **kwargs)

    def visualize_net(self, filename: str | None = None, format: str = "pdf") -> Any:
        import graphviz

        from xfer.model_handler.base import render_digraph

        digraph = graphviz.Digraph(format=format)
        previous = None
        for layer in self.model.layers:
            digraph.node(layer.name, f"{layer.name}\n{TYPES[layer.op]}")
            if previous is not None:
                digraph.edge(previous, layer.name)
            previous = layer.name
        if filename is not None:
            render_digraph(digraph, filename)
        return digraph


# ------------------------------------------------------------------------------------ training
@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def _optimizer_arguments(name: str, params: dict[str, Any]) -> tuple[Any, float, dict[str, Any]]:
    if name.lower() not in _OPTIMIZERS:
        raise InvalidArgumentError(f"Unknown optimizer {name!r} for a functional network: use one of {sorted(_OPTIMIZERS)}.")
    params = dict(params)
    learning_rate = float(params.pop("learning_rate", 0.01))
    renamed = {"wd": "weight_decay"}
    kwargs = {renamed.get(k, k): v for k, v in params.items()}
    cls = _OPTIMIZERS[name.lower()]
    try:
        cls([torch.zeros(1, requires_grad=True)], lr=learning_rate, **kwargs)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"optimizer_params {params!r} are not valid for optimizer {name!r}: {error}") from error
    return cls, learning_rate, kwargs


class FunctionalTrainer(Trainer):
    def __init__(self, *args: Any):
        super().__init__(*args)
        self.device = self.settings.contexts[0]
        self.data = torch.as_tensor(np.ascontiguousarray(self.data, dtype=np.float32))
        self.labels = torch.as_tensor(np.asarray(self.labels, dtype=np.int64))
        if self.validation is not None:
            self.validation = (
                torch.as_tensor(np.ascontiguousarray(self.validation[0], dtype=np.float32)),
                torch.as_tensor(np.asarray(self.validation[1]).astype(np.int64)),
            )
        self.net: FunctionalNet | None = None
        self.optimizer: Any = None

    def __enter__(self) -> FunctionalTrainer:
        self._scope = _seeded(derived_seed(self.settings.seed, 3))
        self._scope.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._scope.__exit__(*exc_info)

    def start_phase(self, phase, first, params) -> None:
        self.phase = phase
        self.net = self.handler.get_module(
            fixed_layer_parameters=phase.fixed_parameters,
            random_layer_parameters=phase.random_parameters if first else None,
            context=self.device,
            seed=derived_seed(self.settings.seed, 0),
        )
        if params is not None:
            self.load_params(self.arrays_to_params(params))

    def start_optimizer(self) -> float:
        cls, learning_rate, kwargs = _optimizer_arguments(self.settings.optimizer, self.settings.optimizer_params)
        groups: dict[float, list] = {}
        for name, tensor in self.net.tensors().items():
            if tensor.requires_grad:
                groups.setdefault(float(self.phase.lr_mults.get(name, 1.0)), []).append(tensor)
        base_lr = learning_rate * self.phase.lr_factor
        self.optimizer = cls([{"params": p, "lr": base_lr * m, "lr_mult": m} for m, p in sorted(groups.items())], lr=base_lr, **kwargs)
        return base_lr

    def restore_optimizer(self, layout: dict, arrays: dict[str, np.ndarray]) -> None:
        state = {int(i): {k: torch.from_numpy(np.array(arrays[f"{i}.{k}"])) if v is None else v for k, v in entry.items()} for i, entry in layout.items()}
        self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})

    def optimizer_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        layout: dict[str, dict] = {}
        arrays: dict[str, np.ndarray] = {}
        for index, values in self.optimizer.state_dict()["state"].items():
            layout[str(index)] = {}
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    arrays[f"{index}.{key}"] = value.detach().cpu().numpy()
                    layout[str(index)][key] = None  # the array of that name
                else:
                    layout[str(index)][key] = value
        return layout, arrays

    def set_learning_rate(self, learning_rate: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate * group["lr_mult"]
        return learning_rate

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def run_epoch(self, order: np.ndarray, progress: Any) -> tuple[float, float]:
        loss_sum, correct, size, real = 0.0, 0, self.settings.batch_size, len(self.data)
        for start in range(0, len(order), size):
            index = torch.as_tensor(order[start : start + size])
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.net(self.data[index].to(self.device), training=True)
            losses = F.cross_entropy(logits, self.labels[index].to(self.device), reduction="none")
            losses.mean().backward()
            self.optimizer.step()
            counted = max(0, min(size, real - start))
            loss_sum += float(losses[:counted].detach().sum())
            correct += int((logits[:counted].detach().argmax(1) == self.labels[index][:counted].to(self.device)).sum())
            if progress is not None:
                progress.update(1)
        return loss_sum / real, correct / real

    def evaluate(self) -> tuple[float, float]:
        data, labels = self.validation
        with torch.no_grad():
            logits = self.net(data.to(self.device))
            targets = labels.to(self.device)
            return float(F.cross_entropy(logits, targets)), float((logits.argmax(1) == targets).float().mean())

    def copy_params(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().clone() for name, t in self.net.tensors().items()}

    def load_params(self, params: Any) -> None:
        with torch.no_grad():
            for name, tensor in self.net.tensors().items():
                tensor.copy_(params[name])

    def params_to_arrays(self, params: Any) -> dict[str, np.ndarray]:
        return {name: t.cpu().numpy() for name, t in params.items()}

    def arrays_to_params(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.array(a)) for name, a in arrays.items()}

    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        return self.params_to_arrays(self.copy_params())

    def end_phase(self) -> None:
        trained = self.copy_params()
        for layer in self.handler.model.layers:
            layer.tensors = {kind: trained[f"{layer.name}/{kind}"].cpu() for kind in layer.tensors}


@register_training_backend
class FunctionalTrainingBackend(TrainingBackend):
    key = KEY
    file_key = KEY
    display_name = "a functional network"
    trainer_class = FunctionalTrainer
    output_layer_types = frozenset({"Softmax"})
    output_is_logits = True

    def check_optimizer(self, name: str, params: dict[str, Any]) -> None:
        _optimizer_arguments(name, params)

    def contexts(self, devices: list) -> list:
        if len(devices) > 1:
            raise InvalidArgumentError(f"A functional network trains on one device, got {len(devices)}.")
        return [to_torch(devices)]

    @contextlib.contextmanager
    def seeded(self, seed: int) -> Iterator[None]:
        with _seeded(seed):
            yield

    def editable_copy(self, source: Any, sample_shape: tuple | None) -> FunctionalModelHandler:
        handler = FunctionalModelHandler(source)
        handler.input_shape = None if sample_shape is None else tuple(sample_shape)
        return handler

    def cut(self, handler: Any, layer_name: str) -> None:
        above = len(handler.layer_names) - 1 - handler.layer_names.index(layer_name)
        if above:
            handler.drop_layer_top(above)

    def add_head(self, handler: Any, fc_name: str, output_name: str, num_classes: int) -> list[str]:
        top = handler.layer_names[-1]
        features, _ = handler.get_layer_output(np.zeros((1, *handler.input_shape), np.float32), [top])
        size = features[top].shape[1]
        fc = Layer(fc_name, "linear", {"weight": torch.empty(num_classes, size), "bias": torch.empty(num_classes)})
        with torch.no_grad():
            _initialise(fc)
        handler.add_layer_top([Layer(f"{fc_name}_flatten", "flatten"), fc])
        return [f"{fc_name}_flatten", fc_name]

    def parameter_names(self, handler: Any) -> list[str]:
        return list(handler.arg_params) + list(handler.aux_params)

    def target_model(self, handler: Any, output_layer: str, devices: list) -> FunctionalNet:
        return handler.model

    def save_network(self, handler: Any, prefix: Path) -> list[str]:
        handler.save_checkpoint(str(prefix))
        return [Path(p).name for p in handler.checkpoint_files(prefix)]

    def network_state(self, handler: Any, new_layers: list[str]) -> dict[str, Any]:
        return {"new_layers": list(new_layers)}

    def load_network(self, repurposer: Any, prefix: Path, config: dict[str, Any]) -> tuple[Any, list[str]]:
        return FunctionalModelHandler.load_checkpoint(prefix), list(config["new_layers"])
