"""get_layer_output(..., pooling="avg"): spatial averages read in the same pass, both backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xfer._mxnet import mx
from xfer.exceptions import InvalidArgumentError
from xfer.model_handler import ModelHandler


def mxnet_conv_net():
    data = mx.sym.var("data")
    net = mx.sym.Convolution(data, num_filter=4, kernel=(3, 3), name="conv1")
    net = mx.sym.Activation(net, act_type="relu", name="relu1")
    net = mx.sym.Flatten(net, name="flatten")
    net = mx.sym.FullyConnected(net, num_hidden=3, name="fc1")
    rng = np.random.RandomState(0)
    args = {
        "conv1_weight": mx.nd.array(rng.normal(size=(4, 2, 3, 3))),
        "conv1_bias": mx.nd.array(rng.normal(size=4)),
        "fc1_weight": mx.nd.array(rng.normal(size=(3, 4 * 5 * 5))),
        "fc1_bias": mx.nd.zeros(3),
    }
    return net, args, {}


def torch_conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).eval()


@pytest.mark.parametrize(
    "model, layers",
    [(mxnet_conv_net, ["relu1", "fc1"]), (torch_conv_net, ["1", "3"])],
    ids=["mxnet", "torch"],
)
def test_average_pooling_equals_the_mean_of_the_flattened_map(model, layers):
    handler = ModelHandler(model())
    images = np.random.RandomState(1).normal(size=(7, 2, 7, 7)).astype(np.float32)
    full, _ = handler.get_layer_output(images, layers, batch_size=3)
    pooled, _ = handler.get_layer_output(images, layers, batch_size=3, pooling="avg")
    conv, dense = layers
    assert pooled[conv].shape == (7, 4)  # channels
    np.testing.assert_allclose(pooled[conv], full[conv].reshape(7, 4, 25).mean(-1), rtol=1e-5)
    np.testing.assert_array_equal(pooled[dense], full[dense])  # dense outputs are unchanged


def test_unknown_pooling_is_refused():
    handler = ModelHandler(torch_conv_net())
    with pytest.raises(InvalidArgumentError, match=r"pooling must be one of \[None, 'avg'\]"):
        handler.get_layer_output(np.zeros((2, 2, 7, 7), np.float32), ["1"], pooling="max")
    with pytest.raises(InvalidArgumentError, match="pooling must be one of"):
        ModelHandler(mxnet_conv_net()).get_layer_output(
            np.zeros((2, 2, 7, 7), np.float32), ["relu1"], pooling="mean"
        )
