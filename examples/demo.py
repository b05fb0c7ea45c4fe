"""xfer demo: repurpose pretrained networks for a new task with a handful of labels.

Part 1 edits a small CNN (Xfer's toy task: trained on digits 0-4) with the ModelHandler.
Part 2 repurposes a real ImageNet-pretrained EfficientNet-Lite0 (MXNet graph, weights shipped in
a package, nothing downloaded) for Fashion-MNIST from 10 labelled images per class, with logistic
regression and with a Gaussian process, and compares accuracy and calibration.

Run with ``bash scripts/demo.sh`` (sets everything up first) or ``python examples/demo.py``.
Options: ``--image-size`` (default 96), ``--labels-per-class`` (10), ``--test-per-class`` (50).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import xfer
from xfer import metrics
from xfer._mxnet import mx
from xfer.model_handler import ModelHandler


def part1_model_handler() -> None:
    from xfer.toy_models import load_digit_images, train_digits_cnn

    print("== Part 1: the ModelHandler on Xfer's toy CNN (digits 0-4) ==")
    start = time.perf_counter()
    source = train_digits_cnn(classes=(0, 1, 2, 3, 4), num_epochs=5, seed=0)
    print(f"trained the source CNN in {time.perf_counter() - start:.1f} s")
    handler = ModelHandler(source)
    print("layers:", ", ".join(f"{name} ({handler.get_layer_type(name)})" for name in handler.layer_names))
    print("parameters of conv1 (exact match):", handler.get_layer_parameters(["conv1"]))

    handler.drop_layer_top(2)
    handler.add_layer_top(
        [mx.sym.FullyConnected(num_hidden=5, name="fc_target"), mx.sym.SoftmaxOutput(name="softmax")]
    )
    handler.freeze(["conv1", "bn1"])
    print("after replacing the head:", handler.layer_names[-3:], "| frozen:", handler.frozen_layers)

    images, labels = load_digit_images(classes=range(5, 10))
    features, _ = ModelHandler(source).get_layer_output(images, ["conv2", "fc1"], batch_size=128)
    for name, values in features.items():
        print(f"features of {name}: {values.shape[0]} images x {values.shape[1]} values")


def part2_real_model(image_size: int, labels_per_class: int, test_per_class: int) -> None:
    from xfer.datasets import load_fashion_mnist
    from xfer.zoo import efficientnet_lite0, efficientnet_lite0_preprocess

    print("\n== Part 2: EfficientNet-Lite0 (ImageNet) -> Fashion-MNIST ==")
    start = time.perf_counter()
    source = efficientnet_lite0("mxnet", image_size=image_size)
    print(f"loaded EfficientNet-Lite0 as an MXNet graph in {time.perf_counter() - start:.1f} s")
    train = load_fashion_mnist("train", n_per_class=labels_per_class, random_state=0)
    test = load_fashion_mnist("test", n_per_class=test_per_class, random_state=0)
    x_train = efficientnet_lite0_preprocess(train.data, image_size, mode="stretch")
    x_test = efficientnet_lite0_preprocess(test.data, image_size, mode="stretch")
    y_train = np.asarray(train.class_names)[train.target]  # string labels come back as strings
    y_test = np.asarray(test.class_names)[test.target]
    print(f"{len(y_train)} labelled training images, {len(y_test)} test images, {image_size} px")

    # Features are extracted once and shared by both heads (the fit_features/predict_*_features path).
    start = time.perf_counter()
    handler = ModelHandler(source)
    train_features = handler.get_layer_output(x_train, ["global_pool"], batch_size=64)[0]["global_pool"]
    test_features = handler.get_layer_output(x_test, ["global_pool"], batch_size=64)[0]["global_pool"]
    print(f"extracted {train_features.shape[1]}-d features in {time.perf_counter() - start:.1f} s")

    heads = {
        "logistic regression": xfer.LrRepurposer(source, ["global_pool"]),
        "Gaussian process": xfer.GpRepurposer(source, ["global_pool"], random_state=0),
    }
    print(f"\n{'head':<20} {'accuracy':>8} {'NLL':>6} {'ECE':>6} {'fit s':>6}")
    results = {}
    for name, head in heads.items():
        start = time.perf_counter()
        head.fit_features(train_features, y_train)
        fit_seconds = time.perf_counter() - start
        proba = head.predict_proba_features(test_features)
        results[name] = proba
        print(
            f"{name:<20} {metrics.accuracy(y_test, proba, head.classes_):>8.3f} "
            f"{metrics.negative_log_likelihood(y_test, proba, head.classes_):>6.3f} "
            f"{metrics.expected_calibration_error(y_test, proba, head.classes_):>6.3f} {fit_seconds:>6.1f}"
        )

    gp = heads["Gaussian process"]
    predicted = gp.classes_[results["Gaussian process"].argmax(1)]
    confidence = results["Gaussian process"].max(1)
    right = predicted == y_test
    print(
        f"\nGP confidence: {confidence[right].mean():.2f} on its right answers, "
        f"{confidence[~right].mean():.2f} on its wrong ones"
    )
    for index in np.argsort(confidence)[:3]:
        top = np.argsort(results["Gaussian process"][index])[::-1][:2]
        print(
            f"  least sure: a {y_test[index]!r}: "
            + ", ".join(f"{gp.classes_[k]} {results['Gaussian process'][index, k]:.2f}" for k in top)
        )

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fashion_gp"
        gp.save(path, save_source_model=False)
        loaded = xfer.load(path, source_model=source)
        same = np.array_equal(loaded.predict_proba_features(test_features), results["Gaussian process"])
        files = sorted(p.name for p in Path(directory).iterdir())
        print(f"\nsaved the GP as {files}; the loaded copy predicts the same: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--labels-per-class", type=int, default=10)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--skip-part1", action="store_true")
    args = parser.parse_args()
    print(f"xfer {xfer.__version__}")
    if not args.skip_part1:
        part1_model_handler()
    part2_real_model(args.image_size, args.labels_per_class, args.test_per_class)


if __name__ == "__main__":
    main()
