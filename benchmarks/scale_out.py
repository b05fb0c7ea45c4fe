"""When one machine's memory or one core is not enough: heads on features in shards, and
feature extraction over several local processes.

Sections
--------
heads from shards
    100,000 x 1,280 features (the ``scale`` section's generator, written chunk by chunk, never
    whole in memory) in a :class:`~xfer.feature_store.FeatureStore`. Each head is fitted in a
    fresh process from the store (``fit(store)``: minibatches and passes read from the files), and
    beside it, also in a fresh process, in memory on the store's first 10,000 rows (the baseline).
    Reported: fit seconds, peak resident memory of the fitting process (``VmHWM``, imports
    included), accuracy on 2,000 held-out rows, and the time per row against the in-memory time
    per row (targets: peak under 2 GB, at most 3x the in-memory time per row).
parallel extraction
    20,000 Fashion-MNIST images written as PNG files (an :class:`~xfer.files.ImageFolder`,
    decoded and resized to 96 px as the model reads them) through EfficientNet-Lite0 (MXNet,
    ``global_pool``) into a store of 80 shards: one process of 1 thread against 2 local processes
    of 1 thread each (``extract_features(num_processes=2, threads_per_process=1)``: the calling
    process and one started process), each run in a fresh process with every thread variable at
    1, timed from the call to the complete store (the started process's start-up included).
    Target: at least 1.6x the single process's speed, with identical features. CPU time of all
    processes of each run is reported beside it (what a shared machine's load moves least): the
    2-process run's extra CPU time is its serial part, the started process's imports and model.

The machine's load average (``os.getloadavg``) is printed beside the timings: on a shared
machine, ratios measured under load are not the figures to quote.

Usage::

    python -m benchmarks.scale_out            # full sizes (about 15 minutes on 2 cores)
    python -m benchmarks.scale_out --quick    # 20,000 / 2,000 rows; 2,000 images
    python -m benchmarks.scale_out --only extraction   # 20,000 images only (about 8 minutes)
    python -m benchmarks.scale_out --only heads --heads BNN   # one head alone (repeat for more)

Through the runner: section ``scale_out`` (heads) and ``scale_out_extraction`` (extraction).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import Figure, Section, cell, mark

HEADS = ("LR", "GP", "BNN")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS")


def _peak_rss_mb() -> float:
    from benchmarks.feature_extraction import _peak_rss_mb as peak

    return peak()


def _load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def _child(kind: str, arguments: dict, env: dict | None = None) -> dict:
    """Run ``kind`` in a fresh Python process; its last output line is a JSON object."""
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale_out", "--child", kind, json.dumps(arguments)],
        check=True, capture_output=True, text=True, env={**os.environ, **(env or {})},
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ heads
def write_feature_store(directory: Path, rows: int, width: int = 1_280, classes: int = 10,
                        seed: int = 0, first_row: int = 0, chunk: int = 10_000) -> None:
    """The ``scale`` section's kind of features (class structure in a 32-d subspace, ReLU), drawn
    ``chunk`` rows at a time into a memory map, then stored in shards. ``seed`` fixes the classes;
    rows are drawn from ``(seed, first_row + row)``, so a later ``first_row`` gives held-out rows."""
    from xfer.feature_store import write_features

    rng = np.random.RandomState(seed)
    latent_dim = 32
    basis = rng.normal(0, 1, (latent_dim, width)).astype(np.float32)
    centres = rng.normal(0, 1, (classes, latent_dim)).astype(np.float32)
    raw = directory.parent / f"{directory.name}.raw.npy"
    features = np.lib.format.open_memmap(raw, mode="w+", dtype=np.float32, shape=(rows, width))
    labels = np.empty(rows, dtype=np.int64)
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        part = np.random.RandomState([seed, first_row + start])
        labels[start:stop] = part.randint(0, classes, stop - start)
        latent = centres[labels[start:stop]] + part.normal(0, 1.0, (stop - start, latent_dim)).astype(np.float32)
        block = latent @ basis / np.sqrt(latent_dim) + part.normal(0, 0.5, (stop - start, width)).astype(np.float32)
        features[start:stop] = np.maximum(block, 0.0)
    features.flush()
    del features
    write_features(directory, np.load(raw, mmap_mode="r"), labels)
    raw.unlink()


def _make_head(name: str):
    from xfer.repurposers import BnnRepurposer, GpRepurposer, LrRepurposer

    return {"LR": lambda: LrRepurposer(None, None, random_state=0),
            "GP": lambda: GpRepurposer(None, None, random_state=0),
            "BNN": lambda: BnnRepurposer(None, None, random_state=0)}[name]()


def _heads_child(arguments: dict) -> dict:
    from xfer.feature_store import FeatureStore

    store = FeatureStore(arguments["store"])
    test = FeatureStore(arguments["test"])
    head = _make_head(arguments["head"])
    if arguments["rows"] is not None:  # the baseline: rows in memory
        data, labels = store.rows(0, arguments["rows"]), store.labels[: arguments["rows"]]
        start, cpu = time.perf_counter(), time.process_time()
        head.fit(data, labels)
    else:
        start, cpu = time.perf_counter(), time.process_time()
        head.fit(store)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    accuracy = float(np.mean(head.predict(test) == test.labels))
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": _peak_rss_mb(), "accuracy": accuracy,
            "rows": arguments["rows"] or len(store)}


def heads(rows: int, memory_rows: int, test_rows: int = 2_000, workdir: Path | None = None,
          names: tuple[str, ...] = HEADS) -> list[dict]:
    """Each head of ``names`` fitted from a store of ``rows`` rows and in memory on ``memory_rows``."""
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        scratch = Path(scratch)
        write_feature_store(scratch / "train", rows, seed=0)
        write_feature_store(scratch / "test", test_rows, seed=0, first_row=10**9)
        results = []
        for name in names:
            common = {"store": str(scratch / "train"), "test": str(scratch / "test"), "head": name}
            load = _load()
            memory = _child("heads", {**common, "rows": memory_rows})
            shards = _child("heads", {**common, "rows": None})
            results.append({"head": name, "memory": memory, "shards": shards, "load": f"{load} / {_load()}"})
            print(f"[scale_out] {name}: {results[-1]}", file=sys.stderr, flush=True)
    return results


# ------------------------------------------------------------------------------ extraction
def write_image_folder(directory: Path, count: int) -> None:
    """``count`` Fashion-MNIST training images as PNG files in one folder per class."""
    from PIL import Image

    from xfer.datasets import load_fashion_mnist

    train = load_fashion_mnist("train")
    for index in range(count):
        folder = directory / str(train.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(train.data[index], dtype=np.uint8)).save(folder / f"{index:05d}.png")


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (user + system)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _extraction_child(arguments: dict) -> dict:
    from functools import partial

    from xfer.feature_store import extract_features
    from xfer.files import ImageFolder
    from xfer.zoo import efficientnet_lite0, efficientnet_lite0_preprocess

    images = ImageFolder(arguments["images"], partial(efficientnet_lite0_preprocess, image_size=96, mode="stretch"),
                         image_size=96)
    model = efficientnet_lite0("mxnet", image_size=96)
    start, cpu = time.perf_counter(), _cpu_seconds()
    store = extract_features(model, images, ["global_pool"], arguments["store"], batch_size=32,
                             shard_size=arguments["shard_size"], num_processes=arguments["processes"],
                             threads_per_process=1)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu, "count": len(store)}


def extraction(count: int, workdir: Path | None = None) -> dict:
    from xfer.feature_store import FeatureStore

    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        scratch = Path(scratch)
        write_image_folder(scratch / "images", count)
        one_thread = {name: "1" for name in THREAD_VARIABLES}
        shard_size = max(32, count // 80)  # 80 shards: the last one taken leaves the other process idle briefly
        runs = {}
        for processes in (1, 2):
            load = _load()
            runs[processes] = _child(
                "extraction",
                {"images": str(scratch / "images"), "store": str(scratch / f"store{processes}"),
                 "processes": processes, "shard_size": shard_size},
                env=one_thread,
            )
            runs[processes]["load"] = f"{load} / {_load()}"
            print(f"[scale_out] extraction x{processes}: {runs[processes]}", file=sys.stderr, flush=True)
        single = FeatureStore(scratch / "store1").to_array()[0]
        parallel = FeatureStore(scratch / "store2").to_array()[0]
        return {"count": count, "runs": runs, "identical": bool(np.array_equal(single, parallel)),
                "max_difference": float(np.abs(single - parallel).max())}


# ------------------------------------------------------------------------------ report
def report_rows(head_rows: list[dict], extraction_row: dict | None) -> Section:
    """Markdown tables and figures of :func:`heads` and :func:`extraction`."""
    lines: list[str] = []
    figures: list[Figure] = []
    if head_rows:
        shards = head_rows[0]["shards"]["rows"]
        memory = head_rows[0]["memory"]["rows"]
        lines += [
            f"### Heads on {shards:,} x 1,280 features in shards (in memory: {memory:,} rows)",
            "",
            "Both sides measured in this run, each fit in a fresh process with the same threads.",
            "",
            "| head | in-memory fit s | from shards fit s | time per row, shards / memory | peak MB from shards "
            "| peak MB in memory | accuracy memory / shards | load avg before / after |",
            "|---|---:|---:|---|---|---:|---|---|",
        ]
        for row in head_rows:
            name = row["head"].lower()
            per_row = Figure(
                f"scale_out.{name}.time_per_row_ratio",
                (row["shards"]["seconds"] / row["shards"]["rows"]) / (row["memory"]["seconds"] / row["memory"]["rows"]),
                "x", "lower", ("<=", 3.0),
            )  # fmt: skip
            peak = Figure(f"scale_out.{name}.peak_mb", row["shards"]["peak_mb"], "MB", "lower", ("<", 2048.0))
            figures += [per_row, peak]
            lines.append(
                f"| {row['head']} | {row['memory']['seconds']:.1f} | {row['shards']['seconds']:.1f} | "
                f"{cell(per_row)} | {cell(peak, 0)} | {row['memory']['peak_mb']:.0f} | "
                f"{row['memory']['accuracy']:.3f} / {row['shards']['accuracy']:.3f} | {row['load']} |"
            )
        lines += [
            "",
            "Peak = VmHWM of the fitting process, imports included; the store is read through memory "
            "maps released after every read (`chunk_mb=64`).",
            "",
        ]
    if extraction_row:
        runs = extraction_row["runs"]
        speedup = Figure("scale_out.extraction.speedup_2_processes", runs[1]["seconds"] / runs[2]["seconds"],
                         "x", "higher", (">=", 1.6))
        identical = Figure("scale_out.extraction.identical_features", float(extraction_row["identical"]),
                           "", None, (">=", 1.0))
        figures += [speedup, identical]
        lines += [
            f"### Feature extraction over local processes ({extraction_row['count']:,} PNG images, 96 px, "
            "EfficientNet-Lite0 MXNet `global_pool`)",
            "",
            "| processes x threads | seconds | images/s | CPU s, all processes | load avg before / after |",
            "|---|---:|---:|---:|---|",
        ]
        for processes in (1, 2):
            run = runs[processes]
            cpu = f"{run['cpu_seconds']:.1f}" if "cpu_seconds" in run else "-"
            lines.append(f"| {processes} x 1 | {run['seconds']:.1f} | {run['count'] / run['seconds']:.1f} | {cpu} | "
                         f"{run['load']} |")
        lines += [
            "",
            f"Speed-up of 2 processes over 1: {cell(speedup)}; features identical: "
            f"{extraction_row['identical']} ({mark(identical.met)}; largest difference "
            f"{extraction_row['max_difference']:.1e}).",
        ]
        if all("cpu_seconds" in runs[p] for p in (1, 2)):
            serial = runs[2]["cpu_seconds"] - runs[1]["cpu_seconds"]
            bound = 2 * runs[1]["cpu_seconds"] / (runs[1]["cpu_seconds"] + max(serial, 0.0))
            lines += [
                "",
                f"The 2-process run spent {serial:.1f} s more CPU time than the single process (the "
                f"started process's imports and model, {serial / runs[1]['cpu_seconds']:.0%} of the "
                f"work): on 2 idle cores its speed-up is at most {bound:.2f}x.",
            ]
    return Section("\n".join(lines), figures)


def report(quick: bool = False, only: str | None = None, names: tuple[str, ...] = HEADS) -> Section:
    """Heads from shards (the runner's ``scale_out`` section); with ``only=None`` also extraction.

    ``names``: the heads to fit (default all three).
    """
    sizes = (20_000, 2_000) if quick else (100_000, 10_000)
    head_rows = [] if only == "extraction" else heads(*sizes, names=tuple(names))
    extraction_row = None if only == "heads" else extraction(2_000 if quick else 20_000)
    return report_rows(head_rows, extraction_row)


def heads_report(quick: bool = False) -> Section:
    """The runner's ``scale_out`` section: heads from shards against in memory."""
    return report(quick, only="heads")


def extraction_report(quick: bool = False) -> Section:
    """The runner's ``scale_out_extraction`` section: 1 process against 2 (2,000 images quick)."""
    return report(quick, only="extraction")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, arguments = argv[1], json.loads(argv[2])
        result = _heads_child(arguments) if kind == "heads" else _extraction_child(arguments)
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("heads", "extraction"))
    parser.add_argument("--heads", choices=HEADS, action="append",
                        help="fit only these heads (repeat the option for several; default: all)")
    args = parser.parse_args(argv)
    print(report(quick=args.quick, only=args.only, names=tuple(args.heads or HEADS)).markdown)


if __name__ == "__main__":
    main()
