"""What the heads share about uncertainty: per-row scores (``predict_uncertainty``) and the
detection of degenerate fits."""

from __future__ import annotations

import logging
import warnings
from typing import Any, NamedTuple

import numpy as np

from xfer import _validation
from xfer.exceptions import DegenerateFitWarning


def frequency_nll(labels: np.ndarray, n_classes: int) -> float:
    """NLL of predicting the training class frequencies for every row (what a fit that learned
    nothing from the features achieves at best)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    frequencies = counts / counts.sum()
    return float(-np.mean(np.log(frequencies[labels])))


def is_degenerate(probabilities: np.ndarray, labels: np.ndarray) -> bool:
    """True when held-out probabilities of the training rows carry no information about the
    labels: their NLL is not at least 2% below the class-frequency NLL, or they barely vary."""
    n_rows, n_classes = probabilities.shape
    picked = np.clip(probabilities[np.arange(n_rows), labels], 1e-300, None)
    nll = float(-np.mean(np.log(picked)))
    constant = float(np.max(np.abs(probabilities - probabilities.mean(axis=0)))) < 1e-3
    return constant or nll >= 0.98 * frequency_nll(labels, n_classes)


def stratified_folds(labels: np.ndarray, n_classes: int, n_folds: int) -> np.ndarray:
    """Fold of every row: each class's rows dealt in turn to the ``n_folds`` folds (class ``k``
    starting at fold ``k``, so small classes do not all land in the first folds)."""
    folds = np.zeros(len(labels), dtype=np.int64)
    for k in range(n_classes):
        members = np.flatnonzero(labels == k)
        folds[members] = (np.arange(len(members)) + k) % n_folds
    return folds


def probit_row_nll(mean: np.ndarray, variance: np.ndarray, labels: np.ndarray, temperature: float,
                   scales: np.ndarray) -> np.ndarray:
    """NLL of every row ``(len(scales), N)`` under the probit approximation of the softmax of
    Gaussian logits ``N(mean, scale * diag(variance))`` divided by ``temperature``.

    ``mean``, ``variance``: ``(N, K)``; each logit is divided by
    ``temperature * sqrt(1 + pi / 8 * scale * variance / temperature^2)``.
    """
    divisor = np.sqrt(1.0 + (np.pi / 8.0 / temperature**2) * np.asarray(scales)[:, None, None] * variance)
    divisor *= temperature
    logits = mean / divisor  # (scales, N, K); -log softmax at the label, in place
    rows = np.arange(len(labels))
    chosen = logits[:, rows, labels]
    top = logits.max(axis=2, keepdims=True)
    logits -= top
    np.exp(logits, out=logits)
    return np.log(logits.sum(axis=2)) + top[..., 0] - chosen


def one_standard_error_choice(row_losses: np.ndarray) -> int:
    """The candidate to keep, as a flat index into ``row_losses.shape[:-1]``.

    ``row_losses``: held-out loss of every candidate (any leading shape) on every row (last
    axis); the first candidate is the default. The candidate of lowest mean loss replaces the
    default only when its mean gain over the default exceeds the standard error of the per-row
    gains (the one-standard-error rule): on a few rows the minimum of many noisy estimates
    otherwise strays from the default on noise.
    """
    losses = np.asarray(row_losses, dtype=np.float64).reshape(-1, np.shape(row_losses)[-1])
    best = int(np.argmin(losses.mean(axis=1)))
    gain = losses[0] - losses[best]
    n_rows = losses.shape[1]
    if n_rows < 2 or gain.mean() <= gain.std(ddof=1) / np.sqrt(n_rows):
        return 0
    return best


def warn_degenerate(logger: logging.Logger, head: str, what: str, advice: str) -> None:
    """Log and warn (:class:`~xfer.exceptions.DegenerateFitWarning`) that a fit degenerated."""
    message = f"{head}: degenerate fit: {what}. {advice}"
    logger.warning(message)
    warnings.warn(message, DegenerateFitWarning, stacklevel=3)


class Uncertainty(NamedTuple):
    """Per-row uncertainty of a head's predictions (:meth:`UncertaintyMixin.predict_uncertainty`).

    Attributes
    ----------
    probabilities : ndarray of shape (n_samples, n_classes)
        ``predict_proba``'s output.
    max_probability : ndarray of shape (n_samples,)
        Confidence of the predicted class; low values flag inputs the head is unsure about,
        including inputs from outside the task (the OOD score of ``python -m benchmarks.run --only
        ood``; rank it with :func:`xfer.metrics.ood_auroc`).
    entropy : ndarray of shape (n_samples,)
        Entropy of ``probabilities`` in nats (0 to ``log(n_classes)``): the total uncertainty.
    epistemic : ndarray of shape (n_samples,)
        The part of the entropy due to uncertainty about the head's parameters: the mutual
        information between the prediction and the parameters, ``H(E[p]) - E[H(p)]`` over the
        head's posterior samples (GP: latent functions; BNN: weights). The Laplace head
        scales ``entropy`` by the share of that mutual information in its posterior's entropy,
        the posterior taken at covariance scale at least 1 whatever its calibration chose
        (``LaplaceClassifierCore.predict_uncertainty``). 0 for heads that are point estimates
        (logistic regression, SVM).
    aleatoric : ndarray of shape (n_samples,)
        ``entropy - epistemic``: what remains uncertain even with the parameters known.
    """

    probabilities: np.ndarray
    max_probability: np.ndarray
    entropy: np.ndarray
    epistemic: np.ndarray
    aleatoric: np.ndarray


def entropy(probabilities: np.ndarray, axis: int = -1) -> np.ndarray:
    """Entropy in nats along ``axis`` (``0 log 0 = 0``)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


def summarize(probabilities: np.ndarray, epistemic: np.ndarray | None = None) -> Uncertainty:
    """An :class:`Uncertainty` from probabilities and (optionally) the mutual information."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    total = entropy(probabilities)
    if epistemic is None:
        epistemic = np.zeros(len(probabilities))
    epistemic = np.clip(np.asarray(epistemic, dtype=np.float64), 0.0, total)
    return Uncertainty(probabilities, probabilities.max(axis=1), total, epistemic, total - epistemic)


def mutual_information(sample_probabilities: np.ndarray) -> np.ndarray:
    """``H(mean_s p_s) - mean_s H(p_s)`` of per-sample probabilities ``(N, S, K)``."""
    return entropy(sample_probabilities.mean(axis=1)) - entropy(sample_probabilities).mean(axis=1)


class UncertaintyMixin:
    """``predict_uncertainty``: entropy, max-probability and epistemic part per row.

    Mixed into :class:`~xfer.MetaModelRepurposer`, so every meta-model head has it. Heads with a
    posterior override ``_predict_uncertainty_from_features(features)`` to return
    ``(probabilities, epistemic)``; the default is ``predict_proba`` with no epistemic part.
    """

    def predict_uncertainty(self, X: Any, context: Any = None) -> Uncertainty:
        """Probabilities and per-row uncertainty scores of inputs ``X``.

        Parameters
        ----------
        X : ndarray, mx.io.DataIter, torch Tensor/Dataset/DataLoader or list of str
            Source-model inputs, or features when ``source_model`` is None.
        context : optional
            Device(s) for this call.

        Returns
        -------
        Uncertainty
            ``probabilities``, ``max_probability``, ``entropy``, ``epistemic``, ``aleatoric``.

        Examples
        --------
        >>> import numpy as np
        >>> from xfer import LaplaceRepurposer
        >>> rng = np.random.RandomState(0)
        >>> X = np.r_[rng.normal(0, 1, (20, 3)), rng.normal(3, 1, (20, 3))]
        >>> head = LaplaceRepurposer(None, None).fit(X, [0] * 20 + [1] * 20)
        >>> scores = head.predict_uncertainty(X[:3])
        >>> scores.max_probability.shape, bool(np.all(scores.epistemic >= 0))
        ((3,), True)
        """
        self._validate_before_predict()
        devices = self._resolve_devices(context)
        return self._uncertainty_from_features(self._prediction_features(X, devices), devices)

    def predict_uncertainty_features(self, features: Any, context: Any = None) -> Uncertainty:
        """:meth:`predict_uncertainty` on features you extracted yourself.

        Parameters
        ----------
        features : array-like of shape (n_samples, n_features)
        context : optional
            Device for the head (GP, BNN).

        Returns
        -------
        Uncertainty
        """
        self._check_fitted()
        devices = self._resolve_devices(context)
        return self._uncertainty_from_features(
            self._as_feature_array(features, self.n_meta_features_), devices
        )

    def _uncertainty_from_features(self, features: np.ndarray, devices: Any) -> Uncertainty:
        self._check_prediction_features(features)
        self._require_available(devices)
        with self._using_devices(devices):
            probabilities, epistemic = self._predict_uncertainty_from_features(features)
        probabilities = _validation.check_probabilities(
            probabilities, len(features), len(self.classes_), type(self).__name__
        )
        return summarize(probabilities, epistemic)

    def _predict_uncertainty_from_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities, epistemic)``; heads with a posterior override it."""
        return self._predict_probability_from_features(features), None


__all__ = [
    "Uncertainty", "UncertaintyMixin", "entropy", "frequency_nll", "is_degenerate", "mutual_information",
    "summarize", "warn_degenerate",
]  # fmt: skip
