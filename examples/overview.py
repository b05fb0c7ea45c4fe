"""Repurpose an ImageNet CNN for Fashion-MNIST from 10 labels per class, with LR and with a GP.

The script version of ``docs/tutorials/01_overview.ipynb``: EfficientNet-Lite0 (MXNet graph,
ImageNet weights from an installed package) gives meaningless ImageNet answers on Fashion-MNIST;
logistic regression and a Gaussian process on its ``global_pool`` features get most test images
right. One class ("Bag") is held out of training: the GP is far less confident on it than LR.

Run: ``python examples/overview.py`` (about 30 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse

import numpy as np

import xfer
from xfer import metrics
from xfer.datasets import load_fashion_mnist
from xfer.model_handler import ModelHandler
from xfer.zoo import efficientnet_lite0, efficientnet_lite0_preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--labels-per-class", type=int, default=10)
    parser.add_argument("--held-out", default="Bag", help="class left out of training")
    args = parser.parse_args()

    source = efficientnet_lite0("mxnet", image_size=args.image_size)
    train = load_fashion_mnist("train", n_per_class=args.labels_per_class, random_state=0)
    train = train.subset(np.flatnonzero(train.labels != args.held_out))
    test = load_fashion_mnist("test", n_per_class=20, random_state=1)
    unseen = test.labels == args.held_out

    # One pass of the network gives the features and the ImageNet logits of every image.
    images = np.concatenate([train.data, test.data])
    x = efficientnet_lite0_preprocess(images, args.image_size, mode="stretch")
    outputs, _ = ModelHandler(source).get_layer_output(x, ["global_pool", "fc"])
    features_train = outputs["global_pool"][: len(train)]
    features_test = outputs["global_pool"][len(train) :]
    logits = outputs["fc"][len(train) :]
    imagenet_proba = np.exp(logits - logits.max(1, keepdims=True))
    imagenet_proba /= imagenet_proba.sum(1, keepdims=True)
    print(
        f"ImageNet model on Fashion-MNIST: mean top-1 probability "
        f"{imagenet_proba.max(1).mean():.2f} (on ImageNet labels, not Fashion-MNIST ones)"
    )

    print(
        f"\n{'head':<4} {'accuracy':>8} {'NLL':>6} {'ECE':>6} {'max-p known':>12} {'max-p unseen':>13}"
    )
    for name, head in [
        ("LR", xfer.LrRepurposer(source, ["global_pool"])),
        ("GP", xfer.GpRepurposer(source, ["global_pool"], random_state=0)),
    ]:
        head.fit_features(features_train, train.labels)
        proba = head.predict_proba_features(features_test)
        known, y = proba[~unseen], test.labels[~unseen]
        print(
            f"{name:<4} {metrics.accuracy(y, known, head.classes_):>8.3f} "
            f"{metrics.negative_log_likelihood(y, known, head.classes_):>6.3f} "
            f"{metrics.expected_calibration_error(y, known, head.classes_):>6.3f} "
            f"{known.max(1).mean():>12.2f} {proba[unseen].max(1).mean():>13.2f}"
        )


if __name__ == "__main__":
    main()
