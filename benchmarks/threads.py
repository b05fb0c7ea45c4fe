"""Feature extraction on a shared machine: torch under xfer's thread policy against MXNet.

EfficientNet-Lite0 (the same ImageNet weights on both backends) at 96 px, the same images,
``get_layer_output`` of the pooled features, in one process: MXNet, torch under xfer's policy
(:mod:`xfer.threads`, the default), and torch on as many threads as the machine has cores
(``xfer.set_num_threads(cores)``: what torch does without the policy). Measured twice: as the
machine is, and beside one competing busy process (a Python loop this benchmark starts), the
three interleaved so that a drift of the machine's load hits them alike. Target: torch under
the policy beside the busy process at least 0.5x MXNet's images per second there.

Usage::

    python -m benchmarks.threads            # 256 images, 3 repeats
    python -m benchmarks.threads --quick    # 64 images, 2 repeats
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np

from benchmarks.report import Figure, Section, cell

IMAGE_SIZE = 96
BATCH_SIZE = 32
LAYERS = {"mxnet": "global_pool", "torch": "_avg_pooling"}
TARGET = 0.5


@contextlib.contextmanager
def busy_process() -> Iterator[subprocess.Popen]:
    """One process spinning on a core for the duration."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let the scheduler see it
        yield process
    finally:
        process.kill()
        process.wait()


def measure(count: int, repeats: int) -> dict:
    """Images per second of each variant, as the machine is and beside one busy process."""
    import xfer
    from xfer.model_handler import ModelHandler
    from xfer.threads import usable_cores
    from xfer.zoo import efficientnet_lite0

    handlers = {backend: ModelHandler(efficientnet_lite0(backend, image_size=IMAGE_SIZE)) for backend in LAYERS}
    images = np.random.default_rng(0).uniform(-1, 1, (count, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    cores = usable_cores()
    variants = {  # slug: (column, backend, threads)
        "mxnet": ("MXNet", "mxnet", None),
        "torch_policy": ("torch, xfer's policy", "torch", None),
        "torch_all_cores": (f"torch, {cores} threads (no policy)", "torch", cores),
    }

    def extract(backend: str, threads: int | None) -> np.ndarray:
        xfer.set_num_threads(threads)
        try:
            return handlers[backend].get_layer_output(images, [LAYERS[backend]], batch_size=BATCH_SIZE)[0][
                LAYERS[backend]
            ]
        finally:
            xfer.set_num_threads(None)

    reference = extract("mxnet", None)
    np.testing.assert_allclose(extract("torch", None), reference, atol=1e-3)  # the same features
    rates: dict[str, dict[str, list[float]]] = {}
    for condition in ("as is", "one busy process"):
        with busy_process() if condition == "one busy process" else contextlib.nullcontext():
            for _ in range(repeats):
                for slug, (_, backend, threads) in variants.items():
                    start = time.perf_counter()
                    extract(backend, threads)
                    rates.setdefault(condition, {}).setdefault(slug, []).append(count / (time.perf_counter() - start))
    columns = {slug: column for slug, (column, _, _) in variants.items()}
    return {"count": count, "repeats": repeats, "cores": cores, "columns": columns, "rates": rates}


def threads_section(result: dict) -> Section:
    rates, columns = result["rates"], result["columns"]
    slugs = list(columns)
    figures: list[Figure] = []
    lines = [
        f"EfficientNet-Lite0, {IMAGE_SIZE} px, batch {BATCH_SIZE}, {result['count']} images, "
        f"`get_layer_output` of the pooled features on both backends, one process, {result['cores']} "
        f"usable cores; images per second, median of {result['repeats']} interleaved repeats (min-max). "
        "'One busy process': a Python loop spinning beside the measurement. All measured in this run; "
        "no thread variables are set (each backend's defaults, MXNet's being half the cores).",
        "",
        "| condition | " + " | ".join(columns.values()) + " | torch (policy) / MXNet |",
        "|---|" + "---:|" * len(columns) + "---|",
    ]
    for condition, by_slug in rates.items():
        medians = {slug: statistics.median(values) for slug, values in by_slug.items()}
        key = "busy" if condition == "one busy process" else "as_is"
        ratio = Figure(
            f"threads.{key}.torch_policy_over_mxnet", medians["torch_policy"] / medians["mxnet"], "x", "higher",
            (">=", TARGET) if key == "busy" else None,
        )  # fmt: skip
        figures.append(ratio)
        figures += [Figure(f"threads.{key}.{slug}_images_per_s", medians[slug], "img/s", "higher") for slug in slugs]
        cells = [f"{medians[s]:.1f} ({min(by_slug[s]):.1f}-{max(by_slug[s]):.1f})" for s in slugs]
        lines.append(f"| {condition} | " + " | ".join(cells) + f" | {cell(ratio)} |")
    return Section("\n".join(lines), figures)


def report(quick: bool = False) -> Section:
    section = threads_section(measure(64 if quick else 256, 2 if quick else 3))
    section.markdown = "### Torch threads on a shared machine (feature extraction)\n\n" + section.markdown
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(report(quick=parser.parse_args().quick).markdown)


if __name__ == "__main__":
    main()
