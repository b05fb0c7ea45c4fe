"""Transferability scores: do they rank layers as a trained head would, and what do they cost?

Sections
--------
validity
    EfficientNet-Lite0 (torch backend, ImageNet weights, 96 px, ``stretch``) on Fashion-MNIST and
    on faces vs non-faces, 10 labelled images per class. The eight default candidate layers of
    :func:`xfer.transferability.candidate_layers`, spread over the network's depth and always
    including the README's default layer ``_avg_pooling`` (runs before 94e30a0 added it to the
    eight by hand: nine layers), are read in one pooled pass. On each of
    several random draws of the training images (40 in a full run; 20 in sessions 3-5, 8 before)
    every layer gets its LogME and H-score (on the training images only) and the accuracy of a
    logistic-regression head (:class:`xfer.LrRepurposer`) trained on them, on every labelled
    image not drawn: the pool's other images, and for Fashion-MNIST 200 test images per class
    (2,200 held out; 600 test images before), for faces the other 180 of its 200. Scores and
    head read the same average-pooled features. Kendall's tau compares each score's ranking of
    the layers with the accuracies' ranking: of the per-layer means over draws (the headline,
    target for LogME >= 0.6; also over the first 20 draws, the seeds of the 20-draw runs) and
    per draw (mean of the draws' taus). LEEP and NCE score the source model's output, which is
    the same for every layer: they are reported, not ranked. The draws run in two worker
    processes (the same rows as one process; the timed parts below run alone, after them).
noise
    How much of tau is the draws' noise (:func:`noise`): tau's 95% bootstrap interval over
    resamples of whole draws, how well the accuracy ranking reproduces itself, which layer pairs
    the accuracy means separate (paired t over the draws), how many draws the others would need,
    and which pairs a score orders against the accuracy beyond the noise. For all draws and for
    the first 20.
auto
    On the first 20 draws: :class:`xfer.AutoRepurposer` (default rule, LogME; heads ``lr`` alone
    and ``lr``/``svm`` by cross-validation) against every fixed choice the README documents (LR
    and SVM heads on ``_avg_pooling``), held-out accuracy averaged over the draws.
speed
    Each score at 10,000 x 1,280 features, 10 classes (synthetic Gaussian classes, neither separable nor
    hopeless for an LR head; LEEP/NCE from 1,000-class
    source probabilities) against fitting :class:`xfer.LrRepurposer` on the same
    features, interleaved in one process, median of the repeats; beside them the floor of the
    exact feature scores, the float64 Gram matrix alone (1 BLAS thread and default threads).
forward
    :func:`xfer.transferability.rank_layers` (eight default layers, LogME and H-score, one pass)
    on 1,000 Fashion-MNIST test images against one plain forward pass of the same torch model
    over them (``model(batch)`` under ``torch.no_grad()``, same batch size and threads),
    interleaved.

Usage::

    python -m benchmarks.run --only transferability [--quick]
    python -m benchmarks.transferability [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np

from benchmarks.report import Figure, Section, cell

IMAGE_SIZE = 96
BATCH_SIZE = 64
DEFAULT_LAYER = "_avg_pooling"
#: Fashion-MNIST test images per class in the held-out set (full run); with the pool's undrawn
#: rows, 2,200 held-out images: accuracy differences of 0.01 between layers are ~22 images.
TEST_PER_CLASS = 200
#: Random draws of the 10-per-class training images (full run) for the validity part (scores
#: and per-layer LR accuracy); the first ``AUTO_DRAWS`` of them also run the auto part. Raised
#: from 20 (sessions 3-5) to narrow the noise of the per-layer means; the tau of the first
#: ``FIRST_DRAWS`` (the same seeds as the 20-draw runs) is reported beside it.
N_DRAWS = 40
AUTO_DRAWS = 20
FIRST_DRAWS = 20
#: Bootstrap resamples of the draws for the noise of tau.
RESAMPLES = 2000
FIXED_HEADS = ("lr", "svm")


# ------------------------------------------------------------------------------ data


def _handler():
    from xfer.model_handler import ModelHandler
    from xfer.zoo import efficientnet_lite0

    return ModelHandler(efficientnet_lite0("torch", image_size=IMAGE_SIZE))


def _validity_layers(handler) -> list[str]:
    from xfer.transferability import candidate_layers

    layers = candidate_layers(handler)
    if DEFAULT_LAYER not in layers:
        order = list(handler.layer_names)
        layers = sorted([*layers, DEFAULT_LAYER], key=order.index)
    return layers


def _task_images(name: str, quick: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(pool images, pool labels, test images, test labels); faces test on what a draw leaves."""
    from xfer.datasets import load_faces, load_fashion_mnist

    if name == "fashion":
        pool = load_fashion_mnist("train", n_per_class=20 if quick else 30, random_state=0)
        test = load_fashion_mnist("test", n_per_class=30 if quick else TEST_PER_CLASS, random_state=0)
        return pool.data, pool.target, test.data, test.target
    faces = load_faces()
    return faces.data, faces.target, None, None


def _pooled_features(handler, images: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
    from xfer.zoo import efficientnet_lite0_preprocess

    x = efficientnet_lite0_preprocess(images, IMAGE_SIZE, mode="stretch")
    return handler.get_layer_output(x, layers, batch_size=BATCH_SIZE, pooling="avg")[0]


def _draw(pool_y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return np.sort(np.concatenate([
        rng.choice(np.flatnonzero(pool_y == k), per_class, replace=False) for k in np.unique(pool_y)
    ]))  # fmt: skip


def _accuracy(head, features: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(head.predict_features(features) == labels))


# ------------------------------------------------------------------------------ validity + auto


def task_rows(name: str, handler, layers: list[str], n_draws: int, quick: bool,
              auto_draws: int | None = None, workers: int = 1) -> dict:
    """Per draw and layer: scores and LR accuracy; on the first ``auto_draws`` draws (all: None)
    also AutoRepurposer and the fixed heads.

    The features are read once; the draws, independent of each other, run in ``workers``
    processes (spawned: they never share the parent's torch or BLAS thread pools), each on one
    BLAS thread. Every draw is seeded by its number, so the rows do not depend on ``workers``
    (bit-identical on the real Fashion-MNIST features, and
    ``tests/test_benchmarks.py::test_transferability_draws_give_the_same_rows_in_worker_processes``).
    Spawned workers import the caller's main module: a script calling this with ``workers > 1``
    needs the usual ``if __name__ == "__main__":`` guard (``benchmarks.run`` and this module's
    ``main`` have it).
    """
    pool_x, pool_y, test_x, test_y = _task_images(name, quick)
    wanted = layers + (["_fc"] if "_fc" not in layers else [])
    pool = _pooled_features(handler, pool_x, wanted)
    test = _pooled_features(handler, test_x, wanted) if test_x is not None else None
    widths = [pool[layer].shape[1] for layer in layers]
    starts = np.cumsum([0, *widths])
    state = {
        "layers": layers, "auto_draws": auto_draws, "pool_y": pool_y, "test_y": test_y, "fc": pool["_fc"],
        "blocks": [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])],
        "pool_all": np.concatenate([pool[layer] for layer in layers], axis=1),
        "test_all": np.concatenate([test[layer] for layer in layers], axis=1) if test is not None else None,
    }  # fmt: skip
    if workers <= 1:
        _set_state(state)
        draws = [_draw_rows(seed) for seed in range(n_draws)]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_set_state, initargs=(state,)) as pool_:
            draws = list(pool_.map(_draw_rows, range(n_draws)))
    return {"name": name, "layers": layers, "draws": draws}


#: The features and labels of the task whose draws this process runs (:func:`_set_state`).
_STATE: dict = {}


def _set_state(state: dict) -> None:
    _STATE.clear()
    _STATE.update(state)
    if _in_worker():
        from xfer.threads import one_blas_thread

        _STATE["threads"] = one_blas_thread()  # held for the worker's life: one BLAS thread
        _STATE["threads"].__enter__()


def _in_worker() -> bool:
    """Whether this process is a worker started by :func:`task_rows`."""
    import multiprocessing

    return multiprocessing.parent_process() is not None


def _draw_rows(seed: int) -> dict:
    """One draw of :func:`task_rows` on the state :func:`_set_state` stored."""
    from xfer import AutoRepurposer
    from xfer.repurposers.auto import HEADS
    from xfer.transferability import h_score, leep, logme, nce

    layers, blocks, auto_draws = _STATE["layers"], _STATE["blocks"], _STATE["auto_draws"]
    pool_all, pool_y, test_all, test_y = _STATE["pool_all"], _STATE["pool_y"], _STATE["test_all"], _STATE["test_y"]
    train = _draw(pool_y, 10, seed)
    # held out: every labelled row not drawn for training (the pool's rest, and the test set)
    held = np.setdiff1d(np.arange(len(pool_y)), train)
    x_test_all, y_test = pool_all[held], pool_y[held]
    if test_all is not None:
        x_test_all = np.concatenate([x_test_all, test_all])
        y_test = np.concatenate([y_test, test_y])
    x_train_all, y_train = pool_all[train], pool_y[train]
    rows = []
    for layer, columns in zip(layers, blocks):
        lr = HEADS["lr"][0](None, None, random_state=seed).fit_features(x_train_all[:, columns], y_train)
        rows.append({
            "layer": layer,
            "logme": logme(x_train_all[:, columns], y_train),
            "h_score": h_score(x_train_all[:, columns], y_train),
            "accuracy": _accuracy(lr, x_test_all[:, columns], y_test),
        })  # fmt: skip
    logits = _STATE["fc"][train]
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    draw = {"rows": rows, "n_held_out": len(y_test),
            "leep": leep(probabilities, y_train), "nce": nce(probabilities, y_train)}  # fmt: skip
    if auto_draws is not None and seed >= auto_draws:
        return draw
    default = blocks[layers.index(DEFAULT_LAYER)]
    fixed = {}
    for head_name in FIXED_HEADS:
        cls, options = HEADS[head_name]
        head = cls(None, None, random_state=seed, **options).fit_features(x_train_all[:, default], y_train)
        fixed[head_name] = _accuracy(head, x_test_all[:, default], y_test)
    auto = {}
    for label, heads in (("lr", ("lr",)), ("lr+svm", FIXED_HEADS)):
        chooser = AutoRepurposer(None, None, heads=heads, random_state=seed)
        chooser.fit_features(x_train_all, y_train, feature_indices_per_layer=blocks)
        auto[label] = {
            "accuracy": _accuracy(chooser, x_test_all, y_test),
            "layers": [layers[int(n.split()[-1])] for n in chooser.report_.chosen_layers],
            "head": chooser.head_name_,
        }
    draw.update(fixed=fixed, auto=auto)
    return draw


def _tau(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def _means(draws: list[dict], key: str) -> list[float]:
    return [float(np.mean([d["rows"][i][key] for d in draws])) for i in range(len(draws[0]["rows"]))]


def summarise(task: dict) -> dict:
    """Per-layer means over draws; tau of the means (all draws and the first ``FIRST_DRAWS``) and
    mean of the per-draw taus; the noise of tau (:func:`noise`); auto vs fixed on the draws that
    ran it."""
    layers, draws = task["layers"], task["draws"]
    means = {key: _means(draws, key) for key in ("logme", "h_score", "accuracy")}
    first = draws[:FIRST_DRAWS]
    summary = {"name": task["name"], "layers": layers, "means": means, "n_draws": len(draws),
               "n_first_draws": len(first), "n_held_out": draws[0].get("n_held_out", "?")}  # fmt: skip
    for score in ("logme", "h_score"):
        summary[f"tau_{score}"] = _tau(means[score], means["accuracy"])
        summary[f"tau_{score}_first"] = _tau(_means(first, score), _means(first, "accuracy"))
        summary[f"tau_{score}_per_draw"] = float(np.mean([
            _tau([r[score] for r in d["rows"]], [r["accuracy"] for r in d["rows"]]) for d in draws
        ]))  # fmt: skip
    summary["noise"] = noise(draws)
    if len(draws) > len(first):
        summary["noise_first"] = noise(first)
    summary["leep"] = float(np.mean([d["leep"] for d in draws]))
    summary["nce"] = float(np.mean([d["nce"] for d in draws]))
    ran = [d for d in draws if "auto" in d]
    summary["n_auto_draws"] = len(ran)
    summary["fixed"] = {h: float(np.mean([d["fixed"][h] for d in ran])) for h in FIXED_HEADS}
    summary["auto"] = {
        label: float(np.mean([d["auto"][label]["accuracy"] for d in ran])) for label in ("lr", "lr+svm")
    }
    summary["auto_choices"] = {
        label: sorted({f"{'+'.join(d['auto'][label]['layers'])} / {d['auto'][label]['head']}" for d in ran})
        for label in ("lr", "lr+svm")
    }
    return summary


def _paired(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For ``values`` ``(draws, layers)``: the layer pairs ``(i, j)``, ``i < j``, the mean and
    standard deviation of their difference over the draws, and its paired t statistic (``inf``
    where every draw gives the same nonzero difference; 0 where the mean is 0)."""
    pairs = np.array([(i, j) for i in range(values.shape[1]) for j in range(i + 1, values.shape[1])])
    differences = values[:, pairs[:, 0]] - values[:, pairs[:, 1]]
    mean = differences.mean(0)
    mean[np.abs(mean) <= 1e-12 * np.abs(values).max()] = 0.0  # equal means, up to rounding
    sd = differences.std(0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
    error = sd / np.sqrt(len(values))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(error > 0, mean / error, np.where(mean == 0, 0.0, np.sign(mean) * np.inf))
    return pairs, mean, sd, t


def _tau_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row of ``a`` with the same row of ``b`` (``(R, L)`` each), as
    ``scipy.stats.kendalltau`` computes it (ties included); NaN where a row is constant."""
    i, j = np.triu_indices(a.shape[1], k=1)
    sign_a, sign_b = np.sign(a[:, i] - a[:, j]), np.sign(b[:, i] - b[:, j])
    with np.errstate(divide="ignore", invalid="ignore"):
        return (sign_a * sign_b).sum(1) / np.sqrt((sign_a**2).sum(1) * (sign_b**2).sum(1))


def _finite(values: list[float]) -> np.ndarray:
    """The defined taus (Kendall's tau is undefined, NaN, when one side is constant)."""
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def noise(draws: list[dict], resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """How much of the validity statistic is noise of the draws (one task).

    Returns
    -------
    dict
        ``interval``: per score, the 2.5 and 97.5 percentiles of tau (per-layer score means vs
        per-layer accuracy means) over ``resamples`` bootstrap resamples of the draws (whole
        draws, with replacement: a draw's scores and accuracies stay paired). ``truth_tau``: the
        median tau between a resample's accuracy means and all draws' (how well the accuracy
        ranking itself reproduces). ``pairs``: the layer pairs; ``separable``: how many pairs'
        accuracy means differ by at least two paired standard errors (``|t| >= 2`` over the
        draws); ``draws_needed``: for the others, the draws ``(2 sd / mean)^2`` that would
        separate them (median and max; ``inf`` for equal means). ``discordant``: per score, the
        pairs its means order against the accuracy means, and ``beyond_noise`` those of them
        separable both in accuracy and in the score (``|t| >= 2`` in each).
    """
    accuracy = np.array([[r["accuracy"] for r in d["rows"]] for d in draws])
    n_draws = len(draws)
    picks = np.random.RandomState(seed).randint(0, n_draws, size=(resamples, n_draws))
    accuracy_means = accuracy[picks].mean(1)
    truth = _finite(_tau_rows(accuracy_means, np.broadcast_to(accuracy.mean(0), accuracy_means.shape)))
    pairs, mean, sd, t = _paired(accuracy)
    separable = np.abs(t) >= 2
    with np.errstate(divide="ignore", invalid="ignore"):
        needed = np.where(mean != 0, np.ceil((2 * sd / np.abs(mean)) ** 2), np.inf)
    rest = needed[~separable]
    result = {
        "n_draws": n_draws, "resamples": resamples,
        "truth_tau": float(np.median(truth)) if len(truth) else math.nan,
        "pairs": len(pairs), "separable": int(separable.sum()),
        "draws_needed": (float(np.median(rest)), float(np.max(rest))) if len(rest) else None,
        "interval": {}, "discordant": {}, "beyond_noise": {},
    }  # fmt: skip
    for score in ("logme", "h_score"):
        values = np.array([[r[score] for r in d["rows"]] for d in draws])
        score_means = values[picks].mean(1)
        taus = _finite(_tau_rows(score_means, accuracy_means))
        result["interval"][score] = (
            tuple(float(v) for v in np.percentile(taus, [2.5, 97.5])) if len(taus) else (math.nan, math.nan)
        )
        _, score_mean, _, score_t = _paired(values)
        discordant = np.sign(score_mean) * np.sign(mean) < 0
        result["discordant"][score] = int(discordant.sum())
        result["beyond_noise"][score] = [
            (int(i), int(j)) for i, j in pairs[discordant & separable & (np.abs(score_t) >= 2)]
        ]
    return result


# ------------------------------------------------------------------------------ speed


def speed(n_rows: int = 10_000, n_features: int = 1_280, n_classes: int = 10, repeats: int = 3) -> dict:
    """Seconds of each score and of an LrRepurposer fit on the same features (medians).

    Beside them, in the same process and interleaved: both feature scores from one shared Gram
    matrix (:func:`xfer.transferability.feature_scores`, as ``rank_layers`` computes them) and
    the part no exact LogME or H-score can skip, the float64 Gram matrix ``F^T F`` of the
    centred features (NumPy's product, a BLAS ``syrk``), on one BLAS thread and on the default
    threads. ``lr_iterations`` is the fit's L-BFGS iteration count.
    """
    from xfer import LrRepurposer
    from xfer.threads import one_blas_thread
    from xfer.transferability import feature_scores, h_score, leep, logme, nce

    rng = np.random.RandomState(0)
    labels = np.arange(n_rows) % n_classes
    means = rng.normal(size=(n_classes, n_features)).astype(np.float32)
    # Class means 0.1 standard deviations apart per column: neither separable (0.3 gave an LR
    # head held-out accuracy 1.0 in a trial, and a quick fit, the baseline) nor hopeless (0.05
    # gave 0.37), as real image features are in between.
    features = (0.1 * means[labels] + rng.normal(size=(n_rows, n_features))).astype(np.float32)
    centred = features.astype(np.float64)
    centred -= centred.mean(0)
    source = rng.normal(size=(n_rows, 1000)) + 3 * np.eye(1000)[rng.randint(0, 1000, n_rows)]
    source = np.exp(source - source.max(1, keepdims=True))
    source /= source.sum(1, keepdims=True)
    fits: list = []

    def gram_one_thread() -> None:
        with one_blas_thread():
            centred.T @ centred

    tasks = {
        "lr_fit": lambda: fits.append(LrRepurposer(None, None, random_state=0).fit_features(features, labels)),
        "logme": lambda: logme(features, labels),
        "h_score": lambda: h_score(features, labels),
        "both": lambda: feature_scores(features, labels),
        "gram_1_thread": gram_one_thread,
        "gram": lambda: centred.T @ centred,
        "leep": lambda: leep(source, labels),
        "nce": lambda: nce(source, labels),
    }
    times: dict[str, list[float]] = {name: [] for name in tasks}
    cpu: dict[str, list[float]] = {name: [] for name in tasks}
    for run in tasks.values():  # warm-up (imports, first BLAS calls), both sides alike
        run()
    for _ in range(repeats):
        for name, run in tasks.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        "shape": (n_rows, n_features, n_classes),
        "seconds": {name: statistics.median(values) for name, values in times.items()},
        "ranges": {name: (min(values), max(values)) for name, values in times.items()},
        "cpu_seconds": {name: statistics.median(values) for name, values in cpu.items()},
        "lr_iterations": fits[-1].n_iter_,
        "cores": len(os.sched_getaffinity(0)),
    }


def _floor_text(speed_row: dict) -> str:
    """Why exact LogME and H-score cannot reach a tenth of the LR fit, from this run's figures."""
    n, d, k = speed_row["shape"]
    seconds, cpu = speed_row["seconds"], speed_row.get("cpu_seconds", {})
    text = (
        "CPU seconds: the process's CPU time (all threads), less sensitive than wall time to other "
        "work on the machine. Both feature scores are exact: each needs the centred features' "
        "float64 Gram matrix `F^T F`, and LogME its spectrum."
    )
    if "gram_1_thread" not in cpu or "lr_iterations" not in speed_row:
        return text
    gram_fma = n * d * (d + 1) / 2  # syrk: one triangle
    lr_fma = speed_row["lr_iterations"] * 2 * n * d * k  # one loss + gradient per iteration at least
    rate = gram_fma / cpu["gram_1_thread"]
    needed = gram_fma / (0.1 * cpu["lr_fit"])
    return text + (
        f" The Gram matrix alone is N D (D + 1) / 2 = {gram_fma / 1e9:.1f} G multiply-adds: "
        f"{cpu['gram_1_thread']:.2f} CPU s on one BLAS thread ({rate / 1e9:.1f} G per CPU second), "
        f"{cpu['gram_1_thread'] / cpu['lr_fit']:.2f}x the LR fit's CPU time and, on the default "
        f"threads, {seconds['gram'] / seconds['lr_fit']:.2f}x its wall time. The LR fit ran "
        f"{speed_row['lr_iterations']} L-BFGS iterations of at least one loss and gradient each "
        f"(2 N D K = {2 * n * d * k / 1e9:.2f} G multiply-adds), about {lr_fma / 1e9:.1f} G in all, "
        f"in skinny products. A tenth of the LR fit's CPU time ({0.1 * cpu['lr_fit']:.2f} s) would "
        f"need the product at {needed / 1e9:.0f} G multiply-adds per CPU second, "
        f"{needed / rate:.1f} times the rate measured here ({speed_row.get('cores', '?')} cores; "
        "threads add CPU seconds, they do not remove them). A score below this floor would have to "
        "approximate (subsample rows or project columns), which changes its value: not done."
    )


def forward(count: int = 1000, repeats: int = 1) -> dict:
    """Seconds of rank_layers over 8 layers vs one plain forward pass of the model (medians)."""
    import torch

    import xfer
    from xfer.datasets import load_fashion_mnist
    from xfer.transferability import candidate_layers, rank_layers
    from xfer.zoo import efficientnet_lite0, efficientnet_lite0_preprocess

    model = efficientnet_lite0("torch", image_size=IMAGE_SIZE)
    data = load_fashion_mnist("test", n_per_class=count // 10, random_state=0)
    x = efficientnet_lite0_preprocess(data.data, IMAGE_SIZE, mode="stretch")
    threads = torch.get_num_threads()
    xfer.set_num_threads(threads)  # both sides on the same threads, whatever the load
    handler = xfer.model_handler.ModelHandler(model)
    layers = candidate_layers(handler)

    def plain() -> None:
        with torch.no_grad():
            for start in range(0, len(x), BATCH_SIZE):
                model(torch.from_numpy(x[start : start + BATCH_SIZE]))

    def ours() -> None:
        rank_layers(handler, x, data.target, layers, scores=("logme", "h_score"), batch_size=BATCH_SIZE)

    plain()  # warm-up
    rank_layers(handler, x[:BATCH_SIZE], data.target[:BATCH_SIZE], layers, batch_size=BATCH_SIZE)
    plain_times, ours_times = [], []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            plain()
            plain_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            ours()
            ours_times.append(time.perf_counter() - start)
    finally:
        xfer.set_num_threads(None)
    ratios = [a / b for a, b in zip(ours_times, plain_times)]
    return {
        "count": len(x), "layers": layers, "threads": threads,
        "plain": statistics.median(plain_times), "ours": statistics.median(ours_times),
        "ratio": statistics.median(ratios), "ratios": ratios,
    }  # fmt: skip


# ------------------------------------------------------------------------------ report


def report(quick: bool = False) -> Section:
    """Run every part and return the section."""
    handler = _handler()
    layers = _validity_layers(handler)
    n_draws, auto_draws = (3, 3) if quick else (N_DRAWS, AUTO_DRAWS)
    workers = min(2, len(os.sched_getaffinity(0)))  # the draws in parallel, one BLAS thread each
    summaries = [
        summarise(task_rows(name, handler, layers, n_draws, quick, auto_draws, workers))
        for name in ("fashion", "faces")
    ]
    speed_rows = speed(n_rows=2_000 if quick else 10_000, repeats=2 if quick else 3)
    forward_row = forward(count=200 if quick else 1000, repeats=1)
    return report_rows(summaries, speed_rows, forward_row)


def _noise_lines(summaries: list[dict], titles: dict) -> list[str]:
    """The noise-of-tau table (:func:`noise`) and what it says per task."""
    first = summaries[0]["noise"]
    lines = [
        f"Noise of the statistic: {first['resamples']:,} bootstrap resamples of the draws (whole "
        "draws, scores and accuracies paired) give tau's 95% interval; the accuracy means' own "
        "ranking is compared, resample against all draws (its median tau: 1 would be a stable "
        "truth). A layer pair is separable when its accuracy means differ by at least two paired "
        "standard errors over the draws; for the other pairs, the draws (2 sd / mean)^2 that "
        "would separate them. Discordant pairs: ordered by the score against the accuracy means; "
        "beyond the noise: separable in accuracy and in the score.",
        "",
        "| task | draws | tau LogME 95% | tau H-score 95% | truth's own tau | accuracy-separable pairs | draws to separate the rest (median, max) | LogME discordant / beyond noise | H-score discordant / beyond noise |",
        "|---|---:|---|---|---:|---|---|---|---|",
    ]
    verdicts = []
    for s, n in [(s, s[key]) for s in summaries for key in ("noise_first", "noise") if key in s]:
        needed = "-" if n["draws_needed"] is None else ", ".join(
            "∞ (equal means)" if math.isinf(v) else f"{v:,.0f}" for v in n["draws_needed"]
        )
        low, high = n["interval"]["logme"]
        h_low, h_high = n["interval"]["h_score"]
        beyond = {score: n["beyond_noise"][score] for score in ("logme", "h_score")}
        lines.append(
            f"| {titles[s['name']]} | {n['n_draws']} | [{low:.2f}, {high:.2f}] | [{h_low:.2f}, {h_high:.2f}] "
            f"| {n['truth_tau']:.2f} | {n['separable']} of {n['pairs']} | {needed} "
            f"| {n['discordant']['logme']} / {len(beyond['logme'])} | {n['discordant']['h_score']} / {len(beyond['h_score'])} |"
        )
        if n is not s["noise"]:
            continue  # the verdict reads every draw
        named = ", ".join(f"`{s['layers'][i]}` vs `{s['layers'][j]}`" for i, j in beyond["logme"])
        inside = "inside" if low <= 0.6 <= high else "outside"
        verdicts.append(
            f"- {titles[s['name']]} ({n['n_draws']} draws): tau LogME {s['tau_logme']:.2f}, interval "
            f"[{low:.2f}, {high:.2f}]: "
            f"the target 0.6 lies {inside} it. "
            + (f"LogME orders {len(beyond['logme'])} layer pair(s) against the accuracy beyond the "
               f"noise ({named})." if beyond["logme"] else
               "No pair that LogME orders against the accuracy is separable in both: its "
               "disagreement with the accuracy ranking is within the noise of the draws.")
        )  # fmt: skip
    return [*lines, "", *verdicts]


def report_rows(summaries: list[dict], speed_row: dict, forward_row: dict) -> Section:
    """Markdown tables and figures of the parts' results."""
    figures: list[Figure] = []
    titles = {"fashion": "Fashion-MNIST", "faces": "faces vs non-faces"}
    lines = [
        "### Transferability scores vs held-out accuracy (EfficientNet-Lite0, torch, 96 px)",
        "",
        f"{len(summaries[0]['layers'])} layers, 10 labelled images per class, "
        f"{summaries[0]['n_draws']} random draws; accuracy of an LR head on held-out images. "
        "Kendall's tau of the per-layer means over the draws (target: LogME ≥ 0.6), the same "
        f"over the first {summaries[0].get('n_first_draws', '?')} draws (the draws of runs "
        "before the count was raised), and the mean of the per-draw taus. All measured in this run.",
        "",
        "| task | held out | tau LogME | tau H-score | first draws: LogME / H-score | per-draw tau LogME | per-draw tau H-score | LEEP | NCE |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        logme_tau = Figure(f"transferability.{s['name']}.tau_logme", s["tau_logme"], "", "higher", (">=", 0.6))
        h_tau = Figure(f"transferability.{s['name']}.tau_h_score", s["tau_h_score"], "", "higher")
        figures += [logme_tau, h_tau]
        first = f"{s['tau_logme_first']:.2f} / {s['tau_h_score_first']:.2f}" if "tau_logme_first" in s else "-"
        lines.append(
            f"| {titles[s['name']]} | {s.get('n_held_out', '?')} | {cell(logme_tau)} | {cell(h_tau)} | {first} "
            f"| {s['tau_logme_per_draw']:.2f} | {s['tau_h_score_per_draw']:.2f} | {s['leep']:.3f} | {s['nce']:.3f} |"
        )
    if all("noise" in s for s in summaries):
        lines += ["", *_noise_lines(summaries, titles)]
    lines += [
        "",
        "LEEP and NCE score the source model's output distribution (ImageNet logits), the same "
        "for every layer, so they do not rank layers; their mean over the draws is shown.",
        "",
        "Per layer (means over the draws):",
        "",
        "| layer | " + " | ".join(f"{titles[s['name']]} {k}" for s in summaries for k in ("LogME", "LR acc")) + " |",
        "|---|" + "---:|" * (2 * len(summaries)),
    ]
    for i, layer in enumerate(summaries[0]["layers"]):
        lines.append(
            f"| `{layer}` | "
            + " | ".join(f"{s['means']['logme'][i]:.3f} | {s['means']['accuracy'][i]:.3f}" for s in summaries)
            + " |"
        )
    lines += [
        "",
        "### AutoRepurposer vs the README's fixed choices (same draws, held-out accuracy)",
        "",
        f"The first {summaries[0].get('n_auto_draws', summaries[0]['n_draws'])} draws of each task.",
        "",
        "| task | best fixed (head on `_avg_pooling`) | AutoRepurposer, heads lr | AutoRepurposer, heads lr+svm | chosen (lr+svm) |",
        "|---|---:|---:|---:|---|",
    ]
    for s in summaries:
        best_name = max(s["fixed"], key=s["fixed"].get)
        best = s["fixed"][best_name]
        auto_figures = [
            Figure(f"transferability.{s['name']}.auto_{label.replace('+', '_')}_minus_best_fixed",
                   s["auto"][label] - best, "", "higher", (">=", 0.0))
            for label in ("lr", "lr+svm")
        ]  # fmt: skip
        figures += auto_figures
        lines.append(
            f"| {titles[s['name']]} | {best:.3f} ({best_name}) | {s['auto']['lr']:.3f} "
            f"(Δ {cell(auto_figures[0], 3)}) | {s['auto']['lr+svm']:.3f} (Δ {cell(auto_figures[1], 3)}) "
            f"| {'; '.join(s['auto_choices']['lr+svm'])} |"
        )
    n, d, k = speed_row["shape"]
    lr_seconds = speed_row["seconds"]["lr_fit"]
    cpu = speed_row.get("cpu_seconds") or {name: math.nan for name in speed_row["seconds"]}
    lines += [
        "",
        f"### Score cost at {n:,} x {d:,}, {k} classes (one process, interleaved, median)",
        "",
        "| computation | seconds (min-max) | fraction of the LR fit | CPU seconds | CPU fraction |",
        "|---|---:|---|---:|---:|",
        f"| LrRepurposer.fit_features | {lr_seconds:.2f} ({speed_row['ranges']['lr_fit'][0]:.2f}-"
        f"{speed_row['ranges']['lr_fit'][1]:.2f}) | 1 | {cpu['lr_fit']:.2f} | 1 |",
    ]
    for name in ("logme", "h_score", "leep", "nce"):
        fraction = Figure(f"transferability.speed.{name}_over_lr_fit", speed_row["seconds"][name] / lr_seconds,
                          "x", "lower", ("<=", 0.1))  # fmt: skip
        figures.append(fraction)
        low, high = speed_row["ranges"][name]
        lines.append(
            f"| {name} | {speed_row['seconds'][name]:.3f} ({low:.3f}-{high:.3f}) | {cell(fraction, 3)} "
            f"| {cpu[name]:.3f} | {cpu[name] / cpu['lr_fit']:.3f} |"
        )
    extra = {
        "both": "LogME + H-score from one Gram matrix (`feature_scores`, as `rank_layers`)",
        "gram_1_thread": "floor: float64 Gram `F^T F` alone, 1 BLAS thread",
        "gram": "floor: float64 Gram `F^T F` alone, default threads",
    }
    for name, title in extra.items():
        if name in speed_row["seconds"]:
            low, high = speed_row["ranges"][name]
            lines.append(
                f"| {title} | {speed_row['seconds'][name]:.3f} ({low:.3f}-{high:.3f}) "
                f"| {speed_row['seconds'][name] / lr_seconds:.3f} | {cpu[name]:.3f} | {cpu[name] / cpu['lr_fit']:.3f} |"
            )
    lines += ["", _floor_text(speed_row)]
    ratio = Figure("transferability.forward.rank_8_layers_over_forward", forward_row["ratio"], "x", "lower",
                   ("<=", 1.2))  # fmt: skip
    figures.append(ratio)
    lines += [
        "",
        f"### Scoring {len(forward_row['layers'])} layers of {forward_row['count']:,} images vs one "
        f"plain forward pass ({forward_row['threads']} threads, batch {BATCH_SIZE})",
        "",
        "| plain forward s | rank_layers (one pass, LogME + H-score) s | ratio |",
        "|---:|---:|---|",
        f"| {forward_row['plain']:.1f} | {forward_row['ours']:.1f} | {cell(ratio)} |",
        "",
        "Layers: " + ", ".join(f"`{layer}`" for layer in forward_row["layers"]) + ".",
    ]
    return Section("\n".join(lines), figures)


def main() -> None:
    parser = argparse.ArgumentParser(description="Transferability benchmark")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(report(quick=args.quick).markdown)


if __name__ == "__main__":
    sys.exit(main())
