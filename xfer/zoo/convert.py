"""Convert a user's PyTorch CNN into an MXNet symbolic graph with its weights (via ``torch.fx``).

MXNet 1.9.1's ONNX importer fails on PyTorch's ONNX export of common CNNs (EfficientNet-Lite0:
ConstantOfShape, initialisers not listed as inputs, Reshape from a Constant). This converter
skips ONNX: it traces the PyTorch model with ``torch.fx``, records every tensor's shape with one
forward pass on zeros (so shape arithmetic such as ``x.view(x.size(0), -1)`` is folded into
constants), and emits one ``mx.sym`` operator per traced node, copying the weights.

Supported (anything else is refused with :class:`xfer.exceptions.ModelArchitectureError`, naming
the operator and the node)

* modules: ``Conv2d`` (groups, dilation, bias, numeric or "valid"/symmetric "same" padding),
  ``BatchNorm2d``, ``Linear``, ``ReLU``, ``ReLU6``, ``Hardtanh``, ``LeakyReLU``, ``Sigmoid``,
  ``Tanh``, ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``/``AdaptiveMaxPool2d`` to 1 x 1,
  ``Flatten``, ``ZeroPad2d``/``ConstantPad2d``, ``Softmax``, ``Dropout``/``Identity`` (dropped);
* functions and methods: ``+``, ``*`` (tensor or scalar), ``torch.add``, ``torch.cat``,
  ``torch.flatten``, ``F.relu``/``relu6``/``hardtanh``/``sigmoid``/``tanh``, ``F.pad``
  (constant), ``F.adaptive_avg_pool2d(x, 1)``, ``F.dropout``, ``.view``/``.reshape``/
  ``.flatten``, ``.mean`` over axes, ``.size``/``.contiguous``.

Usage::

    module = xfer.zoo.torch_to_mxnet(my_torch_cnn, input_shape=(1, 3, 224, 224))
    xfer.ModelHandler(module)   # edit and read features like any MXNet model

The converted graph's op names come from the PyTorch module paths (``layer1_0_conv1``),
parameters are ``<layer>_weight``/``_bias``/``_gamma``/``_beta``/``_moving_mean``/``_moving_var``.
"""

from __future__ import annotations

import operator
import re
from typing import Any

import numpy as np

from xfer.exceptions import InvalidArgumentError, InvalidTypeError, ModelArchitectureError
from xfer.zoo._deps import require

_FORBIDDEN_SUFFIXES = ("_output", "_label", "_weight", "_bias", "_moving_mean", "_moving_var",
                       "_gamma", "_beta")  # fmt: skip


class _Tensor:
    """A parameter or buffer read with ``get_attr``: its module path and value."""

    def __init__(self, target: str, value: Any) -> None:
        self.target = target
        self.value = value


def _fetch_attr(root: Any, target: str) -> Any:
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


class _Converter:
    def __init__(self, model: Any, input_shape: tuple[int, ...], data_name: str) -> None:
        self.torch = require("torch", "xfer.zoo.torch_to_mxnet")
        from xfer._mxnet import mx

        self.mx = mx
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.data_name = data_name
        self.arg_params: dict[str, Any] = {}
        self.aux_params: dict[str, Any] = {}
        self.values: dict[str, Any] = {}  # node name -> mx.sym.Symbol or a Python constant
        self.used_names: set[str] = set()

    # ------------------------------------------------------------------ helpers

    def name(self, raw: str) -> str:
        """A readable, unique MXNet op name from an fx node name or a module path."""
        base = re.sub(r"[^0-9A-Za-z]+", "_", str(raw)).strip("_") or "layer"
        if base.endswith(_FORBIDDEN_SUFFIXES) or base in ("data", self.data_name):
            base += "_op"
        name, i = base, 1
        while name in self.used_names:
            name, i = f"{base}_{i}", i + 1
        self.used_names.add(name)
        return name

    def param(self, name: str, tensor: Any, aux: bool = False) -> Any:
        array = self.mx.nd.array(tensor.detach().cpu().numpy().astype(np.float32))
        (self.aux_params if aux else self.arg_params)[name] = array
        return self.mx.sym.Variable(name)

    def refuse(self, node: Any, what: str) -> ModelArchitectureError:
        return ModelArchitectureError(
            f"torch_to_mxnet cannot convert {what} (fx node {node.name!r}, {node.op} "
            f"{getattr(node.target, '__name__', node.target)!s}). Supported: Conv2d, BatchNorm2d, "
            "Linear, ReLU/ReLU6/Hardtanh/LeakyReLU/Sigmoid/Tanh, Max/AvgPool2d, global adaptive "
            "pooling, Flatten/view/reshape, padding, add/mul/cat, mean, Dropout/Identity; see "
            "xfer.zoo.convert. Rewrite that part of the model, or convert the supported trunk "
            "(e.g. model.features) only."
        )

    def arg(self, value: Any) -> Any:
        fx = self.torch.fx
        if isinstance(value, fx.Node):
            return self.values[value.name]
        if isinstance(value, (tuple, list)):
            return type(value)(self.arg(v) for v in value)
        return value

    @staticmethod
    def out_shape(node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(int(s) for s in meta.shape) if hasattr(meta, "shape") else None

    def is_symbol(self, value: Any) -> bool:
        return isinstance(value, self.mx.sym.Symbol)

    def reshape_like(self, node: Any, x: Any, name: str) -> Any:
        shape = self.out_shape(node)
        if shape is None:
            raise self.refuse(node, "a reshape whose output shape is unknown")
        if len(shape) == 2:
            return self.mx.sym.Flatten(x, name=name)
        return self.mx.sym.reshape(x, shape=(0,) + shape[1:], name=name)

    # ------------------------------------------------------------------ modules

    def module(self, node: Any, module: Any, x: Any, name: str) -> Any:
        nn, mx = self.torch.nn, self.mx
        if isinstance(module, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            return x
        if type(module) is nn.Conv2d:
            if module.padding_mode != "zeros":
                raise self.refuse(node, f"Conv2d with padding_mode={module.padding_mode!r}")
            kernel, stride, dilation = (
                _pair(module.kernel_size),
                _pair(module.stride),
                _pair(module.dilation),
            )
            padding = module.padding
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
                if any(t % 2 for t in totals):
                    raise self.refuse(node, "Conv2d 'same' padding that is asymmetric")
                padding = tuple(t // 2 for t in totals)
            weight = self.param(f"{name}_weight", module.weight)
            inputs = [x, weight] + (
                [self.param(f"{name}_bias", module.bias)] if module.bias is not None else []
            )
            return mx.sym.Convolution(
                *inputs, num_filter=module.out_channels, kernel=kernel, stride=stride,
                dilate=dilation, pad=_pair(padding), num_group=module.groups,
                no_bias=module.bias is None, name=name,
            )  # fmt: skip
        if type(module) is nn.BatchNorm2d:
            if not module.track_running_stats or module.running_mean is None:
                raise self.refuse(node, "BatchNorm2d without running statistics")
            ones = self.torch.ones(module.num_features)
            gamma = module.weight if module.affine else ones
            beta = module.bias if module.affine else ones * 0
            momentum = 0.9 if module.momentum is None else 1.0 - float(module.momentum)
            return mx.sym.BatchNorm(
                x, self.param(f"{name}_gamma", gamma), self.param(f"{name}_beta", beta),
                self.param(f"{name}_moving_mean", module.running_mean, aux=True),
                self.param(f"{name}_moving_var", module.running_var, aux=True),
                eps=float(module.eps), momentum=momentum, fix_gamma=False, name=name,
            )  # fmt: skip
        if type(module) is nn.Linear:
            inputs = [x, self.param(f"{name}_weight", module.weight)]
            if module.bias is not None:
                inputs.append(self.param(f"{name}_bias", module.bias))
            return mx.sym.FullyConnected(
                *inputs, num_hidden=module.out_features, no_bias=module.bias is None,
                flatten=False, name=name,
            )  # fmt: skip
        if type(module) is nn.ReLU:
            return mx.sym.Activation(x, act_type="relu", name=name)
        if type(module) is nn.ReLU6:
            return mx.sym.clip(x, a_min=0.0, a_max=6.0, name=name)
        if type(module) is nn.Hardtanh:
            return mx.sym.clip(
                x, a_min=float(module.min_val), a_max=float(module.max_val), name=name
            )
        if type(module) is nn.LeakyReLU:
            return mx.sym.LeakyReLU(
                x, act_type="leaky", slope=float(module.negative_slope), name=name
            )
        if type(module) is nn.Sigmoid:
            return mx.sym.Activation(x, act_type="sigmoid", name=name)
        if type(module) is nn.Tanh:
            return mx.sym.Activation(x, act_type="tanh", name=name)
        if type(module) in (nn.MaxPool2d, nn.AvgPool2d):
            if type(module) is nn.MaxPool2d and _pair(module.dilation) != (1, 1):
                raise self.refuse(node, "MaxPool2d with dilation")
            extra = {}
            if type(module) is nn.AvgPool2d:
                if module.divisor_override is not None:
                    raise self.refuse(node, "AvgPool2d with divisor_override")
                extra["count_include_pad"] = bool(module.count_include_pad)
            return mx.sym.Pooling(
                x, kernel=_pair(module.kernel_size), stride=_pair(module.stride or module.kernel_size),
                pad=_pair(module.padding), pool_type="max" if type(module) is nn.MaxPool2d else "avg",
                pooling_convention="full" if module.ceil_mode else "valid", name=name, **extra,
            )  # fmt: skip
        if type(module) in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
            if _pair(module.output_size) != (1, 1):
                raise self.refuse(
                    node, f"{type(module).__name__} to {module.output_size} (only 1 x 1)"
                )
            kind = "avg" if type(module) is nn.AdaptiveAvgPool2d else "max"
            return mx.sym.Pooling(x, kernel=(1, 1), global_pool=True, pool_type=kind, name=name)
        if type(module) is nn.Flatten:
            return self.reshape_like(node, x, name)
        if type(module) in (nn.ZeroPad2d, nn.ConstantPad2d):
            value = float(getattr(module, "value", 0.0))
            return self._pad(node, x, module.padding, value, name)
        if type(module) is nn.Softmax:
            return mx.sym.softmax(x, axis=module.dim if module.dim is not None else 1, name=name)
        raise self.refuse(node, f"the module {type(module).__module__}.{type(module).__name__}")

    def _pad(self, node: Any, x: Any, padding: Any, value: float, name: str) -> Any:
        pad = list(padding) if isinstance(padding, (tuple, list)) else [int(padding)] * 4
        shape = self.out_shape(node)
        if len(pad) != 4 or shape is None or len(shape) != 4:
            raise self.refuse(node, "padding other than 2-D padding of an N x C x H x W tensor")
        left, right, top, bottom = (int(p) for p in pad)
        if min(pad) < 0:
            raise self.refuse(node, "negative padding (cropping)")
        return self.mx.sym.pad(
            x, mode="constant", constant_value=value,
            pad_width=(0, 0, 0, 0, top, bottom, left, right), name=name,
        )  # fmt: skip

    # ------------------------------------------------------------------ functions and methods

    def binary(self, node: Any, a: Any, b: Any, kind: str, name: str) -> Any:
        mx = self.mx
        if self.is_symbol(a) and self.is_symbol(b):
            shapes = [self.out_shape(n) for n in node.args[:2]]
            same = shapes[0] is not None and shapes[0] == shapes[1]
            if kind == "add":
                return (mx.sym.elemwise_add if same else mx.sym.broadcast_add)(a, b, name=name)
            return (mx.sym.elemwise_mul if same else mx.sym.broadcast_mul)(a, b, name=name)
        symbol, scalar = (a, b) if self.is_symbol(a) else (b, a)
        if not self.is_symbol(symbol) or not isinstance(scalar, (int, float)):
            raise self.refuse(node, f"{kind} of non-tensor values")
        op = mx.sym._internal._plus_scalar if kind == "add" else mx.sym._internal._mul_scalar
        return op(symbol, scalar=float(scalar), name=name)

    def layer_name(self, node: Any, weight: Any) -> str:
        """Name a functional layer after its weight's module path (``_conv_stem.weight`` -> conv_stem)."""
        if isinstance(weight, _Tensor) and "." in weight.target:
            return self.name(weight.target.rsplit(".", 1)[0])
        return self.name(node.name)

    def tensor(self, node: Any, value: Any, name: str, aux: bool = False) -> Any:
        if isinstance(value, _Tensor):
            return self.param(name, value.value, aux=aux)
        if self.is_symbol(value):
            raise self.refuse(node, "a weight computed inside the model (only stored parameters)")
        raise self.refuse(node, f"a weight of type {type(value).__name__}")

    def functional_layer(self, node: Any, target: Any, args: list, kwargs: dict) -> Any:
        F, mx = self.torch.nn.functional, self.mx
        names = {
            F.conv2d: ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
            F.linear: ("input", "weight", "bias"),
            F.batch_norm: ("input", "running_mean", "running_var", "weight", "bias", "training",
                           "momentum", "eps"),
        }[target]  # fmt: skip
        bound = dict(zip(names, args, strict=False))
        bound.update(kwargs)
        x, weight = bound["input"], bound.get("weight")
        name = self.layer_name(
            node, weight if target is not F.batch_norm else bound.get("running_mean")
        )
        if target is F.conv2d:
            padding = bound.get("padding", 0)
            if isinstance(padding, str):
                raise self.refuse(node, f"F.conv2d with padding={padding!r}")
            w = self.tensor(node, weight, f"{name}_weight")
            shape = tuple(weight.value.shape)
            bias = bound.get("bias")
            inputs = [x, w] + (
                [self.tensor(node, bias, f"{name}_bias")] if bias is not None else []
            )
            return mx.sym.Convolution(
                *inputs, num_filter=shape[0], kernel=shape[2:], stride=_pair(bound.get("stride", 1)),
                dilate=_pair(bound.get("dilation", 1)), pad=_pair(padding),
                num_group=int(bound.get("groups", 1)), no_bias=bias is None, name=name,
            )  # fmt: skip
        if target is F.linear:
            bias = bound.get("bias")
            inputs = [x, self.tensor(node, weight, f"{name}_weight")]
            if bias is not None:
                inputs.append(self.tensor(node, bias, f"{name}_bias"))
            return mx.sym.FullyConnected(
                *inputs, num_hidden=int(weight.value.shape[0]), no_bias=bias is None,
                flatten=False, name=name,
            )  # fmt: skip
        mean, var = bound["running_mean"], bound["running_var"]
        if mean is None or var is None:
            raise self.refuse(node, "F.batch_norm without running statistics")
        n = int(mean.value.shape[0])
        gamma = weight if weight is not None else _Tensor("", self.torch.ones(n))
        beta = bound.get("bias")
        beta = beta if beta is not None else _Tensor("", self.torch.zeros(n))
        return mx.sym.BatchNorm(
            x, self.tensor(node, gamma, f"{name}_gamma"), self.tensor(node, beta, f"{name}_beta"),
            self.tensor(node, mean, f"{name}_moving_mean", aux=True),
            self.tensor(node, var, f"{name}_moving_var", aux=True),
            eps=float(bound.get("eps", 1e-5)), momentum=1.0 - float(bound.get("momentum", 0.1) or 0.1),
            fix_gamma=False, name=name,
        )  # fmt: skip

    def function(self, node: Any) -> Any:
        torch, F, mx = self.torch, self.torch.nn.functional, self.mx
        target = node.target
        args = [self.arg(a) for a in node.args]
        kwargs = {k: self.arg(v) for k, v in node.kwargs.items()}
        if target in (F.conv2d, F.linear, F.batch_norm):
            return self.functional_layer(node, target, args, kwargs)
        if target is getattr and args[1] == "shape":
            return self.out_shape(node.args[0])
        if target is operator.getitem and not self.is_symbol(args[0]):
            return args[0][args[1]]  # indexing a constant shape
        name = self.name(node.name)
        if target in (operator.add, torch.add) and kwargs.get("alpha", 1) == 1:
            return self.binary(node, args[0], args[1], "add", name)
        if target in (operator.mul, torch.mul):
            return self.binary(node, args[0], args[1], "mul", name)
        if target in (F.relu, torch.relu):
            return mx.sym.Activation(args[0], act_type="relu", name=name)
        if target is F.relu6:
            return mx.sym.clip(args[0], a_min=0.0, a_max=6.0, name=name)
        if target is F.hardtanh:
            lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
            hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
            return mx.sym.clip(args[0], a_min=float(lo), a_max=float(hi), name=name)
        if target in (torch.sigmoid, F.sigmoid):
            return mx.sym.Activation(args[0], act_type="sigmoid", name=name)
        if target in (torch.tanh, F.tanh):
            return mx.sym.Activation(args[0], act_type="tanh", name=name)
        if target in (F.dropout, F.dropout2d):
            return args[0]
        if target is torch.flatten:
            return self.reshape_like(node, args[0], name)
        if target is torch.cat:
            tensors = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            ndim = len(self.out_shape(node) or ())
            if dim < 0:
                dim += ndim
            if dim == 0:
                raise self.refuse(node, "torch.cat along the batch axis")
            return mx.sym.concat(*tensors, dim=dim, name=name)
        if target is F.adaptive_avg_pool2d:
            if _pair(args[1] if len(args) > 1 else kwargs["output_size"]) != (1, 1):
                raise self.refuse(node, "F.adaptive_avg_pool2d to more than 1 x 1")
            return mx.sym.Pooling(
                args[0], kernel=(1, 1), global_pool=True, pool_type="avg", name=name
            )
        if target is F.pad:
            mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
            if mode != "constant":
                raise self.refuse(node, f"F.pad with mode={mode!r}")
            value = kwargs.get("value", args[3] if len(args) > 3 else 0.0) or 0.0
            return self._pad(
                node, args[0], args[1] if len(args) > 1 else kwargs["pad"], float(value), name
            )
        try:
            qualified = torch.fx.node._get_qualified_name(target)
        except Exception:  # pragma: no cover - private helper of torch.fx
            qualified = getattr(target, "__name__", str(target))
        raise self.refuse(node, f"the function {qualified}")

    def method(self, node: Any, name: str) -> Any:
        mx = self.mx
        args = [self.arg(a) for a in node.args]
        kwargs = {k: self.arg(v) for k, v in node.kwargs.items()}
        x, target = args[0], node.target
        if target == "size":
            shape = self.out_shape(node.args[0])
            return (
                shape
                if len(args) == 1 and "dim" not in kwargs
                else shape[kwargs.get("dim", args[-1])]
            )
        if not self.is_symbol(x):
            raise self.refuse(node, f"the method .{target}() on a non-tensor")
        if target in ("view", "reshape", "flatten"):
            return self.reshape_like(node, x, name)
        if target in ("contiguous", "clone"):
            return x
        if target == "mean":
            dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dims is None:
                raise self.refuse(node, ".mean() over all axes (the batch axis included)")
            keep = bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False))
            axis = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
            return mx.sym.mean(x, axis=axis, keepdims=keep, name=name)
        if target in ("relu", "sigmoid", "tanh"):
            return mx.sym.Activation(x, act_type=target, name=name)
        if target in ("add", "mul"):
            return self.binary(node, x, args[1], target, name)
        raise self.refuse(node, f"the method .{target}()")

    # ------------------------------------------------------------------ driver

    def run(self) -> Any:
        torch = self.torch
        from torch.fx.passes.shape_prop import ShapeProp

        try:
            graph_module = torch.fx.symbolic_trace(self.model)
        except Exception as error:  # torch.fx raises many types on untraceable code
            raise ModelArchitectureError(
                f"torch.fx cannot trace this model ({type(error).__name__}: {error}); only models "
                "with static control flow convert. Convert a traceable part (e.g. model.features)."
            ) from error
        inputs = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise self.refuse(inputs[-1] if inputs else next(iter(graph_module.graph.nodes)),
                              f"a model with {len(inputs)} inputs (only single-input models)")  # fmt: skip
        try:
            with torch.no_grad():
                ShapeProp(graph_module).propagate(torch.zeros(self.input_shape))
        except Exception as error:
            raise InvalidArgumentError(
                f"The model does not run on an input of shape {self.input_shape} "
                f"({type(error).__name__}: {error}); give the input_shape it expects."
            ) from error
        modules = dict(graph_module.named_modules())
        outputs = None
        for node in graph_module.graph.nodes:
            if node.op == "placeholder":
                self.values[node.name] = self.mx.sym.Variable(self.data_name)
            elif node.op == "call_module":
                x = self.arg(node.args[0])
                if len(node.args) != 1 or node.kwargs:
                    raise self.refuse(node, "a module called with several arguments")
                module = modules[node.target]
                self.values[node.name] = self.module(node, module, x, self.name(node.name))
            elif node.op == "call_function":
                self.values[node.name] = self.function(node)
            elif node.op == "call_method":
                self.values[node.name] = self.method(node, self.name(node.name))
            elif node.op == "get_attr":  # a parameter used functionally (F.conv2d(x, self.weight))
                self.values[node.name] = _Tensor(
                    node.target, _fetch_attr(graph_module, node.target)
                )
            elif node.op == "output":
                outputs = self.arg(node.args[0])
        if not self.is_symbol(outputs):
            raise ModelArchitectureError(
                "torch_to_mxnet converts models with one tensor output; this model returns "
                f"{type(outputs).__name__}."
            )
        return outputs


def torch_to_mxnet_symbol(
    model: Any, input_shape: tuple[int, ...], data_name: str = "data"
) -> tuple[Any, dict, dict]:
    """Convert a PyTorch CNN to ``(symbol, arg_params, aux_params)`` (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        A model ``torch.fx`` can trace, with the operators listed in :mod:`xfer.zoo.convert`.
        It is converted as in ``eval()`` mode (batch-norm running statistics, no dropout).
    input_shape : tuple of int
        The input shape, e.g. ``(1, 3, 224, 224)``: fixed sizes are folded into the graph.
    data_name : str, default="data"
        Name of the MXNet input variable.

    Returns
    -------
    symbol : mx.sym.Symbol
        The network's output (no softmax added).
    arg_params, aux_params : dict of str to mx.nd.NDArray

    Raises
    ------
    ModelArchitectureError
        The model does not trace, or uses an operator outside the supported set (named).
    InvalidTypeError, InvalidArgumentError
        ``model`` is not a torch module, or ``input_shape`` is not a shape.
    """
    torch = require("torch", "xfer.zoo.torch_to_mxnet")
    if not isinstance(model, torch.nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) < 2
        or not all(isinstance(s, (int, np.integer)) and s > 0 for s in input_shape)
    ):
        raise InvalidArgumentError(
            f"input_shape must be a tuple of positive ints such as (1, 3, 224, 224), got {input_shape!r}."
        )
    was_training = model.training
    model.eval()
    try:
        converter = _Converter(model, tuple(input_shape), data_name)
        symbol = converter.run()
    finally:
        model.train(was_training)
    return symbol, converter.arg_params, converter.aux_params


def torch_to_mxnet(
    model: Any,
    input_shape: tuple[int, ...],
    softmax: bool = True,
    context: Any = None,
) -> Any:
    """Convert a PyTorch CNN into an MXNet ``Module`` bound for inference with its weights.

    Parameters
    ----------
    model : torch.nn.Module
        See :func:`torch_to_mxnet_symbol`.
    input_shape : tuple of int
        e.g. ``(1, 3, 224, 224)``; the module is bound with this shape.
    softmax : bool, default=True
        Add a ``SoftmaxOutput`` named ``softmax`` after the model's output (the layout of Xfer's
        classifiers: drop 2 layers from the top to get the logits' input).
    context : str, mx.Context or list, optional
        Where to bind (default ``"cpu"``).

    Returns
    -------
    mx.mod.Module
        Data name ``data`` (label ``softmax_label`` when ``softmax``).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ...                           torch.nn.Linear(4, 2))
    >>> module = torch_to_mxnet(net, (1, 3, 8, 8))
    >>> module.output_shapes
    [('softmax_output', (1, 2))]
    """
    from xfer._mxnet import MODULE_LOGGER, mx
    from xfer.context import to_mxnet

    symbol, arg_params, aux_params = torch_to_mxnet_symbol(model, input_shape)
    contexts = to_mxnet(context)
    label_names: tuple[str, ...] = ()
    label_shapes = None
    if softmax:
        symbol = mx.sym.SoftmaxOutput(symbol, name="softmax")
        label_names = ("softmax_label",)
        label_shapes = [("softmax_label", (int(input_shape[0]),))]
    module = mx.mod.Module(symbol, data_names=("data",), label_names=label_names, context=contexts,
                           logger=MODULE_LOGGER)  # fmt: skip
    module.bind(data_shapes=[("data", tuple(int(s) for s in input_shape))], label_shapes=label_shapes,
                for_training=False)  # fmt: skip
    module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=False)
    return module
