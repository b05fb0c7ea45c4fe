"""Shared fixtures: a tiny MXNet CNN trained on scikit-learn digits 0-4 in a few seconds."""

from __future__ import annotations

import numpy as np
import pytest

from xfer._mxnet import mx
from xfer.toy_models import load_digit_images, train_digits_cnn


@pytest.fixture(scope="session")
def digits_source_model():
    """A bound ``mx.mod.Module`` of the toy CNN trained on digits 0-4 (layers conv1 ... softmax)."""
    return train_digits_cnn(classes=(0, 1, 2, 3, 4), num_epochs=5, seed=0)


@pytest.fixture(scope="session")
def digits_images():
    """All 1,797 digits as ``N x 1 x 8 x 8`` float32 and their int labels 0-9."""
    return load_digit_images()


@pytest.fixture(scope="session")
def target_digits(digits_images):
    """Digits 5-9 (the target task of Xfer's toy example): images and labels 5-9."""
    images, labels = digits_images
    keep = labels >= 5
    return images[keep], labels[keep]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared 2-core machine, two OpenMP threads run far
    slower on these tiny networks. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    from xfer.context import to_torch

    to_torch("cpu")  # lets xfer's one-time thread restore run first, so it does not undo this
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def small_digits(target_digits):
    """120 training digits (5-9, 24 per class) and 100 others to test on (fine-tuning tests)."""
    images, labels = target_digits
    rng = np.random.RandomState(0)
    train = np.concatenate(
        [rng.choice(np.where(labels == c)[0], 24, replace=False) for c in range(5, 10)]
    )
    train = rng.permutation(train)
    test = np.setdiff1d(np.arange(len(labels)), train)[:100]
    return images[train], labels[train], images[test], labels[test]


@pytest.fixture
def tiny_symbol_model():
    """An untrained, bound chain ``conv1 bn1 relu1 flatten fc1 softmax`` on 1 x 6 x 6 inputs."""
    mx.random.seed(1)
    net = mx.sym.var("data")
    net = mx.sym.Convolution(net, num_filter=4, kernel=(3, 3), name="conv1")
    net = mx.sym.BatchNorm(net, fix_gamma=False, name="bn1")
    net = mx.sym.Activation(net, act_type="relu", name="relu1")
    net = mx.sym.Flatten(net, name="flatten")
    net = mx.sym.FullyConnected(net, num_hidden=3, name="fc1")
    net = mx.sym.SoftmaxOutput(net, name="softmax")
    module = mx.mod.Module(net, context=mx.cpu())
    module.bind(data_shapes=[("data", (4, 1, 6, 6))], label_shapes=[("softmax_label", (4,))])
    module.init_params(mx.init.Xavier())
    return module


@pytest.fixture
def rng():
    return np.random.default_rng(0)
