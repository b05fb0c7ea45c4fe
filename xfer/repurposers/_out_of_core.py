"""Heads trained on a :class:`~xfer.feature_store.FeatureStore`: features that are not in memory.

The heads run the algorithm they run in memory, reading the rows from the store's files a piece at
a time, so the result is the in-memory result up to floating-point summation order (tested):

- **Feature scaling** (every head): the columns' means and standard deviations in one pass
  (Chan et al.'s pairwise update of per-chunk moments, float64), then
  :func:`~xfer.repurposers._linear.standardizer_from_moments`.
- **Logistic regression**: the objective scikit-learn's ``LogisticRegression(solver="lbfgs")``
  minimises (mean log-loss plus ``||W||^2 / (2 C N)``, multinomial for more than two classes,
  binomial for two), with the same L-BFGS-B settings; each evaluation is one pass over the store,
  chunk by chunk, with the standardisation folded into the weights (the rows are never rewritten).
- **Sparse GP and BNN**: the minibatch loops of their cores, which draw the same minibatches from
  :class:`StoreRows` (rows gathered from the files and transformed on the fly) as they would from
  the in-memory matrix.

Memory is bounded by the store's ``chunk_mb`` (one chunk at a time, in float64) and by the heads'
own minibatch sizes; the memory maps are released after every read.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import optimize
from scipy.special import logsumexp

from xfer.repurposers._linear import standardizer_from_moments


def column_moments(
    store: Any, transform: Callable[[np.ndarray], np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation of every column of ``store``, in float64.

    ``transform`` (optional) is applied to each chunk of rows first (e.g. a row-wise L2 norm).
    """
    count = 0
    mean = m2 = None
    for chunk, _ in store.chunks():
        block = np.asarray(chunk, dtype=np.float64)
        if transform is not None:
            block = transform(block)
        n = block.shape[0]
        block_mean = block.mean(axis=0)
        block_m2 = ((block - block_mean) ** 2).sum(axis=0)
        if mean is None:
            mean, m2, count = block_mean, block_m2, n
            continue
        delta = block_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + block_m2 + delta**2 * (count * n / total)
        count = total
    return mean, np.sqrt(m2 / count)


def fit_standardizer(
    store: Any,
    feature_indices_per_layer: list[np.ndarray] | None,
    mode: str,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`xfer.repurposers._linear.fit_standardizer` over the rows of a store."""
    if mode == "none":
        return np.zeros(store.num_features), np.ones(store.num_features)
    mean, std = column_moments(store, transform)
    return standardizer_from_moments(mean, std, feature_indices_per_layer, mode)


class StoreRows:
    """The rows of a store, transformed, indexable like the in-memory training matrix.

    ``rows[indices]`` gathers the rows from the files and applies ``transform``: a NumPy index
    gives a float64 NumPy array, a ``torch.Tensor`` index a tensor of ``dtype`` on ``device``
    (what the GP and BNN cores' minibatch loops index with), a slice ``start:stop`` the
    consecutive rows, read in order.
    """

    def __init__(self, store: Any, transform: Callable[[np.ndarray], np.ndarray], width: int,
                 dtype: Any = None, device: Any = None):
        self.store = store
        self.transform = transform
        self.shape = (len(store), int(width))
        self.dtype = dtype
        self.device = device

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, indices: Any) -> Any:
        import torch

        if isinstance(indices, slice):
            start, stop, step = indices.indices(self.shape[0])
            if step == 1:
                return self.transform(self.store.rows(start, max(start, stop)))
            indices = np.arange(start, stop, step)
        if isinstance(indices, torch.Tensor):
            rows = self.transform(self.store.take(indices.cpu().numpy()))
            return torch.as_tensor(rows, dtype=self.dtype, device=self.device)
        return self.transform(self.store.take(np.asarray(indices)))


def fit_logistic(
    store: Any,
    labels: np.ndarray,
    n_classes: int,
    mean: np.ndarray,
    scale: np.ndarray,
    c: float,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """L2-regularised logistic regression on standardised rows of ``store``, by passes over it.

    Returns ``(coef, intercept, iterations, converged)``: ``coef`` is ``(1, D)`` for two classes
    (the positive class is class 1, as in scikit-learn) and ``(K, D)`` otherwise.
    """
    n, width = len(store), store.num_features
    binary = n_classes == 2
    outputs = 1 if binary else n_classes
    inverse_scale = 1.0 / scale
    shift = mean * inverse_scale
    l2 = 1.0 / (c * n)
    rows = store.chunk_rows()

    def loss_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
        weights = flat.reshape(outputs, width + 1, order="F")
        coef, intercept = weights[:, :width], weights[:, width]
        # (x - mean) / scale @ coef.T == x @ (coef / scale).T - shift @ coef.T
        folded = (coef * inverse_scale).T  # (D, outputs)
        offset = intercept - shift @ coef.T
        loss = 0.0
        gradient_x = np.zeros((width, outputs))
        residual_sum = np.zeros(outputs)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            block = store.rows(start, stop).astype(np.float64)
            target = labels[start:stop]
            raw = block @ folded + offset
            if binary:
                raw = raw[:, 0]
                # log(1 + exp(raw)) - y * raw, and its derivative sigmoid(raw) - y
                loss += float(np.sum(np.logaddexp(0.0, raw) - target * raw))
                residual = (1.0 / (1.0 + np.exp(-raw)) - target)[:, None]
            else:
                normaliser = logsumexp(raw, axis=1)
                loss += float(np.sum(normaliser - raw[np.arange(len(target)), target]))
                residual = np.exp(raw - normaliser[:, None])
                residual[np.arange(len(target)), target] -= 1.0
            gradient_x += block.T @ residual
            residual_sum += residual.sum(axis=0)
        # d/d coef of the standardised model: (X - mean)/scale transposed times the residuals
        gradient_coef = (gradient_x * inverse_scale[:, None] - np.outer(shift, residual_sum)).T / n
        gradient = np.empty((outputs, width + 1))
        gradient[:, :width] = gradient_coef + l2 * coef
        gradient[:, width] = residual_sum / n
        value = loss / n + 0.5 * l2 * float(np.sum(coef * coef))
        return value, gradient.ravel(order="F")

    options = {"maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps}
    start = np.zeros(outputs * (width + 1))
    iterations = 0
    converged = False
    # As LrRepurposer does in memory: the cap, then once more from there with ten times the cap.
    for cap in (max_iter, 10 * max_iter):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = optimize.minimize(
                loss_and_gradient, start, method="L-BFGS-B", jac=True,
                options={"maxiter": cap, **options},
            )  # fmt: skip
        iterations = int(result.nit)
        start = result.x
        converged = result.status == 0
        if converged:
            break
    weights = start.reshape(outputs, width + 1, order="F")
    return weights[:, :width].copy(), weights[:, width].copy(), iterations, converged


__all__ = ["column_moments", "fit_standardizer", "StoreRows", "fit_logistic"]
