"""One measurement of Xfer's digits task in a fresh process, for either package (or plain MXNet).

Run by :mod:`benchmarks.xfer_digits` and :mod:`benchmarks.fine_tune`, never imported by them:
under Xfer 1.1.0's environment it runs with ``python -I`` (``import xfer`` is Xfer's), under this
package's environment ``import xfer`` is this checkout. It uses only the standard library, NumPy
and what the side itself imports, so both sides pay for exactly their own imports.

Timing scope, the same for every side: ``first_fit_s`` runs from the first line of this script
(interpreter start-up excluded) to the end of the first fit: imports, reading the shared source
checkpoint, building the repurposer and fitting it (feature extraction included).
``after_mxnet_first_fit_s`` is the same span started when ``import mxnet`` has returned (each
side imports MXNet first): what choosing the head costs a script that loads its model with MXNet. ``fit_s`` is
that fit call alone; ``warm_fit_s`` the median of ``repeats`` (option, default 1) more fits of
new repurposers in the same process, with training seeds ``SEED + 1000 k`` (the first fit's is
``SEED``); with the option ``repeat_accuracy`` their test accuracies come back too. The
``*_cpu_s`` figures are the process's CPU time (all threads) over the same spans: on a shared
machine they move much less than wall time.

Usage (the runner builds these commands)::

    python digits_child.py SIDE JOB TASK_FOLDER SEED [OPTIONS_JSON]

``SIDE`` is ``ours``, ``xfer`` or ``module`` (a hand-written ``Module.fit``, fine-tuning jobs
only); ``JOB`` is ``LR``, ``SVM``, ``GP``, ``BNN``, ``fine-tune`` or ``random-freeze``, or
``imports`` (no task: ``import mxnet`` then ``import torch`` and nothing else, the floor of a
first fit that needs both). The JSON result goes to the file named by ``$BENCHMARK_RESULT``.
"""

import time

START = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402


def _cpu_seconds():
    """CPU time of this process so far (all threads): what the work cost, whatever the load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def _median(values):
    """Median of a list of numbers, or None for an empty list."""
    if not values:
        return None
    ordered, middle = sorted(values), len(values) // 2
    return ordered[middle] if len(values) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


# When ``import mxnet`` ended (wall, CPU): both sides need MXNet to load the shared checkpoint, so
# the spans from here to the end of the first fit are what the head itself costs a user whose
# script already imports MXNet (the package's imports, its dependencies' and the fit).
MXNET_IMPORTED = MXNET_IMPORTED_CPU = None

HEADS = ("LR", "SVM", "GP", "BNN")
NETWORKS = ("fine-tune", "random-freeze")


def _import_side(side):
    """The side's own imports, as its user writes them; returns ``(mx, xfer or None)``."""
    global MXNET_IMPORTED, MXNET_IMPORTED_CPU
    if side == "ours":
        # MXNet first, as a script that loads its model with MXNet does (the package's .pth hook
        # gives MXNet 1.9.1 the NumPy alias it needs whatever the import order).
        import mxnet as mx

        MXNET_IMPORTED, MXNET_IMPORTED_CPU = time.perf_counter(), _cpu_seconds()
        import xfer

        return mx, xfer
    import numpy as np

    if "bool" not in vars(np):  # MXNet 1.9.1 uses the alias NumPy removed (RUNNING_XFER.md)
        np.bool = np.bool_
    if not hasattr(np, "asscalar"):  # Xfer's BNN calls it (removed in NumPy 1.23)
        np.asscalar = lambda a: np.asarray(a).item()
    import mxnet as mx

    MXNET_IMPORTED, MXNET_IMPORTED_CPU = time.perf_counter(), _cpu_seconds()
    if side == "module":
        return mx, None
    import xfer

    return mx, xfer


def _ours_model(xfer, job, source, seed, options):
    if job == "LR":
        return xfer.LrRepurposer(source, ["fc1"], random_state=seed)
    if job == "SVM":
        return xfer.SvmRepurposer(
            source, ["fc1"], enable_probability_estimates=options["svm_probability"], random_state=seed
        )
    if job == "GP":
        return xfer.GpRepurposer(source, ["fc1"], random_state=seed)
    if job == "BNN":
        return xfer.BnnRepurposer(source, ["fc1"], random_state=seed)
    common = dict(
        batch_size=options["batch_size"],
        num_epochs=options["epochs"],
        optimizer=options["optimizer"],
        optimizer_params=dict(options["optimizer_params"]),
        random_state=seed,
    )
    if job == "fine-tune":
        return xfer.NeuralNetworkFineTuneRepurposer(source, "relu2", 5, **common)
    return xfer.NeuralNetworkRandomFreezeRepurposer(source, 5, ["conv1"], [], **common)


def _xfer_model(xfer, job, source, options):
    if job == "LR":
        return xfer.LrRepurposer(source, ["fc1"])
    if job == "SVM":
        return xfer.SvmRepurposer(source, ["fc1"], enable_probability_estimates=options["svm_probability"])
    if job == "GP":  # as in Xfer's reference run (RUNNING_XFER.md)
        return xfer.GpRepurposer(source, ["fc1"], apply_l2_norm=True)
    if job == "BNN":
        return xfer.BnnRepurposer(source, ["fc1"])
    common = dict(
        batch_size=options["batch_size"],
        num_epochs=options["epochs"],
        optimizer=options["optimizer"],
        optimizer_params=dict(options["optimizer_params"]),
    )
    if job == "fine-tune":
        return xfer.NeuralNetworkFineTuneRepurposer(source, "relu2", 5, **common)
    return xfer.NeuralNetworkRandomFreezeRepurposer(source, 5, ["conv1"], [], **common)


class _PlainModuleFit:
    """What a user writes by hand with MXNet: cut the graph, add a head, ``Module.fit``."""

    def __init__(self, mx, job, source, options):
        self.mx, self.job, self.source, self.options = mx, job, source, options

    def fit(self, images, labels):
        mx, options = self.mx, self.options
        symbol = self.source.symbol.get_internals()["relu2_output" if self.job == "fine-tune" else "relu3_output"]
        symbol = mx.sym.FullyConnected(symbol, num_hidden=5, name="new_fc")
        symbol = mx.sym.SoftmaxOutput(symbol, name="softmax")
        fixed = ["conv1_weight", "conv1_bias"] if self.job == "random-freeze" else None
        arg_params, aux_params = self.source.get_params()
        train = mx.io.NDArrayIter(images, labels, options["batch_size"], shuffle=True, label_name="softmax_label")
        self.module = mx.mod.Module(symbol, context=mx.cpu(), fixed_param_names=fixed)
        self.module.fit(
            train,
            num_epoch=options["epochs"],
            optimizer=options["optimizer"],
            optimizer_params=dict(options["optimizer_params"]),
            eval_metric="acc",
            arg_params=arg_params,
            aux_params=aux_params,
            allow_missing=True,
            initializer=mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2),
        )
        return self

    def predict_proba(self, images):
        import numpy as np

        dummy = np.zeros(len(images), np.float32)
        batches = self.mx.io.NDArrayIter(images, dummy, self.options["batch_size"], label_name="softmax_label")
        return self.module.predict(batches).asnumpy()


def _import_floor():
    """``import mxnet``, then ``import torch``: spans from the first line, wall and CPU."""
    import mxnet  # noqa: F401

    mxnet_s, mxnet_cpu_s = time.perf_counter() - START, _cpu_seconds()
    import torch  # noqa: F401

    return {"mxnet_s": mxnet_s, "mxnet_cpu_s": mxnet_cpu_s,
            "floor_s": time.perf_counter() - START, "floor_cpu_s": _cpu_seconds()}  # fmt: skip


def main(argv):
    side, job = argv[0], argv[1]
    if job == "imports":
        with open(os.environ["BENCHMARK_RESULT"], "w") as handle:
            json.dump(_import_floor(), handle)
        return
    task, seed = argv[2], int(argv[3])
    options = json.loads(argv[4]) if len(argv) > 4 else {}
    mx, xfer = _import_side(side)
    imported = time.perf_counter()
    import numpy as np

    split = np.load(os.path.join(task, f"split-{seed}.npz"))
    x_train, y_train, x_test = split["x_train"], split["y_train"], split["x_test"]
    source = mx.mod.Module.load(os.path.join(task, "source"), 0, label_names=["softmax_label"])
    index_labels = (y_train - 5).astype(np.float32)  # Xfer and Module.fit take indices 0..4

    def make_and_fit(train_seed):
        if side == "ours":
            model = _ours_model(xfer, job, source, train_seed, options)
            return model.fit(x_train, y_train)
        mx.random.seed(train_seed)
        np.random.seed(train_seed)
        if side == "module":
            return _PlainModuleFit(mx, job, source, options).fit(x_train, index_labels)
        model = _xfer_model(xfer, job, source, options)
        shuffle = job in NETWORKS
        batch = options.get("batch_size", 64)
        model.repurpose(mx.io.NDArrayIter(x_train, index_labels, batch, shuffle=shuffle, label_name="softmax_label"))
        return model

    fit_start = time.perf_counter()
    model = make_and_fit(seed)
    fit_end, fit_end_cpu = time.perf_counter(), _cpu_seconds()

    with_probabilities = not (job == "SVM" and not options.get("svm_probability"))

    def test_iterator():
        dummy = np.zeros(len(x_test), np.float32)  # Xfer's prediction iterators must carry labels
        return mx.io.NDArrayIter(x_test, dummy, 64, label_name="softmax_label")

    def predict_proba(model):
        if side == "xfer":
            return model.predict_probability(test_iterator())
        return model.predict_proba(x_test)

    def predict(model):
        if side == "xfer":
            return np.asarray(model.predict_label(test_iterator())) + 5
        if side == "module":
            return np.argmax(predict_proba(model), axis=1) + 5
        return model.predict(x_test)

    start = time.perf_counter()
    probabilities = predict_proba(model) if with_probabilities else predict(model)
    predict_s = time.perf_counter() - start
    predicted = [int(label) for label in predict(model)]
    probabilities = np.asarray(probabilities, dtype=np.float64) if with_probabilities else None

    # Warm fits: ``repeats`` more fits in this process, training seeds seed + 1000 k (the
    # reported time is their median); with ``repeat_accuracy`` each one's test accuracy too.
    warm_times, warm_cpu_times, repeat_accuracies = [], [], []
    if options.get("warm", True):
        for k in range(1, int(options.get("repeats", 1)) + 1):
            start, start_cpu = time.perf_counter(), _cpu_seconds()
            warm_model = make_and_fit(seed + 1000 * k)
            warm_times.append(time.perf_counter() - start)
            warm_cpu_times.append(_cpu_seconds() - start_cpu)
            if options.get("repeat_accuracy"):
                repeat_accuracies.append(float(np.mean(predict(warm_model) == split["y_test"])))

    if side == "ours":
        column_classes = [int(c) for c in model.classes_]
    else:  # column k is index k, that is digit 5 + k
        column_classes = [5 + k for k in range(5)]
    result = {
        "side": side,
        "job": job,
        "seed": seed,
        "import_s": imported - START,
        "first_fit_s": fit_end - START,
        "first_fit_cpu_s": fit_end_cpu,
        "after_mxnet_first_fit_s": fit_end - MXNET_IMPORTED,
        "after_mxnet_first_fit_cpu_s": fit_end_cpu - MXNET_IMPORTED_CPU,
        "warm_fit_cpu_s": _median(warm_cpu_times),
        "fit_s": fit_end - fit_start,
        "warm_fit_s": _median(warm_times),
        "warm_fit_s_all": warm_times,
        "repeat_accuracies": repeat_accuracies,
        "predict_s": predict_s,
        "column_classes": column_classes,
        "predicted": predicted,
        "probabilities": None if probabilities is None else probabilities.round(6).tolist(),
        "torch_imported": "torch" in sys.modules,
        "modules": len(sys.modules),
    }
    with open(os.environ["BENCHMARK_RESULT"], "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1:])
