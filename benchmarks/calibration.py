"""Calibration of the heads at scale on real transfer features.

EfficientNet-Lite0 (torch, 96 px) features of Fashion-MNIST (layer ``_avg_pooling``, 1,280
columns): 1,000 labelled images per class (10,000 rows: the sparse GP path), 2,000 test images.
Logistic regression is the baseline; the GP and BNN heads are measured beside it on the same
features, and the sparse GP also with its previous learning rate (0.01) to show why the default
is 0.03.

Usage::

    python -m benchmarks.calibration           # 10,000 labelled images (a few minutes)
    python -m benchmarks.calibration --quick   # 200 per class, 500 test (exact GP path)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

LAYER = "_avg_pooling"


def features(per_class: int, test_count: int, image_size: int = 96) -> tuple[np.ndarray, ...]:
    from xfer.datasets import load_fashion_mnist
    from xfer.model_handler import ModelHandler
    from xfer.zoo import efficientnet_lite0, efficientnet_lite0_preprocess

    train = load_fashion_mnist("train", n_per_class=per_class, random_state=0)
    test = load_fashion_mnist("test")
    handler = ModelHandler(efficientnet_lite0("torch", image_size=image_size))

    def extract(images: np.ndarray) -> np.ndarray:
        x = efficientnet_lite0_preprocess(images, image_size, mode="stretch")
        return handler.get_layer_output(x, [LAYER], batch_size=64)[0][LAYER]

    return extract(train.data), train.target, extract(test.data[:test_count]), test.target[:test_count]


class _CoreWithRate:
    """The GP head's core with an explicit sparse learning rate (labels must be 0..K-1)."""

    def __init__(self, sparse_learning_rate: float) -> None:
        self.sparse_learning_rate = sparse_learning_rate

    def fit(self, features: np.ndarray, labels: np.ndarray) -> _CoreWithRate:
        import torch

        from xfer.repurposers._gp_core import GpClassifierCore

        self.classes_ = np.unique(labels)
        self.core_ = GpClassifierCore(random_state=0, sparse_learning_rate=self.sparse_learning_rate)
        self.core_.fit(features, np.searchsorted(self.classes_, labels), len(self.classes_), None, torch.device("cpu"))
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        import torch

        return self.core_.predict_proba(features, torch.device("cpu"))

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(features), axis=1)]


def _heads() -> dict:
    import xfer

    return {
        "LR (baseline)": lambda: xfer.LrRepurposer(None, None, random_state=0),
        "GP": lambda: xfer.GpRepurposer(None, None, random_state=0),
        "GP, sparse learning rate 0.01": lambda: _CoreWithRate(0.01),
        "BNN": lambda: xfer.BnnRepurposer(None, None, random_state=0),
    }


def report(quick: bool = False) -> str:
    from xfer import metrics

    per_class, test_count = (200, 500) if quick else (1000, 2000)
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = features(per_class, test_count)
    extraction = time.perf_counter() - start
    lines = [
        f"EfficientNet-Lite0 (torch, 96 px) `{LAYER}` features of Fashion-MNIST: {len(y_train):,} x "
        f"{x_train.shape[1]:,} labelled, {len(y_test):,} test (extraction {extraction:.0f} s). "
        "Lower NLL, Brier and ECE (15 bins) are better.",
        "",
        "| head | accuracy | NLL | Brier | ECE | fit s | NLL / LR's |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    baseline_nll = None
    for name, make in _heads().items():
        head = make()
        started = time.perf_counter()
        head.fit(x_train, y_train)
        fit_seconds = time.perf_counter() - started
        probabilities = head.predict_proba(x_test)
        nll = metrics.negative_log_likelihood(y_test, probabilities, classes=head.classes_)
        baseline_nll = nll if baseline_nll is None else baseline_nll
        lines.append(
            f"| {name} | {np.mean(head.predict(x_test) == y_test):.3f} | {nll:.3f} | "
            f"{metrics.brier_score(y_test, probabilities, classes=head.classes_):.3f} | "
            f"{metrics.expected_calibration_error(y_test, probabilities, classes=head.classes_):.3f} | "
            f"{fit_seconds:.1f} | {nll / baseline_nll:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    print(report(quick=parser.parse_args().quick))


if __name__ == "__main__":
    main()
