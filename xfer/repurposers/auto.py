"""A repurposer that chooses its own feature layer(s) and head, then behaves as that choice.

:class:`AutoRepurposer` reads every candidate layer in one pass over the labelled examples,
picks the layer(s) by a transferability score (:mod:`xfer.transferability`) or by
cross-validated accuracy, picks the head by cross-validation when several are offered, fits the
chosen head on the chosen layers, and records why in ``report_``. Prediction, probabilities,
scoring, saving and loading are those of any meta-model repurposer.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from xfer import serialization
from xfer.context import cpu
from xfer.exceptions import InvalidArgumentError, InvalidTypeError, SerializationError
from xfer.feature_store import FeatureStore
from xfer.model_handler.base import check_pooling
from xfer.repurposers.bnn import BnnRepurposer
from xfer.repurposers.gp import GpRepurposer
from xfer.repurposers.laplace import LaplaceRepurposer
from xfer.repurposers.lr import LrRepurposer
from xfer.repurposers.meta_model import MetaModelRepurposer
from xfer.repurposers.svm import SvmRepurposer
from xfer.serialization import register_repurposer

logger = logging.getLogger("xfer.repurposers.auto")

#: Heads an :class:`AutoRepurposer` can choose from, by name, with the options it gives them.
HEADS: dict[str, tuple[type, dict[str, Any]]] = {
    "lr": (LrRepurposer, {}),
    "svm": (SvmRepurposer, {"enable_probability_estimates": True}),
    "gp": (GpRepurposer, {}),
    "bnn": (BnnRepurposer, {}),
    "laplace": (LaplaceRepurposer, {}),
}
#: Layer-selection rules: a transferability score of the features, or cross-validation.
SELECTION_RULES = ("logme", "h_score", "cv")


@dataclass
class SelectionReport:
    """Why an :class:`AutoRepurposer` chose its layers and head.

    Attributes
    ----------
    rule : str
        The layer-selection rule (``select``).
    layers : list of dict
        One row per candidate layer, best first: ``layer``, ``n_features``, the transferability
        scores computed, ``cv_accuracy`` (rule ``'cv'``) and ``seconds``.
    chosen_layers : list of str
        The layers the head reads (in graph order).
    heads : dict of str to float
        Cross-validated accuracy of each head on the chosen layers (empty with a single head).
    chosen_head : str
    cv_folds : int
        Folds used by cross-validation (0: none was run).
    reason : str
        One sentence saying why.
    extraction_seconds : float or None
        Seconds of the pass that read the candidate layers (None without a source model).
    selection_seconds : float
        Seconds spent scoring layers and cross-validating heads.
    """

    rule: str
    layers: list[dict[str, Any]]
    chosen_layers: list[str]
    heads: dict[str, float]
    chosen_head: str
    cv_folds: int
    reason: str
    extraction_seconds: float | None = None
    selection_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe copy (NaN becomes None), as saved with the repurposer.

        Returns
        -------
        dict
        """

        def clean(value: Any) -> Any:
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, (np.floating, np.integer)):
                return clean(value.item())
            if isinstance(value, dict):
                return {str(k): clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        return clean(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelectionReport:
        """The report written by :meth:`to_dict`.

        Parameters
        ----------
        data : dict

        Returns
        -------
        SelectionReport
        """
        return cls(**data)

    def __str__(self) -> str:
        score_names = [
            key for key in ("logme", "h_score", "cv_accuracy")
            if any(row.get(key) is not None for row in self.layers)
        ]  # fmt: skip
        header = ["layer", "features", *score_names]
        lines = [header] + [
            [str(row["layer"]), str(row["n_features"])]
            + ["-" if row.get(k) is None else f"{row[k]:.4f}" for k in score_names]
            for row in self.layers
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        table = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
        heads = ", ".join(f"{name} {accuracy:.3f}" for name, accuracy in self.heads.items())
        return "\n".join(
            [self.reason, *table]
            + ([f"heads (cross-validated accuracy, {self.cv_folds} folds): {heads}"] if heads else [])
        )

    __repr__ = __str__


class _ChosenHead:
    """The fitted head and the feature columns it reads."""

    def __init__(self, head: MetaModelRepurposer, columns: np.ndarray | None):
        self.head = head
        self.columns = columns

    def _select(self, features: np.ndarray) -> np.ndarray:
        return features if self.columns is None else features[:, self.columns]

    def predict_proba(self, features: np.ndarray, context: Any) -> np.ndarray:
        return self.head.predict_proba_features(self._select(features), context=context)


def _check_heads(heads: Any) -> list[str]:
    if isinstance(heads, str):
        heads = [heads]
    if not isinstance(heads, (list, tuple)) or not heads:
        raise InvalidTypeError(
            f"heads must be a head name or a list of them ({', '.join(HEADS)}), got {heads!r}."
        )
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise InvalidArgumentError(f"Unknown head {unknown[0]!r}: use one of {', '.join(HEADS)}.")
    if len(set(heads)) != len(heads):
        raise InvalidArgumentError(f"heads repeats a name: {list(heads)!r}.")
    return list(heads)


@register_repurposer(key="xfer.AutoRepurposer")
class AutoRepurposer(MetaModelRepurposer):
    """Choose the feature layer(s) and head from the labelled data, then act as that choice.

    ``fit`` reads every candidate layer of the source model in one streamed pass (feature maps
    average-pooled over their spatial axes, ``N x C x H x W -> N x C``), ranks the layers by
    ``select``, takes the best ``n_layers`` of them, chooses among ``heads`` by stratified
    cross-validation on those features, and fits the chosen head on all the examples.
    ``report_`` says what was measured and why the choice was made. Predictions read the chosen
    layers only, pooled the same way.

    Parameters
    ----------
    source_model : mx.mod.Module, torch.nn.Module, ModelHandler or None
        The pretrained network. ``None``: ``fit``/``predict`` take feature arrays and only the
        head is chosen (``fit_features(..., feature_indices_per_layer=...)`` also chooses among
        the given column blocks).
    feature_layer_names : list of str, optional
        Candidate layers (default: :func:`xfer.transferability.candidate_layers`, eight layers
        spread over the network's depth).
    context_function : callable or device, default=mx.cpu
        Default device.
    num_devices : int, default=1
        Number of devices for feature extraction.
    select : {'logme', 'h_score', 'cv'}, default='logme'
        How layers are ranked: LogME of the pooled features (fast, no training; see
        :func:`xfer.transferability.logme`), the regularised H-score, or the cross-validated
        accuracy of the first head on each layer (ties broken by LogME).
    heads : str or list of str, default=('lr',)
        Heads to choose from: ``'lr'``, ``'svm'`` (with probability estimates), ``'gp'``,
        ``'bnn'``, ``'laplace'``. With several, the one with the best cross-validated accuracy on the chosen
        layers wins (ties: the first listed).
    n_layers : int, default=1
        How many of the best-ranked layers the head reads, concatenated in graph order.
    cv : int, default=5
        Cross-validation folds (fewer when a class has fewer examples; no cross-validation when
        one has a single example: then the first head is used).
    pooling : {'avg', None}, default='avg'
        How layer outputs become feature vectors (see ``ModelHandler.get_layer_output``).
    random_state : int, optional
        Seeds the folds and the heads.
    extraction_batch_size : int, optional
        Batch size of feature extraction.
    verbose : bool, default=False
        Progress bars and log messages.

    Attributes
    ----------
    classes_ : ndarray
        Labels seen in ``fit``.
    feature_layer_names_ : list of str
        The chosen layers (``None`` without a source model).
    head_name_ : str
        The chosen head.
    head_ : MetaModelRepurposer
        The fitted head (it reads features; ``source_model=None``).
    report_ : SelectionReport
        The candidates' scores and the reason for the choice.

    Examples
    --------
    >>> from xfer import AutoRepurposer                                   # doctest: +SKIP
    >>> auto = AutoRepurposer(source, ["block5_2_add", "block6_3_add", "global_pool"])
    >>> auto.fit(train_images, train_labels)                              # doctest: +SKIP
    >>> print(auto.report_)                                               # doctest: +SKIP
    >>> auto.predict(test_images)                                         # doctest: +SKIP
    """

    def __init__(
        self,
        source_model: Any,
        feature_layer_names: list[str] | None = None,
        context_function: Any = cpu,
        num_devices: int = 1,
        *,
        select: str = "logme",
        heads: Any = ("lr",),
        n_layers: int = 1,
        cv: int = 5,
        pooling: str | None = "avg",
        random_state: int | None = None,
        extraction_batch_size: int | None = None,
        verbose: bool = False,
    ):
        super().__init__(
            source_model,
            feature_layer_names,
            context_function=context_function,
            num_devices=num_devices,
            extraction_batch_size=extraction_batch_size,
            verbose=verbose,
        )
        self.select = select
        self.heads = heads
        self.n_layers = n_layers
        self.cv = cv
        self.pooling = pooling
        self.random_state = random_state

    # ---------------------------------------------------------------- attributes
    @property
    def head_(self) -> MetaModelRepurposer:
        """The fitted head (it reads features)."""
        self._check_fitted()
        return self.target_model_.head

    @property
    def head_name_(self) -> str:
        """The chosen head's name."""
        self._check_fitted()
        return self.report_.chosen_head

    # ---------------------------------------------------------------- checks
    def _check_options(self) -> list[str]:
        if self.select not in SELECTION_RULES:
            raise InvalidArgumentError(
                f"select must be one of {list(SELECTION_RULES)}, got {self.select!r}."
            )
        for name in ("n_layers", "cv"):
            value = getattr(self, name)
            minimum = 2 if name == "cv" else 1
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise InvalidArgumentError(
                    f"{name} must be an integer >= {minimum}, got {value!r}."
                )
        check_pooling(self.pooling)
        return _check_heads(self.heads)

    def _candidate_names(self) -> list[str]:
        if self.feature_layer_names is None:
            from xfer.transferability import candidate_layers

            return candidate_layers(self._get_model_handler())
        return self._validated_layer_names()

    def _validate_before_repurpose(self) -> None:
        # The meta-model check wants a list of layers; here None means "the default candidates".
        self._check_options()
        if self.source_model is not None:
            self._candidate_names()

    def _refuse_store(self, data: Any) -> None:
        if isinstance(data, FeatureStore):
            raise InvalidTypeError(
                f"{type(self).__name__} cannot train on a FeatureStore (features on disk): it "
                "scores every candidate layer in memory. Pass the arrays of store.to_array() "
                "with feature_indices_per_layer=store.feature_indices_per_layer to "
                "fit_features, or fit the chosen head (e.g. LrRepurposer) on the store."
            )

    # ---------------------------------------------------------------- extraction hooks
    def _extraction_layer_names(self) -> list[str]:
        # After fit() the chosen layers alone are read; after fit_features() (features of
        # every candidate, as get_features_from_source_model gave them before fitting) all
        # candidates are, and the head picks its columns.
        if self.__sklearn_is_fitted__() and getattr(self, "_reads_chosen_layers", False):
            return list(self.feature_layer_names_)
        return self._candidate_names()

    def _extraction_pooling(self) -> str | None:
        return self.pooling

    # ---------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any = None, context: Any = None) -> AutoRepurposer:
        """Read the candidate layers once, choose layer(s) and head, fit the head.

        Parameters
        ----------
        X : ndarray, mx.io.DataIter, torch Dataset/DataLoader or list of str
            Source-model inputs (or, when ``source_model`` is None, features ``[N, D]``).
        y : array-like, optional
            Labels of any values (default: the iterator's).
        context : optional
            Device(s) for this call.

        Returns
        -------
        self
        """
        self._validate_before_repurpose()
        self._refuse_store(X)
        self._reads_chosen_layers = False
        if self.source_model is None:
            self._block_names = None
            return super().fit(X, y, context=context)
        self._block_names = self._candidate_names()
        start = time.perf_counter()
        super().fit(X, y, context=context)
        self.report_.extraction_seconds = (
            time.perf_counter() - start - self.report_.selection_seconds
        )
        # From now on extraction reads only the chosen layers: re-base the column bookkeeping.
        widths = [len(self.feature_indices_per_layer_[i]) for i in self._chosen_blocks]
        offsets = np.cumsum([0, *widths])
        self.feature_indices_per_layer_ = [
            np.arange(offsets[i], offsets[i + 1]) for i in range(len(widths))
        ]
        self.n_meta_features_ = int(offsets[-1])
        self.target_model_.columns = None
        self._reads_chosen_layers = True
        logger.info("%s chose %s with the %s head.", type(self).__name__,
                    self.feature_layer_names_, self.head_name_)  # fmt: skip
        return self

    def fit_features(
        self,
        features: Any,
        labels: Any,
        feature_indices_per_layer: list | None = None,
        context: Any = None,
    ) -> AutoRepurposer:
        """Choose among column blocks of features you extracted, and fit the head on them.

        With a source model, the blocks are taken as its candidate layers, in order (the
        features :meth:`get_features_from_source_model` gives before fitting); prediction from
        inputs then reads every candidate layer.

        Parameters
        ----------
        features : array-like of shape (n_samples, n_features)
        labels : array-like of shape (n_samples,)
        feature_indices_per_layer : list of int arrays, optional
            The column blocks to choose among (default: one block).
        context : optional
            Device for the head.

        Returns
        -------
        self
        """
        self._check_options()
        self._refuse_store(features)
        self._reads_chosen_layers = False
        self._block_names = None
        if self.source_model is not None and feature_indices_per_layer is not None:
            candidates = self._candidate_names()
            if len(candidates) == len(feature_indices_per_layer):
                self._block_names = candidates
        return super().fit_features(features, labels, feature_indices_per_layer, context=context)

    def _train_model_from_features(
        self, features: np.ndarray, labels: np.ndarray, feature_indices_per_layer: list[np.ndarray]
    ) -> _ChosenHead:
        heads = self._check_options()
        begin = time.perf_counter()
        block_names = getattr(self, "_block_names", None) or (
            ["features"] if len(feature_indices_per_layer) == 1
            else [f"block {i}" for i in range(len(feature_indices_per_layer))]
        )  # fmt: skip
        blocks = [features[:, indices] for indices in feature_indices_per_layer]
        folds = self._folds(labels)
        rows = self._rank_blocks(block_names, blocks, labels, heads[0], folds)
        n_chosen = min(self.n_layers, len(blocks))
        chosen_blocks = sorted(block_names.index(row["layer"]) for row in rows[:n_chosen])
        columns = np.concatenate([feature_indices_per_layer[i] for i in chosen_blocks])
        chosen_features = features[:, columns]
        head_scores: dict[str, float] = {}
        if len(heads) > 1 and folds:
            for name in heads:
                head_scores[name] = self._cross_validated_accuracy(name, chosen_features, labels, folds)
            chosen_head = max(heads, key=lambda name: head_scores[name])  # first wins ties
        else:
            chosen_head = heads[0]
        head = self._make_head(chosen_head)
        head.fit_features(
            chosen_features,
            self.classes_[labels],
            [np.searchsorted(columns, feature_indices_per_layer[i]) for i in chosen_blocks],
            context=self._current_devices(),
        )
        self._chosen_blocks = chosen_blocks
        chosen_names = [block_names[i] for i in chosen_blocks]
        self.feature_layer_names_ = (
            chosen_names if getattr(self, "_block_names", None) is not None else None
        )
        self.report_ = SelectionReport(
            rule=self.select,
            layers=rows,
            chosen_layers=chosen_names,
            heads=head_scores,
            chosen_head=chosen_head,
            cv_folds=len(folds),
            reason=self._reason(rows, chosen_names, chosen_head, head_scores, len(folds)),
            selection_seconds=time.perf_counter() - begin,
        )
        every_column = np.array_equal(columns, np.arange(features.shape[1]))
        return _ChosenHead(head, None if every_column else columns)

    # ---------------------------------------------------------------- selection
    def _folds(self, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        smallest = int(np.bincount(labels).min())
        n_splits = min(int(self.cv), smallest)
        if n_splits < 2:
            return []
        splitter = StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state)
        return list(splitter.split(np.zeros(len(labels)), labels))

    def _make_head(self, name: str) -> MetaModelRepurposer:
        cls, options = HEADS[name]
        return cls(
            None, None, context_function=self.context_function,
            random_state=self.random_state, **options,
        )  # fmt: skip

    def _cross_validated_accuracy(
        self, head_name: str, features: np.ndarray, labels: np.ndarray, folds: list
    ) -> float:
        accuracies = []
        for train, test in folds:
            head = self._make_head(head_name)
            head.fit_features(features[train], labels[train], context=self._current_devices())
            predicted = head.predict_features(features[test], context=self._current_devices())
            accuracies.append(float(np.mean(predicted == labels[test])))
        return float(np.mean(accuracies))

    def _rank_blocks(
        self,
        names: list[str],
        blocks: list[np.ndarray],
        labels: np.ndarray,
        first_head: str,
        folds: list,
    ) -> list[dict[str, Any]]:
        from xfer.transferability import h_score, logme

        rows = []
        for name, block in zip(names, blocks):
            start = time.perf_counter()
            row: dict[str, Any] = {"layer": name, "n_features": int(block.shape[1])}
            if self.select in ("logme", "cv"):
                row["logme"] = _safe_score(logme, block, labels)
            if self.select == "h_score":
                row["h_score"] = _safe_score(h_score, block, labels)
            if self.select == "cv" and len(blocks) > 1:
                row["cv_accuracy"] = (
                    self._cross_validated_accuracy(first_head, block, labels, folds)
                    if folds else math.nan
                )  # fmt: skip
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
        if len(rows) == 1:
            return rows
        keys = {"logme": ("logme",), "h_score": ("h_score",), "cv": ("cv_accuracy", "logme")}[
            self.select
        ]
        order = sorted(
            range(len(rows)),
            key=lambda i: tuple(-_finite(rows[i].get(k)) for k in keys) + (i,),
        )
        return [rows[i] for i in order]

    def _reason(
        self,
        rows: list[dict[str, Any]],
        chosen: list[str],
        head: str,
        head_scores: dict[str, float],
        n_folds: int,
    ) -> str:
        what = {"logme": "the highest LogME", "h_score": "the highest regularised H-score",
                "cv": f"the best {n_folds}-fold cross-validated accuracy of a {self._heads_list()[0]} head"}  # fmt: skip
        if len(rows) == 1:
            layer_part = "One feature block was given, so no layer was chosen"
        else:
            layer_part = (
                f"{', '.join(chosen)} {'has' if len(chosen) == 1 else 'have'} "
                f"{what[self.select]} of {len(rows)} candidate layers"
            )
        if head_scores:
            head_part = (
                f"the {head} head has the best {n_folds}-fold cross-validated accuracy "
                f"({head_scores[head]:.3f}) of {', '.join(head_scores)}"
            )
        elif len(self._heads_list()) > 1:
            head_part = (
                f"the {head} head is the first listed (too few examples per class to "
                "cross-validate)"
            )
        else:
            head_part = f"the {head} head is the only one offered"
        return f"{layer_part}; {head_part}."

    def _heads_list(self) -> list[str]:
        return [self.heads] if isinstance(self.heads, str) else list(self.heads)

    # ---------------------------------------------------------------- predict
    def _predict_probability_from_features(self, features: np.ndarray) -> np.ndarray:
        return self.target_model_.predict_proba(features, self._current_devices())

    # ---------------------------------------------------------------- state
    def _get_target_model_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        head = self.target_model_.head
        head_state, head_arrays = head._get_fitted_state()
        config = {
            "head_class_key": head.serialization_key,
            "head_params": head._params_for_manifest(),
            "head_state": head_state,
            "feature_layer_names": self.feature_layer_names_,
            "reads_chosen_layers": bool(getattr(self, "_reads_chosen_layers", False)),
            "report": self.report_.to_dict(),
        }
        arrays = {f"head.{name}": value for name, value in head_arrays.items()}
        if self.target_model_.columns is not None:
            arrays["columns"] = np.asarray(self.target_model_.columns, dtype=np.int64)
        return config, arrays

    def _set_target_model_state(
        self, config: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> None:
        key = config["head_class_key"]
        registry = serialization.registered_repurposers()
        if key not in registry:
            raise SerializationError(
                f"The AutoRepurposer's head was saved by the class {key!r}, which is not "
                "registered in this session: import the module that defines it first."
            )
        head = registry[key](source_model=None, **config["head_params"])
        head.classes_ = self.classes_
        head_arrays = {k[len("head.") :]: v for k, v in arrays.items() if k.startswith("head.")}
        head._set_fitted_state(config["head_state"], head_arrays)
        self.feature_layer_names_ = config["feature_layer_names"]
        self._reads_chosen_layers = bool(config["reads_chosen_layers"])
        self.report_ = SelectionReport.from_dict(config["report"])
        self.target_model_ = _ChosenHead(head, arrays.get("columns"))


def _finite(value: Any) -> float:
    return -math.inf if value is None or not math.isfinite(value) else float(value)


def _safe_score(score: Any, features: np.ndarray, labels: np.ndarray) -> float:
    """A score, or NaN when the layer's features are constant (it then ranks last)."""
    try:
        return float(score(features, labels))
    except InvalidArgumentError as error:
        logger.info("Layer not scored: %s", error)
        return math.nan


__all__ = ["AutoRepurposer", "SelectionReport", "HEADS", "SELECTION_RULES"]
