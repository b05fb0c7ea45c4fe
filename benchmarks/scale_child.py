"""One head fitted on a large feature matrix in a fresh process, for either package.

Run by :mod:`benchmarks.xfer_digits` (the scale section), never imported: under Xfer 1.1.0's
environment with ``python -I``. Both sides fit the head on the same saved features (no source
network): this package through ``fit(features, labels)``, Xfer through its meta-model hook
``_train_model_from_features`` (what its ``repurpose`` calls after extracting features).
``fit_s`` and ``predict_s`` time those calls alone; imports are outside the scope here.

Usage::

    python scale_child.py SIDE HEAD FEATURES.npz SEED

The JSON result goes to the file named by ``$BENCHMARK_RESULT``.
"""

import json
import os
import sys
import time


def _peak_rss_mb():
    """This process's peak resident memory (Linux ``VmHWM``; ``None`` elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main(argv):
    side, head, path, seed = argv[0], argv[1], argv[2], int(argv[3])
    import numpy as np

    data = np.load(path)
    x_train, y_train, x_test = data["x_train"], data["y_train"], data["x_test"]
    if side == "ours":
        import xfer

        make = {
            "LR": lambda: xfer.LrRepurposer(None, None, random_state=seed),
            "SVM": lambda: xfer.SvmRepurposer(None, None, enable_probability_estimates=True, random_state=seed),
            "GP": lambda: xfer.GpRepurposer(None, None, random_state=seed),
            "BNN": lambda: xfer.BnnRepurposer(None, None, random_state=seed),
        }[head]
        start = time.perf_counter()
        model = make().fit(x_train, y_train)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        predicted = model.predict(x_test)
        predict_s = time.perf_counter() - start
    else:
        if "bool" not in vars(np):
            np.bool = np.bool_
        if not hasattr(np, "asscalar"):
            np.asscalar = lambda a: np.asarray(a).item()
        import mxnet as mx

        import xfer

        mx.random.seed(seed)
        np.random.seed(seed)
        # Xfer's repurposers want a source Module with the named layer; it is never run here.
        placeholder = mx.mod.Module(mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=1, name="fc"), label_names=None)
        options = {"SVM": {"enable_probability_estimates": True}}.get(head, {})
        model = getattr(xfer, f"{head.capitalize()}Repurposer")(placeholder, ["fc"], **options)
        layers = {"fc": np.arange(x_train.shape[1])}  # Xfer: layer name -> its feature columns
        start = time.perf_counter()
        model.target_model = model._train_model_from_features(x_train, y_train, layers)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        predicted = model._predict_label_from_features(x_test)
        predict_s = time.perf_counter() - start
    result = {"side": side, "head": head, "fit_s": fit_s, "predict_s": predict_s, "peak_rss_mb": _peak_rss_mb(),
              "predicted": [int(label) for label in predicted]}  # fmt: skip
    with open(os.environ["BENCHMARK_RESULT"], "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1:])
