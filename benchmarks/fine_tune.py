"""Fine-tuning repurposers on Xfer's digits task, and their training loop against ``Module.fit``.

Task (Xfer's toy example): the toy CNN trained on digits 0-4; target digits 5-9, 30 labelled
examples per class to train on, the other 746 to test on. Xfer 1.1.0 reached 0.895 with
``NeuralNetworkFineTuneRepurposer`` (cut at ``relu2``, 5 epochs) and 0.893 with
``NeuralNetworkRandomFreezeRepurposer`` (``conv1`` fixed, 5 epochs).

Speed: time per epoch of xfer's training loop against a plain ``mx.mod.Module.fit`` of the same
graph (same fixed parameters), the same data and batch size, in the same run. Epoch 1 (warm-up)
is left out; the median over the remaining epochs and all seeds is reported.

Usage::

    python -m benchmarks.fine_tune            # 5 seeds
    python -m benchmarks.fine_tune --quick    # 2 seeds
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from xfer._mxnet import mx
from xfer.repurposers.fine_tune import (
    NeuralNetworkFineTuneRepurposer,
    NeuralNetworkRandomFreezeRepurposer,
)
from xfer.toy_models import load_digit_images, train_digits_cnn

XFER_ACCURACY = {"fine-tune (relu2)": 0.895, "random freeze (conv1 fixed)": 0.893}
EPOCHS = 5
BATCH_SIZE = 16
OPTIMIZER = "adam"
OPTIMIZER_PARAMS = {"learning_rate": 0.01}


def split_target(seed: int, per_class: int = 30) -> tuple[np.ndarray, ...]:
    images, labels = load_digit_images(classes=range(5, 10))
    rng = np.random.RandomState(seed)
    train = np.concatenate(
        [rng.choice(np.flatnonzero(labels == k), per_class, replace=False) for k in range(5, 10)]
    )
    test = np.setdiff1d(np.arange(len(labels)), train)
    return images[train], labels[train], images[test], labels[test]


def make_repurposers(source: Any, seed: int) -> dict[str, Any]:
    common = dict(
        batch_size=BATCH_SIZE,
        num_epochs=EPOCHS,
        optimizer=OPTIMIZER,
        optimizer_params=OPTIMIZER_PARAMS,
        random_state=seed,
    )
    return {
        "fine-tune (relu2)": NeuralNetworkFineTuneRepurposer(source, "relu2", 5, **common),
        "random freeze (conv1 fixed)": NeuralNetworkRandomFreezeRepurposer(
            source, 5, ["conv1"], [], **common
        ),
    }


def plain_module_fit_epoch_seconds(
    repurposer: Any, X: np.ndarray, y: np.ndarray, seed: int
) -> list[float]:
    """``Module.fit`` of the repurposer's graph (same fixed parameters), seconds per epoch 2..N."""
    network = repurposer._target_network(None, 5)
    phase = repurposer._phases(network)[0]
    mx.random.seed(seed)
    np.random.seed(seed)
    iterator = mx.io.NDArrayIter(
        X, (y - 5).astype(np.float32), BATCH_SIZE, shuffle=True, label_name=network.label_name
    )
    module = network.handler.get_module(
        iterator,
        fixed_layer_parameters=phase.fixed_parameters,
        random_layer_parameters=phase.random_parameters,
    )
    ends: list[float] = []
    # get_module's module is bound and initialised: fit() binds and initialises nothing again.
    module.fit(
        iterator,
        num_epoch=EPOCHS,
        optimizer=OPTIMIZER,
        optimizer_params=dict(OPTIMIZER_PARAMS),
        eval_metric="acc",
        epoch_end_callback=lambda *args: ends.append(time.perf_counter()),
    )
    return list(np.diff(ends))


def measure(seeds: list[int]) -> dict[str, dict[str, list[float]]]:
    source = train_digits_cnn(classes=(0, 1, 2, 3, 4), num_epochs=10, seed=0)
    results: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        X_train, y_train, X_test, y_test = split_target(seed)
        for name, repurposer in make_repurposers(source, seed).items():
            row = results.setdefault(name, {"accuracy": [], "xfer_epoch": [], "module_epoch": []})
            repurposer.fit(X_train, y_train)
            row["accuracy"].append(repurposer.score(X_test, y_test))
            row["xfer_epoch"].extend(repurposer.history_.seconds[1:])
            row["module_epoch"].extend(
                plain_module_fit_epoch_seconds(repurposer, X_train, y_train, seed)
            )
    return results


def table(results: dict[str, dict[str, list[float]]], seeds: list[int]) -> str:
    lines = [
        f"{EPOCHS} epochs, batch {BATCH_SIZE}, {OPTIMIZER} lr {OPTIMIZER_PARAMS['learning_rate']}, "
        f"150 training / 746 test digits, seeds {seeds} (accuracy: mean +- std over seeds; "
        "time: median over epochs 2-5 of every seed).",
        "",
        "| repurposer | accuracy | Xfer 1.1.0 | xfer ms/epoch | Module.fit ms/epoch | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        accuracy = np.asarray(row["accuracy"])
        xfer_ms = 1000 * float(np.median(row["xfer_epoch"]))
        module_ms = 1000 * float(np.median(row["module_epoch"]))
        lines.append(
            f"| {name} | {accuracy.mean():.3f} +- {accuracy.std():.3f} | {XFER_ACCURACY[name]:.3f} "
            f"| {xfer_ms:.1f} | {module_ms:.1f} | {xfer_ms / module_ms:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def report(quick: bool = False) -> str:
    seeds = list(range(2 if quick else 5))
    return "### Fine-tuning on Xfer's digits task\n\n" + table(measure(seeds), seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds instead of 5")
    print(report(quick=parser.parse_args().quick))


if __name__ == "__main__":
    main()
