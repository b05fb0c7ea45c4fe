"""Transferability scores: how well a source model's features or outputs suit a labelled target task.

Every score is a plain function of arrays, computed without training a head, so that ranking
many layers or models needs one score per layer instead of fitting and cross-validating a
classifier on each (what one score costs next to one logistic-regression fit:
``python -m benchmarks.run --only transferability``):

========================  ============================  =====================================
score                     reads                         paper
========================  ============================  =====================================
:func:`logme`             features ``N x D``            You et al., ICML 2021
:func:`h_score`           features ``N x D``            Bao et al., ICIP 2019; regularised by
                                                        Ibrahim et al., ECML-PKDD 2022
:func:`leep`              source probabilities ``N x Z``  Nguyen et al., ICML 2020
:func:`nce`               source labels ``N``           Tran et al., ICCV 2019
========================  ============================  =====================================

Higher is better for all four. Labels may be any values (ints, strings); only their grouping
matters, so every score is unchanged by renaming or permuting the classes. The feature scores
work on any layer (average-pool convolutional maps first: see
:func:`xfer.transferability.rank_layers`); LEEP and NCE read the source model's own output
distribution over its source classes, so they score a *model* (its output layer), not an
intermediate layer.

All four are deterministic and vectorised: LogME shares one eigendecomposition between all
classes and maximises the evidence of all classes at once; the H-score needs one covariance
matrix and one Cholesky solve; LEEP and NCE are a few matrix products and counts.
:func:`feature_scores` computes LogME and the H-score of one layer from one shared ``D x D``
Gram matrix, which dominates the cost of both (``N D^2`` flops, in float64: in float32 its
rounding moved LogME on real CNN features by up to its whole value).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse

from xfer import _validation
from xfer.exceptions import InvalidArgumentError, InvalidTypeError
from xfer.threads import one_blas_thread as _one_blas_thread

__all__ = [
    "logme",
    "h_score",
    "leep",
    "nce",
    "feature_scores",
    "SCORES",
    "FEATURE_SCORES",
    "OUTPUT_SCORES",
]


# --------------------------------------------------------------------------- validation


def _encode_labels(
    labels: Any, n_rows: int, argument: str = "labels", x_name: str = "features"
) -> tuple[np.ndarray, int]:
    """``labels`` as int codes ``0..K-1`` (K >= 2) of length ``n_rows`` (checked by xfer's gate)."""
    labels = _validation.check_labels(labels, argument, n_samples=n_rows, x_name=x_name)
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise InvalidArgumentError(
            f"{argument} hold a single class ({classes[0]!r}): a transferability score compares "
            "classes, so give examples of at least 2 classes."
        )
    return codes.astype(np.int64, copy=False), len(classes)


def _as_matrix(values: Any, argument: str) -> np.ndarray:
    """A finite 2-D float array (float32 kept, else float64) with at least two rows (checked by
    xfer's gate)."""
    array = _validation.check_features(values, argument)
    if array.dtype != np.float32:
        array = array.astype(np.float64, copy=False)
    if array.shape[0] < 2:
        raise InvalidArgumentError(
            f"{argument} has shape {array.shape}: a score needs at least 2 examples."
        )
    return array


def _gram(matrix: np.ndarray) -> np.ndarray:
    """``matrix.T @ matrix``, symmetrised (NumPy's BLAS: one product), in ``matrix``'s precision."""
    product = matrix.T @ matrix
    return (product + product.T) / 2


def _eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of a symmetric matrix (LAPACK's divide and conquer,
    ``syevd``; the matrix is overwritten)."""
    return scipy.linalg.eigh(matrix, driver="evd", overwrite_a=True, check_finite=False)


def _eigen_projections(matrix: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``s`` of the symmetric ``matrix`` (``d x d``, float64) and
    ``U^T right`` (``d x K``) for its eigenvectors ``U``, without forming ``U``.

    ``matrix = Q T Q^T`` with ``T`` tridiagonal (LAPACK ``dsytrd``); the ``d - 1`` Householder
    reflectors of ``Q`` are applied to the ``K`` columns of ``right``, and ``T``'s eigenvectors
    ``V`` (MRRR, ``dstemr``, ``O(d^2)``) give ``U^T right = V^T Q^T right``. This skips the
    back-transformation ``U = Q V`` (``2 d^3`` flops) of a full eigendecomposition, about a
    third of its time at ``d = 1280``; the result is the same to rounding.
    """
    with _one_blas_thread():
        return _eigen_projections_here(matrix, right)


def _eigen_projections_here(matrix: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = matrix.shape[0]
    right = np.array(right, dtype=np.float64, order="C")
    try:
        if d < 2:
            raise np.linalg.LinAlgError("nothing to reduce")
        work, _ = scipy.linalg.lapack.dsytrd_lwork(d, lower=1)
        # matrix.T: the same symmetric matrix in Fortran order; LAPACK works on a copy
        packed, diagonal, off_diagonal, tau, info = scipy.linalg.lapack.dsytrd(
            matrix.T, lower=1, lwork=int(work)
        )
        if info != 0:
            raise np.linalg.LinAlgError(f"dsytrd returned info={info}")
        values, vectors = scipy.linalg.eigh_tridiagonal(
            diagonal, off_diagonal, lapack_driver="stemr", check_finite=False
        )
    except np.linalg.LinAlgError:  # MRRR did not converge (rare), or 1 x 1: the full method
        values, vectors = _eigh(matrix.copy())
        return values, vectors.T @ right
    # Q^T right = H(d-1) ... H(1) right, H(i) = I - tau_i v_i v_i^T, v_i = (0.., 1, packed[i+2:, i])
    for i in range(d - 1):
        if tau[i] != 0:
            reflector = packed[i + 1 :, i].copy()
            reflector[0] = 1.0
            block = right[i + 1 :]
            block -= np.outer(tau[i] * reflector, reflector @ block)
    return values, vectors.T @ right


# --------------------------------------------------------------------------- shared moments


def _class_sums(values: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, D)`` float64 sums of the rows of each class (a sparse one-hot product:
    ``O(N D)`` whatever the number of classes)."""
    n = len(codes)
    one_hot = scipy.sparse.csr_matrix(
        (np.ones(n), (codes, np.arange(n))), shape=(n_classes, n)
    )
    return np.asarray(one_hot @ values.astype(np.float64, copy=False))


@dataclass
class _Moments:
    """What LogME and the H-score read from one layer's features, computed once for both.

    ``gram`` is the (centred) features' ``F^T F`` (``D x D``), or with fewer examples than
    features (``dual``) their ``F F^T`` (``N x N``): both scores then work in the smaller
    space. ``class_sums`` are the ``(K, D)`` sums of the (centred) rows of each class,
    ``row_norms`` the rows' squared norms (the H-score's Ledoit-Wolf shrinkage reads them).
    """

    n: int
    d: int
    codes: np.ndarray
    counts: np.ndarray
    dual: bool
    gram: np.ndarray
    class_sums: np.ndarray
    row_norms: np.ndarray
    spectrum: tuple[np.ndarray, np.ndarray] | None = None

    def one_hot(self) -> np.ndarray:
        """The ``(N, K)`` one-hot targets."""
        targets = np.zeros((self.n, len(self.counts)))
        targets[np.arange(self.n), self.codes] = 1.0
        return targets

    def eigen(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues ``s`` of ``gram`` and the class targets' projections on its eigenvectors,
        computed on first use and kept, so that LogME and the H-score share one reduction.

        ``(s, U^T class_sums^T)`` (``D`` and ``D x K``) for ``F^T F``; with ``dual``,
        ``(s, V^T Y)`` (``N`` and ``N x K``, ``Y`` the one-hot targets) for ``F F^T``.
        """
        if self.spectrum is None:
            right = self.one_hot() if self.dual else self.class_sums.T
            self.spectrum = _eigen_projections(self.gram, right)
        return self.spectrum

    def kept(self, eigenvalues: np.ndarray) -> np.ndarray:
        """Which eigenvalues are nonzero beyond the rounding of the Gram matrix."""
        return eigenvalues > eigenvalues.max() * max(self.n, self.d) * np.finfo(np.float64).eps


def _moments(features: np.ndarray, codes: np.ndarray, n_classes: int, centre: bool) -> _Moments:
    """The moments of ``features`` (checked) for the label codes ``codes``, in float64.

    float64 throughout, float32 features too: in float32 the Gram matrix's rounding (about 1e-7
    of its largest eigenvalue) moved LogME on real pooled CNN features by up to its whole value,
    because the evidence's optimum often lies among the small eigenvalues.
    """
    n, d = features.shape
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    owned = features.dtype != np.float64  # the cast below is a fresh copy: centre it in place
    features = features.astype(np.float64, copy=False)
    sums = _class_sums(features, codes, n_classes)
    if centre:
        mean = sums.sum(0) / n
        sums -= counts[:, None] * mean
        if owned:
            features -= mean
        else:
            features = features - mean
    row_norms = np.einsum("ij,ij->i", features, features)
    dual = n < d
    gram = _gram(features.T) if dual else _gram(features)
    return _Moments(n, d, codes, counts, dual, gram, sums, row_norms)


# --------------------------------------------------------------------------- LogME


_GOLDEN = (np.sqrt(5.0) - 1) / 2


def _profile_log_evidence(
    log_ratio: np.ndarray, s: np.ndarray, z2: np.ndarray, r0: np.ndarray, n: int
) -> np.ndarray:
    """Log evidence of each class at ``lambda = alpha / beta = exp(log_ratio)``, ``beta`` at its
    optimum: ``log N(y | 0, (I + F F^T / lambda) / beta)``.

    ``log_ratio`` is ``(G, 1)`` (a grid shared by the classes) or ``(K, 1)`` (one per class);
    ``s`` ``(r,)`` are the nonzero eigenvalues of ``F^T F``, ``z2`` ``(r, K)`` the squared
    coordinates of the targets along the matching left singular vectors, ``r0`` ``(K,)`` the
    targets' squared norm outside the span of ``F``.
    """
    ratio = np.exp(log_ratio)
    weights = ratio / (ratio + s)  # (., r)
    if log_ratio.shape[0] == z2.shape[1]:  # one ratio per class
        quadratic = r0 + np.einsum("kr,rk->k", weights, z2)
        log_det = np.log1p(s / ratio).sum(1)
    else:
        quadratic = r0 + weights @ z2
        log_det = np.log1p(s / ratio).sum(1, keepdims=True)
    quadratic = np.maximum(quadratic, np.finfo(np.float64).tiny)
    return -n / 2 * (np.log(2 * np.pi) + 1 + np.log(quadratic / n)) - log_det / 2


def logme(features: Any, labels: Any, *, centre: bool = True) -> float:
    """LogME: the log maximum evidence of a Bayesian linear model from features to labels.

    For each class ``k`` the one-hot column ``y_k`` is modelled as ``y_k = F w + noise`` with a
    Gaussian prior ``w ~ N(0, I / alpha)`` and noise precision ``beta``. LogME is the evidence
    ``log p(y_k | F, alpha, beta)`` maximised over ``alpha`` and ``beta``, divided by ``N`` and
    averaged over the classes (You, Liu, Wang and Long, "LogME: Practical Assessment of
    Pre-trained Models for Transfer Learning", ICML 2021). It estimates how well a linear head on
    these features will fit the labels, penalising complexity, with no hyper-parameter.

    One symmetric eigendecomposition (of ``F^T F``, or of ``F F^T`` when ``N < D``) serves every
    class. The paper maximises the evidence with MacKay's fixed-point updates; here, for all
    classes at once, the noise precision is profiled out in closed form and the remaining
    one-dimensional evidence is maximised over ``alpha / beta`` on a grid spanning the whole
    spectrum, refined by golden-section search. The maximum is the same where the fixed point
    converges; unlike the fixed point, this also finds it when it lies at a limit (fewer
    examples than features, where the labels can be fitted exactly; features unrelated to a
    class), where the iterations drift or oscillate and the result would depend on when they
    are stopped.

    The result is invariant to permuting the classes or the examples and to scaling or rotating
    the features as a whole (not to scaling single columns); with ``centre=True`` also to
    shifting them.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Features of the labelled examples (one row each).
    labels : array-like of shape (n_samples,)
        Class labels of any values; at least 2 classes.
    centre : bool, default=True
        Subtract each feature column's mean first, as the heads' standardisation does (LogME's
        linear model has no intercept, so uncentred non-negative features such as pooled ReLU
        maps spend part of their fit on their mean). ``False`` gives the paper's LogME on raw
        features. On few-shot image tasks centred LogME ranks layers closer to the accuracy of
        a logistic-regression head (``python -m benchmarks.run --only transferability``).

    Returns
    -------
    float
        Mean log evidence per example; higher means more transferable. Values are comparable
        between layers or models scored on the same examples and labels.

    Raises
    ------
    InvalidArgumentError
        Shapes that do not match, fewer than 2 classes, NaN or infinite features, constant
        features.
    InvalidTypeError
        Non-numeric features.

    Examples
    --------
    >>> import numpy as np
    >>> from xfer.transferability import logme
    >>> rng = np.random.RandomState(0)
    >>> labels = np.repeat([0, 1, 2], 30)
    >>> informative = np.eye(3)[labels] + 0.1 * rng.normal(size=(90, 3))
    >>> noise = rng.normal(size=(90, 3))
    >>> bool(logme(informative, labels) > logme(noise, labels))
    True
    """
    features = _as_matrix(features, "features")
    codes, n_classes = _encode_labels(labels, features.shape[0])
    return _logme(_moments(features, codes, n_classes, centre))


def _logme(moments: _Moments) -> float:
    """LogME from the moments of checked features."""
    n, counts = moments.n, moments.counts
    n_classes = len(counts)
    # Spectrum of F^T F: s (kept eigenvalues) and z, the targets' coordinates along the left
    # singular vectors of F; r0 is the part of ||y||^2 outside the span of F.
    # dual: the N x N Gram matrix F F^T, z = V^T y; else the D x D F^T F, z = U^T F^T y / sqrt(s)
    eigenvalues, projections = moments.eigen()
    keep = moments.kept(eigenvalues)
    if eigenvalues.max() <= 0 or not np.any(keep):
        raise InvalidArgumentError(
            "features are constant: LogME needs features that vary between examples."
        )
    s = eigenvalues[keep]
    z = projections[keep] if moments.dual else projections[keep] / np.sqrt(s)[:, None]
    z2 = z**2
    r0 = np.maximum(counts - z2.sum(0), 0.0)

    # Both limits of alpha / beta give finite evidence; 1e-10 of the spectrum's ends is close
    # enough to each that the evidence there equals its limit to about 10 digits.
    low, high = np.log(s.min() * 1e-10), np.log(s.max() * 1e10)
    grid = np.linspace(low, high, 256)
    values = _profile_log_evidence(grid[:, None], s, z2, r0, n)  # (G, K)
    best = np.argmax(values, axis=0)
    step = grid[1] - grid[0]
    left = np.maximum(grid[best] - step, low)
    right = np.minimum(grid[best] + step, high)
    # golden-section search in [left, right] for every class at once
    inner_left = right - _GOLDEN * (right - left)
    inner_right = left + _GOLDEN * (right - left)
    value_left = _profile_log_evidence(inner_left[:, None], s, z2, r0, n)
    value_right = _profile_log_evidence(inner_right[:, None], s, z2, r0, n)
    for _ in range(48):
        move_right = value_left < value_right
        left = np.where(move_right, inner_left, left)
        right = np.where(move_right, right, inner_right)
        fresh = np.where(
            move_right, left + _GOLDEN * (right - left), right - _GOLDEN * (right - left)
        )
        fresh_value = _profile_log_evidence(fresh[:, None], s, z2, r0, n)
        inner_left, inner_right = (
            np.where(move_right, inner_right, fresh),
            np.where(move_right, fresh, inner_left),
        )
        value_left, value_right = (
            np.where(move_right, value_right, fresh_value),
            np.where(move_right, fresh_value, value_left),
        )
    evidence = np.maximum.reduce(
        [values[best, np.arange(n_classes)], value_left, value_right]
    )
    return float(np.mean(evidence) / n)


# --------------------------------------------------------------------------- H-score


def _ledoit_wolf_shrinkage(moments: _Moments) -> float:
    """Ledoit and Wolf's (2004) optimal shrinkage of the covariance ``S`` towards ``mu I``."""
    n, d = moments.n, moments.d
    trace = np.trace(moments.gram) / n  # tr(S), from F^T F or F F^T alike
    mu = trace / d
    beta_sum = (moments.row_norms**2).sum() / n  # mean of ||x x^T||_F^2
    delta_sum = (moments.gram**2).sum() / n**2  # ||S||_F^2 = ||F^T F||_F^2 / n^2 = ||F F^T||_F^2 / n^2
    beta = max((beta_sum - delta_sum) / (n * d), 0.0)
    delta = (delta_sum - 2 * mu * trace + d * mu**2) / d  # ||S - mu I||_F^2 / d
    if delta <= 0:
        return 0.0
    return float(min(beta, delta) / delta)


def h_score(features: Any, labels: Any, *, shrinkage: str | float | None = "ledoit-wolf") -> float:
    """H-score: how much of the features' variance separates the classes.

    ``H = tr(cov(f)^-1 cov(E[f | y]))`` (Bao, Li, Huang, Wang, Zheng and Zhong, "An
    Information-theoretic Approach to Transferability in Task Transfer Learning", ICIP 2019), the
    trace of the between-class covariance relative to the total covariance. With few examples
    ``cov(f)`` is singular and the plain score is unstable; the regularised H-score replaces it
    by the shrunk estimate ``(1 - a) cov(f) + a mu I`` (``mu`` the mean variance) and scales the
    between-class term by ``1 - a`` (Ibrahim, Ponomareva and Mazumder, "Newer is not always
    better: Rethinking transferability metrics, their peculiarities, stability and performance",
    ECML-PKDD 2022), with ``a`` chosen by Ledoit and Wolf's formula.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Features of the labelled examples.
    labels : array-like of shape (n_samples,)
        Class labels of any values; at least 2 classes.
    shrinkage : {'ledoit-wolf'}, float in [0, 1) or None, default='ledoit-wolf'
        ``'ledoit-wolf'``: the regularised H-score; a number: that fixed shrinkage; ``None``: the
        original H-score with a pseudo-inverse.

    Returns
    -------
    float
        Higher means more transferable. It lies between 0 and ``K - 1`` (K classes) and is
        invariant to permuting the classes and to shifting or scaling the features as a whole.

    Raises
    ------
    InvalidArgumentError
        Shapes that do not match, fewer than 2 classes, NaN features, a bad ``shrinkage``.

    Examples
    --------
    >>> import numpy as np
    >>> from xfer.transferability import h_score
    >>> rng = np.random.RandomState(0)
    >>> labels = np.repeat([0, 1], 40)
    >>> separated = labels[:, None] * 3.0 + rng.normal(size=(80, 4))
    >>> bool(h_score(separated, labels) > h_score(rng.normal(size=(80, 4)), labels))
    True
    """
    features = _as_matrix(features, "features")
    codes, n_classes = _encode_labels(labels, features.shape[0])
    amount = _check_shrinkage(shrinkage)
    return _h_score(_moments(features, codes, n_classes, centre=True), amount)


def _check_shrinkage(shrinkage: Any) -> float | None:
    """``shrinkage`` as a fixed amount, or None for Ledoit and Wolf's (the default)."""
    if shrinkage == "ledoit-wolf":
        return None
    if shrinkage is None:
        return 0.0
    if isinstance(shrinkage, numbers.Real) and not isinstance(shrinkage, bool) and 0 <= shrinkage < 1:
        return float(shrinkage)
    raise InvalidArgumentError(
        f"shrinkage must be 'ledoit-wolf', a number in [0, 1) or None, got {shrinkage!r}."
    )


def _h_score(moments: _Moments, amount: float | None) -> float:
    """The H-score from the centred moments; ``amount`` of shrinkage, None: Ledoit and Wolf's.

    ``H = (1 - a) tr(M S_a^-1 M^T)`` with ``M = W^T F`` the between-class rows (``W`` the one-hot
    targets over ``sqrt(n_k n)``), ``S_a = (1 - a) F^T F / n + a mu I``. With fewer examples than
    features, ``S_a^-1 F^T = F^T (a mu I + (1 - a) F F^T / n)^-1`` turns this into an ``N x N``
    solve: ``H = (1 - a) tr(W^T K (a mu I + (1 - a) K / n)^-1 W)``, ``K = F F^T``.

    A Cholesky solve (``d^3 / 3`` flops) when the Gram matrix's eigen-projections are not at
    hand; when LogME computed them already on these moments (:func:`feature_scores`), the same
    sums over the spectrum instead (``O(d K)``); without shrinkage, always the spectrum (a
    pseudo-inverse).
    """
    n, d = moments.n, moments.d
    mu = np.trace(moments.gram) / n / d
    if mu <= 0:
        raise InvalidArgumentError(
            "features are constant: the H-score needs features that vary between examples."
        )
    if amount is None:
        amount = _ledoit_wolf_shrinkage(moments)
    if amount == 0 or moments.spectrum is not None:
        return _h_score_from_spectrum(moments, amount, mu)
    if moments.dual:
        weights = moments.one_hot() / np.sqrt(moments.counts * n)  # W, (N, K)
        kernel = moments.gram
        shrunk = kernel * ((1 - amount) / n)
        shrunk[np.diag_indices(n)] += amount * mu
        solved = _cholesky_solve(shrunk, weights)
        return float((1 - amount) * np.sum((kernel @ weights) * solved))
    # cov(E[f|y]) = M^T M with M's rows sqrt(p_k) (mean_k - mean); the shrunk covariance is
    # positive definite: a Cholesky solve
    between = moments.class_sums / np.sqrt(moments.counts[:, None] * n)
    shrunk = moments.gram * ((1 - amount) / n)
    shrunk[np.diag_indices(d)] += amount * mu
    solved = _cholesky_solve(shrunk, between.T)
    return float((1 - amount) * np.sum(between.T * solved))


def _h_score_from_spectrum(moments: _Moments, amount: float, mu: float) -> float:
    """:func:`_h_score` from the Gram matrix's eigenvalues ``s`` and projections ``P``.

    Primal (``P = U^T F^T Y``): ``H = (1 - a) sum_ik P_ik^2 / (n_k n) / ((1 - a) s_i / n + a mu)``;
    dual (``P = V^T Y``): ``H = (1 - a) sum_ik s_i P_ik^2 / (n_k n) / (a mu + (1 - a) s_i / n)``.
    With ``a = 0`` only the nonzero eigenvalues count (the pseudo-inverse), and the dual sum is
    ``sum_ik P_ik^2 / n_k`` over them (``n W^T`` times the projector onto ``F``'s column span).
    """
    n = moments.n
    eigenvalues, projections = moments.eigen()
    squares = projections**2 / (moments.counts * n)  # (., K): the projections of W's columns
    if amount == 0:
        keep = moments.kept(eigenvalues)
        if moments.dual:
            return float(n * np.sum(squares[keep]))
        return float(n * np.sum(squares[keep] / eigenvalues[keep, None]))
    s = np.maximum(eigenvalues, 0.0)[:, None]
    denominator = (1 - amount) * s / n + amount * mu
    numerator = s * squares if moments.dual else squares
    return float((1 - amount) * np.sum(numerator / denominator))


def _cholesky_solve(matrix: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``matrix^-1 right`` for a symmetric positive definite ``matrix`` (overwritten)."""
    with _one_blas_thread():
        factor = scipy.linalg.cho_factor(matrix, lower=True, overwrite_a=True, check_finite=False)
        return scipy.linalg.cho_solve(factor, right, check_finite=False)


def feature_scores(features: Any, labels: Any, scores: Any = ("logme", "h_score")) -> dict[str, float]:
    """LogME and/or the regularised H-score of one layer's features, sharing their work.

    Both scores read the centred features' Gram matrix (``D x D``, or ``N x N`` with fewer
    examples than features) and class sums, the cost of each score; computed once here, they
    serve both, and the H-score then reads LogME's eigenvalues and projections instead of
    factorising the matrix again. The values equal :func:`logme` and :func:`h_score` with their
    defaults (to rounding: ``tests/transferability/test_scores.py``).

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
    labels : array-like of shape (n_samples,)
    scores : sequence of {'logme', 'h_score'}, default=('logme', 'h_score')

    Returns
    -------
    dict
        Score name -> value, in the order asked.

    Raises
    ------
    InvalidArgumentError
        As :func:`logme` and :func:`h_score`, or an unknown score name.
    """
    names = [scores] if isinstance(scores, str) else list(scores)
    unknown = [name for name in names if name not in FEATURE_SCORES]
    if unknown:
        raise InvalidArgumentError(
            f"Unknown feature score {unknown[0]!r}: use {' or '.join(FEATURE_SCORES)}."
        )
    features = _as_matrix(features, "features")
    codes, n_classes = _encode_labels(labels, features.shape[0])
    moments = _moments(features, codes, n_classes, centre=True)
    values = {}
    for name in sorted(set(names), key=lambda name: name != "logme"):  # LogME's spectrum first
        values[name] = _logme(moments) if name == "logme" else _h_score(moments, None)
    return {name: values[name] for name in names}


# --------------------------------------------------------------------------- LEEP and NCE


def _as_probabilities(values: Any, argument: str) -> np.ndarray:
    probabilities = _as_matrix(values, argument)
    totals = probabilities.sum(1, dtype=np.float64)
    if probabilities.min() < 0 or not np.allclose(totals, 1.0, atol=1e-3):
        raise InvalidArgumentError(
            f"{argument} must be probabilities: non-negative rows that sum to 1 (the source "
            "model's softmax output). For logits, apply scipy.special.softmax(logits, axis=1)."
        )
    return probabilities / totals[:, None]


def leep(source_probabilities: Any, labels: Any) -> float:
    """LEEP: log expected empirical prediction of the source model's outputs on the target labels.

    From the source model's distribution ``theta(x)`` over its ``Z`` source classes, LEEP forms
    the empirical conditional ``P(y | z)`` of target labels given source labels, then averages
    ``log sum_z P(y_i | z) theta(x_i)_z`` over the examples (Nguyen, Hassner, Seeger and Archambeau,
    "LEEP: A New Measure to Evaluate Transferability of Learned Representations", ICML 2020).

    Parameters
    ----------
    source_probabilities : array-like of shape (n_samples, n_source_classes)
        The source model's output distribution for each target example (softmax output, e.g.
        ImageNet class probabilities); rows sum to 1.
    labels : array-like of shape (n_samples,)
        Target class labels of any values; at least 2 classes.

    Returns
    -------
    float
        The average log-likelihood of the target labels under the source model's "expected
        empirical predictor": at most 0 (higher is better) and at least the negative entropy of
        the target labels' class frequencies, up to numerical precision. Invariant to
        permuting target or source classes.

    Raises
    ------
    InvalidArgumentError
        Rows that are not probabilities (pass logits through a softmax first), shapes that do
        not match, fewer than 2 classes.

    Examples
    --------
    >>> import numpy as np
    >>> from xfer.transferability import leep
    >>> labels = np.array([0, 0, 1, 1])
    >>> confident = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8]])
    >>> bool(leep(confident, labels) > leep(np.full((4, 2), 0.5), labels))
    True
    """
    probabilities = _as_probabilities(source_probabilities, "source_probabilities")
    codes, n_classes = _encode_labels(labels, probabilities.shape[0])
    n = probabilities.shape[0]
    joint = _class_sums(probabilities, codes, n_classes) / n  # P(y, z)
    marginal = joint.sum(0)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    expected = (probabilities @ conditional.T)[np.arange(n), codes]
    return float(np.mean(np.log(np.maximum(expected, np.finfo(np.float64).tiny))))


def nce(source_labels: Any, labels: Any) -> float:
    """NCE: negative conditional entropy of the target labels given the source model's labels.

    ``NCE = -H(Y | Z)`` from the empirical joint distribution of the source model's predicted
    class ``z`` and the target label ``y`` of each example (Tran, Nguyen and Hassner,
    "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019).

    Parameters
    ----------
    source_labels : array-like of shape (n_samples,) or (n_samples, n_source_classes)
        The source model's predicted class of each example, or its output distribution (the
        argmax is taken).
    labels : array-like of shape (n_samples,)
        Target class labels of any values; at least 2 classes.

    Returns
    -------
    float
        Between ``-H(Y)`` (source labels tell nothing) and 0 (they determine the target labels);
        higher is better. Invariant to renaming either set of classes.

    Raises
    ------
    InvalidArgumentError
        Shapes that do not match, fewer than 2 target classes.

    Examples
    --------
    >>> from xfer.transferability import nce
    >>> nce(["cat", "cat", "dog", "dog"], [0, 0, 1, 1])
    0.0
    """
    if isinstance(source_labels, (str, bytes)) or not hasattr(source_labels, "__len__"):
        raise InvalidTypeError(
            "source_labels must be an array-like of source classes or probabilities, got "
            f"{type(source_labels).__name__}."
        )
    values = np.asarray(source_labels)
    if values.ndim == 2:
        values = np.argmax(_as_matrix(values, "source_labels"), axis=1)
    if values.ndim != 1:
        raise InvalidArgumentError(
            "source_labels must be 1-D (one predicted source class per example) or 2-D (the "
            f"source model's output distribution), got shape {values.shape}."
        )
    codes, _ = _encode_labels(labels, len(values), x_name="source_labels")
    try:
        _, source_codes = np.unique(values, return_inverse=True)
    except TypeError as error:
        raise InvalidArgumentError(
            f"source_labels mix types that cannot be compared: {error}"
        ) from error
    n, n_classes = len(codes), int(codes.max()) + 1
    n_source = int(source_codes.max()) + 1
    joint = np.bincount(source_codes * n_classes + codes, minlength=n_source * n_classes)
    joint = joint.reshape(n_source, n_classes) / n
    source_marginal = joint.sum(1, keepdims=True)
    nonzero = joint > 0
    conditional = joint[nonzero] / np.broadcast_to(source_marginal, joint.shape)[nonzero]
    return float(np.sum(joint[nonzero] * np.log(conditional)))


#: Scores of features (any layer), by name.
FEATURE_SCORES = {"logme": logme, "h_score": h_score}
#: Scores of the source model's output distribution, by name.
OUTPUT_SCORES = {"leep": leep, "nce": nce}
#: Every score, by name.
SCORES = {**FEATURE_SCORES, **OUTPUT_SCORES}
