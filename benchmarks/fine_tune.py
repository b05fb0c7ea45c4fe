"""Fine-tuning on Xfer's digits task: this package, Xfer 1.1.0 and a hand-written ``Module.fit``,
measured in the same run with the same timing scope.

Task (Xfer's toy example, :mod:`benchmarks.xfer_digits`): the toy CNN trained on digits 0-4,
saved once; target digits 5-9, 30 labelled examples per class, 746 to test. Two repurposers:
fine-tune (cut at ``relu2``, new ``FullyConnected(5)`` + softmax, everything trained) and random
freeze (top two layers replaced, ``conv1`` fixed). Xfer's settings: SGD, learning rate 0.1,
batch 16, 5 epochs, for all three sides.

Sides, each in a fresh process per (side, repurposer, seed) with the same thread variables:

* this package: ``NeuralNetworkFineTuneRepurposer(...).fit(images, labels)``;
* Xfer 1.1.0 in its own environment: the same repurposer's ``repurpose(NDArrayIter)``;
* ``Module.fit``: what a user writes by hand with MXNet -- cut the graph, add the head, one
  ``mx.mod.Module(...).fit(...)`` with the source parameters.

Timing scope, identical for the three: *per epoch* is a whole fit (building the network,
binding, initialising, every epoch with its end-of-epoch work) divided by the epochs, timed in
a process that already fitted once (warm; the median of :data:`REPEATS` warm fits); *first fit*
is the first fit in a fresh process, imports included. Accuracy is over every fit (first and
warm), each with its own training seed: the sides differ by that draw only.

Usage::

    python -m benchmarks.fine_tune            # 5 seeds
    python -m benchmarks.fine_tune --quick    # 1 seed
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.report import Figure, Section, cell, mark, median_of
from benchmarks.xfer_digits import measure_sides

EPOCHS = 5
#: Warm fits per process (training seeds ``seed + 1000 k``): their median is the process's warm
#: time, and with the first fit they give the accuracy figures.
REPEATS = 4
OPTIONS = {
    "batch_size": 16,
    "epochs": EPOCHS,
    "optimizer": "sgd",
    "optimizer_params": {"learning_rate": 0.1},
    "repeats": REPEATS,
    "repeat_accuracy": True,
}
JOBS = ("fine-tune", "random-freeze")
#: Per epoch, this package over ``Module.fit`` (issue #18).
PER_EPOCH_RATIO_TARGET = 1.1


def accuracy_statistics(rows: list[dict]) -> tuple[float, float, int]:
    """(mean, standard error, number of fits) of the test accuracy of every fit in ``rows``."""
    values = np.array([a for row in rows for a in row.get("accuracies", [row["accuracy"]])], dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan"), 0
    error = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(values.mean()), error, len(values)


def fine_tune_section(results: dict[tuple[str, str], list[dict]], seeds: list[int], threads: int) -> Section:
    """The fine-tuning table and figures from :func:`benchmarks.xfer_digits.measure_sides` results."""
    figures: list[Figure] = []
    lines = [
        f"Xfer's settings on every side: SGD lr {OPTIONS['optimizer_params']['learning_rate']}, batch "
        f"{OPTIONS['batch_size']}, {EPOCHS} epochs; 150 training / 746 test digits; splits (seeds) {seeds}; "
        f"{threads} thread(s) everywhere. All measured in this run, one fresh process per side, "
        f"repurposer and split: a first fit, then {OPTIONS['repeats']} warm fits with other training "
        "seeds.",
        "",
        "Accuracy: mean ± standard error over every fit (first and warm, all splits). The three sides "
        "train the same network the same way (Xfer's `repurpose` is a `Module.fit`), so they differ by "
        "the draw of initial weights and batch order only; the target is Xfer's mean within two "
        "standard errors of the difference (≥ Xfer − 2 SE).",
        "",
        "Per epoch: a whole warm fit (network built, bound, initialised, trained, end-of-epoch work "
        "included, nothing else: no validation, no checkpoint) / epochs, the same scope on every side; "
        "median over the warm fits of a process, then over splits. CPU: the same spans in process CPU "
        "time (all threads), which a shared machine's load moves much less than wall time. First fit: "
        "fresh process, imports included.",
        "",
        "| repurposer | accuracy (fits) | Xfer 1.1.0 accuracy | Module.fit accuracy | ms/epoch | Xfer ms/epoch | Module.fit ms/epoch | ratio to Module.fit | CPU ratio to Module.fit | first fit s (ours / Xfer / Module.fit) |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for job in JOBS:
        ours, xfer, module = (results.get((job, side), []) for side in ("ours", "xfer", "module"))
        if not ours or not module:
            continue
        per_epoch = {name: 1000 * median_of(rows, "warm_fit_s") / EPOCHS for name, rows in
                     (("ours", ours), ("xfer", xfer), ("module", module))}  # fmt: skip
        cpu_ratio = median_of(ours, "warm_fit_cpu_s") / median_of(module, "warm_fit_cpu_s")
        (mean, error, count), (x_mean, x_error, _), (m_mean, m_error, _) = (
            accuracy_statistics(rows) for rows in (ours, xfer, module)
        )
        bound = x_mean - 2 * float(np.hypot(error, x_error)) if xfer else None
        accuracy = Figure(
            f"fine_tune.{job}.accuracy", mean, better="higher",
            target=(">=", round(bound, 6)) if bound is not None else None,
            note=f"mean over {count} fits; target: Xfer's mean - 2 standard errors of the difference",
        )  # fmt: skip
        ratio = Figure(
            f"fine_tune.{job}.per_epoch_ratio", per_epoch["ours"] / per_epoch["module"], "x", "lower",
            ("<=", PER_EPOCH_RATIO_TARGET),
        )  # fmt: skip
        figures += [
            accuracy,
            ratio,
            Figure(f"fine_tune.{job}.per_epoch_cpu_ratio", cpu_ratio, "x", "lower"),
            Figure(f"fine_tune.{job}.xfer_accuracy", x_mean, better="higher"),
            Figure(f"fine_tune.{job}.module_accuracy", m_mean, better="higher"),
            Figure(f"fine_tune.{job}.ms_per_epoch", per_epoch["ours"], "ms", "lower"),
            Figure(f"fine_tune.{job}.xfer_ms_per_epoch", per_epoch["xfer"], "ms", "lower"),
            Figure(f"fine_tune.{job}.module_ms_per_epoch", per_epoch["module"], "ms", "lower"),
            Figure(f"fine_tune.{job}.first_fit_s", median_of(ours, "first_fit_s"), "s", "lower"),
            Figure(f"fine_tune.{job}.xfer_first_fit_s", median_of(xfer, "first_fit_s"), "s", "lower"),
        ]
        lines.append(
            f"| {job} | {mean:.3f} ± {error:.3f} ({count}) (≥ {bound if bound is not None else float('nan'):.3f}: "
            f"{mark(accuracy.met)}) | {x_mean:.3f} ± {x_error:.3f} | {m_mean:.3f} ± {m_error:.3f} | "
            f"{per_epoch['ours']:.1f} | {per_epoch['xfer']:.1f} | {per_epoch['module']:.1f} | {cell(ratio)} | "
            f"{cpu_ratio:.2f} | {median_of(ours, 'first_fit_s'):.2f} / {median_of(xfer, 'first_fit_s'):.2f} / "
            f"{median_of(module, 'first_fit_s'):.2f} |"
        )
    return Section("\n".join(lines), figures)


def report(quick: bool = False, threads: int = 1) -> Section:
    seeds = [0] if quick else list(range(5))
    results = measure_sides(JOBS, ("ours", "xfer", "module"), seeds, OPTIONS, threads)
    section = fine_tune_section(results, seeds, threads)
    section.markdown = "### Fine-tuning on Xfer's digits task\n\n" + section.markdown
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed instead of 5")
    parser.add_argument("--threads", type=int, default=1, help="threads for every side")
    args = parser.parse_args()
    print(report(quick=args.quick, threads=args.threads).markdown)


if __name__ == "__main__":
    main()
