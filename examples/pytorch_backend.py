"""The same repurposing code on a PyTorch model: features, LR and GP heads, fine-tuning, save/load.

The script version of ``docs/tutorials/07_pytorch.ipynb``: EfficientNet-Lite0 as a
``torch.nn.Module`` (ImageNet weights from an installed package) is repurposed for Fashion-MNIST
from a few labels per class with logistic regression and a Gaussian process on its
``_avg_pooling`` features; the MXNet version of the same network gives the same accuracy; then
the torch network itself is fine-tuned (new head first, then every layer at 1 % of the rate),
saved, and loaded with ``source_model=``.

Run: ``python examples/pytorch_backend.py`` (about 30 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import xfer
from xfer.datasets import load_fashion_mnist
from xfer.model_handler import ModelHandler
from xfer.zoo import efficientnet_lite0, efficientnet_lite0_preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--labels-per-class", type=int, default=10)
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's choice)")
    args = parser.parse_args()
    size = args.image_size

    source = efficientnet_lite0("torch", image_size=size)
    handler = ModelHandler(source)
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # small jobs: one thread beats several on a busy CPU
    print(f"torch EfficientNet-Lite0: {len(handler.layer_names)} layers, e.g. "
          f"{handler.layer_names[3]!r} ({handler.get_layer_type(handler.layer_names[3])})")

    train = load_fashion_mnist("train", n_per_class=args.labels_per_class, random_state=0)
    test = load_fashion_mnist("test", n_per_class=args.test_per_class, random_state=1)
    x_train = efficientnet_lite0_preprocess(train.data, size, mode="stretch")
    x_test = efficientnet_lite0_preprocess(test.data, size, mode="stretch")

    features = {}
    for backend, model, layer in [("torch", source, "_avg_pooling"),
                                  ("mxnet", efficientnet_lite0("mxnet", image_size=size), "global_pool")]:  # fmt: skip
        outputs, _ = ModelHandler(model).get_layer_output(np.concatenate([x_train, x_test]), [layer])
        features[backend] = outputs[layer]
        for name, head in [("LR", xfer.LrRepurposer(model, [layer])),
                           ("GP", xfer.GpRepurposer(model, [layer], random_state=0))]:  # fmt: skip
            head.fit_features(features[backend][: len(x_train)], train.labels)
            accuracy = np.mean(head.predict_features(features[backend][len(x_train) :]) == test.labels)
            print(f"{backend:<5} {name}: test accuracy {accuracy:.3f}")
    difference = np.abs(features["torch"] - features["mxnet"]).max()
    print(f"largest feature difference, torch vs MXNet: {difference:.1e}")

    fine_tuner = xfer.NeuralNetworkFineTuneRepurposer(
        source, "_dropout", None, optimizer="adam", optimizer_params={"learning_rate": 0.01},
        batch_size=20, head_epochs=5, num_epochs=2, unfreeze_lr_factor=0.01,
        freeze_batchnorm=True, random_state=0,
    )  # fmt: skip
    fine_tuner.fit(x_train, train.labels)
    print(f"fine-tuned torch EfficientNet: test accuracy {fine_tuner.score(x_test, test.labels):.3f}")
    with tempfile.TemporaryDirectory() as folder:
        fine_tuner.save(Path(folder) / "fashion_torch")
        loaded = xfer.load(Path(folder) / "fashion_torch", source_model=efficientnet_lite0("torch", image_size=size))
    same = np.allclose(loaded.predict_proba(x_test), fine_tuner.predict_proba(x_test), atol=1e-5)
    print(f"the loaded fine-tuned network predicts the same: {same}")


if __name__ == "__main__":
    main()
