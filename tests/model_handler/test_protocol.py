"""One ModelHandler protocol, run over every backend and bundled model.

The toy CNN exists for every backend with the same layer names (the MXNet one trained on digits
0-4, the torch one built here, and the same network as a list of torch.nn.functional calls for
the test-only third backend of ``tests/functional_backend.py``, which touches no file of the
package); the real zoo models (EfficientNet-Lite0 for MXNet and torch, MiniLM for torch) run the
read-only part of the protocol, marked slow. Every handler class is also checked against the
typed :class:`~xfer.model_handler.ModelHandlerProtocol`.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import functional_backend
import numpy as np
import pytest

from xfer.exceptions import (
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidTypeError,
    LayerNotFoundError,
    ModelError,
)
from xfer.model_handler import (
    ModelHandler,
    ModelHandlerProtocol,
    MXNetModelHandler,
    TorchModelHandler,
)
from xfer.model_handler.consts import LayerType

TOY_LAYERS = ["conv1", "bn1", "relu1", "pool1", "conv2", "relu2", "flatten", "fc1", "relu3", "fc2", "softmax"]


def torch_digits_cnn(seed: int = 0):
    """The toy CNN in torch (:func:`xfer.toy_models.torch_digits_cnn`), BatchNorm statistics made
    non-trivial by a few training-mode forwards on random data."""
    import torch

    from xfer.toy_models import torch_digits_cnn as build

    model = build(5, seed)
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 1, 8, 8) * 2 + 0.5)
    return model.eval()


@dataclass
class Case:
    """A backend x model: how to build it, what to feed it, what to expect."""

    name: str
    build: Callable[[], Any]
    data: Callable[[], Any]
    backend: str
    handler_class: type
    convolution_type: str | None
    feature_layers: list[str]
    editable: bool = True
    new_top_layer: Callable[[], Any] | None = None
    #: A new top layer of 2 outputs named ``name`` (in the form add_layer_top takes).
    named_top_layer: Callable[[str], Any] | None = None
    reload: Callable[[Any, str], Any] | None = None
    extra: dict = field(default_factory=dict)


def _digits(n: int = 12) -> np.ndarray:
    from xfer.toy_models import load_digit_images

    return load_digit_images(classes=range(5, 10))[0][:n]


def _mxnet_toy(request):
    return ModelHandler(request.getfixturevalue("digits_source_model"))


def _mxnet_new_top():
    from xfer._mxnet import mx

    return [mx.sym.FullyConnected(num_hidden=3, name="fc_new")]


def _efficientnet_images(n: int = 2, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


def _functional_toy(request):
    return ModelHandler(functional_backend.from_sequential(torch_digits_cnn()))


def _functional_linear(name: str, outputs: int):
    import torch

    return functional_backend.Layer(
        name, "linear", {"weight": torch.randn(outputs, 64), "bias": torch.zeros(outputs)}
    )


def _cases() -> list:
    from torch import nn

    toy_common = dict(convolution_type=None, feature_layers=["conv1", "bn1", "fc1", "softmax"])
    cases = [
        pytest.param(
            Case(
                "mxnet-toy", _mxnet_toy, _digits, "mxnet", MXNetModelHandler,
                new_top_layer=_mxnet_new_top, named_top_layer=lambda name: [_renamed_mxnet_fc(name)],
                reload=lambda h, prefix: MXNetModelHandler.load_checkpoint(prefix), **toy_common,
            ),
            id="mxnet-toy",
        ),
        pytest.param(
            Case(
                "torch-toy", lambda request: ModelHandler(torch_digits_cnn()), _digits, "torch",
                TorchModelHandler, new_top_layer=lambda: [nn.Linear(64, 3)],
                named_top_layer=lambda name: [(name, nn.Linear(64, 2))],
                reload=lambda h, prefix: TorchModelHandler.load_checkpoint(prefix, model=torch_digits_cnn(seed=5)),
                **toy_common,
            ),
            id="torch-toy",
        ),
        pytest.param(
            Case(
                "functional-toy", _functional_toy, _digits, "functional",
                functional_backend.FunctionalModelHandler,
                new_top_layer=lambda: [_functional_linear("fc_new", 3)],
                named_top_layer=lambda name: [_functional_linear(name, 2)],
                reload=lambda h, prefix: ModelHandler.load_checkpoint(prefix), **toy_common,
            ),
            id="functional-toy",
        ),
        pytest.param(
            Case(
                "mxnet-efficientnet", lambda request: _zoo_efficientnet("mxnet"), _efficientnet_images,
                "mxnet", MXNetModelHandler, convolution_type="Convolution",
                feature_layers=["stem_conv", "global_pool", "fc"], editable=False,
            ),
            id="mxnet-efficientnet",
            marks=[pytest.mark.slow, pytest.mark.assets],
        ),
        pytest.param(
            Case(
                "torch-efficientnet", lambda request: _zoo_efficientnet("torch"), _efficientnet_images,
                "torch", TorchModelHandler, convolution_type="Conv2dStaticSamePadding",
                feature_layers=["_conv_stem", "_avg_pooling", "_fc"], editable=False,
            ),
            id="torch-efficientnet",
            marks=[pytest.mark.slow, pytest.mark.assets],
        ),
        pytest.param(
            Case(
                "torch-minilm", lambda request: _zoo_minilm(), lambda: ["a cat sat on the mat", "stocks fell", "hi"],
                "torch", TorchModelHandler, convolution_type=None, feature_layers=["output"],
                editable=False,
            ),
            id="torch-minilm",
            marks=[pytest.mark.slow, pytest.mark.assets],
        ),
    ]  # fmt: skip
    return cases


_ZOO: dict[str, Any] = {}


def _zoo_efficientnet(backend: str):
    xfer_zoo = pytest.importorskip("xfer.zoo")
    try:
        if ("efficientnet", backend) not in _ZOO:
            _ZOO["efficientnet", backend] = xfer_zoo.efficientnet_lite0(backend, image_size=64)
    except ImportError as error:  # MissingDependencyError
        pytest.skip(str(error))
    return ModelHandler(_ZOO["efficientnet", backend])


def _zoo_minilm():
    import xfer.zoo

    try:
        if "minilm" not in _ZOO:
            _ZOO["minilm"] = xfer.zoo.minilm(max_length=32)
    except ImportError as error:
        pytest.skip(str(error))
    return ModelHandler(_ZOO["minilm"])


CASES = _cases()
EDITABLE = [case for case in CASES if case.values[0].editable]


@pytest.fixture(params=CASES)
def case(request):
    return request.param


@pytest.fixture(params=EDITABLE)
def editable_case(request):
    return request.param


def _handler(case: Case, request) -> Any:
    return case.build(request)


# ---------------------------------------------------------------------- inspection
def test_dispatch_and_layer_names(case, request):
    handler = _handler(case, request)
    assert handler.backend == case.backend
    assert type(handler) is case.handler_class
    names = handler.layer_names
    assert names and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
    if case.editable:
        assert names == TOY_LAYERS
    assert list(handler.layer_type_dict) == names
    for name in case.feature_layers:
        assert handler.get_layer_type(name) == handler.layer_type_dict[name]


def test_layer_types_match_case_insensitively(case, request):
    handler = _handler(case, request)
    convolutions = handler.get_layer_names_matching_type(LayerType.CONVOLUTION)
    if case.editable:
        assert convolutions == ["conv1", "conv2"]
        assert handler.get_layer_names_matching_type(LayerType.FULLYCONNECTED) == ["fc1", "fc2"]
        assert handler.get_layer_names_matching_type("BATCHNORM") == ["bn1"]
    if case.convolution_type is not None:
        assert convolutions and set(convolutions) <= set(handler.get_layer_names_matching_type(case.convolution_type.upper()))
    for name in convolutions:
        assert name in handler.layer_names
    assert handler.get_layer_names_matching_type("NoSuchLayerType") == []


def test_unknown_layers_are_value_errors_with_hints(case, request):
    handler = _handler(case, request)
    first = case.feature_layers[0]
    with pytest.raises(LayerNotFoundError, match=rf"{first + 'x'!r} is not in the model\. Did you mean: {first!r}"):
        handler.get_layer_type(first + "x")
    assert handler.get_layer_parameters(["no_such_layer"]) == []  # Xfer: none, with a warning
    with pytest.raises(InvalidTypeError, match=rf"pass \[{first!r}\]"):
        handler.get_layer_parameters(first)


def test_layer_parameters_are_exact_and_disjoint(case, request):
    handler = _handler(case, request)
    known = set(handler.arg_params) | set(handler.aux_params)
    seen: set[str] = set()
    for name in handler.layer_names:
        own = handler.get_layer_parameters([name])
        assert set(own) <= known, name
        assert not (set(own) & seen), f"{name} shares parameters with another layer"
        seen |= set(own)
    if case.editable:
        bn = handler.get_layer_parameters(["bn1"])
        assert len(bn) >= 4 and any("mean" in p for p in bn) and any("var" in p for p in bn)
        assert handler.get_layer_parameters(["relu1"]) == []


# ---------------------------------------------------------------------- features
def test_get_layer_output_contract(case, request):
    handler = _handler(case, request)
    data = case.data()
    layers = case.feature_layers
    features, labels = handler.get_layer_output(data, layers, batch_size=2)
    assert isinstance(features, OrderedDict) and list(features) == layers
    assert labels is None
    for name, values in features.items():
        assert values.dtype == np.float32 and values.ndim == 2 and values.shape[0] == len(data), name
        assert np.isfinite(values).all(), name
    # reading layers one at a time, with another batch size, gives the same values (up to the
    # kernels' batch-size dependent rounding in the real models)
    for name in layers:
        alone, _ = handler.get_layer_output(data, [name], batch_size=3, context="cpu")
        np.testing.assert_allclose(alone[name], features[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_gpu_without_gpu_is_a_clear_error(case, request):
    handler = _handler(case, request)
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceUnavailableError, match="GPU"):
        handler.get_layer_output(case.data()[:2], case.feature_layers[:1], context="gpu:0")


def test_bad_get_layer_output_arguments(case, request):
    handler = _handler(case, request)
    with pytest.raises(InvalidArgumentError, match="layer_names is empty"):
        handler.get_layer_output(case.data()[:2], [])
    with pytest.raises(InvalidArgumentError, match="batch_size must be a positive integer"):
        handler.get_layer_output(case.data()[:2], case.feature_layers[:1], batch_size=0)
    with pytest.raises(InvalidTypeError, match="Cannot read data of type dict"):
        handler.get_layer_output({"x": 1}, case.feature_layers[:1])


# ---------------------------------------------------------------------- editing, freezing, files
def test_drop_add_and_dropping_too_many(editable_case, request):
    case = editable_case
    handler = _handler(case, request)
    with pytest.raises(ModelError, match=r"Cannot drop 11 layer\(s\) from the top of a model with 11 layers: at most 10"):
        handler.drop_layer_top(11)
    with pytest.raises(InvalidArgumentError, match="num_layers_to_drop must be a positive integer"):
        handler.drop_layer_bottom(0)
    copy = ModelHandler(handler)
    copy.drop_layer_top(2)
    assert handler.layer_names == TOY_LAYERS, "editing a copy must not change the original"
    assert copy.layer_names == TOY_LAYERS[:-2]
    copy.add_layer_top(case.new_top_layer())
    assert copy.layer_names[:-1] == TOY_LAYERS[:-2] and len(copy.layer_names) == len(TOY_LAYERS) - 1
    with pytest.raises(InvalidArgumentError, match="A layer named 'fc1' already exists"):
        copy.add_layer_top(case.named_top_layer("fc1"))
    with pytest.raises(InvalidArgumentError, match="layer_list is empty"):
        copy.add_layer_top([])
    with pytest.raises(InvalidTypeError, match="Layer 0 of the list is a str"):
        copy.add_layer_top(["fc_new"])
    bottom = ModelHandler(handler)
    bottom.drop_layer_bottom(4)
    assert bottom.layer_names == TOY_LAYERS[4:]
    pooled = handler.get_layer_output(case.data(), ["pool1"])[0]["pool1"]
    expected = handler.get_layer_output(case.data(), ["fc1"])[0]["fc1"]
    got = bottom.get_layer_output(pooled.reshape(len(pooled), 16, 4, 4), ["fc1"])[0]["fc1"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _renamed_mxnet_fc(name: str):
    from xfer._mxnet import mx

    return mx.sym.FullyConnected(num_hidden=2, name=name)


def test_freeze_unfreeze(editable_case, request):
    handler = _handler(editable_case, request)
    handler.freeze(["conv2", "conv1"])
    assert handler.frozen_layers == ["conv1", "conv2"]
    handler.unfreeze(["conv2"])
    assert handler.frozen_layers == ["conv1"]
    handler.unfreeze()
    assert handler.frozen_layers == []
    with pytest.raises(LayerNotFoundError, match="'conv9' is not in the model"):
        handler.freeze(["conv9"])


def test_checkpoint_round_trip(editable_case, request, tmp_path):
    case = editable_case
    handler = _handler(case, request)
    prefix = str(tmp_path / "model")
    handler.save_checkpoint(prefix)
    loaded = case.reload(handler, prefix)
    assert loaded.layer_names == handler.layer_names
    data = case.data()
    before, _ = handler.get_layer_output(data, ["fc1", "softmax"])
    after, _ = loaded.get_layer_output(data, ["fc1", "softmax"])
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_visualize_net(case, request):
    handler = _handler(case, request)
    digraph = handler.visualize_net()
    assert type(digraph).__name__ == "Digraph"
    for name in case.feature_layers[:1]:
        assert name in digraph.source


# ---------------------------------------------------------------------- the typed protocol
HANDLER_CLASSES = [MXNetModelHandler, TorchModelHandler, functional_backend.FunctionalModelHandler]


def _protocol_members() -> dict[str, Any]:
    members = {}
    for name, value in vars(ModelHandlerProtocol).items():
        if name.startswith("_"):
            continue
        if callable(value) or isinstance(value, (classmethod, staticmethod, property)):
            members[name] = value
    for name in ModelHandlerProtocol.__annotations__:
        members.setdefault(name, None)
    return members


@pytest.mark.parametrize("handler_class", HANDLER_CLASSES, ids=lambda c: c.__name__)
def test_handler_classes_implement_the_typed_protocol(handler_class):
    """Every method of the protocol exists with a signature that accepts the protocol's calls."""
    for name, member in _protocol_members().items():
        if member is None:  # an attribute: instances have it (checked below on live handlers)
            continue
        implemented = inspect.getattr_static(handler_class, name)
        assert type(implemented) is type(member), f"{name}: {type(implemented).__name__}"
        if isinstance(member, property):
            continue
        wanted = inspect.signature(getattr(ModelHandlerProtocol, name))
        got = inspect.signature(getattr(handler_class, name))
        accepted = got.parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        for parameter in wanted.parameters.values():
            if parameter.kind is parameter.POSITIONAL_ONLY or parameter.kind is parameter.VAR_KEYWORD:
                continue
            assert parameter.name in accepted or takes_kwargs, f"{handler_class.__name__}.{name} lacks {parameter.name}"
            if parameter.name in accepted and parameter.default is not parameter.empty:
                assert accepted[parameter.name].default is not parameter.empty, f"{name}({parameter.name})"
        extra = [p for n, p in accepted.items() if n not in wanted.parameters and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        positional_only_in_protocol = [p for p in wanted.parameters.values() if p.kind is p.POSITIONAL_ONLY]
        extra = extra[len(positional_only_in_protocol) :]
        assert all(p.default is not p.empty for p in extra), f"{handler_class.__name__}.{name}: {extra}"


def test_live_handlers_are_instances_of_the_protocol(case, request):
    handler = _handler(case, request)
    assert isinstance(handler, ModelHandlerProtocol)
    assert type(handler).backend == case.backend


def test_the_protocol_check_can_fail():
    class Partial:
        backend = "partial"
        layer_names = ["a"]

    assert not isinstance(Partial(), ModelHandlerProtocol)
