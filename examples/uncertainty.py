"""Compare LR, SVM, GP and BNN heads on accuracy, NLL, ECE and Brier score.

The script version of ``docs/tutorials/04_uncertainty.ipynb``: ImageNet EfficientNet-Lite0
features of Fashion-MNIST (10 labels per class), one feature extraction shared by four heads.
With ``--plot FILE`` it also writes their reliability diagrams.

Run: ``python examples/uncertainty.py`` (about 30 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time

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
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--bnn-epochs", type=int, default=100)
    parser.add_argument("--plot", help="write the reliability diagrams to this image file")
    args = parser.parse_args()

    source = efficientnet_lite0("mxnet", image_size=args.image_size)
    train = load_fashion_mnist("train", n_per_class=args.labels_per_class, random_state=0)
    test = load_fashion_mnist("test", n_per_class=args.test_per_class, random_state=1)
    x = efficientnet_lite0_preprocess(
        np.concatenate([train.data, test.data]), args.image_size, mode="stretch"
    )
    features = ModelHandler(source).get_layer_output(x, ["global_pool"])[0]["global_pool"]
    features_train, features_test = features[: len(train)], features[len(train) :]

    layers = ["global_pool"]
    heads = {
        "LR": xfer.LrRepurposer(source, layers),
        "SVM": xfer.SvmRepurposer(
            source, layers, enable_probability_estimates=True, random_state=0
        ),
        "GP": xfer.GpRepurposer(source, layers, random_state=0),
        "BNN": xfer.BnnRepurposer(source, layers, num_epochs=args.bnn_epochs, random_state=0),
    }
    y_test = test.labels
    print(f"{'head':<4} {'accuracy':>8} {'NLL':>6} {'ECE':>6} {'Brier':>6} {'fit s':>6}")
    probabilities = {}
    for name, head in heads.items():
        start = time.perf_counter()
        head.fit_features(features_train, train.labels)
        seconds = time.perf_counter() - start
        p = probabilities[name] = head.predict_proba_features(features_test)
        print(
            f"{name:<4} {metrics.accuracy(y_test, p, head.classes_):>8.3f} "
            f"{metrics.negative_log_likelihood(y_test, p, head.classes_):>6.3f} "
            f"{metrics.expected_calibration_error(y_test, p, head.classes_, n_bins=10):>6.3f} "
            f"{metrics.brier_score(y_test, p, head.classes_):>6.3f} {seconds:>6.1f}"
        )

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(heads), figsize=(4 * len(heads), 4))
        for ax, (name, head) in zip(axes, heads.items()):
            metrics.plot_reliability_diagram(y_test, probabilities[name], head.classes_, 10, ax=ax)
            ax.set_title(f"{name}: {ax.get_title()}")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"reliability diagrams written to {args.plot}")


if __name__ == "__main__":
    main()
