"""The PyTorch backend on real models, each figure beside its baseline in the same run.

Sections
--------
transfer
    EfficientNet-Lite0 features (layer ``global_pool`` on MXNet, ``_avg_pooling`` on torch) ->
    Fashion-MNIST with 10 labels per class, logistic regression (``LrRepurposer``), on the
    first test images; both backends of the same model (target: torch >= 0.73 at 96 px /
    >= 0.78 at 224 px; MXNet within 0.01 of torch), raw-pixel logistic regression beside them.
    MiniLM sentence features -> 20 Newsgroups with 8 labels per class (target >= 0.63), TF-IDF
    logistic regression beside it; the GP head on the same features beside logistic regression.
    Every accuracy is the mean (and spread) over several random
    draws of the labelled examples: with 8 or 10 labels per class one draw moves the figure by
    several points.
throughput
    ``get_layer_output`` of the torch ModelHandler against a plain ``torch.no_grad()`` forward of
    the same EfficientNet-Lite0, batch and threads, interleaved repeats (target >= 0.95x).

Usage::

    python -m benchmarks.torch_backend            # 96 and 224 px, 1,000 test images / documents
    python -m benchmarks.torch_backend --quick    # 96 px, 300 test images / documents
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.report import Figure, Section, cell

TORCH_LAYER = "_avg_pooling"
MXNET_LAYER = "global_pool"


def _accuracy(train_features, train_labels, test_features, test_labels, head: str = "LR") -> float:
    import xfer

    make = {"LR": xfer.LrRepurposer, "GP": xfer.GpRepurposer}[head]
    model = make(None, None, random_state=0).fit(train_features, train_labels)
    return float(model.score(test_features, test_labels))


def _summary(values: list[float]) -> dict:
    """Mean, sample standard deviation and range of per-draw accuracies."""
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "values": [float(v) for v in values],
    }


def image_transfer(image_size: int, test_count: int, labels_per_class: int = 10, seeds: int = 5) -> dict:
    """Accuracy over ``seeds`` random draws of the labelled set (draw ``s`` uses ``random_state=s``)."""
    from xfer.datasets import load_fashion_mnist
    from xfer.model_handler import ModelHandler
    from xfer.zoo import efficientnet_lite0, efficientnet_lite0_preprocess

    draws = [load_fashion_mnist("train", n_per_class=labels_per_class, random_state=s) for s in range(seeds)]
    test = load_fashion_mnist("test")
    test_images, test_labels = test.data[:test_count], test.target[:test_count]
    x_draws = [efficientnet_lite0_preprocess(d.data, image_size, mode="stretch") for d in draws]
    x_test = efficientnet_lite0_preprocess(test_images, image_size, mode="stretch")
    row = {"image_size": image_size, "test_count": test_count, "train_count": len(draws[0].target), "seeds": seeds}
    for backend, layer in (("torch", TORCH_LAYER), ("mxnet", MXNET_LAYER)):
        handler = ModelHandler(efficientnet_lite0(backend, image_size=image_size))
        start = time.perf_counter()
        test_features = handler.get_layer_output(x_test, [layer], batch_size=32)[0][layer]
        accuracies = []
        for draw, x_train in zip(draws, x_draws):
            train_features = handler.get_layer_output(x_train, [layer], batch_size=32)[0][layer]
            accuracies.append(_accuracy(train_features, draw.target, test_features, test_labels))
        row[f"{backend}_seconds"] = time.perf_counter() - start
        row[backend] = _summary(accuracies)
    row["raw_pixels"] = _summary([
        _accuracy(
            d.data.reshape(len(d.data), -1).astype(np.float32), d.target,
            test_images.reshape(len(test_images), -1).astype(np.float32), test_labels,
        )
        for d in draws
    ])  # fmt: skip
    return row


def text_transfer(test_count: int, labels_per_class: int = 8, seeds: int = 5) -> dict:
    """Accuracy over ``seeds`` random draws of the labelled set (draw ``s`` uses ``random_state=s``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from xfer.datasets import load_text_corpus
    from xfer.model_handler import ModelHandler
    from xfer.zoo import minilm

    draws = [
        load_text_corpus("20newsgroups", "train", n_per_class=labels_per_class, random_state=s)
        for s in range(seeds)
    ]
    # An equal random sample of every class (the corpus is ordered by class: no head slices).
    test = load_text_corpus("20newsgroups", "test", n_per_class=test_count // 20, random_state=0)
    test_texts, test_labels = list(test.data), np.asarray(test.target)
    handler = ModelHandler(minilm())  # the model's own max_seq_length, 256 tokens
    start = time.perf_counter()
    test_features = handler.get_layer_output(test_texts, ["output"], batch_size=32)[0]["output"]
    minilm_accuracies, gp_accuracies, tfidf_accuracies = [], [], []
    for draw in draws:
        texts = list(draw.data)
        train_features = handler.get_layer_output(texts, ["output"], batch_size=32)[0]["output"]
        minilm_accuracies.append(_accuracy(train_features, draw.target, test_features, test_labels))
        gp_accuracies.append(_accuracy(train_features, draw.target, test_features, test_labels, "GP"))
        tfidf = TfidfVectorizer(sublinear_tf=True).fit(texts)
        baseline = LogisticRegression(C=10.0, max_iter=5000).fit(tfidf.transform(texts), draw.target)
        tfidf_accuracies.append(float((baseline.predict(tfidf.transform(test_texts)) == test_labels).mean()))
    return {
        "train_count": len(draws[0].target),
        "test_count": len(test_labels),
        "seeds": seeds,
        "minilm": _summary(minilm_accuracies),
        "minilm_gp": _summary(gp_accuracies),
        "tfidf": _summary(tfidf_accuracies),
        "seconds": time.perf_counter() - start,
    }


def throughput(image_size: int = 96, count: int = 64, batch_size: int = 32, repeats: int = 5) -> dict:
    import torch

    from xfer.model_handler import ModelHandler
    from xfer.zoo import efficientnet_lite0

    model = efficientnet_lite0("torch", image_size=image_size).eval()
    handler = ModelHandler(model)
    images = np.random.default_rng(0).uniform(-1, 1, (count, 3, image_size, image_size)).astype(np.float32)
    handler.get_layer_output(images[:batch_size], ["_fc"], batch_size=batch_size, context="cpu")

    def plain() -> np.ndarray:
        with torch.no_grad():
            return np.concatenate(
                [model(torch.from_numpy(images[i : i + batch_size])).numpy() for i in range(0, count, batch_size)]
            )

    def ours() -> np.ndarray:
        return handler.get_layer_output(images, ["_fc"], batch_size=batch_size)[0]["_fc"]

    import xfer

    xfer.set_num_threads(torch.get_num_threads())  # the plain forward's threads, whatever the load
    try:
        np.testing.assert_allclose(plain(), ours(), atol=1e-4)
        times: dict[str, list[float]] = {"plain": [], "ours": []}
        for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
            for name, function in (("plain", plain), ("ours", ours)):
                start = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - start)
    finally:
        xfer.set_num_threads(None)
    return {
        "image_size": image_size,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "plain": count / statistics.median(times["plain"]),
        "ours": count / statistics.median(times["ours"]),
        "ratio": statistics.median(times["plain"]) / statistics.median(times["ours"]),
        "ratio_range": (
            min(p / o for p, o in zip(times["plain"], times["ours"])),
            max(p / o for p, o in zip(times["plain"], times["ours"])),
        ),
    }


def _cell(summary: dict) -> str:
    return f"{summary['mean']:.3f} ± {summary['std']:.3f} ({summary['min']:.3f}-{summary['max']:.3f})"


def report(quick: bool = False) -> Section:
    sizes = (96,) if quick else (96, 224)
    count = 300 if quick else 1000
    seeds = 2 if quick else 5
    image_rows = [image_transfer(size, count, seeds=seeds) for size in sizes]
    text = text_transfer(count, seeds=seeds)
    speed = throughput(repeats=3 if quick else 7)
    figures: list[Figure] = []
    lines = [
        "### Transfer accuracy (heads on frozen features: logistic regression unless named)",
        "",
        f"Mean ± standard deviation over {seeds} random draws of the labelled examples (draw s: "
        "`random_state=s`), the same test set for every draw; targets apply to the mean. All "
        "measured in this run.",
        "",
        "| task | labelled | test | torch | MXNet | baseline | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in image_rows:
        size = row["image_size"]
        torch_accuracy = Figure(
            f"torch.fashion_mnist_{size}px.torch_accuracy", row["torch"]["mean"], better="higher",
            target=(">=", 0.73 if size == 96 else 0.78),
        )  # fmt: skip
        gap = Figure(
            f"torch.fashion_mnist_{size}px.mxnet_gap", abs(row["torch"]["mean"] - row["mxnet"]["mean"]),
            better="lower", target=("<=", 0.01),
        )  # fmt: skip
        figures += [torch_accuracy, gap, Figure(f"torch.fashion_mnist_{size}px.raw_pixels", row["raw_pixels"]["mean"])]
        lines.append(
            f"| EfficientNet-Lite0 -> Fashion-MNIST, {size} px | {row['train_count']} | "
            f"{row['test_count']} | {_cell(row['torch'])} | {_cell(row['mxnet'])} | "
            f"raw pixels {_cell(row['raw_pixels'])} | torch {cell(torch_accuracy, 3)}; MXNet within 0.01: "
            f"{cell(gap, 3)} |"
        )
    minilm = Figure("torch.minilm_20ng.lr_accuracy", text["minilm"]["mean"], better="higher", target=(">=", 0.63))
    minilm_gp = Figure("torch.minilm_20ng.gp_accuracy", text["minilm_gp"]["mean"], better="higher", target=(">=", 0.63))
    figures += [minilm, minilm_gp, Figure("torch.minilm_20ng.tfidf_accuracy", text["tfidf"]["mean"], better="higher")]
    lines += [
        f"| MiniLM -> 20 Newsgroups (LR) | {text['train_count']} | {text['test_count']} | {_cell(text['minilm'])} | - "
        f"| TF-IDF {_cell(text['tfidf'])} | {cell(minilm, 3)} |",
        f"| MiniLM -> 20 Newsgroups (GP head) | {text['train_count']} | {text['test_count']} | "
        f"{_cell(text['minilm_gp'])} | - | | {cell(minilm_gp, 3)} |",
    ]
    low, high = speed["ratio_range"]
    ratio = Figure("torch.extraction.ratio_to_plain_forward", speed["ratio"], "x", "higher", (">=", 0.95))
    figures.append(ratio)
    lines += [
        "",
        f"### Torch feature extraction vs a plain `torch.no_grad()` forward (EfficientNet-Lite0, "
        f"{speed['image_size']} px, batch {speed['batch_size']}, {speed['threads']} threads, both sides)",
        "",
        "| get_layer_output img/s | plain forward img/s | ratio (min-max) |",
        "|---:|---:|---|",
        f"| {speed['ours']:.1f} | {speed['plain']:.1f} | {cell(ratio)} (range {low:.2f}-{high:.2f}) |",
    ]
    return Section("\n".join(lines), figures)


def main() -> None:
    parser = argparse.ArgumentParser(description="PyTorch backend benchmark")
    parser.add_argument("--quick", action="store_true")
    print(report(quick=parser.parse_args().quick).markdown)


if __name__ == "__main__":
    main()
