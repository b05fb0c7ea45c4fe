"""Accuracy and calibration metrics for probabilistic classifiers.

Every function takes true labels and predicted probabilities ``[N, K]`` (columns in the order of
the model's ``classes_``). Labels are either int codes ``0..K-1`` or the user's own label values
together with ``classes=`` (e.g. ``classes=repurposer.classes_``).

Examples
--------
>>> import numpy as np
>>> from xfer import metrics
>>> proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
>>> metrics.accuracy(["a", "b", "b"], proba, classes=["a", "b"])
0.6666666666666666
>>> round(metrics.negative_log_likelihood([0, 1, 1], proba), 4)
0.4149
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from xfer.exceptions import InvalidArgumentError

__all__ = [
    "accuracy",
    "negative_log_likelihood",
    "brier_score",
    "expected_calibration_error",
    "reliability_diagram",
    "ReliabilityDiagram",
    "plot_reliability_diagram",
    "ood_auroc",
]


def _check(labels: Any, probabilities: Any, classes: Any = None) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise InvalidArgumentError(
            f"probabilities must be a 2-D array [n_samples, n_classes], got shape {probabilities.shape}."
        )
    labels = np.asarray(labels).ravel()
    if labels.shape[0] != probabilities.shape[0]:
        raise InvalidArgumentError(
            f"{labels.shape[0]} labels but {probabilities.shape[0]} rows of probabilities."
        )
    if not np.all(np.isfinite(probabilities)):
        raise InvalidArgumentError("probabilities contain NaN or infinity.")
    if classes is not None:
        classes = np.asarray(classes)
        if classes.shape[0] != probabilities.shape[1]:
            raise InvalidArgumentError(
                f"{classes.shape[0]} classes but probabilities have {probabilities.shape[1]} columns."
            )
        order = np.argsort(classes, kind="stable")
        positions = np.searchsorted(classes[order], labels)
        positions = np.clip(positions, 0, len(classes) - 1)
        codes = order[positions]
        unknown = classes[codes] != labels
        if np.any(unknown):
            raise InvalidArgumentError(
                f"Labels {list(np.unique(labels[unknown]))[:5]} are not in classes {list(classes)}."
            )
        return codes.astype(np.int64), probabilities
    if labels.dtype.kind not in "iu" and not (
        labels.dtype.kind == "f" and np.all(labels == np.round(labels))
    ):
        raise InvalidArgumentError(
            "Labels must be int codes 0..K-1, or pass classes= (e.g. model.classes_) to map them."
        )
    codes = labels.astype(np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= probabilities.shape[1]):
        raise InvalidArgumentError(
            f"Label codes must lie in 0..{probabilities.shape[1] - 1}; pass classes= to map labels."
        )
    return codes, probabilities


def accuracy(labels: Any, probabilities: Any, classes: Any = None) -> float:
    """Fraction of rows whose most probable class is the true one.

    Parameters
    ----------
    labels : array-like of shape (n_samples,)
        True labels: int codes ``0..K-1``, or the user's label values with ``classes``.
    probabilities : array-like of shape (n_samples, n_classes)
        Predicted probabilities, columns in the order of ``classes``.
    classes : array-like of shape (n_classes,), optional
        The label of each column (e.g. ``repurposer.classes_``); needed for labels that are not
        int codes.

    Returns
    -------
    float

    Raises
    ------
    InvalidArgumentError
        Shapes that do not match, non-finite probabilities, or labels not in ``classes``.
    """
    codes, probabilities = _check(labels, probabilities, classes)
    return float(np.mean(np.argmax(probabilities, axis=1) == codes))


def negative_log_likelihood(
    labels: Any, probabilities: Any, classes: Any = None, eps: float = 1e-15
) -> float:
    """Mean ``-log p(true class)``, probabilities clipped to ``[eps, 1]``.

    Parameters
    ----------
    labels : array-like of shape (n_samples,)
        True labels: int codes ``0..K-1``, or the user's label values with ``classes``.
    probabilities : array-like of shape (n_samples, n_classes)
        Predicted probabilities, columns in the order of ``classes``.
    classes : array-like of shape (n_classes,), optional
        The label of each column (e.g. ``repurposer.classes_``); needed for labels that are not
        int codes.
    eps : float, default=1e-15
        Smallest probability used (a zero would give an infinite loss).

    Returns
    -------
    float
        Lower is better; 0 for certain, correct predictions.

    Raises
    ------
    InvalidArgumentError
        Shapes that do not match, non-finite probabilities, or labels not in ``classes``.
    """
    codes, probabilities = _check(labels, probabilities, classes)
    picked = probabilities[np.arange(codes.size), codes]
    return float(-np.mean(np.log(np.clip(picked, eps, 1.0))))


def brier_score(labels: Any, probabilities: Any, classes: Any = None) -> float:
    """Mean over rows of ``sum_k (p_k - 1[k = y])^2`` (multi-class Brier score, in [0, 2]).

    Parameters
    ----------
    labels : array-like of shape (n_samples,)
        True labels: int codes ``0..K-1``, or the user's label values with ``classes``.
    probabilities : array-like of shape (n_samples, n_classes)
        Predicted probabilities, columns in the order of ``classes``.
    classes : array-like of shape (n_classes,), optional
        The label of each column (e.g. ``repurposer.classes_``); needed for labels that are not
        int codes.

    Returns
    -------
    float

    Raises
    ------
    InvalidArgumentError
        Shapes that do not match, non-finite probabilities, or labels not in ``classes``.
    """
    codes, probabilities = _check(labels, probabilities, classes)
    one_hot = np.zeros_like(probabilities)
    one_hot[np.arange(codes.size), codes] = 1.0
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


class ReliabilityDiagram(NamedTuple):
    """Per-bin calibration data of the top-class confidence.

    Attributes
    ----------
    bin_edges : ndarray [n_bins + 1]
    bin_confidence : ndarray [n_bins]
        Mean top-class probability in each bin (NaN for empty bins).
    bin_accuracy : ndarray [n_bins]
        Accuracy in each bin (NaN for empty bins).
    bin_count : ndarray [n_bins]
        Number of rows in each bin.
    """

    bin_edges: np.ndarray
    bin_confidence: np.ndarray
    bin_accuracy: np.ndarray
    bin_count: np.ndarray


def reliability_diagram(
    labels: Any, probabilities: Any, classes: Any = None, n_bins: int = 15
) -> ReliabilityDiagram:
    """Bin rows by top-class confidence into ``n_bins`` equal-width bins of [0, 1].

    Parameters
    ----------
    labels : array-like of shape (n_samples,)
        True labels: int codes ``0..K-1``, or the user's label values with ``classes``.
    probabilities : array-like of shape (n_samples, n_classes)
        Predicted probabilities, columns in the order of ``classes``.
    classes : array-like of shape (n_classes,), optional
        The label of each column (e.g. ``repurposer.classes_``); needed for labels that are not
        int codes.
    n_bins : int, default=15
        Number of equal-width confidence bins.

    Returns
    -------
    ReliabilityDiagram
        Per-bin mean confidence, accuracy and count.

    Raises
    ------
    InvalidArgumentError
        Shapes that do not match, non-finite probabilities, or labels not in ``classes``.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise InvalidArgumentError(f"n_bins must be a positive integer, got {n_bins!r}.")
    codes, probabilities = _check(labels, probabilities, classes)
    confidence = probabilities.max(axis=1)
    correct = (np.argmax(probabilities, axis=1) == codes).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lo, hi]; confidence 0 goes to the first bin.
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        mean_accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return ReliabilityDiagram(edges, mean_confidence, mean_accuracy, count)


def expected_calibration_error(
    labels: Any, probabilities: Any, classes: Any = None, n_bins: int = 15
) -> float:
    """ECE: ``sum_b (n_b / N) |accuracy_b - confidence_b|`` over ``n_bins`` equal-width bins.

    Parameters
    ----------
    labels : array-like of shape (n_samples,)
        True labels: int codes ``0..K-1``, or the user's label values with ``classes``.
    probabilities : array-like of shape (n_samples, n_classes)
        Predicted probabilities, columns in the order of ``classes``.
    classes : array-like of shape (n_classes,), optional
        The label of each column (e.g. ``repurposer.classes_``); needed for labels that are not
        int codes.
    n_bins : int, default=15
        Number of equal-width confidence bins.

    Returns
    -------
    float
        In [0, 1]; 0 when confidence matches accuracy in every bin.

    Raises
    ------
    InvalidArgumentError
        Shapes that do not match, non-finite probabilities, or labels not in ``classes``.
    """
    diagram = reliability_diagram(labels, probabilities, classes, n_bins)
    filled = diagram.bin_count > 0
    if not np.any(filled):
        return 0.0
    weights = diagram.bin_count[filled] / diagram.bin_count.sum()
    gaps = np.abs(diagram.bin_accuracy[filled] - diagram.bin_confidence[filled])
    return float(np.sum(weights * gaps))


def ood_auroc(in_distribution_scores: Any, out_of_distribution_scores: Any) -> float:
    """How well a score tells inputs of the task from inputs outside it: the ROC AUC.

    The probability that a random in-distribution input scores higher than a random
    out-of-distribution one (ties count one half): 1.0 separates them perfectly, 0.5 is chance.
    Use a score that is high for familiar inputs, e.g. the max-probability
    (``predict_proba(X).max(axis=1)``) or minus the entropy.

    Parameters
    ----------
    in_distribution_scores : array-like of shape (n_in,)
    out_of_distribution_scores : array-like of shape (n_out,)

    Returns
    -------
    float

    Examples
    --------
    >>> from xfer import metrics
    >>> metrics.ood_auroc([0.9, 0.8, 0.95], [0.6, 0.85])
    0.8333333333333334
    """
    from scipy.stats import rankdata

    inside = np.asarray(in_distribution_scores, dtype=np.float64).ravel()
    outside = np.asarray(out_of_distribution_scores, dtype=np.float64).ravel()
    if inside.size == 0 or outside.size == 0:
        raise InvalidArgumentError("ood_auroc needs at least one score of each kind.")
    if not (np.all(np.isfinite(inside)) and np.all(np.isfinite(outside))):
        raise InvalidArgumentError("ood_auroc scores contain NaN or infinity.")
    ranks = rankdata(np.concatenate([inside, outside]))  # ties get their mean rank
    rank_sum = float(np.sum(ranks[: inside.size]))
    return (rank_sum - inside.size * (inside.size + 1) / 2.0) / (inside.size * outside.size)


def plot_reliability_diagram(
    labels: Any, probabilities: Any, classes: Any = None, n_bins: int = 15, ax: Any = None
) -> Any:
    """Draw a reliability diagram (accuracy per confidence bin, ECE in the title) with matplotlib.

    Parameters
    ----------
    labels : array-like of shape (n_samples,)
        True labels: int codes ``0..K-1``, or the user's label values with ``classes``.
    probabilities : array-like of shape (n_samples, n_classes)
        Predicted probabilities, columns in the order of ``classes``.
    classes : array-like of shape (n_classes,), optional
        The label of each column (e.g. ``repurposer.classes_``); needed for labels that are not
        int codes.
    n_bins : int, default=15
        Number of equal-width confidence bins.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new 4 x 4 inch figure).

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    InvalidArgumentError
        Shapes that do not match, non-finite probabilities, or labels not in ``classes``.
    """
    import matplotlib.pyplot as plt

    diagram = reliability_diagram(labels, probabilities, classes, n_bins)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    centres = (diagram.bin_edges[:-1] + diagram.bin_edges[1:]) / 2
    width = 1.0 / n_bins
    filled = diagram.bin_count > 0
    ax.bar(
        centres[filled],
        diagram.bin_accuracy[filled],
        width=width,
        edgecolor="black",
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ece = expected_calibration_error(labels, probabilities, classes, n_bins)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"ECE {ece:.3f}")
    ax.legend(loc="upper left")
    return ax
