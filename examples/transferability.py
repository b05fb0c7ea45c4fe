"""Rank the layers of a pretrained network by transferability, then let AutoRepurposer choose.

The script version of ``docs/tutorials/08_transferability.ipynb``: ImageNet EfficientNet-Lite0
on Fashion-MNIST (10 labels per class). ``rank_layers`` scores the default candidate layers
with LogME and the H-score in one pass; a logistic-regression head trained on each layer's
features shows how the scores order the layers against held-out accuracy (Kendall's tau);
``AutoRepurposer`` then picks the layer and the head by itself and explains why.

Run: ``python examples/transferability.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse

from scipy.stats import kendalltau

import xfer
from xfer.datasets import load_fashion_mnist
from xfer.model_handler import ModelHandler
from xfer.transferability import candidate_layers, rank_layers
from xfer.zoo import efficientnet_lite0, efficientnet_lite0_preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--labels-per-class", type=int, default=10)
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--max-layers", type=int, default=8)
    args = parser.parse_args()

    network = ModelHandler(efficientnet_lite0("torch", image_size=args.image_size))
    train = load_fashion_mnist("train", n_per_class=args.labels_per_class, random_state=0)
    test = load_fashion_mnist("test", n_per_class=args.test_per_class, random_state=1)

    def images(dataset):
        return efficientnet_lite0_preprocess(dataset.data, args.image_size, mode="stretch")

    layers = candidate_layers(network, max_layers=args.max_layers)
    ranking = rank_layers(network, images(train), train.labels, layers,
                          scores=["logme", "h_score"], keep_features=True)  # fmt: skip
    print(ranking)

    test_features = network.get_layer_output(images(test), layers, pooling="avg")[0]
    accuracy = {
        layer: xfer.LrRepurposer(None, None)
        .fit(ranking.features[("model", layer)], train.labels)
        .score(test_features[layer], test.labels)
        for layer in layers
    }
    logme = {row["layer"]: row["logme"] for row in ranking.rows}
    tau = kendalltau([logme[k] for k in layers], [accuracy[k] for k in layers]).statistic
    best = max(accuracy, key=accuracy.get)
    print(f"Kendall's tau of LogME vs held-out LR accuracy over {len(layers)} layers: {tau:.2f}")
    print(f"LogME's pick {ranking.best['layer']}: accuracy {accuracy[ranking.best['layer']]:.3f}; "
          f"best layer {best}: {accuracy[best]:.3f}")  # fmt: skip

    auto = xfer.AutoRepurposer(network, layers, heads=["lr", "svm"], random_state=0)
    auto.fit(images(train), train.labels)
    print(auto.report_)
    print(f"AutoRepurposer: {auto.feature_layer_names_} with the {auto.head_name_} head, "
          f"test accuracy {auto.score(images(test), test.labels):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
