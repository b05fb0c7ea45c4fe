"""The ``xfer`` command: inspect a model, extract features, fit, evaluate and predict from files.

Run ``xfer --help`` (or ``python -m xfer --help``) for the commands and ``xfer COMMAND --help``
for their options. From a folder of images sorted into class sub-folders, two commands give a
saved model and an evaluation report with plots::

    xfer fit photos --holdout 0.2 --head gp --output my_model
    xfer evaluate my_model --report my_report

Progress bars show on long steps when stderr is a terminal (``--quiet`` hides them and the
summary lines). Exit codes: 0 success; 1 an error in the data, the model or an option's value (one line on
stderr says what and how to fix it); 2 a command-line usage error; 3 an internal error (a bug:
the traceback is printed); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

#: The bundled models the command line knows by name; anything else is an MXNet checkpoint prefix.
ZOO_MODELS = ("efficientnet-lite0", "minilm")
#: The feature layer used when ``--layer`` is not given.
DEFAULT_LAYERS = {
    ("efficientnet-lite0", "mxnet"): "global_pool",
    ("efficientnet-lite0", "torch"): "_avg_pooling",
    ("minilm", "torch"): "output",
}
#: Ending of the file ``xfer fit`` writes beside a saved model: how to rebuild its source model,
#: its preprocessing and its held-out data.
SIDECAR_SUFFIX = ".cli.json"
SIDECAR_FORMAT = "xfer-cli-model"
FEATURES_FORMAT = "xfer-features"

logger = logging.getLogger("xfer.cli")


class UsageError(Exception):
    """Options that do not go together (reported by argparse, exit code 2)."""


EXAMPLES = """\
examples:
  # a folder of images with one sub-folder per class -> saved model -> report with plots
  xfer fit photos --holdout 0.2 --head gp --output my_model
  xfer evaluate my_model --report my_report

  xfer inspect --model efficientnet-lite0 --backend mxnet      # layer names and types
  xfer extract photos --output features.npz                    # features to a file, once
  xfer fit features.npz --head svm --output my_svm             # heads on saved features
  xfer predict my_model new_photos --output predictions.csv
  xfer fit reviews.csv --model minilm --head lr --output reviews_model    # texts
  xfer fit photos --model my_net --epoch 3 --layer fc1 --image-size 32 --output m  # MXNet checkpoint

exit codes: 0 success, 1 bad data/model/option value, 2 usage error, 3 internal error,
130 interrupted
"""


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


def _heads() -> dict[str, type]:
    """Meta-model heads exported by ``xfer``, by short name (``LrRepurposer`` -> ``lr``)."""
    import xfer

    heads = {}
    for name in xfer.__all__:
        cls = getattr(xfer, name)
        if (
            isinstance(cls, type)
            and issubclass(cls, xfer.MetaModelRepurposer)
            and cls is not xfer.MetaModelRepurposer
            and name.endswith("Repurposer")
        ):
            heads[name[: -len("Repurposer")].lower()] = cls
    return heads


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("source model")
    group.add_argument(
        "--model", default="efficientnet-lite0", metavar="NAME|PREFIX",
        help="efficientnet-lite0 (ImageNet CNN, default), minilm (sentence encoder, for texts), "
        "or the prefix of your MXNet checkpoint (PREFIX-symbol.json, PREFIX-NNNN.params)",
    )  # fmt: skip
    group.add_argument("--backend", choices=["mxnet", "torch"], default="torch",
                       help="backend of efficientnet-lite0 (default: torch)")  # fmt: skip
    group.add_argument("--epoch", type=int, default=0, help="epoch of an MXNet checkpoint (default 0)")
    group.add_argument(
        "--layer", action="append", metavar="NAME",
        help="layer whose output is the features (repeat for several; default: the model's "
        "pooled features; see `xfer inspect`)",
    )  # fmt: skip
    group.add_argument("--image-size", type=int, default=224,
                       help="side of the model's square input in pixels (default 224)")  # fmt: skip
    group.add_argument(
        "--resize", choices=["crop", "stretch"], default="crop",
        help="crop: keep the aspect ratio and cut the centre (photos; default); stretch: resize "
        "the whole image (small centred objects)",
    )  # fmt: skip
    group.add_argument("--mean", help="checkpoint input: per-channel mean subtracted, pixels "
                       "0..255 (e.g. 123.7,116.3,103.5; default 0)")  # fmt: skip
    group.add_argument("--std", help="checkpoint input: per-channel divisor (default 1)")
    group.add_argument("--grey", action="store_true", help="checkpoint input: one grey channel")
    group.add_argument("--max-length", type=int, help="minilm: tokens read per text (default 256)")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--skip-bad-files", action="store_true",
        help="leave out unreadable or mislabelled files (a warning lists them) instead of "
        "stopping at the first one",
    )  # fmt: skip
    group.add_argument("--path-column", default="path", help="image CSV: column of file paths")
    group.add_argument("--label-column", default="label", help="CSV/JSONL: column of labels")
    group.add_argument("--text-column", default="text", help="text CSV/JSONL: column of texts")
    group.add_argument("--batch-size", type=int, default=32, help="examples per batch (default 32)")
    group.add_argument("--context", default="cpu", help="device: cpu, gpu, gpu:1 (default cpu)")


def _add_noise_options(parser: argparse.ArgumentParser, default: Any) -> None:
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="no progress bars (shown on a terminal) and no summary; only errors")  # fmt: skip
    noise.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="also log each step")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``xfer`` command (subcommands and their options).

    Returns
    -------
    argparse.ArgumentParser
    """
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="xfer",
        description="Transfer learning from pretrained networks on your own files: inspect a "
        "model, extract features, fit a head, evaluate it and predict.",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    from xfer._version import __version__

    parser.add_argument("--version", action="version", version=f"xfer {__version__}")
    _add_noise_options(parser, default=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # -q/-v also after the command name (the command's value wins when given there)
    noise = argparse.ArgumentParser(add_help=False)
    _add_noise_options(noise, default=argparse.SUPPRESS)
    add_command = commands.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return add_command(name, parents=[noise], **kwargs)

    commands.add_parser = add_parser  # type: ignore[method-assign]

    inspect = commands.add_parser(
        "inspect", help="list the layers of a model", formatter_class=formatter,
        description="List the layers of a source model (name and type), in graph order.",
        epilog="examples:\n  xfer inspect\n  xfer inspect --model my_net --epoch 3 --type "
        "convolution\n  xfer inspect --model minilm --json",
    )  # fmt: skip
    _add_model_options(inspect)
    inspect.add_argument("--type", help="only layers of this type (e.g. convolution)")
    inspect.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    inspect.set_defaults(run=run_inspect)

    extract = commands.add_parser(
        "extract", help="extract features of images or texts to a .npz file",
        formatter_class=formatter,
        description="Run the source model once over DATA and save the features of --layer, with "
        "the labels and file names, to a .npz file that `xfer fit` and `xfer evaluate` read.",
        epilog="examples:\n  xfer extract photos --output features.npz\n"
        "  xfer extract reviews.jsonl --model minilm --output text_features.npz",
    )  # fmt: skip
    extract.add_argument("data", metavar="DATA", help="folder of images (one sub-folder per "
                         "class, or none), CSV of path,label, or texts (.csv/.tsv/.jsonl/folder)")  # fmt: skip
    extract.add_argument("--output", "-o", required=True, help="the .npz file to write")
    _add_model_options(extract)
    _add_data_options(extract)
    extract.set_defaults(run=run_extract)

    fit = commands.add_parser(
        "fit", help="fit a head on a folder, a table of files or a feature file, and save it",
        formatter_class=formatter,
        description="Fit a meta-model head on features of the source model and save it (files "
        "OUTPUT.json, OUTPUT.npz and OUTPUT.cli.json, which records the source model and its "
        "preprocessing for `xfer evaluate` and `xfer predict`).",
        epilog="examples:\n  xfer fit photos --holdout 0.2 --head gp --output my_model\n"
        "  xfer fit features.npz --head svm --param c=0.5 --output my_svm\n"
        "  xfer fit train.csv --model minilm --head lr --output reviews_model",
    )  # fmt: skip
    fit.add_argument("data", metavar="DATA", help="labelled images or texts (as for extract), or "
                     "a .npz feature file written by `xfer extract`")  # fmt: skip
    fit.add_argument("--output", "-o", required=True, help="path prefix of the saved model")
    fit.add_argument("--head", default="lr", help="lr (default), svm, gp, bnn or any other "
                     "meta-model head xfer exports, by its short name")  # fmt: skip
    fit.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a parameter of the head (repeatable; VALUE is read as JSON, else as a string), "
        "e.g. --param c=0.5 --param kernel=rbf",
    )  # fmt: skip
    fit.add_argument("--holdout", type=float, metavar="FRACTION",
                     help="hold out this share of every class for `xfer evaluate MODEL`")  # fmt: skip
    fit.add_argument("--seed", type=int, default=0, help="seed of the head and the hold-out split")
    _add_model_options(fit)
    _add_data_options(fit)
    fit.set_defaults(run=run_fit)

    evaluate = commands.add_parser(
        "evaluate", help="accuracy, NLL, ECE, confusion matrix and reliability diagram",
        formatter_class=formatter,
        description="Evaluate a model saved by `xfer fit` on labelled DATA (default: the data it "
        "held out with --holdout). Writes REPORT/report.md, metrics.json, confusion_matrix.csv, "
        "confusion_matrix.png, reliability_diagram.png and predictions.csv.",
        epilog="examples:\n  xfer evaluate my_model --report my_report\n"
        "  xfer evaluate my_model test_photos --report test_report",
    )  # fmt: skip
    evaluate.add_argument("model", metavar="MODEL", help="path prefix given to `xfer fit --output`")
    evaluate.add_argument("data", metavar="DATA", nargs="?", help="labelled images, texts or "
                          "a feature file (default: the model's held-out data)")  # fmt: skip
    evaluate.add_argument("--report", "-o", required=True, help="folder to write the report to")
    evaluate.add_argument("--bins", type=int, default=15, help="reliability diagram bins (default 15)")
    _add_data_options(evaluate)
    evaluate.set_defaults(run=run_evaluate)

    predict = commands.add_parser(
        "predict", help="predict labels and probabilities to a CSV file",
        formatter_class=formatter,
        description="Predict DATA with a model saved by `xfer fit`: one row per example with its "
        "file (or text source), predicted label, confidence and the probability of every class.",
        epilog="examples:\n  xfer predict my_model new_photos --output predictions.csv",
    )  # fmt: skip
    predict.add_argument("model", metavar="MODEL", help="path prefix given to `xfer fit --output`")
    predict.add_argument("data", metavar="DATA", help="images, texts or a feature file")
    predict.add_argument("--output", "-o", required=True, help="the CSV file to write")
    _add_data_options(predict)
    predict.set_defaults(run=run_predict)
    return parser


# --------------------------------------------------------------------------------------------
# Models, data and preprocessing
# --------------------------------------------------------------------------------------------


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--{name} takes numbers separated by commas, got {text!r}") from None
    if name == "std" and any(v == 0 for v in values):
        raise UsageError("--std values must not be 0")
    return values


def model_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The source model the options describe, as a JSON-safe dict (stored beside a fitted model).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options of ``inspect``, ``extract`` or ``fit``.

    Returns
    -------
    dict
    """
    if args.image_size < 1:
        raise UsageError(f"--image-size must be positive, got {args.image_size}")
    name = args.model
    if name == "efficientnet-lite0":
        spec = {"name": name, "backend": args.backend, "image_size": args.image_size,
                "resize": args.resize}  # fmt: skip
    elif name == "minilm":
        spec = {"name": name, "backend": "torch", "max_length": args.max_length}
    else:
        spec = {
            "name": "checkpoint",
            "prefix": str(Path(name).resolve()),
            "epoch": args.epoch,
            "image_size": args.image_size,
            "resize": args.resize,
            "mean": _floats(args.mean, "mean"),
            "std": _floats(args.std, "std"),
            "grey": bool(args.grey),
        }
    if name != "minilm" and args.max_length is not None:
        raise UsageError("--max-length applies to --model minilm only")
    if name in ZOO_MODELS and (args.mean or args.std or args.grey):
        raise UsageError(f"--mean, --std and --grey apply to your own checkpoints, not {name}")
    return spec


def load_source(spec: dict[str, Any]) -> Any:
    """The source model of ``spec``: a zoo model, or a ModelHandler of an MXNet checkpoint.

    Parameters
    ----------
    spec : dict
        From :func:`model_spec`.

    Returns
    -------
    object
        A source model any repurposer accepts.
    """
    logger.info("Loading the source model %s.", _describe(spec))
    if spec["name"] == "efficientnet-lite0":
        from xfer.zoo import efficientnet_lite0

        return efficientnet_lite0(spec["backend"], image_size=spec["image_size"])
    if spec["name"] == "minilm":
        from xfer.zoo import minilm

        return minilm(max_length=spec.get("max_length"))
    from xfer.model_handler import ModelHandler

    return ModelHandler((spec["prefix"], spec["epoch"]))


def _describe(spec: dict[str, Any]) -> str:
    if spec["name"] == "efficientnet-lite0":
        return f"efficientnet-lite0 ({spec['backend']}, {spec['image_size']} px)"
    if spec["name"] == "minilm":
        return "minilm"
    return f"MXNet checkpoint {spec['prefix']} (epoch {spec['epoch']})"


def default_layers(spec: dict[str, Any]) -> list[str]:
    key = (spec["name"], spec.get("backend"))
    if key not in DEFAULT_LAYERS:
        raise UsageError(
            "give the feature layer of your checkpoint with --layer NAME (list the layers with "
            f"`xfer inspect --model {spec.get('prefix', '')}`)"
        )
    return [DEFAULT_LAYERS[key]]


class _Preprocess:
    """The image preprocessing of a model spec (a picklable function of a list of images)."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec

    def __call__(self, images: list) -> Any:
        spec = self.spec
        if spec["name"] == "efficientnet-lite0":
            from xfer.zoo import efficientnet_lite0_preprocess

            return efficientnet_lite0_preprocess(images, spec["image_size"], mode=spec["resize"])
        import numpy as np

        from xfer.files import resize_images

        x = resize_images(images, spec["image_size"], mode=spec["resize"], grey=spec["grey"])
        channels = x.shape[1]
        for key in ("mean", "std"):
            values = spec.get(key)
            if values is not None and len(values) not in (1, channels):
                raise UsageError(f"--{key} needs 1 or {channels} values, got {len(values)}")
        mean = np.asarray(spec.get("mean") or [0.0], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(spec.get("std") or [1.0], np.float32).reshape(1, -1, 1, 1)
        return (x - mean) / std


@dataclass
class Data:
    """Examples to run through a model: what xfer reads, their labels and where each came from."""

    inputs: Any  # an ImageFolder, a list of texts, or a feature array
    labels: Any
    names: list[str]
    kind: str  # "images", "texts" or "features"
    skipped: list
    source: str
    meta: dict[str, Any] | None = None  # feature files: how they were made

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: Any) -> Data:
        import numpy as np

        indices = np.asarray(indices, dtype=np.int64)
        if self.kind == "images":
            inputs = self.inputs.subset(indices)
        elif self.kind == "texts":
            inputs = [self.inputs[i] for i in indices]
        else:
            inputs = self.inputs[indices]
        labels = None if self.labels is None else self.labels[indices]
        names = [self.names[i] for i in indices]
        return Data(inputs, labels, names, self.kind, self.skipped, self.source, self.meta)


def read_data(path: str, spec: dict[str, Any] | None, args: argparse.Namespace) -> Data:
    """Read DATA for the model ``spec``: images, texts, or (``.npz``) a feature file.

    Parameters
    ----------
    path : str
        The DATA argument.
    spec : dict or None
        The source model (None: only a feature file can be read).
    args : argparse.Namespace
        The data options.

    Returns
    -------
    Data
    """
    on_error = "skip" if args.skip_bad_files else "raise"
    if path.lower().endswith(".npz"):
        return read_features(path)
    if spec is None:
        raise UsageError(f"{path} is not a .npz feature file")
    if spec["name"] == "minilm":
        from xfer.files import read_texts

        texts = read_texts(path, text_column=args.text_column, label_column=args.label_column,
                           on_error=on_error)  # fmt: skip
        return Data(texts.texts, texts.labels, texts.sources, "texts", texts.skipped,
                    str(Path(path).resolve()))  # fmt: skip
    from xfer.files import ImageFolder

    folder = ImageFolder(
        path, _Preprocess(spec), image_size=spec["image_size"], path_column=args.path_column,
        label_column=args.label_column, on_error=on_error,
    )  # fmt: skip
    return Data(folder, folder.labels, list(folder.paths), "images", folder.skipped,
                str(Path(path).resolve()))  # fmt: skip


def read_features(path: str) -> Data:
    """Read a feature file written by ``xfer extract``.

    Parameters
    ----------
    path : str

    Returns
    -------
    Data
    """
    from xfer.exceptions import DataFileError, DataFileNotFoundError, SerializationError
    from xfer.serialization import read_npz

    if not os.path.isfile(path):
        raise DataFileNotFoundError(f"{path} does not exist: write it with `xfer extract`.")
    try:
        arrays = read_npz(Path(path))
        meta = json.loads(str(arrays["meta"]))
        if meta.get("format") != FEATURES_FORMAT:
            raise KeyError("format")
    except (SerializationError, KeyError, json.JSONDecodeError, ValueError) as error:
        raise DataFileError(
            f"{path} is not a feature file written by `xfer extract` ({type(error).__name__}: "
            f"{error}).",
            path=path,
            reason="not a feature file",
        ) from None
    labels = arrays.get("labels")
    return Data(arrays["features"], labels, arrays["names"].tolist(), "features", [],
                str(Path(path).resolve()), meta)  # fmt: skip


def _extract(source: Any, layers: list[str], data: Data, args: argparse.Namespace) -> Any:
    from xfer.model_handler import ModelHandler

    handler = source if isinstance(source, ModelHandler) else ModelHandler(source)
    outputs, _ = handler.get_layer_output(
        data.inputs, layers, context=args.context, batch_size=args.batch_size,
        verbose=_bars(args),
    )  # fmt: skip
    import numpy as np

    return np.concatenate([outputs[name] for name in layers], axis=1), [
        outputs[name].shape[1] for name in layers
    ]


def _bars(args: argparse.Namespace) -> bool:
    """Progress bars on long steps: on a terminal, unless --quiet (never in logs or pipes)."""
    return not args.quiet and sys.stderr.isatty()


def _print(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, flush=True)


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def run_inspect(args: argparse.Namespace) -> int:
    """``xfer inspect``: print the layers of the source model."""
    from xfer.model_handler import ModelHandler

    spec = model_spec(args)
    source = load_source(spec)
    handler = source if isinstance(source, ModelHandler) else ModelHandler(source)
    names = list(handler.layer_names)
    if args.type:
        wanted = set(handler.get_layer_names_matching_type(args.type))
        names = [name for name in names if name in wanted]
    default = DEFAULT_LAYERS.get((spec["name"], spec.get("backend")))
    rows = [{"name": n, "type": handler.get_layer_type(n), "default": n == default} for n in names]
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    width = max([len(row["name"]) for row in rows] + [4])
    print(f"{'name':<{width}}  type")
    for row in rows:
        mark = "  (default feature layer)" if row["default"] else ""
        print(f"{row['name']:<{width}}  {row['type']}{mark}")
    _print(args, f"{len(rows)} layers of {_describe(spec)}")
    return EXIT_OK


def run_extract(args: argparse.Namespace) -> int:
    """``xfer extract``: features of DATA to a ``.npz`` file."""
    import numpy as np

    from xfer.serialization import arrays_to_npz_bytes, atomic_write_bytes

    spec = model_spec(args)
    layers = args.layer or default_layers(spec)
    data = read_data(args.data, spec, args)
    if data.kind == "features":
        raise UsageError("DATA is already a feature file")
    started = time.perf_counter()
    features, sizes = _extract(load_source(spec), layers, data, args)
    meta = {"format": FEATURES_FORMAT, "version": 1, "model": spec, "layers": layers,
            "layer_sizes": sizes, "source": data.source, "kind": data.kind}  # fmt: skip
    arrays = {"features": features, "names": np.asarray(data.names, dtype=str),
              "meta": np.asarray(json.dumps(meta))}  # fmt: skip
    if data.labels is not None:
        arrays["labels"] = np.asarray(data.labels)
    atomic_write_bytes(args.output, arrays_to_npz_bytes(arrays))
    _print(args, f"Wrote {features.shape[0]} x {features.shape[1]} features of {', '.join(layers)} "
           f"to {args.output} in {time.perf_counter() - started:.1f} s.")  # fmt: skip
    return EXIT_OK


def _head_params(args: argparse.Namespace) -> dict[str, Any]:
    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--param takes NAME=VALUE, got {item!r}")
        try:
            params[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[name.strip()] = value
    return params


def _make_head(args: argparse.Namespace, source: Any, layers: list[str]) -> Any:
    heads = _heads()
    if args.head not in heads:
        raise UsageError(f"unknown head {args.head!r}; choose from {', '.join(sorted(heads))}")
    cls = heads[args.head]
    head = cls(source, layers)
    valid = head.get_params(deep=False)
    defaults = {"random_state": args.seed, "verbose": _bars(args),
                "extraction_batch_size": args.batch_size,
                "enable_probability_estimates": True}  # SVM: evaluate needs probabilities
    params = {k: v for k, v in defaults.items() if k in valid}
    user = _head_params(args)
    unknown = sorted(set(user) - set(valid))
    if unknown:
        raise UsageError(
            f"{cls.__name__} has no parameter {', '.join(unknown)}; its parameters are "
            f"{', '.join(sorted(k for k in valid if k not in ('source_model', 'feature_layer_names')))}"
        )
    params.update(user)
    return head.set_params(**params)


def run_fit(args: argparse.Namespace) -> int:
    """``xfer fit``: fit a head on DATA and save it with its command-line record."""
    from xfer.files import stratified_split
    from xfer.serialization import atomic_write_json, saving

    if args.holdout is not None and not 0 < args.holdout < 1:
        raise UsageError(f"--holdout must be a fraction between 0 and 1, got {args.holdout}")
    if args.data.lower().endswith(".npz"):
        data = read_features(args.data)
        spec, layers = data.meta["model"], data.meta["layers"]
        if args.layer and args.layer != layers:
            raise UsageError(f"{args.data} holds features of {layers}, not {args.layer}")
    else:
        spec = model_spec(args)
        layers = args.layer or default_layers(spec)
        data = read_data(args.data, spec, args)
    if data.labels is None:
        from xfer.exceptions import DataFileError

        raise DataFileError(
            f"{args.data} has no labels: put the images in one sub-folder per class, or give "
            f"the CSV/JSONL a {args.label_column!r} column.",
            path=args.data,
            reason="no labels",
        )
    total = len(data)
    test_index = None
    train = data
    if args.holdout is not None:
        train_index, test_index = stratified_split(data.labels, float(args.holdout), args.seed)
        train = data.subset(train_index)
    started = time.perf_counter()
    source = load_source(spec)
    head = _make_head(args, source, layers)
    if train.kind == "features":
        head.fit_features(train.inputs, train.labels, context=args.context)
    elif train.kind == "texts":
        head.fit(train.inputs, train.labels, context=args.context)
    else:
        head.fit(train.inputs, context=args.context)
    seconds = time.perf_counter() - started
    prefix = Path(args.output)
    record = {
        "format": SIDECAR_FORMAT,
        "version": 1,
        "model": spec,
        "layers": layers,
        "head": args.head,
        "data": {"source": data.source, "kind": data.kind, "count": total,
                 "holdout": None if test_index is None else [int(i) for i in test_index],
                 "options": {"skip_bad_files": bool(args.skip_bad_files),
                             "path_column": args.path_column, "label_column": args.label_column,
                             "text_column": args.text_column}},
    }  # fmt: skip
    with saving(prefix.parent):  # the model and its record go into place together
        head.save(prefix, save_source_model=spec["name"] == "checkpoint")
        atomic_write_json(prefix.with_name(prefix.name + SIDECAR_SUFFIX), record)
    what = {"images": "images", "texts": "texts", "features": "feature rows"}[data.kind]
    _print(args, f"Fitted {type(head).__name__} on {len(train)} {what} of "
           f"{len(head.classes_)} classes in {seconds:.1f} s; saved to {prefix}.")  # fmt: skip
    if test_index is not None:
        _print(args, f"Held out {len(test_index)} {what}: `xfer evaluate {prefix} --report "
               "REPORT_FOLDER` evaluates on them.")  # fmt: skip
    return EXIT_OK


def load_fitted(prefix: str) -> tuple[Any, dict[str, Any]]:
    """A model saved by ``xfer fit`` and its command-line record.

    Parameters
    ----------
    prefix : str
        The ``--output`` of ``xfer fit``.

    Returns
    -------
    repurposer, record
    """
    import xfer
    from xfer.exceptions import ModelFileNotFoundError, SerializationError

    sidecar = Path(prefix + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        if Path(prefix + ".json").is_file():
            raise ModelFileNotFoundError(
                f"{sidecar} is missing: {prefix} was not saved by `xfer fit`, so the command line "
                "does not know its source model and preprocessing. Use the Python API "
                "(xfer.load), or fit it with `xfer fit`."
            )
        raise ModelFileNotFoundError(
            f"No model saved under {prefix} ({prefix}.json and {sidecar} are missing): give the "
            "--output path of `xfer fit`."
        )
    try:
        record = json.loads(sidecar.read_text())
        if record.get("format") != SIDECAR_FORMAT:
            raise KeyError("format")
        spec = record["model"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise SerializationError(f"{sidecar} is corrupt ({type(error).__name__}: {error}); fit "
                                 "the model again.") from None  # fmt: skip
    source = None if spec["name"] == "checkpoint" else load_source(spec)
    return xfer.load(prefix, source_model=source), record


def _data_for_model(args: argparse.Namespace, record: dict[str, Any], purpose: str) -> Data:
    spec = record["model"]
    if args.data is not None:
        data = read_data(args.data, spec, args)
        if data.kind == "features" and (data.meta["model"] != spec or data.meta["layers"] != record["layers"]):
            raise UsageError(
                f"{args.data} holds features of {_describe(data.meta['model'])} layers "
                f"{data.meta['layers']}, but the model reads {_describe(spec)} layers "
                f"{record['layers']}"
            )
        return data
    held = record["data"]
    if held["holdout"] is None:
        raise UsageError(f"give DATA to {purpose}: {args.model} was fitted without --holdout")
    options = held["options"]
    for name, value in options.items():
        if name == "skip_bad_files":
            args.skip_bad_files = args.skip_bad_files or value
        else:
            setattr(args, name, value)
    data = read_data(held["source"], spec if held["kind"] != "features" else None, args)
    if len(data) != held["count"]:
        from xfer.exceptions import DataFileError

        raise DataFileError(
            f"{held['source']} has changed since `xfer fit` ({held['count']} examples then, "
            f"{len(data)} now), so the held-out part is unknown: give the test DATA explicitly.",
            path=held["source"],
            reason="changed",
        )
    return data.subset(held["holdout"])


def _probabilities(model: Any, data: Data, args: argparse.Namespace) -> Any:
    if data.kind == "features":
        return model.predict_proba_features(data.inputs, context=args.context)
    model.set_params(verbose=_bars(args), extraction_batch_size=args.batch_size)
    return model.predict_proba(data.inputs, context=args.context)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    import csv
    import io

    from xfer.serialization import atomic_write_bytes

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def _prediction_rows(model: Any, data: Data, proba: Any, with_labels: bool) -> tuple[list, list]:
    import numpy as np

    classes = [str(c) for c in model.classes_]
    predicted = model.classes_[np.argmax(proba, axis=1)]
    header = ["path", *(["label"] if with_labels else []), "prediction", "confidence",
              *[f"p_{c}" for c in classes]]  # fmt: skip
    rows = []
    for i, name in enumerate(data.names):
        row = [name, *([data.labels[i]] if with_labels else []), predicted[i],
               f"{proba[i].max():.6f}", *[f"{p:.6f}" for p in proba[i]]]  # fmt: skip
        rows.append(row)
    return header, rows


def run_predict(args: argparse.Namespace) -> int:
    """``xfer predict``: labels and probabilities of DATA to a CSV file."""
    model, record = load_fitted(args.model)
    data = _data_for_model(args, record, "predict")
    proba = _probabilities(model, data, args)
    header, rows = _prediction_rows(model, data, proba, with_labels=False)
    _write_csv(Path(args.output), header, rows)
    _print(args, f"Wrote {len(rows)} predictions to {args.output}.")
    return EXIT_OK


def run_evaluate(args: argparse.Namespace) -> int:
    """``xfer evaluate``: metrics, confusion matrix, reliability diagram and a report."""
    import numpy as np

    from xfer import metrics
    from xfer.exceptions import DataFileError
    from xfer.serialization import atomic_write_bytes, atomic_write_json

    if args.bins < 1:
        raise UsageError(f"--bins must be positive, got {args.bins}")
    model, record = load_fitted(args.model)
    data = _data_for_model(args, record, "evaluate")
    if data.labels is None:
        raise DataFileError(f"{args.data} has no labels to evaluate against.", path=str(args.data),
                            reason="no labels")  # fmt: skip
    classes = model.classes_
    labels = np.asarray(data.labels)
    if labels.dtype.kind != classes.dtype.kind and classes.dtype.kind in "U":
        labels = labels.astype(str)
    unknown = sorted(set(labels.tolist()) - set(classes.tolist()))
    if unknown:
        raise DataFileError(
            f"The data has labels the model was not trained on: {', '.join(map(str, unknown[:10]))}"
            f" (the model knows {', '.join(map(str, classes))}). Evaluate on data of the same "
            "classes.",
            path=data.source,
            reason="unknown labels",
        )
    proba = _probabilities(model, data, args)
    results = {
        "examples": len(labels),
        "accuracy": metrics.accuracy(labels, proba, classes),
        "negative_log_likelihood": metrics.negative_log_likelihood(labels, proba, classes),
        "expected_calibration_error": metrics.expected_calibration_error(labels, proba, classes, args.bins),
        "brier_score": metrics.brier_score(labels, proba, classes),
    }  # fmt: skip
    from sklearn.metrics import confusion_matrix

    predicted = classes[np.argmax(proba, axis=1)]
    matrix = confusion_matrix(labels, predicted, labels=classes)
    per_class = {str(c): float(matrix[i, i] / max(1, matrix[i].sum())) for i, c in enumerate(classes)}
    results["recall_per_class"] = per_class
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report / "metrics.json", results)
    _write_csv(report / "confusion_matrix.csv", ["label \\ predicted", *map(str, classes)],
               [[str(c), *matrix[i].tolist()] for i, c in enumerate(classes)])  # fmt: skip
    header, rows = _prediction_rows(model, data, proba, with_labels=True)
    _write_csv(report / "predictions.csv", header, rows)
    _save_figures(report, labels, predicted, proba, classes, args.bins)
    lines = [
        f"# Evaluation of {args.model}",
        "",
        f"{type(model).__name__} on features of {_describe(record['model'])} "
        f"(layers {', '.join(record['layers'])}); {len(labels)} examples from "
        f"{args.data or record['data']['source'] + ' (held out by xfer fit)'}.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy | {results['accuracy']:.4f} |",
        f"| negative log-likelihood | {results['negative_log_likelihood']:.4f} |",
        f"| expected calibration error ({args.bins} bins) | {results['expected_calibration_error']:.4f} |",
        f"| Brier score | {results['brier_score']:.4f} |",
        "",
        "| class | examples | recall |",
        "|---|---|---|",
        *[f"| {c} | {int(matrix[i].sum())} | {per_class[str(c)]:.3f} |" for i, c in enumerate(classes)],
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "![reliability diagram](reliability_diagram.png)",
        "",
    ]  # fmt: skip
    if data.skipped:
        lines += [f"{len(data.skipped)} files were skipped:", ""]
        lines += [f"- {s.path}: {s.reason}" for s in data.skipped] + [""]
    atomic_write_bytes(report / "report.md", "\n".join(lines).encode("utf-8"))
    _print(args, f"accuracy {results['accuracy']:.4f}, NLL {results['negative_log_likelihood']:.4f}, "
           f"ECE {results['expected_calibration_error']:.4f} on {len(labels)} examples; report in "
           f"{report / 'report.md'}")  # fmt: skip
    return EXIT_OK


def _save_figures(report: Path, labels: Any, predicted: Any, proba: Any, classes: Any, bins: int) -> None:
    # Figures without pyplot: no backend is chosen or changed (main() may run inside Jupyter).
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    from xfer import metrics
    from xfer.serialization import atomic_write

    size = max(4.0, 0.5 * len(classes) + 2)
    figure = Figure(figsize=(size, size))
    ax = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        labels, predicted, labels=classes, ax=ax, colorbar=False, xticks_rotation="vertical"
    )
    ax.set_title("Confusion matrix")
    figure.tight_layout()
    atomic_write(report / "confusion_matrix.png", lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    figure = Figure(figsize=(4.5, 4.5))
    metrics.plot_reliability_diagram(labels, proba, classes, n_bins=bins, ax=figure.subplots())
    figure.tight_layout()
    atomic_write(report / "reliability_diagram.png", lambda tmp: figure.savefig(tmp, format="png", dpi=100))


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _configure_logging(args: argparse.Namespace) -> tuple[logging.Handler, int, bool]:
    """Log xfer's records to stderr (tqdm-safe) for this run; returns what to restore."""
    from xfer._progress import TqdmLoggingHandler

    handler = TqdmLoggingHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("xfer: %(message)s"))
    xfer_logger = logging.getLogger("xfer")
    saved = (handler, xfer_logger.level, xfer_logger.propagate)
    xfer_logger.addHandler(handler)
    xfer_logger.setLevel(
        logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING
    )
    xfer_logger.propagate = False
    return saved


def main(argv: list[str] | None = None) -> int:
    """Run the ``xfer`` command with ``argv`` (default: the process's arguments).

    Parameters
    ----------
    argv : list of str, optional
        Arguments after the program name.

    Returns
    -------
    int
        The exit code (see the module docstring).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler, level, propagate = _configure_logging(args)
    command = parser._subparsers._group_actions[0].choices[args.command]  # for usage errors
    try:
        return args.run(args)
    except UsageError as error:
        command.print_usage(sys.stderr)
        print(f"xfer {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("xfer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - every failure becomes an exit code
        from xfer.exceptions import XferError

        if isinstance(error, (XferError, OSError)):
            print(f"xfer {args.command}: error: {error}", file=sys.stderr)
            return EXIT_ERROR
        traceback.print_exc()
        print(f"xfer {args.command}: internal error ({type(error).__name__}); please report it "
              "with the traceback above.", file=sys.stderr)  # fmt: skip
        return EXIT_INTERNAL
    finally:
        xfer_logger = logging.getLogger("xfer")
        xfer_logger.removeHandler(handler)
        xfer_logger.setLevel(level)
        xfer_logger.propagate = propagate


__all__ = ["main", "build_parser"]
