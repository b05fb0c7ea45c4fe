"""Small source networks trained in seconds on scikit-learn's digits.

They reproduce the toy task of Amazon's Xfer (a CNN trained on digits 0-4, repurposed for 5-9)
and serve unit tests, the quick demo and benchmarks. Real pretrained models live in
:mod:`xfer.zoo`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xfer._mxnet import MODULE_LOGGER, mx


def digits_cnn_symbol(num_classes: int = 5, with_batchnorm: bool = True):
    """The toy CNN: ``conv1 [bn1] relu1 pool1 conv2 relu2 flatten fc1(64) relu3 fc2 softmax``.

    Input: ``N x 1 x 8 x 8`` digits scaled to [0, 1].

    Parameters
    ----------
    num_classes : int, default=5
        Outputs of ``fc2``.
    with_batchnorm : bool, default=True
        Include ``bn1``.

    Returns
    -------
    mx.sym.Symbol
        The untrained graph, ending in ``SoftmaxOutput`` (label ``softmax_label``).
    """
    net = mx.sym.var("data")
    net = mx.sym.Convolution(net, num_filter=16, kernel=(3, 3), pad=(1, 1), name="conv1")
    if with_batchnorm:
        net = mx.sym.BatchNorm(net, fix_gamma=False, name="bn1")
    net = mx.sym.Activation(net, act_type="relu", name="relu1")
    net = mx.sym.Pooling(net, kernel=(2, 2), stride=(2, 2), pool_type="max", name="pool1")
    net = mx.sym.Convolution(net, num_filter=32, kernel=(3, 3), pad=(1, 1), name="conv2")
    net = mx.sym.Activation(net, act_type="relu", name="relu2")
    net = mx.sym.Flatten(net, name="flatten")
    net = mx.sym.FullyConnected(net, num_hidden=64, name="fc1")
    net = mx.sym.Activation(net, act_type="relu", name="relu3")
    net = mx.sym.FullyConnected(net, num_hidden=num_classes, name="fc2")
    return mx.sym.SoftmaxOutput(net, name="softmax")


def load_digit_images(classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as ``N x 1 x 8 x 8`` float32 in [0, 1] and int labels.

    Parameters
    ----------
    classes : sequence of int, optional
        Keep only these digits (default: all ten).

    Returns
    -------
    images : ndarray of float32, N x 1 x 8 x 8
    labels : ndarray of int
        The digit of each image.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target
    if classes is not None:
        keep = np.isin(labels, list(classes))
        images, labels = images[keep], labels[keep]
    return images, labels


def train_digits_cnn(
    classes: Sequence[int] = (0, 1, 2, 3, 4),
    num_epochs: int = 10,
    batch_size: int = 32,
    seed: int = 0,
    with_batchnorm: bool = True,
):
    """Train the toy CNN on the digits of ``classes`` (relabelled 0..K-1).

    Parameters
    ----------
    classes : sequence of int, default=(0, 1, 2, 3, 4)
        The digits to train on (Xfer's toy task uses 0-4 as the source task).
    num_epochs : int, default=10
        Epochs of Adam at learning rate 0.01.
    batch_size : int, default=32
        Examples per step.
    seed : int, default=0
        Seed of MXNet's and NumPy's generators.
    with_batchnorm : bool, default=True
        Include ``bn1``.

    Returns
    -------
    mx.mod.Module
        The trained, bound module.
    """
    images, labels = load_digit_images(classes)
    targets = np.searchsorted(np.asarray(sorted(classes)), labels).astype(np.float32)
    mx.random.seed(seed)
    np.random.seed(seed)
    train = mx.io.NDArrayIter(images, targets, batch_size, shuffle=True, label_name="softmax_label")
    module = mx.mod.Module(
        digits_cnn_symbol(len(classes), with_batchnorm), context=mx.cpu(), logger=MODULE_LOGGER
    )
    module.fit(
        train,
        num_epoch=num_epochs,
        optimizer="adam",
        optimizer_params={"learning_rate": 0.01},
        initializer=mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2),
    )
    return module


def torch_digits_cnn(num_classes: int = 5, seed: int = 0):
    """The toy CNN in PyTorch, with the same layer names as :func:`digits_cnn_symbol`.

    ``conv1 bn1 relu1 pool1 conv2 relu2 flatten fc1 relu3 fc2 softmax`` (``softmax`` is an
    ``nn.Softmax``: the model outputs probabilities). Untrained; see :func:`train_torch_digits_cnn`.

    Parameters
    ----------
    num_classes : int, default=5
        Outputs of ``fc2``.
    seed : int, default=0
        Seed of the initial weights.

    Returns
    -------
    torch.nn.Sequential
    """
    from collections import OrderedDict

    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 16, 3, padding=1),
            bn1=nn.BatchNorm2d(16),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * 4 * 4, 64),
            relu3=nn.ReLU(),
            fc2=nn.Linear(64, num_classes),
            softmax=nn.Softmax(dim=1),
        )
    )


def train_torch_digits_cnn(
    classes: Sequence[int] = (0, 1, 2, 3, 4), num_epochs: int = 10, batch_size: int = 32, seed: int = 0
):
    """Train :func:`torch_digits_cnn` on the digits of ``classes`` (relabelled 0..K-1).

    Parameters
    ----------
    classes : sequence of int, default=(0, 1, 2, 3, 4)
        The digits to train on.
    num_epochs : int, default=10
        Epochs of Adam.
    batch_size : int, default=32
        Examples per step.
    seed : int, default=0
        Seed of the weights and the shuffling.

    Returns
    -------
    torch.nn.Sequential
        The trained model, in eval mode.
    """
    import torch

    images, labels = load_digit_images(classes)
    targets = torch.as_tensor(np.searchsorted(np.asarray(sorted(classes)), labels))
    inputs = torch.as_tensor(images)
    model = torch_digits_cnn(len(classes), seed)
    body = model[:-1]  # train on logits; the softmax layer stays for users who read probabilities
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(num_epochs):
        for batch in torch.randperm(len(inputs), generator=generator).split(batch_size):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(body(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
    return model.eval()


__all__ = [
    "digits_cnn_symbol",
    "load_digit_images",
    "train_digits_cnn",
    "torch_digits_cnn",
    "train_torch_digits_cnn",
]
