"""Inspect and edit a CNN with the ModelHandler, and find which layer's features transfer best.

The script version of ``docs/tutorials/02_model_handler.ipynb``, on Xfer's toy task: a CNN
trained on digits 0-4 is repurposed for digits 5-9 from 10 labels per digit.

Run: ``python examples/model_handler.py`` (about 10 s).
"""

from __future__ import annotations

import numpy as np

import xfer
from xfer._mxnet import mx
from xfer.model_handler import ModelHandler
from xfer.toy_models import load_digit_images, train_digits_cnn


def main() -> None:
    source = train_digits_cnn(classes=(0, 1, 2, 3, 4), num_epochs=5, seed=0)
    handler = ModelHandler(source)
    print("layers:", ", ".join(f"{n} ({handler.get_layer_type(n)})" for n in handler.layer_names))
    print("parameters of conv1:", handler.get_layer_parameters(["conv1"]))

    editor = ModelHandler(source)
    editor.drop_layer_top(2)
    editor.add_layer_top(
        [
            mx.sym.FullyConnected(num_hidden=5, name="fc_target"),
            mx.sym.SoftmaxOutput(name="softmax"),
        ]
    )
    editor.freeze(["conv1", "bn1", "conv2"])
    print("edited:", editor.layer_names, "| frozen:", editor.frozen_layers)

    images, labels = load_digit_images(classes=range(5, 10))
    rng = np.random.RandomState(0)
    train = np.concatenate(
        [rng.choice(np.flatnonzero(labels == d), 10, replace=False) for d in range(5, 10)]
    )
    test = np.setdiff1d(np.arange(len(labels)), train)

    layers = ["conv1", "pool1", "conv2", "fc1", "fc2"]
    features, _ = handler.get_layer_output(images, layers)
    print("\nlogistic regression on each layer's features (10 labels per digit):")
    for name, values in features.items():
        head = xfer.LrRepurposer(None, None).fit(values[train], labels[train])
        print(
            f"  {name:<10} {values.shape[1]:>5} values  accuracy {head.score(values[test], labels[test]):.3f}"
        )
    pixels = images.reshape(len(images), -1)
    head = xfer.LrRepurposer(None, None).fit(pixels[train], labels[train])
    print(
        f"  {'raw pixels':<10} {pixels.shape[1]:>5} values  accuracy {head.score(pixels[test], labels[test]):.3f}"
    )


if __name__ == "__main__":
    main()
