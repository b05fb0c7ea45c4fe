"""ModelHandler for PyTorch modules (``torch.nn.Module``).

Layers
------
A *layer* is a call of a leaf module: a module without child modules, or an instance (subclasses
included) of a ``torch.nn`` layer class such as ``nn.Conv2d`` even when it has children (for
example EfficientNet's ``Conv2dStaticSamePadding``). Its name is the module's qualified name
(``features.0``, ``_blocks.3._depthwise_conv``); the second and later calls of a module used
several times in one forward are ``name#1``, ``name#2``... Function calls (``x + y``,
``torch.flatten``, ``x.view``) are not layers: they stay attached to the layer whose output they
read. When the model's return value is not the output of a module (``F.normalize(...)`` at the
end, for instance), a last pseudo-layer ``"output"`` (type ``"Output"``) stands for it.

Two ways to run a model
-----------------------
``torch.fx`` (models that trace with ``torch.fx.symbolic_trace``, the usual CNNs): layers are in
execution order, repeated calls of a shared module are separate layers, every edit
(``drop_layer_top/bottom``, ``add_layer_top/bottom``) works on any model with a single-path top or
bottom, ``get_layer_output`` runs a graph pruned after the deepest requested layer, and
``visualize_net`` draws the real data flow. After an edit the handler's ``model`` is a
``torch.fx.GraphModule``; Python control flow on non-tensor values (``if self.training`` in custom
code) is fixed as it was when traced, in eval mode. A flat ``nn.Sequential`` of layers is edited
directly and stays an ``nn.Sequential``.

Forward hooks (models that do not trace: data-dependent control flow, non-tensor inputs such as a
list of strings for :func:`xfer.zoo.minilm`): layers are leaf modules in registration order
(usually, not necessarily, the execution order), a shared module is read at its first call, the
pseudo-layer ``"output"`` is always listed, ``get_layer_output`` stops the forward right after the
last requested layer has run (unless ``"output"`` is requested), graph edits are refused (except on
a flat ``nn.Sequential``) and ``visualize_net`` shows the layers without their connections. Both
ways give the same features.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import logging
import os
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xfer import serialization
from xfer.context import devices_from_function, to_torch
from xfer.data import as_batches
from xfer.exceptions import (
    InvalidArgumentError,
    InvalidTypeError,
    ModelArchitectureError,
    ModelError,
    ModelFileNotFoundError,
    SerializationError,
    XferError,
    layer_not_found,
)
from xfer.model_handler.base import (
    ModelHandler,
    check_pooling,
    pool_spatial,
    register_backend,
    render_digraph,
)
from xfer.model_handler.consts import LayerType
from xfer.serialization import atomic_write
from xfer.threads import torch_threads

logger = logging.getLogger("xfer.model_handler.torch")


class _LazyModule:
    """Import a module on first attribute access: ``import xfer`` stays free of torch's import time."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


torch: Any = _LazyModule("torch")
nn: Any = _LazyModule("torch.nn")
fx: Any = _LazyModule("torch.fx")

OUTPUT_LAYER = "output"
FORMAT_VERSION = 1
TRACING_MODES = ("auto", "fx", "hooks")
_CONTAINERS = ("Module", "Sequential", "ModuleList", "ModuleDict", "Container")
_SHAPE_METHODS = frozenset({"size", "dim"})
_SHAPE_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim"})

# MXNet operator names (LayerType values) -> torch.nn base classes they correspond to.
_MXNET_TYPES = {
    "convolution": ("Conv1d", "Conv2d", "Conv3d"),
    "deconvolution": ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"),
    "fullyconnected": ("Linear",),
    "pooling": (
        "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
        "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d",
        "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "LPPool1d", "LPPool2d",
    ),
    "activation": (
        "ReLU", "ReLU6", "Sigmoid", "Tanh", "GELU", "SiLU", "LeakyReLU", "ELU", "SELU", "Softplus",
        "Softsign", "Hardswish", "Hardsigmoid", "Hardtanh", "Mish", "PReLU",
    ),
    "relu": ("ReLU",),
    "batchnorm": ("_BatchNorm",),
    "dropout": ("_DropoutNd",),
    "flatten": ("Flatten",),
    "softmaxoutput": ("Softmax", "LogSoftmax"),
}  # fmt: skip


class _StopForward(Exception):
    """Raised by a forward hook once every requested layer has run: the rest of the forward is skipped."""


@dataclass(frozen=True)
class _Layer:
    """One layer: ``module_path`` called for the ``call_index``-th time (fx node ``node_name``)."""

    name: str
    module_path: str | None
    call_index: int
    node_name: str | None
    type_name: str


# ---------------------------------------------------------------------- leaf rule and tracing
def _is_torch_layer_class(cls: type) -> bool:
    return cls.__module__.startswith("torch.nn") and cls.__name__ not in _CONTAINERS


def _is_leaf(module: Any) -> bool:
    """A layer module: no children, or a ``torch.nn`` layer (or a subclass of one)."""
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    if not any(True for _ in module.children()):
        return True
    return any(_is_torch_layer_class(cls) for cls in type(module).__mro__[:-1])


_TRACER_CLASS: type | None = None


def _tracer() -> Any:
    global _TRACER_CLASS
    if _TRACER_CLASS is None:

        class _LayerTracer(fx.Tracer):
            """Keeps every layer module (see :func:`_is_leaf`) as one ``call_module`` node."""

            def is_leaf_module(self, module: Any, qualified_name: str) -> bool:
                return _is_leaf(module)

        _TRACER_CLASS = _LayerTracer
    return _TRACER_CLASS()


def _trace(model: Any) -> Any:
    """The model's fx graph with layer modules as leaves (raises whatever tracing raises)."""
    return _tracer().trace(model)


def _type_name(module: Any) -> str:
    return type(module).__name__


def _get_submodule(model: Any, path: str) -> Any:
    return model if path == "" else model.get_submodule(path)


def _channel_axis_hint(model: Any, sample_shape: tuple) -> str:
    """A hint when images given to a convolutional network lack their channel axis or have it
    last (read from the first convolution's ``in_channels``); empty otherwise."""
    from torch.nn.modules.conv import _ConvNd

    conv = next((m for m in model.modules() if isinstance(m, _ConvNd)), None)
    if conv is None:
        return ""
    spatial = conv.weight.dim() - 2
    if len(sample_shape) == spatial:
        return (
            " The channel axis is missing: give images as N x C x H x W "
            f"(X[:, None] for {conv.in_channels} channel)."
            if conv.in_channels == 1
            else f" The channel axis is missing: give images as N x {conv.in_channels} x H x W."
        )
    if (
        len(sample_shape) == spatial + 1
        and sample_shape[-1] == conv.in_channels
        and sample_shape[0] != conv.in_channels
    ):
        return " The channel axis is last: give images as N x C x H x W (np.moveaxis(X, -1, 1))."
    return ""


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


@register_backend
class TorchModelHandler(ModelHandler):
    """Inspect, edit and read features from a PyTorch network.

    The handler shares parameters with the module it is given; edits build new containers
    (an ``nn.Sequential`` or a ``torch.fx.GraphModule``) and never change the given module's
    structure. See the module documentation for what a layer is and for the difference between
    models that trace with ``torch.fx`` and models read through forward hooks.

    Parameters
    ----------
    module : torch.nn.Module or TorchModelHandler
        The source network (or a handler, copied: edits of the copy leave the original alone).
    context_function : str, torch.device or callable, default='cpu'
        The default device of every call that computes (``"cpu"``, ``"gpu:0"``,
        ``torch.device("cuda", 0)``); each call's ``context=`` overrides it.
    num_devices : int, default=1
        Xfer's device count; the torch backend runs on one device.
    tracing : {'auto', 'fx', 'hooks'}, default='auto'
        ``'auto'``: ``torch.fx`` when the model traces, forward hooks otherwise. ``'fx'``: fail
        with :class:`ModelArchitectureError` when it does not trace. ``'hooks'``: never trace.

    Attributes
    ----------
    model : torch.nn.Module
        The (edited) network.
    devices : list of torch.device
        The default device.
    tracing : str
        ``'fx'`` or ``'hooks'``: how this model is run.
    trace_error : str or None
        Why tracing failed (hooks mode).
    input_shape : tuple or None
        Shape of one example of the last data read by :meth:`get_layer_output`.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> mh = ModelHandler(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    >>> mh.layer_names
    ['0', '1', '2']
    >>> mh.drop_layer_top(1)
    >>> mh.add_layer_top([nn.Linear(8, 5)])
    >>> features, labels = mh.get_layer_output(np.ones((2, 4), np.float32), ["1", "2"])
    >>> features["2"].shape
    (2, 5)
    """

    backend = "torch"

    def __init__(
        self,
        module: Any,
        context_function: Any = "cpu",
        num_devices: int = 1,
        *,
        tracing: str = "auto",
    ):
        if not isinstance(tracing, str) or tracing not in TRACING_MODES:
            raise InvalidArgumentError(f"tracing must be one of {list(TRACING_MODES)}, got {tracing!r}.")
        self.context_function = context_function
        self.num_devices = num_devices
        self.devices = [to_torch(devices_from_function(context_function, num_devices))]
        self.input_shape: tuple | None = None
        self._frozen: set[str] = set()
        self._requested_tracing = tracing
        self._cache: tuple | None = None
        if isinstance(module, TorchModelHandler):
            self._frozen = set(module._frozen)
            self.input_shape = module.input_shape
            if tracing == "auto":
                self._requested_tracing = module._requested_tracing
            model = module.model
        elif _is_module(module):
            model = module
        else:
            raise InvalidTypeError(
                f"TorchModelHandler needs a torch.nn.Module, got {type(module).__name__}."
            )
        self._set_model(model)

    @classmethod
    def accepts(cls, model: Any) -> bool:
        """Whether ``model`` is a ``torch.nn.Module`` (this backend reads it).

        Parameters
        ----------
        model : object
            What was passed to ``ModelHandler(...)``.

        Returns
        -------
        bool
        """
        return _is_module(model)

    # ------------------------------------------------------------------ model state
    def _set_model(self, model: Any) -> None:
        """Adopt ``model``: trace it (or not) and list its layers."""
        self.model = model
        self._cache = None
        self.graph = None
        self.trace_error: str | None = None
        if self._requested_tracing != "hooks":
            try:
                self.graph = _trace(model)
            except Exception as error:  # any failure of symbolic tracing means: use hooks
                self.trace_error = _first_line(error)
                if self._requested_tracing == "fx":
                    raise ModelArchitectureError(
                        f"The model does not trace with torch.fx ({self.trace_error}); build the "
                        "handler with tracing='auto' or 'hooks' to read it through forward hooks."
                    ) from None
                logger.info("Model does not trace with torch.fx (%s): using forward hooks", self.trace_error)
        self.tracing = "fx" if self.graph is not None else "hooks"
        self._layers = self._list_layers()
        if not [layer for layer in self._layers.values() if layer.module_path is not None]:
            raise ModelError(
                f"The model ({type(model).__name__}) has no layer modules: xfer reads and edits "
                "networks built from torch.nn modules. Wrap a single layer as nn.Sequential(layer)."
            )
        self._frozen &= set(self._layers)

    def _list_layers(self) -> OrderedDict:
        layers: OrderedDict[str, _Layer] = OrderedDict()
        if self.graph is not None:
            calls: dict[str, int] = {}
            for node in self.graph.nodes:
                if node.op != "call_module":
                    continue
                path = str(node.target)
                index = calls.get(path, 0)
                calls[path] = index + 1
                name = path if index == 0 else f"{path}#{index}"
                module = _get_submodule(self.model, path)
                layers[name] = _Layer(name, path, index, node.name, _type_name(module))
            output = self._output_node(self.graph)
            if not (isinstance(output.args[0], fx.Node) and output.args[0].op == "call_module"):
                layers[self._output_name(layers)] = _Layer(OUTPUT_LAYER, None, 0, "output", "Output")
            return layers
        for path, module in _leaf_modules(self.model):
            layers[path] = _Layer(path, path, 0, None, _type_name(module))
        layers[self._output_name(layers)] = _Layer(OUTPUT_LAYER, None, 0, None, "Output")
        return layers

    @staticmethod
    def _output_name(layers: dict) -> str:
        return OUTPUT_LAYER if OUTPUT_LAYER not in layers else f"{OUTPUT_LAYER}#model"

    @staticmethod
    def _output_node(graph: Any) -> Any:
        return next(node for node in reversed(graph.nodes) if node.op == "output")

    # ------------------------------------------------------------------ inspection
    @property
    def layer_names(self) -> list[str]:
        """Names of the layers: in execution order (fx) or registration order (hooks)."""
        return list(self._layers)

    @property
    def layer_type_dict(self) -> OrderedDict:
        """Layer name to module class name (``'Conv2d'``), in the order of :attr:`layer_names`."""
        return OrderedDict((name, layer.type_name) for name, layer in self._layers.items())

    @property
    def arg_params(self) -> dict:
        """Parameters by name (``'conv1.weight'``), as the model's own tensors."""
        return dict(self.model.named_parameters())

    @property
    def aux_params(self) -> dict:
        """Saved buffers by name (``'bn1.running_mean'``), as the model's own tensors."""
        state = self.model.state_dict(keep_vars=True)
        parameters = {name for name, _ in self.model.named_parameters(remove_duplicate=False)}
        return {name: value for name, value in state.items() if name not in parameters}

    @property
    def data_name(self) -> str | None:
        """Name of the forward's input (the fx placeholder), or None for an untraced model."""
        if self.graph is None:
            return None
        return next((str(n.target) for n in self.graph.nodes if n.op == "placeholder"), None)

    def _check_layer_names(self, layer_names: Any, argument: str = "layer_names") -> list[str]:
        if isinstance(layer_names, str) or not isinstance(layer_names, (list, tuple)):
            raise InvalidTypeError(
                f"{argument} must be a list of layer names, got {layer_names!r}; for one layer "
                f"pass [{layer_names!r}]." if isinstance(layer_names, str) else
                f"{argument} must be a list of layer names, got {type(layer_names).__name__}."
            )  # fmt: skip
        for name in layer_names:
            if name not in self._layers:
                raise layer_not_found(name, self._layers)
        return list(layer_names)

    def get_layer_type(self, layer_name: str) -> str:
        """Class name of a layer's module (``'Conv2d'``); ``'Output'`` for the pseudo-layer ``output``.

        Parameters
        ----------
        layer_name : str
            A layer of the model.

        Returns
        -------
        str

        Raises
        ------
        LayerNotFoundError
            Unknown layer (a ``ValueError``); the message lists the closest names.
        """
        if layer_name not in self._layers:
            raise layer_not_found(layer_name, self._layers)
        return self._layers[layer_name].type_name

    def get_layer_names_matching_type(self, layer_type: str | LayerType | type) -> list[str]:
        """Names of the layers of a type, in layer order.

        ``layer_type`` matches case-insensitively the module's class name or the name of any
        ``torch.nn`` class it derives from (``'conv2d'`` matches EfficientNet's
        ``Conv2dStaticSamePadding``); a module class matches its instances; MXNet operator names
        (:class:`~xfer.model_handler.consts.LayerType`) match their torch counterparts
        (``LayerType.CONVOLUTION`` -> ``Conv1d/2d/3d``, ``LayerType.FULLYCONNECTED`` -> ``Linear``,
        ``LayerType.BATCHNORM`` -> every BatchNorm...).

        Parameters
        ----------
        layer_type : str, LayerType or type
            What to match.

        Returns
        -------
        list of str
        """
        if isinstance(layer_type, type):
            return [
                name for name, layer in self._layers.items()
                if layer.module_path is not None
                and isinstance(_get_submodule(self.model, layer.module_path), layer_type)
            ]  # fmt: skip
        wanted = str(layer_type.value if isinstance(layer_type, LayerType) else layer_type).lower()
        mapped = {cls.lower() for cls in _MXNET_TYPES.get(wanted, ())}
        names = []
        for name, layer in self._layers.items():
            if layer.module_path is None:
                if wanted == "output":
                    names.append(name)
                continue
            mro = type(_get_submodule(self.model, layer.module_path)).__mro__[:-1]
            bases = {cls.__name__.lower() for cls in mro if _is_torch_layer_class(cls)}
            if layer.type_name.lower() == wanted or wanted in bases or bases & mapped:
                names.append(name)
        return names

    def get_layer_parameters(self, layer_names: list[str]) -> list[str]:
        """Names of the parameters and saved buffers of exactly these layers.

        ``['conv1']`` gives ``['conv1.weight', 'conv1.bias']`` and never the parameters of
        ``conv10``; a BatchNorm layer gives ``weight, bias, running_mean, running_var,
        num_batches_tracked``. Parameters used by function calls outside any layer module belong
        to no layer. A layer that is not in the model contributes none, with a logged warning,
        as in Xfer.

        Parameters
        ----------
        layer_names : list of str
            Layers of the model.

        Returns
        -------
        list of str
            ``state_dict`` keys of those layers.

        Raises
        ------
        InvalidTypeError
            ``layer_names`` is not a list (a single name must be given as ``[name]``).
        """
        names: list[str] = []
        for layer in self._present_layers(layer_names):
            path = self._layers[layer].module_path
            if path is None:
                continue
            for name in _module_state_names(self.model, path):
                if name not in names:
                    names.append(name)
        return names

    # ------------------------------------------------------------------ editing
    def _check_count(self, num_layers: Any, argument: str, where: str) -> int:
        if isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
            raise InvalidArgumentError(f"{argument} must be a positive integer, got {num_layers!r}.")
        available = len([layer for layer in self._layers.values() if layer.module_path is not None])
        if num_layers >= available:
            raise ModelError(
                f"Cannot drop {num_layers} layer(s) from the {where} of a model with {available} "
                f"layers: at most {available - 1} can be dropped."
            )
        return int(num_layers)

    def _editable_graph(self, operation: str) -> Any:
        if self.graph is None:
            raise ModelArchitectureError(
                f"Cannot {operation}: the model does not trace with torch.fx "
                f"({self.trace_error or 'tracing disabled'}), so its graph cannot be edited. Edit "
                "the module in Python (or make its forward traceable) and build a new handler."
            )
        graph = fx.Graph()
        output_value = graph.graph_copy(self.graph, {})
        graph.output(output_value)
        return graph

    def _single_output(self, graph: Any, operation: str) -> Any:
        output = self._output_node(graph)
        value = output.args[0]
        if not isinstance(value, fx.Node):
            count = len(value) if isinstance(value, (tuple, list, dict)) else 0
            raise ModelArchitectureError(
                f"The model has {count} outputs (it returns a {type(value).__name__}); layers can "
                f"only be {operation} a model with one output tensor."
            )
        return value

    def drop_layer_top(self, num_layers_to_drop: int = 1) -> None:
        """Remove the ``num_layers_to_drop`` layers nearest the output.

        Function calls after a dropped layer (a final ``flatten`` or ``normalize``) go with it;
        the new output is the input of the last dropped layer.

        Parameters
        ----------
        num_layers_to_drop : int, default=1
            How many layers.

        Raises
        ------
        ModelArchitectureError
            The model has several outputs, its output combines several layers, or a layer to drop
            reads several inputs (the new output would be ambiguous); or the model does not trace.
        ModelError
            Dropping as many layers as the model has, or more.
        """
        count = self._check_count(num_layers_to_drop, "num_layers_to_drop", "top")
        if _is_flat_sequential(self.model):
            items = list(self.model._modules.items())
            self._set_model(nn.Sequential(OrderedDict(items[: len(items) - count])))
            return
        graph = self._editable_graph("drop layers")
        for _ in range(count):
            value = self._single_output(graph, "dropped from")
            sources = _nearest_layers(value)
            if len(sources) != 1 or sources[0].op != "call_module":
                names = [_node_label(node) for node in sources]
                raise ModelArchitectureError(
                    f"Cannot drop the top layer: the model's output combines {len(sources)} layers "
                    f"({names}), so the new output would be ambiguous."
                )
            top = sources[0]
            inputs = [node for node in top.all_input_nodes if node.op != "get_attr"]
            if len(inputs) != 1:
                names = [_node_label(node) for node in inputs]
                raise ModelArchitectureError(
                    f"Cannot drop layer {top.target!r}: it has {len(inputs)} input layers ({names}), "
                    "so the new output would be ambiguous."
                )
            self._output_node(graph).args = (inputs[0],)
            _remove_unused(graph)
        self._adopt_graph(graph, {})

    def drop_layer_bottom(self, num_layers_to_drop: int = 1) -> None:
        """Remove the ``num_layers_to_drop`` layers nearest the input; what read them reads the input.

        Parameters
        ----------
        num_layers_to_drop : int, default=1
            How many layers.

        Raises
        ------
        ModelArchitectureError
            The input feeds several layers, or the layer to drop reads several inputs; or the
            model does not trace.
        ModelError
            Dropping as many layers as the model has, or more.
        """
        count = self._check_count(num_layers_to_drop, "num_layers_to_drop", "bottom")
        if _is_flat_sequential(self.model):
            items = list(self.model._modules.items())
            self._set_model(nn.Sequential(OrderedDict(items[count:])))
            return
        graph = self._editable_graph("drop layers")
        for _ in range(count):
            placeholder = _first_placeholder(graph)
            readers = _nearest_readers(placeholder)
            if len(readers) != 1 or readers[0].op != "call_module":
                names = [_node_label(node) for node in readers]
                raise ModelArchitectureError(
                    f"The input {placeholder.target!r} feeds {len(readers)} layers ({names}): the "
                    "bottom layer is ambiguous, so it cannot be dropped."
                )
            bottom = readers[0]
            inputs = [node for node in bottom.all_input_nodes if node.op != "get_attr"]
            if len(inputs) != 1:
                raise ModelArchitectureError(
                    f"Cannot drop layer {bottom.target!r}: it reads {len(inputs)} inputs "
                    f"({[_node_label(n) for n in inputs]}), which the input alone cannot replace."
                )
            bottom.replace_all_uses_with(placeholder)
            _remove_unused(graph)
        self._adopt_graph(graph, {})

    def _check_new_layers(self, layer_list: Any) -> list[tuple[str, Any]]:
        """``[(name, module)]`` from a list of modules, of ``(name, module)`` pairs, or a dict."""
        if isinstance(layer_list, dict):
            pairs = list(layer_list.items())
        elif _is_module(layer_list) or not isinstance(layer_list, (list, tuple)):
            raise InvalidTypeError(
                "layer_list must be a list of torch.nn modules (or of (name, module) pairs, or a "
                "dict of name to module), e.g. [nn.Linear(1280, 5)]."
            )
        else:
            pairs = [item if isinstance(item, tuple) and len(item) == 2 else (None, item) for item in layer_list]
        if not pairs:
            raise InvalidArgumentError("layer_list is empty: give at least one layer to add.")
        existing_modules = {id(module) for module in self.model.modules()}
        taken = {name.split("#")[0] for name in self._layers} | {n for n, _ in self.model.named_modules()}
        taken |= {n for n, _ in self.model.named_parameters()} | {n for n, _ in self.model.named_buffers()}
        taken |= set(dir(self.model))
        digits = bool(self.model._modules) and all(k.isdigit() for k in self.model._modules)
        next_index = max((int(k) for k in self.model._modules), default=-1) + 1 if digits else 0
        result: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for position, (name, module) in enumerate(pairs):
            if not _is_module(module):
                raise InvalidTypeError(
                    f"Layer {position} of the list is a {type(module).__name__}, not a "
                    "torch.nn.Module: pass modules such as nn.Linear(1280, 5)."
                )
            if id(module) in existing_modules or any(module is other for _, other in result):
                raise InvalidArgumentError(
                    f"Layer {position} of the list ({_type_name(module)}) is already part of the "
                    "model: add a new module (copy.deepcopy(...) to share nothing)."
                )
            if name is None:
                if digits:
                    name, next_index = str(next_index), next_index + 1
                else:
                    base = re.sub(r"(?<!^)(?=[A-Z])", "_", _type_name(module)).lower()
                    name, suffix = base, 1
                    while name in taken or name in seen:
                        name, suffix = f"{base}_{suffix}", suffix + 1
            if not isinstance(name, str) or not name:
                raise InvalidTypeError(f"Layer {position} of the list has name {name!r}: names are non-empty strings.")
            bad = [part for part in (".", "#") if part in name]
            if bad or not (name.isidentifier() or name.isdigit()) or name == OUTPUT_LAYER:
                raise InvalidArgumentError(
                    f"Layer name {name!r} is not allowed: use a Python identifier (or digits), "
                    f"without '.' or '#', other than {OUTPUT_LAYER!r}."
                )
            if name in taken or name in seen:
                raise InvalidArgumentError(
                    f"A layer named {name!r} already exists in the model; give the new layer a "
                    "unique name."
                )
            seen.add(name)
            result.append((name, module))
        return result

    def add_layer_top(self, layer_list: list) -> None:
        """Stack new ``torch.nn`` modules on the output, in list order.

        Parameters
        ----------
        layer_list : list of torch.nn.Module, list of (str, torch.nn.Module), or dict
            The new layers; unnamed ones are named after their class (``linear``), or numbered
            on after the model's last index when the model's children are numbered (Sequential).

        Raises
        ------
        InvalidArgumentError
            A new layer's name clashes with the model or is not allowed; a module already in the
            model; an empty list.
        InvalidTypeError
            Not a list, or an item that is not a module.
        ModelArchitectureError
            The model has several outputs, or does not trace.
        ModelError
            The model ends in a softmax (``nn.Softmax``, ``nn.LogSoftmax`` or a call of
            ``softmax``/``log_softmax``), its output layer: drop it first.
        """
        layers = self._check_new_layers(layer_list)
        if _is_flat_sequential(self.model):
            name, last = next(reversed(self.model._modules.items()))
            _refuse_above_output_layer(name, last)
            self._set_model(nn.Sequential(OrderedDict([*self.model._modules.items(), *layers])))
            return
        graph = self._editable_graph("add layers")
        value = self._single_output(graph, "added to")
        if value.op == "call_module":
            _refuse_above_output_layer(str(value.target), self.model.get_submodule(str(value.target)))
        elif value.op in ("call_function", "call_method") and _name_of(value.target) in _OUTPUT_FUNCTIONS:
            _refuse_above_output_layer(value.name, _name_of(value.target))
        output = self._output_node(graph)
        with graph.inserting_before(output):
            for name, _ in layers:
                value = graph.call_module(name, (value,))
        output.args = (value,)
        self._adopt_graph(graph, dict(layers))

    def add_layer_bottom(self, layer_list: list) -> None:
        """Insert new ``torch.nn`` modules between the input and the first layer, in list order.

        The first new layer reads the input; everything that read the input reads the last.
        Same errors as :meth:`add_layer_top`.

        Parameters
        ----------
        layer_list : list of torch.nn.Module, list of (str, torch.nn.Module), or dict
            The new layers, named as for :meth:`add_layer_top`.
        """
        layers = self._check_new_layers(layer_list)
        if _is_flat_sequential(self.model):
            self._set_model(nn.Sequential(OrderedDict([*layers, *self.model._modules.items()])))
            return
        graph = self._editable_graph("add layers")
        placeholder = _first_placeholder(graph)
        users = list(placeholder.users)
        value = placeholder
        first_computation = next(node for node in graph.nodes if node.op != "placeholder")
        with graph.inserting_before(first_computation):
            for name, _ in layers:
                value = graph.call_module(name, (value,))
        for user in users:
            user.replace_input_with(placeholder, value)
        self._adopt_graph(graph, dict(layers))

    def _adopt_graph(self, graph: Any, new_modules: dict) -> None:
        """Build a GraphModule of ``graph`` from the model's modules and ``new_modules``."""
        graph.lint()
        root: dict[str, Any] = {}
        for node in graph.nodes:
            if node.op in ("call_module", "get_attr"):
                target = str(node.target)
                root[target] = new_modules[target] if target in new_modules else _get_attr_path(self.model, target)
        name = type(self.model).__name__
        module = fx.GraphModule(root, graph, class_name=name)
        module.train(self.model.training)
        self._set_model(module)

    def update_sym(self, new_model: Any) -> None:
        """Replace the network (Xfer's ``update_sym`` for torch): frozen layers it lacks are forgotten.

        Parameters
        ----------
        new_model : torch.nn.Module
            The new network.
        """
        if not _is_module(new_model):
            raise InvalidTypeError(f"new_model must be a torch.nn.Module, got {type(new_model).__name__}.")
        self._set_model(new_model)

    # ------------------------------------------------------------------ features
    def get_layer_output(
        self,
        data_iterator: Any,
        layer_names: list[str],
        context: Any = None,
        batch_size: int | None = None,
        verbose: bool = False,
        pooling: str | None = None,
    ) -> tuple[OrderedDict, np.ndarray | None]:
        """Outputs of the given layers for every example, flattened per example.

        The model runs in eval mode (BatchNorm uses its stored statistics, Dropout is off) under
        ``torch.inference_mode()``; the modules' modes are restored afterwards. A traced model
        runs a graph pruned after the deepest requested layer; an untraced one stops its forward
        (through a hook) once the last requested layer has run. Batches stream into preallocated
        arrays.

        Parameters
        ----------
        data_iterator : numpy.ndarray, torch.Tensor, torch Dataset or DataLoader, mx.io.DataIter, list of str
            Examples along the first axis; a Dataset or DataLoader of ``x`` or ``(x, y)``; for a
            model whose forward takes a list of strings (:func:`xfer.zoo.minilm`), a list of
            strings. (Xfer's name for the argument.)
        layer_names : list of str
            Layers to read, returned in this order (``"output"``: the model's return value).
        context : str or torch.device, optional
            Device for this call (default: the handler's). The model is copied there for the call
            when its parameters live elsewhere.
        batch_size : int, optional
            Batch size for array, Dataset and text data (default 64).
        verbose : bool or int, default=False
            Show a progress bar.
        pooling : {None, 'avg'}, default=None
            ``'avg'`` averages each feature map over its spatial axes before flattening
            (``N x C x H x W -> N x C``, batch by batch, so large maps are never stored);
            outputs with two axes are unchanged. None keeps every value.

        Returns
        -------
        features : OrderedDict of str to numpy.ndarray
            ``N x D_layer`` float32 array per layer.
        labels : numpy.ndarray or None
            The data's labels (Dataset/DataLoader/DataIter), or None when it has none.

        Raises
        ------
        LayerNotFoundError
            Unknown layer name.
        InvalidTypeError, InvalidArgumentError
            Unreadable data, or data that does not fit the model.
        ModelError
            A requested layer gives no single tensor, or did not run.
        DeviceUnavailableError
            A CUDA context on a machine or torch build without one.
        """
        layer_names = self._check_layer_names(layer_names)
        if not layer_names:
            raise InvalidArgumentError("layer_names is empty: give at least one layer.")
        check_pooling(pooling)
        device = to_torch(context, default=self.devices[0])
        batches = as_batches(data_iterator, batch_size=batch_size, allow_text=True)
        runner = self._runner(layer_names)
        if not _all_on(runner.model, device):
            runner = runner.moved(device)
        modes = {module: module.training for module in runner.model.modules()}
        results: list[Any] | None = None
        chunks: list[list[np.ndarray]] = [[] for _ in layer_names]
        labels: list[np.ndarray] = []
        filled = 0
        try:
            runner.model.eval()
            with torch.inference_mode(), torch_threads():
                for batch in _progress(batches, verbose, "Extracting features"):
                    valid = batch.num_valid
                    if batches.is_text:
                        inputs = list(batch.data)
                    else:
                        inputs = torch.from_numpy(batch.data[:valid]).to(device, non_blocking=True)
                    try:
                        values = runner(inputs)
                    except (RuntimeError, TypeError, ValueError, IndexError) as error:
                        if isinstance(error, XferError):
                            raise
                        shape = "texts" if batches.is_text else f"examples of shape {batches.sample_shape}"
                        given = None if batches.is_text else tuple(batches.sample_shape)
                        known = self.input_shape is not None and tuple(self.input_shape) != given
                        raise InvalidArgumentError(
                            f"The data ({shape}) does not fit the model: {_first_line(error)}"
                            + (f". The model last read examples of shape {self.input_shape}." if known else ".")
                            + ("" if given is None else _channel_axis_hint(runner.model, given))
                        ) from error
                    flat = [
                        self._flatten(name, value, valid, pooling)
                        for name, value in zip(layer_names, values)
                    ]
                    if batches.num_examples is not None:
                        if results is None:
                            results = [
                                np.empty((batches.num_examples, f.shape[1]), dtype=np.float32) for f in flat
                            ]
                        for name, target, value in zip(layer_names, results, flat):
                            if value.shape[1] != target.shape[1]:
                                raise _size_changed(name, target.shape[1], value.shape[1])
                            torch.from_numpy(target[filled : filled + valid]).copy_(value)
                    else:
                        for name, chunk, value in zip(layer_names, chunks, flat):
                            if chunk and chunk[0].shape[1] != value.shape[1]:
                                raise _size_changed(name, chunk[0].shape[1], value.shape[1])
                            chunk.append(value.to("cpu", torch.float32).numpy())
                    if batch.labels is not None:
                        labels.append(np.asarray(batch.labels))
                    filled += valid
        finally:
            for module, mode in modes.items():
                module.training = mode
            runner.release()
        if results is None:
            results = [np.concatenate(chunk) if chunk else np.empty((0, 0), np.float32) for chunk in chunks]
        else:
            results = [r[:filled] for r in results]
        self.input_shape = tuple(batches.sample_shape)
        label_array = np.concatenate(labels) if labels and batches.has_labels else None
        return OrderedDict(zip(layer_names, results)), label_array

    @staticmethod
    def _flatten(name: str, value: Any, valid: int, pooling: str | None = None) -> Any:
        if not isinstance(value, torch.Tensor):
            raise ModelError(
                f"Layer {name!r} gives a {type(value).__name__}, not one tensor: read a layer whose "
                "output is a tensor."
            )
        if value.ndim == 0 or value.shape[0] != valid:
            raise ModelError(
                f"Layer {name!r} gives a tensor of shape {tuple(value.shape)}, not one row per "
                f"example of the batch ({valid}): it cannot be read as per-example features."
            )
        return pool_spatial(value, pooling).reshape(valid, -1)

    def _runner(self, layer_names: list[str]) -> _Runner:
        """A callable giving the requested layers' outputs for one batch (cached per layer set)."""
        key = tuple(layer_names)
        if self._cache is not None and self._cache[0] == key and self._cache[1] is self.model:
            return self._cache[2]
        if self.graph is not None:
            runner: _Runner = _FxRunner(self.model, self.graph, [self._layers[n] for n in layer_names])
        else:
            runner = _HookRunner(self.model, [self._layers[n] for n in layer_names])
        self._cache = (key, self.model, runner)
        return runner

    # ------------------------------------------------------------------ training module
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
    ) -> Any:
        """A trainable copy of the network with fixed and re-initialised parameters.

        Parameters
        ----------
        iterator : optional
            Unused (Xfer's MXNet ``get_module`` needs data shapes; a torch module does not).
        fixed_layer_parameters, random_layer_parameters : list of str, optional
            Xfer's spelling: parameter names (``'conv1.weight'``) to keep fixed / to re-initialise.
            Names the model does not have are ignored with a logged warning, as in Xfer.
        fixed_layers, random_layers : list of str, optional
            The same by layer name. Layers frozen with :meth:`freeze` are fixed too; random
            parameters are never fixed.
        context : str or torch.device, optional
            Device of the copy (default: the handler's).
        seed : int, optional
            Seed of the re-initialisation (default: torch's global generator).

        Returns
        -------
        torch.nn.Module
            A deep copy in train mode: fixed parameters have ``requires_grad=False``; a fixed
            BatchNorm layer (fixed by layer, or all of its parameters fixed) stays in eval mode
            whatever ``train()`` says, so it normalises with its stored statistics and never
            updates them; random layers are re-initialised with their ``reset_parameters()``.

        Raises
        ------
        LayerNotFoundError
            An unknown layer name.
        ModelError
            A random layer has no ``reset_parameters()``.
        """
        known = set(self.arg_params) | set(self.aux_params)
        fixed_layer_parameters = self._prune_parameters(fixed_layer_parameters, "fixed_layer_parameters", known)
        random_layer_parameters = self._prune_parameters(random_layer_parameters, "random_layer_parameters", known)
        fixed_layer_set = set(self._frozen) | set(self._check_layer_names(fixed_layers or [], "fixed_layers"))
        random_layer_list = self._check_layer_names(random_layers or [], "random_layers")
        fixed = set(fixed_layer_parameters or []) | set(self.get_layer_parameters(sorted(fixed_layer_set)))
        random = set(random_layer_parameters or []) | set(self.get_layer_parameters(random_layer_list))
        fixed -= random
        device = to_torch(context, default=self.devices[0])

        model = copy.deepcopy(self.model)
        model.train()
        generator_state = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with generator_state, torch.no_grad():
            if seed is not None:
                torch.manual_seed(int(seed))
            self._reinitialise(model, random)
        for name, parameter in model.named_parameters():
            if name in fixed:
                parameter.requires_grad_(False)
        fixed_bn_paths = set()
        for name, layer in self._layers.items():
            if layer.module_path is None:
                continue
            module = _get_submodule(model, layer.module_path)
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            own = set(_module_state_names(model, layer.module_path))
            own_parameters = {n for n in own if n in dict(model.named_parameters())}
            if name in fixed_layer_set and not (own & random) or (own_parameters and own_parameters <= fixed):
                fixed_bn_paths.add(layer.module_path)
        for path in fixed_bn_paths:
            _freeze_batchnorm(_get_submodule(model, path))
        return model.to(device)

    def _reinitialise(self, model: Any, parameter_names: set[str]) -> None:
        owners: dict[str, list[str]] = {}
        for name in parameter_names:
            path, _, leaf = name.rpartition(".")
            owners.setdefault(path, []).append(leaf)
        for path, leaves in owners.items():
            module = _get_submodule(model, path)
            if not callable(getattr(module, "reset_parameters", None)):
                raise ModelError(
                    f"Cannot re-initialise {path!r} ({_type_name(module)}): it has no "
                    "reset_parameters() method. Re-initialise it yourself, or leave it out of "
                    "random_layers."
                )
            fresh = copy.deepcopy(module)
            fresh.reset_parameters()
            state = fresh.state_dict()
            for leaf in leaves:
                getattr(module, leaf).copy_(state[leaf])

    # ------------------------------------------------------------------ save, load, show
    def save_checkpoint(self, prefix: str) -> None:
        """Write ``<prefix>.safetensors`` (parameters and buffers) and ``<prefix>.json`` (layers).

        Both are written atomically (temp file + rename). Nothing is pickled: load with
        :meth:`load_checkpoint`, giving a module of the same structure.

        Parameters
        ----------
        prefix : str
            Path prefix of the two files.
        """
        from safetensors.torch import save_file

        prefix = os.fspath(serialization.save_prefix(prefix))
        state = {name: value.detach().to("cpu").contiguous().clone() for name, value in self.model.state_dict().items()}
        manifest = {
            "format_version": FORMAT_VERSION,
            "backend": "torch",
            "model_class": type(self.model).__name__,
            "tracing": self.tracing,
            "layer_names": self.layer_names,
            "layer_types": list(self.layer_type_dict.values()),
            "frozen_layers": self.frozen_layers,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "tensors": {name: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for name, v in state.items()},
        }
        # One save: interrupted at any moment, the prefix keeps the old pair or gets the new one.
        with serialization.saving(Path(prefix).parent) as save:
            weights = f"{prefix}.safetensors"
            atomic_write(weights, lambda path: save_file(state, path, metadata={"format": "pt"}))
            manifest["safetensors_sha256"] = save.sha256(Path(weights).name)
            serialization.atomic_write_bytes(
                f"{prefix}.json", json.dumps(manifest, indent=1, allow_nan=False).encode("utf-8")
            )

    @classmethod
    def checkpoint_files(cls, prefix: Any, epoch: int = 0) -> list[str]:
        """``<prefix>.safetensors`` (and its ``.json``).

        Parameters
        ----------
        prefix : str or path-like
        epoch : int, default=0

        Returns
        -------
        list of str
        """
        return [f"{os.fspath(prefix)}.safetensors"]

    @classmethod
    def open_checkpoint(
        cls, prefix: Any, epoch: int = 0, model: Any = None, **kwargs: Any
    ) -> TorchModelHandler | None:
        """The torch checkpoint at ``prefix`` when ``model`` is given or its weights file exists.

        Parameters
        ----------
        prefix : str or path-like
        epoch : int, default=0
        model : object, optional
        **kwargs
            Passed to :meth:`load_checkpoint`.

        Returns
        -------
        ModelHandler or None
        """
        if model is None and not os.path.exists(cls.checkpoint_files(prefix)[0]):
            return None
        return cls.load_checkpoint(prefix, model=model, **kwargs)

    @classmethod
    def load_checkpoint(cls, prefix: str, model: Any = None, **kwargs: Any) -> TorchModelHandler:
        """Load ``<prefix>.safetensors`` into ``model`` (the architecture) and return its handler.

        Parameters
        ----------
        prefix : str
            What :meth:`save_checkpoint` was given.
        model : torch.nn.Module or TorchModelHandler
            A network of the saved structure (same parameter names and shapes); its tensors are
            overwritten with the saved values. For an edited handler, apply the same edits to a
            fresh source model and pass that handler.
        **kwargs
            Passed to the constructor (``context_function``, ``tracing``).

        Returns
        -------
        TorchModelHandler

        Raises
        ------
        InvalidTypeError
            ``model`` is missing or not a module.
        ModelFileNotFoundError
            A file is missing.
        SerializationError
            A corrupt file, or a model whose parameters or layers differ from the saved ones (the
            message lists the differences).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        prefix = os.fspath(prefix)
        if model is None or not (_is_module(model) or isinstance(model, TorchModelHandler)):
            raise InvalidTypeError(
                "load_checkpoint needs the architecture: pass model=<a torch.nn.Module of the saved "
                "structure> (xfer never unpickles code)."
            )
        paths = (f"{prefix}.json", f"{prefix}.safetensors")
        with serialization.reading(Path(prefix).parent):
            for path in paths:
                if not serialization.resolve(path).is_file():
                    raise ModelFileNotFoundError(f"Model file {path!r} does not exist: check the prefix {prefix!r}.")
            try:
                manifest = serialization.read_json_file(paths[0], "The file")
            except SerializationError as error:
                raise SerializationError(
                    f"{paths[0]!r} is not a valid xfer torch checkpoint manifest: {error}"
                ) from None
            if not isinstance(manifest, dict) or manifest.get("backend") != "torch":
                raise SerializationError(
                    f"{paths[0]!r} is not a valid xfer torch checkpoint manifest: not a torch "
                    "ModelHandler manifest."
                )
            version = manifest.get("format_version")
            if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
                raise SerializationError(
                    f"{paths[0]!r} has format version {version!r}; this xfer reads versions up to "
                    f"{FORMAT_VERSION}. Upgrade xfer."
                )
            weights = serialization.resolve(paths[1])
            if "safetensors_sha256" in manifest:
                serialization.verify_file(
                    paths[1],
                    manifest["safetensors_sha256"],
                    "The weights file",
                    f"It belongs with {paths[0]!r}; save the checkpoint again.",
                )
            try:
                state = load_file(weights, device="cpu")
            except (SafetensorError, OSError, ValueError) as error:
                raise SerializationError(
                    f"{paths[1]!r} is not a valid safetensors file (corrupt or truncated): {_first_line(error)}"
                ) from None
        for key in ("layer_names", "frozen_layers", "input_shape"):
            value = manifest.get(key)
            if value is not None and not (
                isinstance(value, list) and all(isinstance(v, (str if key != "input_shape" else int)) for v in value)
            ):
                raise SerializationError(f"{paths[0]!r}: {key!r} must be a list, got {value!r:.80}.")
        handler = cls(model, **kwargs)
        target = handler.model.state_dict()
        problems = [f"missing in the file: {name}" for name in target if name not in state]
        problems += [f"not in the model: {name}" for name in state if name not in target]
        problems += [
            f"{name}: saved {tuple(state[name].shape)}, model has {tuple(target[name].shape)}"
            for name in target if name in state and tuple(state[name].shape) != tuple(target[name].shape)
        ]  # fmt: skip
        if problems:
            shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise SerializationError(
                f"The checkpoint {prefix!r} does not match the model's parameters ({shown}). Pass a "
                "model of the saved structure (with the same edits applied)."
            )
        saved_layers = manifest.get("layer_names")
        if saved_layers is not None and saved_layers != handler.layer_names:
            differ = sorted(set(saved_layers) ^ set(handler.layer_names))[:10]
            raise SerializationError(
                f"The checkpoint {prefix!r} was saved from a model with other layers (differing: "
                f"{differ or 'the order'}). Pass a model of the saved structure."
            )
        with torch.no_grad():
            handler.model.load_state_dict(state, strict=True)
        handler._frozen = set(manifest.get("frozen_layers") or []) & set(handler.layer_names)
        if manifest.get("input_shape") is not None:
            handler.input_shape = tuple(manifest["input_shape"])
        return handler

    def visualize_net(self, filename: str | None = None, format: str = "pdf") -> Any:
        """The graph as a ``graphviz.Digraph``; with ``filename``, also rendered to a file.

        A traced model shows every node of its fx graph (layers as boxes with their class name,
        function calls as ellipses); an untraced one shows its layers without connections.

        Parameters
        ----------
        filename : str, optional
            Render to this file (needs graphviz's ``dot`` program).
        format : str, default="pdf"
            File format (``"pdf"``, ``"svg"``, ``"png"``...).

        Returns
        -------
        graphviz.Digraph

        Raises
        ------
        MissingDependencyError
            ``filename`` was given and graphviz's ``dot`` program is not installed.
        """
        import graphviz

        digraph = graphviz.Digraph(name=type(self.model).__name__, format=format)
        digraph.attr("node", fontsize="10")
        if self.graph is None:
            digraph.attr(label=f"{type(self.model).__name__}: not traced, layers in registration order")
            for name, layer in self._layers.items():
                digraph.node(_dot_id(name), f"{name}\\n{layer.type_name}", shape="box")
        else:
            names = {layer.node_name: name for name, layer in self._layers.items() if layer.node_name}
            for node in self.graph.nodes:
                if node.op == "get_attr":
                    continue
                if node.op == "call_module":
                    label = f"{names[node.name]}\\n{self._layers[names[node.name]].type_name}"
                    digraph.node(node.name, label, shape="box", style="filled", fillcolor="#d9e8fb")
                elif node.op == "placeholder":
                    digraph.node(node.name, str(node.target), shape="oval", style="filled", fillcolor="#eeeeee")
                elif node.op == "output":
                    digraph.node(node.name, "output", shape="oval", style="filled", fillcolor="#eeeeee")
                else:
                    digraph.node(node.name, _function_label(node), shape="ellipse")
                for source in node.all_input_nodes:
                    if source.op != "get_attr":
                        digraph.edge(source.name, node.name)
        if filename is not None:
            render_digraph(digraph, filename)
        return digraph

    def __repr__(self) -> str:
        layers = self.layer_names
        return f"TorchModelHandler({len(layers)} layers, {self.tracing}: {layers[0]} ... {layers[-1]})"


# ---------------------------------------------------------------------- runners
class _Runner:
    model: Any

    def __call__(self, inputs: Any) -> list:  # pragma: no cover - interface
        raise NotImplementedError

    def moved(self, device: Any) -> _Runner:
        """This runner on a copy of its model on ``device`` (the handler's model stays where it is)."""
        runner = copy.copy(self)
        runner.model = copy.deepcopy(self.model).to(device)
        runner.handles = []
        return runner

    def release(self) -> None:
        """Undo what the run installed (hooks)."""


class _FxRunner(_Runner):
    """A GraphModule of the model's graph pruned to the requested layers' nodes."""

    def __init__(self, model: Any, graph: Any, layers: list[_Layer]):
        pruned = fx.Graph()
        mapping: dict[Any, Any] = {}
        output_value = pruned.graph_copy(graph, mapping)
        original = {node.name: node for node in graph.nodes}
        outputs = []
        for layer in layers:
            outputs.append(output_value if layer.module_path is None else mapping[original[layer.node_name]])
        pruned.output(tuple(outputs))
        _remove_unused(pruned)
        root = {}
        for node in pruned.nodes:
            if node.op in ("call_module", "get_attr"):
                root[str(node.target)] = _get_attr_path(model, str(node.target))
        self.model = fx.GraphModule(root, pruned, class_name="PrunedFeatures")

    def __call__(self, inputs: Any) -> list:
        return list(self.model(inputs))


class _HookRunner(_Runner):
    """Forward hooks on the requested modules; the forward stops after the last one has run."""

    def __init__(self, model: Any, layers: list[_Layer]):
        self.model = model
        self.layers = layers
        self.wants_output = any(layer.module_path is None for layer in layers)
        self.handles: list[Any] = []
        self.captured: dict[str, Any] = {}

    def _install(self) -> None:
        paths = {layer.module_path for layer in self.layers if layer.module_path is not None}
        self.handles = []
        for path in paths:
            module = _get_submodule(self.model, path)
            self.handles.append(module.register_forward_hook(self._hook(path)))

    def _hook(self, path: str) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            if path in self.captured:  # a shared module: its first call is the layer
                return
            self.captured[path] = output
            if not self.wants_output and len(self.captured) == len(self.handles):
                raise _StopForward

        return hook

    def __call__(self, inputs: Any) -> list:
        if not self.handles:
            self._install()
        self.captured = {}
        output = None
        try:
            output = self.model(inputs)
        except _StopForward:
            pass
        missing = [layer.name for layer in self.layers if layer.module_path is not None and layer.module_path not in self.captured]
        if missing:
            raise ModelError(
                f"Layers {missing} did not run in the model's forward, so they have no output to "
                "read. Pick layers that the forward uses."
            )
        return [output if layer.module_path is None else self.captured[layer.module_path] for layer in self.layers]

    def release(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.captured = {}


# ---------------------------------------------------------------------- helpers
def _is_module(model: Any) -> bool:
    torch_module = sys.modules.get("torch")  # a torch module cannot exist before torch is imported
    return torch_module is not None and isinstance(model, torch_module.nn.Module)


def _leaf_modules(model: Any) -> list[tuple[str, Any]]:
    """Layer modules in registration order, not descending into a layer module's children."""
    leaves: list[tuple[str, Any]] = []

    def visit(module: Any, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if _is_leaf(child):
                leaves.append((path, child))
            else:
                visit(child, path)

    if _is_leaf(model):
        return []
    visit(model, "")
    return leaves


_OUTPUT_FUNCTIONS = ("softmax", "log_softmax")


def _name_of(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _refuse_above_output_layer(name: str, layer: Any) -> None:
    """``ModelError`` when ``layer`` (a module, or the name of a called function) is a softmax."""
    if isinstance(layer, str):
        is_output, kind = layer in _OUTPUT_FUNCTIONS, layer
    else:
        is_output = isinstance(layer, (nn.Softmax, nn.LogSoftmax, nn.Softmax2d))
        kind = type(layer).__name__
    if is_output:
        raise ModelError(
            f"The model ends in the output layer {name!r} ({kind}); nothing can be added above "
            "it. Drop it first with drop_layer_top()."
        )


def _is_flat_sequential(model: Any) -> bool:
    """An ``nn.Sequential`` (exactly) of distinct layer modules, edited without fx."""
    if type(model) is not nn.Sequential or not model._modules:
        return False
    children = list(model._modules.values())
    return len({id(c) for c in children}) == len(children) and all(c is not None and _is_leaf(c) for c in children)


def _module_state_names(model: Any, path: str) -> list[str]:
    """Qualified parameter and saved-buffer names of the module at ``path`` (parameters first)."""
    module = _get_submodule(model, path)
    prefix = f"{path}." if path else ""
    parameters = [prefix + name for name, _ in module.named_parameters()]
    buffers = [prefix + name for name in module.state_dict() if prefix + name not in parameters]
    return parameters + buffers


def _get_attr_path(model: Any, target: str) -> Any:
    value = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _remove_unused(graph: Any) -> None:
    """Erase every computation whose result nothing reads (placeholders stay: the signature)."""
    for node in reversed(list(graph.nodes)):
        if node.op not in ("placeholder", "output") and not node.users:
            graph.erase_node(node)


def _first_placeholder(graph: Any) -> Any:
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    if not placeholders:
        raise ModelArchitectureError("The model's forward takes no input.")
    return placeholders[0]


def _is_shape_query(node: Any) -> bool:
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    return node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] in _SHAPE_ATTRIBUTES


def _nearest_layers(node: Any) -> list[Any]:
    """The layer (call_module) or input nodes ``node`` is computed from, through function calls."""
    found: list[Any] = []
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op in ("call_module", "placeholder"):
            if current not in found:
                found.append(current)
            continue
        if _is_shape_query(current):
            continue
        stack.extend(n for n in current.all_input_nodes if n.op != "get_attr")
    return sorted(found, key=_node_position(node.graph))


def _nearest_readers(node: Any) -> list[Any]:
    """The layer (call_module) or output nodes reading ``node``, through function calls."""
    found: list[Any] = []
    stack, seen = list(node.users), set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op in ("call_module", "output"):
            if current not in found:
                found.append(current)
            continue
        if _is_shape_query(current):
            continue
        stack.extend(current.users)
    return sorted(found, key=_node_position(node.graph))


def _node_position(graph: Any) -> Any:
    order = {node: i for i, node in enumerate(graph.nodes)}
    return lambda node: order[node]


def _node_label(node: Any) -> str:
    return str(node.target) if node.op in ("call_module", "placeholder") else node.name


def _function_label(node: Any) -> str:
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    return f"{name}" if node.op == "call_method" else f"{name}()"


def _dot_id(name: str) -> str:
    return "layer_" + re.sub(r"[^0-9A-Za-z_]", "_", name)


def _size_changed(name: str, before: int, now: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"Layer {name!r} gives {now} values per example in this batch but {before} before: its "
        "output size depends on the batch (token-level layers of a text model do). Read a layer "
        "of fixed size (for a sentence encoder, 'output'), or pass batches of equal length."
    )


def _all_on(model: Any, device: Any) -> bool:
    return all(t.device == device for t in [*model.parameters(), *model.buffers()])


_FROZEN_BATCHNORM_CLASSES: dict[type, type] = {}


def _freeze_batchnorm(module: Any) -> None:
    """Keep a BatchNorm module in eval mode whatever ``train()`` is called with."""
    cls = type(module)
    if cls not in _FROZEN_BATCHNORM_CLASSES:

        def train(self: Any, mode: bool = True) -> Any:
            return cls.train(self, False)

        _FROZEN_BATCHNORM_CLASSES[cls] = type(
            f"Frozen{cls.__name__}", (cls,), {"train": train, "__module__": __name__, "frozen": True}
        )
    module.__class__ = _FROZEN_BATCHNORM_CLASSES[cls]
    module.train(False)
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def _progress(iterable: Any, verbose: Any, description: str) -> Any:
    from xfer._progress import progress_bar

    return progress_bar(iterable, verbose=verbose, desc=description, unit="batch")


def frozen_batchnorm_layers(model: Any) -> list[str]:
    """Names of the BatchNorm modules of a :meth:`TorchModelHandler.get_module` copy kept in eval mode."""
    return [name for name, module in model.named_modules() if getattr(module, "frozen", False) is True]


__all__ = ["TorchModelHandler", "OUTPUT_LAYER", "frozen_batchnorm_layers"]

