"""Rank layers of one model, or several models, by transferability to a labelled task.

Each model reads the labelled examples once: every candidate layer (and the output layer, for
LEEP/NCE) comes out of one streamed pass of :meth:`ModelHandler.get_layer_output`, for MXNet and
PyTorch models alike. Convolutional feature maps are averaged over their spatial axes
(``pooling="avg"``: ``N x C x H x W -> N x C``) batch by batch, so early layers cost no memory
beyond a column per channel; these pooled features are also what :class:`xfer.AutoRepurposer`
trains its head on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import softmax

from xfer._progress import check_verbose, progress_bar
from xfer.exceptions import InvalidArgumentError, InvalidTypeError
from xfer.transferability.scores import (
    FEATURE_SCORES,
    OUTPUT_SCORES,
    SCORES,
    feature_scores,
)

logger = logging.getLogger("xfer.transferability")

__all__ = [
    "ModelCandidate",
    "Ranking",
    "candidate_layers",
    "check_scores",
    "rank_layers",
    "rank_models",
    "score_features",
]

#: Layer types read as features by :func:`candidate_layers` (lower case; MXNet ops and torch
#: module classes).
_FEATURE_LAYER_TYPES = {
    "activation", "relu", "relu6", "clip", "leakyrelu", "gelu", "silu", "swish", "hardswish",
    "elu", "tanh", "sigmoid", "elemwise_add", "_plus", "broadcast_add", "add", "pooling",
    "adaptiveavgpool2d", "avgpool2d", "maxpool2d", "adaptivemaxpool2d", "fullyconnected",
    "linear", "flatten",
}  # fmt: skip
_OUTPUT_LAYER_TYPES = {"softmaxoutput", "softmax", "logsoftmax", "log_softmax", "softmaxactivation"}


def check_scores(scores: Any, allowed: Mapping[str, Callable] = SCORES) -> list[str]:
    """``scores`` as a non-empty list of known score names (a single name is accepted)."""
    if isinstance(scores, str):
        scores = [scores]
    if not isinstance(scores, (list, tuple)) or not scores:
        raise InvalidTypeError(
            f"scores must be a score name or a list of them ({', '.join(allowed)}), got {scores!r}."
        )
    unknown = [s for s in scores if s not in allowed]
    if unknown:
        raise InvalidArgumentError(
            f"Unknown transferability score {unknown[0]!r}: use one of {', '.join(allowed)}."
        )
    if len(set(scores)) != len(scores):
        raise InvalidArgumentError(f"scores repeats a name: {list(scores)!r}.")
    return list(scores)


def score_features(
    features: np.ndarray, labels: np.ndarray, scores: Sequence[str]
) -> tuple[dict[str, float], float]:
    """Feature scores of one layer and the seconds they took together."""
    start = time.perf_counter()
    values = feature_scores(features, labels, scores) if scores else {}
    return values, time.perf_counter() - start


def _source_probabilities(values: np.ndarray) -> np.ndarray:
    """An output layer's values as probabilities: kept if rows already are, else a softmax."""
    values = np.asarray(values, dtype=np.float64)
    if values.min() >= 0 and np.allclose(values.sum(1), 1.0, atol=1e-3):
        return values
    return softmax(values, axis=1)


def candidate_layers(model: Any, max_layers: int = 8) -> list[str]:
    """Layers worth scoring when none are named: evenly spread over the depth of the model.

    The candidates are layers of feature-like types (activations, residual additions, pooling,
    dense and flatten layers), excluding a softmax output; ``max_layers`` of them are taken at
    even steps through the network, always including the deepest and the deepest pooling layer
    (a CNN's pooled features, such as EfficientNet-Lite0's ``_avg_pooling``, which sits just
    below its classifier and would otherwise fall between the steps). A PyTorch model whose forward
    ends in a function (such as :func:`xfer.zoo.minilm`'s normalised mean pooling) is read at its
    ``"output"``: its inner layers give one vector per token, not per example.

    Parameters
    ----------
    model : ModelHandler or anything it accepts
    max_layers : int, default=8

    Returns
    -------
    list of str
        Layer names in graph order.
    """
    from xfer.model_handler import ModelHandler

    if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1:
        raise InvalidArgumentError(f"max_layers must be a positive integer, got {max_layers!r}.")
    handler = model if isinstance(model, ModelHandler) else ModelHandler(model)
    names = list(handler.layer_names)
    types = {name: str(handler.get_layer_type(name)).lower() for name in names}
    if types.get(names[-1]) == "output":
        return [names[-1]]
    feature_layers = [
        name for name in names
        if types[name] in _FEATURE_LAYER_TYPES and types[name] not in _OUTPUT_LAYER_TYPES
    ]  # fmt: skip
    if not feature_layers:
        feature_layers = [n for n in names if types[n] not in _OUTPUT_LAYER_TYPES] or names
    if len(feature_layers) <= max_layers:
        return feature_layers
    last = len(feature_layers) - 1
    positions = set(np.linspace(last, 0, max_layers).round().astype(int).tolist())
    # The deepest pooling layer (the pooled representation a CNN's classifier reads, the usual
    # feature layer) is always a candidate: it takes the place of the spread layer nearest to it.
    pooled = [i for i, name in enumerate(feature_layers) if "pool" in types[name]]
    if pooled and pooled[-1] not in positions and max_layers > 1:
        nearest = min(positions - {last}, key=lambda p: (abs(p - pooled[-1]), p))
        positions = (positions - {nearest}) | {pooled[-1]}
    return [feature_layers[i] for i in sorted(positions)]


@dataclass
class ModelCandidate:
    """A source model to rank, with the layers to score and how to feed it the task's data.

    Parameters
    ----------
    model : ModelHandler or anything it accepts
        The source model (MXNet or PyTorch).
    layer_names : list of str, optional
        Layers whose (average-pooled) outputs are scored with the feature scores. Default:
        :func:`candidate_layers`.
    preprocess : callable, optional
        Turns the task's data into this model's input (e.g. resize images); default: none.
    output_layer : str, optional
        The layer giving the source model's class scores (logits or softmax probabilities),
        read for LEEP and NCE in the same pass. Without it those scores are not computed.
    """

    model: Any
    layer_names: list[str] | None = None
    preprocess: Callable[[Any], Any] | None = None
    output_layer: str | None = None


@dataclass
class Ranking:
    """Transferability scores of layers (and models), best first.

    Attributes
    ----------
    rows : list of dict
        One per (model, layer): ``model``, ``layer``, ``n_features``, one entry per score,
        ``score_seconds`` (computing this row's scores) and ``extraction_seconds`` (the
        model's one pass over the data, shared by its rows). A score that does not apply to a
        row (LEEP/NCE of a model without ``output_layer``) is NaN.
    scores : list of str
        The score names, in the order asked; rows are sorted by the first, highest first.
    n_examples : int
        Labelled examples scored.
    features : dict of (str, str) to ndarray
        The features of each (model, layer), when ranked with ``keep_features=True``.
    """

    rows: list[dict[str, Any]]
    scores: list[str]
    n_examples: int
    features: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def best(self) -> dict[str, Any]:
        """The top row."""
        return self.rows[0]

    def column(self, name: str) -> list[Any]:
        """The values of one column, in the table's order.

        Parameters
        ----------
        name : str
            A row key (``"layer"``, ``"logme"``...).

        Returns
        -------
        list
        """
        return [row[name] for row in self.rows]

    def to_records(self) -> list[dict[str, Any]]:
        """The rows as JSON-safe dicts (NaN scores become None).

        Returns
        -------
        list of dict
        """
        return [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in self.rows
        ]

    def __str__(self) -> str:
        several_models = len({row["model"] for row in self.rows}) > 1
        header = (["model"] if several_models else []) + ["layer", "features", *self.scores, "score s"]
        lines = [header]
        for row in self.rows:
            lines.append(
                ([str(row["model"])] if several_models else [])
                + [str(row["layer"]), str(row["n_features"])]
                + [f"{row[name]:.4f}" for name in self.scores]
                + [f"{row['score_seconds']:.3f}"]
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
        passes = {row["model"]: row["extraction_seconds"] for row in self.rows}
        text.append(
            f"({self.n_examples} examples; one pass per model: "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in passes.items())
            + ")"
        )
        return "\n".join(text)

    __repr__ = __str__


def _labels_for(labels: Any, data_labels: np.ndarray | None) -> np.ndarray:
    if labels is None:
        labels = data_labels
    if labels is None:
        raise InvalidArgumentError(
            "Transferability scores need labels: pass labels=, or data that carries them "
            "(an mx.io.DataIter or a torch Dataset of (x, y) pairs)."
        )
    return np.asarray(labels)


def _candidate(value: Any) -> ModelCandidate:
    if isinstance(value, ModelCandidate):
        return value
    return ModelCandidate(model=value)


def rank_models(
    candidates: Mapping[str, Any],
    data: Any,
    labels: Any = None,
    *,
    scores: Sequence[str] | str = ("logme",),
    pooling: str | None = "avg",
    context: Any = None,
    batch_size: int | None = None,
    verbose: bool = False,
    keep_features: bool = False,
) -> Ranking:
    """Score the layers of several source models on one labelled task; best first.

    Each model reads ``data`` once (its candidate layers and its output layer in one streamed
    pass); every layer is then scored with the feature scores, and the model's output with LEEP
    and NCE when its :class:`ModelCandidate` names an ``output_layer``.

    Parameters
    ----------
    candidates : dict of str to ModelCandidate or model
        Name -> model (default layers, no preprocessing) or :class:`ModelCandidate`.
    data : array, mx.io.DataIter, torch Dataset/DataLoader or list of str
        The labelled examples, as the task gives them (each candidate's ``preprocess`` turns
        them into its input).
    labels : array-like, optional
        Their labels (any values); default: the labels the data carries.
    scores : str or list of str, default=("logme",)
        Names from :data:`xfer.transferability.SCORES`; rows are sorted by the first.
    pooling : {'avg', None}, default='avg'
        How layer outputs become one vector per example (see
        :meth:`~xfer.model_handler.mxnet.MXNetModelHandler.get_layer_output`).
    context : optional
        Device for the forward passes.
    batch_size : int, optional
        Batch size of the passes.
    verbose : bool or int, default=False
        Progress bars (the pass over the data, the layers scored, the models) and a log line
        per model.
    keep_features : bool, default=False
        Keep each layer's features in ``Ranking.features[(model, layer)]`` (to fit a head on
        the chosen one without a second pass).

    Returns
    -------
    Ranking

    Raises
    ------
    InvalidArgumentError
        No candidates, unknown score names, missing labels, or LEEP/NCE without any
        ``output_layer``.
    """
    score_names = check_scores(scores)
    verbose = check_verbose(verbose)
    if not isinstance(candidates, Mapping) or not candidates:
        raise InvalidTypeError(
            "candidates must be a non-empty dict of name -> model or ModelCandidate."
        )
    from xfer.model_handler import ModelHandler

    feature_names = [s for s in score_names if s in FEATURE_SCORES]
    output_names = [s for s in score_names if s in OUTPUT_SCORES]
    prepared = {name: _candidate(value) for name, value in candidates.items()}
    if output_names and not any(c.output_layer for c in prepared.values()):
        raise InvalidArgumentError(
            f"{', '.join(output_names)} read the source model's class probabilities: give a "
            "ModelCandidate an output_layer (the logits or softmax layer), or score features "
            "with logme/h_score."
        )
    rows: list[dict[str, Any]] = []
    kept: dict[tuple[str, str], np.ndarray] = {}
    n_examples = 0
    models = progress_bar(list(prepared.items()), verbose=verbose and len(prepared) > 1,
                          desc="Ranking models", unit="model")  # fmt: skip
    for model_name, candidate in models:
        handler = (
            candidate.model
            if isinstance(candidate.model, ModelHandler)
            else ModelHandler(candidate.model)
        )
        layers = list(candidate.layer_names or candidate_layers(handler))
        if not layers:
            raise InvalidArgumentError(f"Candidate {model_name!r} has an empty layer_names list.")
        wanted = layers + (
            [candidate.output_layer]
            if candidate.output_layer and candidate.output_layer not in layers
            else []
        )
        inputs = candidate.preprocess(data) if candidate.preprocess is not None else data
        start = time.perf_counter()
        outputs, data_labels = handler.get_layer_output(
            inputs, wanted, context=context, batch_size=batch_size, verbose=verbose,
            pooling=pooling,
        )  # fmt: skip
        extraction_seconds = time.perf_counter() - start
        target = _labels_for(labels, data_labels)
        n_examples = len(target)
        output_values: dict[str, float] = {}
        output_seconds = 0.0
        if output_names and candidate.output_layer:
            begin = time.perf_counter()
            probabilities = _source_probabilities(outputs[candidate.output_layer])
            output_values = {name: OUTPUT_SCORES[name](probabilities, target) for name in output_names}
            output_seconds = time.perf_counter() - begin
        for layer in progress_bar(layers, verbose=verbose, desc=f"Scoring {model_name}",
                                  unit="layer", leave=False):  # fmt: skip
            features = outputs[layer]
            values, seconds = score_features(features, target, feature_names)
            row: dict[str, Any] = {"model": model_name, "layer": layer, "n_features": features.shape[1]}
            for name in score_names:
                row[name] = values.get(name, output_values.get(name, math.nan))
            row["score_seconds"] = seconds + output_seconds / len(layers)
            row["extraction_seconds"] = extraction_seconds
            rows.append(row)
            if keep_features:
                kept[(model_name, layer)] = features
        if verbose:
            logger.info("Scored %d layers of %s in %.1f s.", len(layers), model_name,
                        time.perf_counter() - start)  # fmt: skip
    first = score_names[0]
    rows.sort(key=lambda row: (math.isnan(row[first]), -row[first] if not math.isnan(row[first]) else 0))
    return Ranking(rows, score_names, n_examples, kept)


def rank_layers(
    model: Any,
    data: Any,
    labels: Any = None,
    layer_names: Sequence[str] | None = None,
    *,
    scores: Sequence[str] | str = ("logme",),
    output_layer: str | None = None,
    preprocess: Callable[[Any], Any] | None = None,
    pooling: str | None = "avg",
    context: Any = None,
    batch_size: int | None = None,
    verbose: bool = False,
    keep_features: bool = False,
) -> Ranking:
    """Score candidate layers of one source model on a labelled task, in one pass; best first.

    Parameters
    ----------
    model : ModelHandler or anything it accepts (MXNet or PyTorch model)
    data : array, mx.io.DataIter, torch Dataset/DataLoader or list of str
        The labelled examples.
    labels : array-like, optional
        Their labels (default: the data's own).
    layer_names : list of str, optional
        Layers to score (default: :func:`candidate_layers`).
    scores, output_layer, preprocess, pooling, context, batch_size, verbose, keep_features
        As in :func:`rank_models` and :class:`ModelCandidate`.

    Returns
    -------
    Ranking
        Rows sorted by the first score; ``ranking.best["layer"]`` is the pick.

    Examples
    --------
    >>> from xfer.transferability import rank_layers
    >>> ranking = rank_layers(model, images, labels, ["block5_2_add", "global_pool"])  # doctest: +SKIP
    >>> ranking.best["layer"]                                                           # doctest: +SKIP
    'block5_2_add'
    """
    if layer_names is not None and (isinstance(layer_names, str) or not list(layer_names)):
        raise InvalidArgumentError(
            f"layer_names must be a non-empty list of layer names, got {layer_names!r}."
        )
    candidate = ModelCandidate(
        model, list(layer_names) if layer_names is not None else None, preprocess, output_layer
    )
    return rank_models(
        {"model": candidate}, data, labels, scores=scores, pooling=pooling, context=context,
        batch_size=batch_size, verbose=verbose, keep_features=keep_features,
    )  # fmt: skip
