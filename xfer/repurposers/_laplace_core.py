"""Numerical core of the last-layer Laplace head (used by ``LaplaceRepurposer``).

:class:`LaplaceClassifierCore` is a multinomial logistic regression whose weights get a Gaussian
posterior (MacKay, 1992; Daxberger et al., 2021, "Laplace Redux"), in closed form with NumPy:

1. **Features**: with ``apply_l2_norm`` each layer's block is scaled to unit L2 norm per row
   (layers whose norm is spread over at least 10 effective columns: ``_linear.l2_layers``), then
   centred and scaled with the scaling every head shares (``_linear.fit_standardizer``), and a
   constant 1 is appended (the bias), giving the design ``Z`` (``N x (D + 1)``).
2. **Basis.** ``Z = V diag(sqrt(s)) U^T`` (thin SVD, or the eigen-decomposition of ``Z^T Z`` when
   ``N > D``; the bias direction is one of them, the features being centred). Only the
   ``r = rank(Z) <= min(N, D + 1)`` directions ``U`` touch the data: in every
   other direction the MAP weight is 0 and the posterior is the prior, so the model is fitted in
   ``r`` dimensions and the rest enters the predictive variance in closed form. Few-shot tasks
   (``N`` of tens to hundreds) are therefore small problems whatever ``D`` is.
3. **MAP** of ``sum_n CE(y_n, softmax(W^T z_n)) + m / 2 |W|^2`` (``m = map_precision``, the inverse
   of ``LrRepurposer``'s ``c``, doubled for two classes; the bias nearly unpenalised), which is
   ``LrRepurposer``'s model on the same features, by L-BFGS preconditioned by the Kronecker
   curvature at the uniform start (``sqrt(s_i / K + m)`` per direction of the basis), so it
   converges in tens of iterations even on ill-conditioned features. With ``N > D`` it runs in the
   feature coordinates with the Cholesky factor of ``Z^T Z / K + m I`` (the same preconditioner up
   to a rotation, to which L-BFGS is invariant) while the Gram matrix is decomposed on a second
   thread.
4. **Posterior precision** ``H + lambda I`` with ``H`` the generalised Gauss-Newton (here the exact
   Hessian) of the data term, ``H = sum_n z_n z_n^T (x) (diag(p_n) - p_n p_n^T)``, in one of three
   structures: ``"full"`` (exact, ``rK x rK``), ``"kron"`` (``diag(s) (x) mean_n Lambda_n``, K-FAC)
   or ``"diag"`` (its diagonal in the rotated basis). ``"auto"`` takes ``"full"`` while
   ``r * K <= full_limit`` and ``"kron"`` above.
5. **Prior precision** ``lambda`` maximises the Laplace approximation of the marginal likelihood
   (the evidence) at the fitted weights (post hoc, as laplace-torch does after training): the
   unique root of MacKay's ``lambda |W|^2 = sum_j eta_j / (eta_j + lambda)`` over the eigenvalues
   ``eta`` of ``H``, both over the feature weights (the biases, nearly unpenalised in the MAP,
   left out). ``prior_precision=`` fixes it instead. The posterior puts ``lambda`` on the biases
   too, which keeps the bias of a class absent from the labels bounded.
6. **Calibration** (``calibrate``): a scale ``tau`` of the logit covariance and a temperature
   ``T >= 1``, chosen on the training rows only, by cross-validated NLL (out-of-fold refits of the
   MAP; see :meth:`LaplaceClassifierCore._fit_covariance_scale`), and only when they beat the plain
   MAP's probabilities (``tau = 0, T = 1``) by more than one standard error. ``tau = 1`` is the plain Laplace
   posterior; on few-shot tasks the isotropic prior leaves every direction the few examples do not
   span at prior variance, which makes the plain posterior under-confident on the task's own inputs.
7. **Predictive.** The logits of a row are Gaussian, ``N(mu / T, tau Sigma_f / T^2)`` (linear in the weights:
   no further approximation). ``"probit"`` gives ``softmax(mu_k / sqrt(1 + pi / 8 * Sigma_f,kk))``
   (MacKay's approximation, renormalised), ``"mc"`` the average of ``softmax`` over fixed scrambled
   Sobol samples of ``N(mu, Sigma_f)`` (deterministic). The epistemic part of
   :meth:`LaplaceClassifierCore.predict_uncertainty` is read from the covariance scaled by
   ``max(tau, 1)``: a calibration that keeps ``tau = 0`` leaves the probabilities those of the
   (tempered) MAP, not the posterior's account of where the training rows say little.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy.special import log_softmax, softmax

from xfer.exceptions import (
    InvalidArgumentError,
    InvalidTypeError,
    NotFittedError,
    SerializationError,
)
from xfer.repurposers._checks import (
    check_features,
    check_int,
    check_positive_float,
    core_from_state,
)
from xfer.repurposers._linear import (
    check_standardize_mode,
    fit_standardizer,
    l2_layers,
    l2_layers_from_state,
    l2_normalize_layers,
    standardizer_from_moments,
)
from xfer.repurposers._uncertainty import (
    is_degenerate,
    one_standard_error_choice,
    probit_row_nll,
    stratified_folds,
    warn_degenerate,
)
from xfer.threads import one_blas_thread

_LOGGER = logging.getLogger("xfer.repurposers.laplace")

# 2: ``l2_layers`` (the layers apply_l2_norm normalises); 1: every layer when apply_l2_norm.
STATE_FORMAT_VERSION = 2
HESSIAN_STRUCTURES = ("auto", "full", "kron", "diag")
PREDICTIVES = ("probit", "mc")
# Bounds of the prior precision found by the evidence (relative to a unit-variance prior).
_PRIOR_BOUNDS = (1e-6, 1e6)
#: Candidates of the calibration; the first of each is the plain MAP (see ``_fit_covariance_scale``).
_TEMPERATURES = np.logspace(0.0, 0.6, 7)
#: Prior precision of the bias in the MAP: nearly flat, as ``LrRepurposer``'s unpenalised intercept,
#: yet finite, so the bias of a class absent from the labels stays bounded.
_BIAS_PRECISION = 1e-6
#: Design size (entries) above which the Gram matrix of ``N > D`` features is taken in float32, and
#: the relative eigenvalue below which its directions are then left to the prior.
_SINGLE_PRECISION_SIZE = 2**22
_SINGLE_PRECISION_RANK = 1e-6
_SCALES = np.concatenate([[0.0], np.logspace(-4, 1, 41)])
#: Rows x classes from which the calibration grid is evaluated on two threads (NumPy's element-wise
#: work releases the GIL).
_THREADED_GRID_SIZE = 10_000


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(f"{name} must be one of {list(choices)}, got {value!r}.")
    return value


def lbfgs(
    loss_and_grad: Any, start: np.ndarray, max_iterations: int, tol: float, memory: int = 10
) -> tuple[np.ndarray, int]:
    """Minimise a smooth convex function by L-BFGS with Armijo backtracking.

    A small NumPy implementation (two-loop recursion, Nocedal & Wright, Algorithm 7.4): SciPy's
    L-BFGS-B spends milliseconds of BLAS thread traffic per iteration on vectors this short.

    Returns
    -------
    solution : ndarray
    iterations : int
        Iterations run (stops when the largest gradient entry is below ``tol``).
    """
    x = np.array(start, dtype=np.float64)
    loss, grad = loss_and_grad(x)
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []
    for iteration in range(1, max_iterations + 1):
        if float(np.max(np.abs(grad))) <= tol:
            return x, iteration - 1
        direction = -grad
        alphas = []
        for s_k, y_k, rho in reversed(steps):
            alpha = rho * float(s_k @ direction)
            direction = direction - alpha * y_k
            alphas.append(alpha)
        if steps:
            s_k, y_k, _ = steps[-1]
            direction = direction * (float(s_k @ y_k) / float(y_k @ y_k))
        for (s_k, y_k, rho), alpha in zip(steps, reversed(alphas)):
            direction = direction + s_k * (alpha - rho * float(y_k @ direction))
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction (numerical trouble): restart from the gradient
            steps.clear()
            direction, slope = -grad, -float(grad @ grad)
        step = 1.0
        while True:
            candidate = x + step * direction
            new_loss, new_grad = loss_and_grad(candidate)
            if new_loss <= loss + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s_k, y_k = candidate - x, new_grad - grad
        curvature = float(s_k @ y_k)
        if curvature > 1e-12 * float(y_k @ y_k):
            steps.append((s_k, y_k, 1.0 / curvature))
            del steps[:-memory]
        x, loss, grad = candidate, new_loss, new_grad
        if step < 1e-10:
            return x, iteration
    return x, max_iterations


def sobol_normal_points(num_samples: int, dim: int, seed: int) -> np.ndarray:
    """Scrambled Sobol points mapped to standard normals, ``(num_samples, dim)`` float64."""
    from scipy.special import ndtri
    from scipy.stats import qmc

    uniform = qmc.Sobol(d=dim, scramble=True, seed=seed).random(num_samples)
    return ndtri(np.clip(uniform, 1e-10, 1.0 - 1e-10))


def probit_softmax(mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """``softmax(mu_k / sqrt(1 + pi / 8 * var_k))``: the probit approximation of the predictive.

    Parameters
    ----------
    mean : ndarray of shape (N, K)
        Logit means.
    covariance : ndarray of shape (N, K, K)
        Logit covariances (only the diagonal is used).

    Returns
    -------
    ndarray of shape (N, K)
    """
    variance = np.einsum("nkk->nk", covariance)
    return softmax(mean / np.sqrt(1.0 + (math.pi / 8.0) * variance), axis=1)


def mc_softmax_samples(mean: np.ndarray, covariance: np.ndarray, normal_points: np.ndarray) -> np.ndarray:
    """``softmax(mu + L z)`` for every row and every point ``z``: ``(N, S, K)`` probabilities.

    ``L`` is the Cholesky factor of each row's logit covariance (a tiny jitter keeps it defined
    when the covariance is singular, as the softmax's over-parametrisation makes it).
    """
    n_classes = mean.shape[1]
    jitter = 1e-10 * np.maximum(np.einsum("nkk->n", covariance) / n_classes, 1e-12)
    factor = np.linalg.cholesky(covariance + jitter[:, None, None] * np.eye(n_classes))
    logits = mean[:, None, :] + np.einsum("nkl,sl->nsk", factor, normal_points)
    return softmax(logits, axis=2)


class LaplaceClassifierCore:
    """Multinomial logistic regression with a Laplace posterior over its weights, on feature arrays.

    Parameters
    ----------
    hessian_structure : {"auto", "full", "kron", "diag"}, default="auto"
        Structure of the posterior precision (see the module docstring).
    prior_precision : float or None, default=None
        Precision ``lambda`` of the isotropic Gaussian prior on the weights and biases (on
        standardised features); ``None`` chooses it by marginal likelihood.
    predictive : {"probit", "mc"}, default="probit"
        Approximation of the predictive class probabilities.
    standardize : {"layer", "column", "none"}, default="layer"
        Feature scaling, shared with the other heads.
    max_iterations : int, default=1000
        L-BFGS iterations of the first MAP fit (warm-started refits use the same cap).
    full_limit : int, default=2000
        Largest ``r * K`` for which ``"auto"`` uses the full posterior.
    num_prediction_samples : int, default=256
        Sobol samples of the ``"mc"`` predictive and of :meth:`predict_samples`.
    prediction_seed : int, default=0
        Scrambling seed of the Sobol samples (saved with the model).
    tol : float, default=1e-6
        Gradient tolerance of the MAP fit (on the mean loss per example).
    calibrate : bool, default=True
        Choose the covariance scale (and temperature) by cross-validation on the training rows;
        ``False`` keeps the plain Laplace posterior.
    calibrate_temperature : bool, default=True
        Also choose a temperature ``T >= 1`` dividing the logits.
    map_precision : float, default=1.0
        L2 penalty of the fitted weights (``1 / c`` of ``LrRepurposer``).
    calibration_rows : int, default=2000
        Up to this many rows the calibration refits the MAP per fold; above, it uses the
        approximate leave-one-out of the cavities on about this many rows (a stratified subsample).
    apply_l2_norm : bool, default=True
        Scale each layer's features to unit L2 norm per row before standardising: the angle
        between feature vectors, not their length, then decides what is close, which separates
        inputs from outside the task much better on pooled CNN features.
        Layers whose norm few columns carry (fewer than 10 effective columns,
        ``_linear.l2_layers``: e.g. unscaled tabular data, where one column in large units would
        be erased) are left unnormalised; ``l2_layers_`` records the choice.
    """

    def __init__(
        self,
        *,
        hessian_structure: str = "auto",
        prior_precision: float | None = None,
        predictive: str = "probit",
        standardize: str = "layer",
        max_iterations: int = 1000,
        full_limit: int = 2000,
        num_prediction_samples: int = 256,
        prediction_seed: int = 0,
        tol: float = 1e-6,
        calibrate: bool = True,
        map_precision: float = 1.0,
        calibration_rows: int = 2000,
        apply_l2_norm: bool = True,
        calibrate_temperature: bool = True,
    ) -> None:
        self.hessian_structure = hessian_structure
        self.prior_precision = prior_precision
        self.predictive = predictive
        self.standardize = standardize
        self.max_iterations = max_iterations
        self.full_limit = full_limit
        self.num_prediction_samples = num_prediction_samples
        self.prediction_seed = prediction_seed
        self.tol = tol
        self.calibrate = calibrate
        self.map_precision = map_precision
        self.calibration_rows = calibration_rows
        self.apply_l2_norm = apply_l2_norm
        self.calibrate_temperature = calibrate_temperature
        self._validate_options()
        self._reset_fitted()

    # ------------------------------------------------------------------ options
    def _validate_options(self) -> None:
        _check_choice("hessian_structure", self.hessian_structure, HESSIAN_STRUCTURES)
        _check_choice("predictive", self.predictive, PREDICTIVES)
        check_standardize_mode(self.standardize)
        if self.prior_precision is not None:
            check_positive_float("prior_precision", self.prior_precision)
        check_int("max_iterations", self.max_iterations, 1)
        check_int("full_limit", self.full_limit, 1)
        check_int("num_prediction_samples", self.num_prediction_samples, 1)
        check_int("prediction_seed", self.prediction_seed, 0)
        check_positive_float("tol", self.tol)
        check_positive_float("map_precision", self.map_precision)
        check_int("calibration_rows", self.calibration_rows, 0)

    def _option_dict(self) -> dict[str, Any]:
        return {
            "hessian_structure": str(self.hessian_structure),
            "prior_precision": None if self.prior_precision is None else float(self.prior_precision),
            "predictive": str(self.predictive),
            "standardize": str(self.standardize),
            "max_iterations": int(self.max_iterations),
            "full_limit": int(self.full_limit),
            "num_prediction_samples": int(self.num_prediction_samples),
            "prediction_seed": int(self.prediction_seed),
            "tol": float(self.tol),
            "calibrate": bool(self.calibrate),
            "map_precision": float(self.map_precision),
            "calibration_rows": int(self.calibration_rows),
            "apply_l2_norm": bool(self.apply_l2_norm),
            "calibrate_temperature": bool(self.calibrate_temperature),
        }

    def _reset_fitted(self) -> None:
        self.n_classes_: int | None = None
        self.n_features_: int | None = None
        self.layer_indices_: list[np.ndarray] | None = None
        self.l2_layers_: np.ndarray | None = None  # per layer: L2-normalised (``apply_l2_norm``)
        self.feature_mean_: np.ndarray | None = None
        self.feature_scale_: np.ndarray | None = None
        self.basis_: np.ndarray | None = None  # (D + 1, r) orthonormal columns
        self.weights_: np.ndarray | None = None  # (r, K) MAP weights in the basis
        self.prior_precision_: float | None = None
        self.structure_: str | None = None
        # Posterior factors: full -> "root" (rK, rK) with covariance root @ root.T;
        # kron -> "data_eigenvalues" (r,), "class_eigenvalues" (K,), "class_eigenvectors" (K, K);
        # diag -> "curvature" (r, K).
        self.posterior_: dict[str, np.ndarray] = {}
        self.log_evidence_: float | None = None
        self.n_iter_: int = 0
        self.covariance_scale_: float = 1.0
        self.temperature_: float = 1.0
        self.calibration_nll_: float | None = None
        self._normal_points: np.ndarray | None = None

    # --------------------------------------------------------------------- fit
    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        feature_indices_per_layer: list[np.ndarray] | None = None,
    ) -> LaplaceClassifierCore:
        """MAP weights, prior precision and posterior.

        Parameters
        ----------
        features : numpy.ndarray
            Shape ``(N, D)``.
        labels : numpy.ndarray
            Integer class indices in ``0..n_classes-1``, shape ``(N,)``.
        n_classes : int
            ``K >= 2`` (classes absent from ``labels`` are allowed).
        feature_indices_per_layer : list of numpy.ndarray, optional
            Columns of each source layer (for ``standardize="layer"``).

        Returns
        -------
        LaplaceClassifierCore
            ``self``.
        """
        self._validate_options()
        features = check_features(features)
        check_int("n_classes", n_classes, 2)
        if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
            raise InvalidTypeError("labels must be an integer numpy array of class indices 0..n_classes-1.")
        if labels.shape != (features.shape[0],):
            raise InvalidArgumentError(f"labels must have shape ({features.shape[0]},), got {labels.shape}.")
        if labels.min() < 0 or labels.max() >= n_classes:
            raise InvalidArgumentError(
                f"labels must lie in 0..{n_classes - 1} (n_classes={n_classes}); got values from "
                f"{labels.min()} to {labels.max()}."
            )
        self._reset_fitted()
        self.n_classes_ = int(n_classes)
        self.n_features_ = int(features.shape[1])
        self.layer_indices_ = [np.arange(self.n_features_)] if feature_indices_per_layer is None else [
            np.asarray(columns, dtype=np.int64) for columns in feature_indices_per_layer
        ]
        self.l2_layers_ = (
            l2_layers(features, self.layer_indices_) if self.apply_l2_norm else np.zeros(len(self.layer_indices_), bool)
        )
        normalised = self._l2(features)
        # Centred whatever ``standardize`` says: the bias then is orthogonal to the feature columns
        # (see ``_fit_basis``), and with a nearly flat prior on it centring does not change the model.
        self.feature_mean_ = normalised.mean(axis=0, dtype=np.float64)
        n_rows, n_columns = features.shape
        targets = np.zeros((len(labels), self.n_classes_))
        targets[np.arange(len(labels)), labels] = 1.0
        if n_rows > n_columns:
            # Many rows: the design is held in float32 (the features' own precision), which halves
            # the time of the Gram matrix and of the MAP's products with the design.
            single = n_rows * (n_columns + 1) > _SINGLE_PRECISION_SIZE
            self.feature_scale_ = np.ones(n_columns)
            design = self._design(normalised, normalised=True, dtype=np.float32 if single else np.float64)
            with np.errstate(over="ignore", invalid="ignore"):  # checked below
                gram = (design[:, :-1].T @ design[:, :-1]).astype(np.float64)  # the caller's BLAS threads
            if np.isfinite(np.diag(gram)).all():
                # The columns' standard deviations are the centred Gram matrix's diagonal: no other pass.
                std = np.sqrt(np.clip(np.diag(gram), 0.0, None) / n_rows)
                _, self.feature_scale_ = standardizer_from_moments(
                    self.feature_mean_, std, self.layer_indices_, self.standardize
                )
                design[:, :-1] /= self.feature_scale_.astype(design.dtype)
                gram /= np.outer(self.feature_scale_, self.feature_scale_)
            else:  # columns in units too large to square (float32: beyond ~1e19): scale them first
                _, self.feature_scale_ = fit_standardizer(normalised, self.layer_indices_, self.standardize)
                design = self._design(normalised, normalised=True, dtype=design.dtype)
                gram = (design[:, :-1].T @ design[:, :-1]).astype(np.float64)
            # The MAP runs in the feature coordinates while the Gram matrix is decomposed.
            data_eigenvalues, map_weights, map_logits = self._fit_basis_and_map(design, gram, targets)
            self.weights_ = self.basis_.T @ map_weights
        else:
            _, self.feature_scale_ = fit_standardizer(normalised, self.layer_indices_, self.standardize)
            design = self._design(normalised, normalised=True)
            data_eigenvalues = self._fit_basis(design)
        rank, n_classes = self.basis_.shape[1], self.n_classes_
        structure = self.hessian_structure
        if structure == "auto":
            structure = "full" if rank * n_classes <= self.full_limit else "kron"
        self.structure_ = structure
        # Many rows and the Kronecker posterior: nothing needs every row in the basis (the
        # calibration rotates its subsample), which saves an N x D x r product as large as the Gram
        # matrix itself.
        lazy = structure == "kron" and n_rows > max(n_columns + 1, int(self.calibration_rows))
        rotated = None if lazy else (design @ self.basis_.astype(design.dtype)).astype(np.float64)
        if n_rows <= n_columns:
            precision = self._map_precisions(rank)
            lift = 1.0 / np.sqrt(data_eigenvalues[:, None] / n_classes + precision)
            self.weights_, _ = self._fit_map(rotated, targets, precision, lift)
        logits = map_logits if lazy else rotated @ self.weights_
        probabilities = softmax(logits, axis=1)
        # The evidence is over the feature weights: the bias (last direction) has its own nearly
        # flat prior in the MAP, and its size (log class frequencies; very negative for a class
        # absent from the labels) says nothing about the weights' prior precision.
        eigenvalues = self._curvature_eigenvalues(rotated, data_eigenvalues, probabilities)
        if self.prior_precision is None:
            self.prior_precision_ = self._evidence_precision(self.weights_[:-1], eigenvalues)
        else:
            self.prior_precision_ = float(self.prior_precision)
        self.log_evidence_ = self._log_evidence(
            logits, targets, self.weights_[:-1], self.prior_precision_, eigenvalues
        )
        self._fit_posterior(rotated, data_eigenvalues, probabilities)
        self._fit_covariance_scale(rotated, data_eigenvalues, probabilities, targets, design)
        _LOGGER.info(
            "Laplace head: %d rows, rank %d, %d classes, %s posterior, prior precision %.4g "
            "(log evidence %.4g), covariance scale %.3g.", len(labels), rank, n_classes, structure,
            self.prior_precision_, self.log_evidence_, self.covariance_scale_,
        )
        return self

    @staticmethod
    def _evidence_precision(weights: np.ndarray, eigenvalues: np.ndarray) -> float:
        """The prior precision maximising the Laplace evidence at the fitted weights.

        With the weights and the curvature ``eta`` held at the fit (post hoc, as in Laplace Redux),
        ``d log Z / d lambda = 0`` is MacKay's condition ``lambda |w|^2 = gamma(lambda)`` with
        ``gamma = sum eta / (eta + lambda)``. The left side increases and ``gamma`` decreases in
        ``lambda``, so the root is unique; it is found by Brent's method on ``log lambda``.
        """
        from scipy.optimize import brentq

        norm = max(float(np.sum(weights**2)), 1e-300)

        def condition(log_precision: float) -> float:
            precision = math.exp(log_precision)
            return precision * norm - float(np.sum(eigenvalues / (eigenvalues + precision)))

        low, high = (math.log(bound) for bound in _PRIOR_BOUNDS)
        if condition(low) >= 0:
            return _PRIOR_BOUNDS[0]
        if condition(high) <= 0:
            return _PRIOR_BOUNDS[1]
        return math.exp(brentq(condition, low, high, xtol=1e-8))

    def _l2(self, features: np.ndarray) -> np.ndarray:
        if not self.l2_layers_.any():
            return features
        return l2_normalize_layers(features, self.layer_indices_, self.l2_layers_)

    def _design(self, features: np.ndarray, normalised: bool = False, dtype: Any = np.float64) -> np.ndarray:
        """Standardised features with a column of ones (``normalised``: ``_l2`` already applied)."""
        features = np.asarray(features if normalised else self._l2(features))
        design = np.empty((features.shape[0], features.shape[1] + 1), dtype=dtype)
        np.subtract(features, self.feature_mean_, out=design[:, :-1], casting="unsafe")
        design[:, :-1] /= self.feature_scale_.astype(dtype)
        design[:, -1] = 1.0
        return design

    def _fit_basis(self, design: np.ndarray) -> np.ndarray:
        """Orthonormal basis of the design's row space (``basis_``) when ``N <= D``; returns its
        eigenvalues (the squared singular values of the feature columns, then ``N``).

        The feature columns of the design are centred, so the bias column is orthogonal to them:
        the basis is that of the feature columns plus the bias direction (eigenvalue ``N``), last.
        """
        with one_blas_thread():
            _, singular, vt = np.linalg.svd(design[:, :-1], full_matrices=False)
        return self._set_basis(singular**2, vt.T, 1e-10, len(design))

    def _set_basis(self, eigenvalues: np.ndarray, vectors: np.ndarray, cut: float, n_rows: int) -> np.ndarray:
        """``basis_`` from the feature columns' eigenpairs (decreasing), directions under ``cut`` of
        the largest eigenvalue left to the prior, plus the bias direction; returns the eigenvalues."""
        keep = eigenvalues > cut * max(float(eigenvalues.max(initial=0.0)), 1e-300)
        rank = int(np.count_nonzero(keep))
        self.basis_ = np.zeros((vectors.shape[0] + 1, rank + 1))
        self.basis_[:-1, :rank] = vectors[:, keep]
        self.basis_[-1, rank] = 1.0
        return np.append(eigenvalues[keep], float(n_rows))

    def _fit_basis_and_map(
        self, design: np.ndarray, gram: np.ndarray, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``basis_`` and the MAP when ``N > D``: the eigendecomposition of the feature Gram matrix
        runs on a second thread while the MAP is fitted in the feature coordinates.

        The MAP is preconditioned by the Cholesky factor ``L`` of ``G / K + m I`` (``gram``, ``G``:
        the Gram matrix of the design's feature columns; ``m`` the penalty): ``W = L^-T V``. That is the eigenbasis
        preconditioner ``U diag(s / K + m)^-1/2`` up to an orthogonal factor, and L-BFGS is
        invariant under orthogonal changes of variables, so it takes the same steps as in the
        eigenbasis without waiting for it. Both threads run BLAS on one thread each. A float32
        design (:data:`_SINGLE_PRECISION_SIZE`) gives a float32 Gram matrix; its rounding, about
        1e-7 of the largest eigenvalue, is far below any prior precision, and directions under
        :data:`_SINGLE_PRECISION_RANK` of the largest eigenvalue are then left to the prior.

        Returns
        -------
        data_eigenvalues : numpy.ndarray
            Eigenvalues of the kept directions, then ``N`` (the bias direction).
        weights : numpy.ndarray of shape (D + 1, K)
            MAP weights in the feature coordinates (bias last).
        logits : numpy.ndarray of shape (N, K)
            The design's logits under ``weights``.
        """
        from concurrent.futures import ThreadPoolExecutor

        from scipy.linalg import cho_factor
        from scipy.linalg.lapack import dtrtri

        n_rows, n_classes = targets.shape
        precision = self._map_precisions(design.shape[1])
        shifted = gram / n_classes
        shifted[np.diag_indices_from(shifted)] += precision[:-1, 0]
        with one_blas_thread(), ThreadPoolExecutor(max_workers=1) as pool:
            decomposition = pool.submit(np.linalg.eigh, gram)
            factor, _ = cho_factor(shifted, lower=True, check_finite=False)
            inverse, info = dtrtri(factor, lower=1)
            if info != 0:  # not reachable for a positive definite matrix; kept explicit
                raise InvalidArgumentError("The MAP's preconditioner is singular: the features hold NaN or inf?")
            lift = np.ones((len(precision), 1))
            lift[-1] = 1.0 / math.sqrt(n_rows / n_classes + float(precision[-1, 0]))
            triangular = np.asfortranarray(np.tril(inverse).T)
            weights, logits = self._fit_map(design, targets, precision, lift, triangular=triangular)
            eigenvalues, vectors = decomposition.result()
        cut = _SINGLE_PRECISION_RANK if design.dtype == np.float32 else 1e-10
        return self._set_basis(eigenvalues[::-1], vectors[:, ::-1], cut, n_rows), weights, logits

    def _map_precisions(self, size: int) -> np.ndarray:
        """L2 penalty of the MAP's weights, shape ``(size, 1)`` (feature directions, bias last).

        ``map_precision`` on the feature directions, doubled for two classes (the softmax's two
        weight vectors then put on their difference the penalty of ``LrRepurposer``'s single binary
        vector), and :data:`_BIAS_PRECISION` on the bias (last), which ``LrRepurposer`` (like
        scikit-learn) leaves unpenalised: on few examples a penalised bias pulls the class
        frequencies towards uniform and costs NLL. The penalty is isotropic on the features, so it
        is the same in the feature coordinates and in any orthonormal basis of them.
        """
        precisions = np.full((size, 1), float(self.map_precision))
        if self.n_classes_ == 2:
            precisions *= 2.0
        precisions[-1] = _BIAS_PRECISION
        return precisions

    def _fit_map(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        precision: np.ndarray,
        lift: np.ndarray,
        start: np.ndarray | None = None,
        triangular: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """MAP weights ``W`` (``(r, K)``) of ``sum_n CE(y_n, softmax(W^T x_n)) + 1/2 sum precision W^2``.

        L-BFGS runs on ``V`` with ``W = lift * V`` (``lift`` of shape ``(r, 1)``: a diagonal
        preconditioner), and with ``triangular`` (upper, ``(r - 1, r - 1)``) ``W[:-1] =
        triangular @ V[:-1]`` instead (the bias, last, keeps its diagonal factor; ``start`` must
        then be None: zeros).
        Products with a float32 ``inputs`` run in float32 (the features' own precision); the loss
        and the gradient are summed in float64. Returns the weights and their logits.
        """
        from scipy.linalg.blas import dtrmm

        n_rows, n_classes = targets.shape
        dtype = inputs.dtype
        last: dict[str, np.ndarray] = {}

        def weights_of(variables: np.ndarray) -> np.ndarray:
            weights = lift * variables
            if triangular is not None:
                weights[:-1] = dtrmm(1.0, triangular, variables[:-1], lower=0)
            return weights

        def loss_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
            weights = weights_of(flat.reshape(-1, n_classes))
            logits = (inputs @ weights.astype(dtype, copy=False)).astype(np.float64, copy=False)
            log_p = log_softmax(logits, axis=1)
            loss = -np.sum(targets * log_p) + 0.5 * np.sum(precision * weights**2)
            residuals = (np.exp(log_p) - targets).astype(dtype, copy=False)
            grad = (inputs.T @ residuals).astype(np.float64, copy=False) + precision * weights
            if triangular is not None:
                grad[:-1] = dtrmm(1.0, triangular, grad[:-1], lower=0, trans_a=1)
            grad = lift * grad
            last["flat"], last["logits"] = flat, logits
            return loss / n_rows, grad.ravel() / n_rows

        initial = np.zeros((lift.shape[0], n_classes)) if start is None else start / lift
        solution, iterations = lbfgs(loss_and_grad, initial.ravel(), int(self.max_iterations), float(self.tol))
        self.n_iter_ += iterations
        if not np.array_equal(last["flat"], solution):  # the last evaluation is the solution's
            loss_and_grad(solution)
        return weights_of(solution.reshape(-1, n_classes)), last["logits"]

    @staticmethod
    def _class_curvature(probabilities: np.ndarray) -> np.ndarray:
        """``mean_n (diag(p_n) - p_n p_n^T)``, the class factor of the Kronecker curvature."""
        n_rows = probabilities.shape[0]
        return (np.diag(probabilities.sum(axis=0)) - probabilities.T @ probabilities) / n_rows

    def _full_curvature(self, rotated: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """The exact ``rK x rK`` Hessian of the data term, index ``(i, k) -> i * K + k``."""
        rank, n_classes = rotated.shape[1], probabilities.shape[1]
        diagonal = np.einsum("ni,nk,nj->ikj", rotated, probabilities, rotated)  # (r, K, r)
        hessian = np.zeros((rank, n_classes, rank, n_classes))
        hessian[:, np.arange(n_classes), :, np.arange(n_classes)] = diagonal.transpose(1, 0, 2)
        weighted = (rotated[:, :, None] * probabilities[:, None, :]).reshape(len(rotated), -1)
        return hessian.reshape(rank * n_classes, -1) - weighted.T @ weighted

    def _curvature_eigenvalues(
        self, rotated: np.ndarray, data_eigenvalues: np.ndarray, probabilities: np.ndarray
    ) -> np.ndarray:
        """Eigenvalues of the data term's curvature over the feature weights (the bias direction,
        last, left out; for ``"full"``: of the Hessian's weight block, the bias held at its MAP)."""
        n_classes = probabilities.shape[1]
        if self.structure_ == "full":
            weight_block = (rotated.shape[1] - 1) * n_classes
            hessian = self._full_curvature(rotated, probabilities)[:weight_block, :weight_block]
            return np.clip(np.linalg.eigvalsh(hessian), 0.0, None)
        if self.structure_ == "kron":
            class_eigenvalues = np.clip(np.linalg.eigvalsh(self._class_curvature(probabilities)), 0.0, None)
            return np.outer(data_eigenvalues[:-1], class_eigenvalues).ravel()
        return np.einsum("ni,nk->ik", rotated[:, :-1] ** 2, probabilities * (1.0 - probabilities)).ravel()

    @staticmethod
    def _log_evidence(
        logits: np.ndarray, targets: np.ndarray, weights: np.ndarray, precision: float, eigenvalues: np.ndarray
    ) -> float:
        """Laplace approximation of ``log p(labels | lambda)`` (up to a constant), from the MAP's logits."""
        log_likelihood = float(np.sum(targets * log_softmax(logits, axis=1)))
        n_parameters = eigenvalues.size
        return (
            log_likelihood
            - 0.5 * precision * float(np.sum(weights**2))
            + 0.5 * n_parameters * math.log(precision)
            - 0.5 * float(np.sum(np.log(eigenvalues + precision)))
        )

    def _fit_posterior(self, rotated: np.ndarray, data_eigenvalues: np.ndarray, probabilities: np.ndarray) -> None:
        precision = self.prior_precision_
        if self.structure_ == "full":
            eigenvalues, eigenvectors = np.linalg.eigh(self._full_curvature(rotated, probabilities))
            root = eigenvectors / np.sqrt(np.clip(eigenvalues, 0.0, None) + precision)
            self.posterior_ = {"root": root}
        elif self.structure_ == "kron":
            class_eigenvalues, class_eigenvectors = np.linalg.eigh(self._class_curvature(probabilities))
            self.posterior_ = {
                "data_eigenvalues": data_eigenvalues,
                "class_eigenvalues": np.clip(class_eigenvalues, 0.0, None),
                "class_eigenvectors": class_eigenvectors,
            }
        else:
            curvature = np.einsum("ni,nk->ik", rotated**2, probabilities * (1.0 - probabilities))
            self.posterior_ = {"curvature": curvature}

    # ----------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        if self.weights_ is None:
            raise NotFittedError("This LaplaceClassifierCore is not fitted yet: call fit first.")

    def latent_moments(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(N, K)`` and covariance ``(N, K, K)`` of the logits under the posterior.

        The covariance includes the calibration scale ``covariance_scale_``.
        """
        mean, covariance = self._posterior_moments(features)
        return mean, (self.covariance_scale_ / self.temperature_**2) * covariance

    def _posterior_moments(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tempered logit means and the posterior's logit covariance before any scaling."""
        self._check_fitted()
        features = check_features(features, self.n_features_)
        design = self._design(features)
        rotated = design @ self.basis_
        # Directions outside the basis keep the prior: variance |z_perp|^2 / lambda on every class.
        outside = np.clip(np.sum(design**2, axis=1) - np.sum(rotated**2, axis=1), 0.0, None)
        return rotated @ self.weights_ / self.temperature_, self._logit_covariance(rotated, outside)

    def _logit_covariance(self, rotated: np.ndarray, outside: np.ndarray) -> np.ndarray:
        """Posterior covariance of the logits of rows given in the basis (before calibration)."""
        precision = self.prior_precision_
        n_classes = self.n_classes_
        covariance = (outside / precision)[:, None, None] * np.eye(n_classes)
        if self.structure_ == "full":
            root = self.posterior_["root"].reshape(rotated.shape[1], -1)
            jacobian_root = (rotated @ root).reshape(len(rotated), n_classes, -1)
            covariance = covariance + jacobian_root @ jacobian_root.transpose(0, 2, 1)
        elif self.structure_ == "kron":
            data = self.posterior_["data_eigenvalues"]
            values = self.posterior_["class_eigenvalues"]
            vectors = self.posterior_["class_eigenvectors"]
            spread = (rotated**2) @ (1.0 / (np.outer(data, values) + precision))  # (N, K)
            covariance = covariance + np.einsum("kj,nj,lj->nkl", vectors, spread, vectors, optimize=True)
        else:
            variance = (rotated**2) @ (1.0 / (self.posterior_["curvature"] + precision))
            covariance = covariance + variance[:, :, None] * np.eye(n_classes)
        return covariance

    def _leave_one_out(
        self, rotated: np.ndarray, probabilities: np.ndarray, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate leave-one-out logit moments of the training rows (cavity of each site).

        Removing row ``n``'s quadratic likelihood term from the Gaussian posterior of its logits
        ``N(mu_n, S_n)`` leaves ``S_-n = (S_n^-1 - Lambda_n)^-1`` and
        ``mu_-n = mu_n - S_-n (y_n - p_n)`` (exact for the full structure up to the Newton step of
        the MAP; an approximation for the others). The cavity's precision is floored at the
        prior's, ``lambda / |z_n|^2``.
        """
        covariance = self._logit_covariance(rotated, np.zeros(len(rotated)))
        curvature = probabilities[:, :, None] * np.eye(probabilities.shape[1]) - (
            probabilities[:, :, None] * probabilities[:, None, :]
        )
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        eigenvalues = np.clip(eigenvalues, 1e-12 * eigenvalues.max(axis=1, keepdims=True), None)
        precision = (eigenvectors / eigenvalues[:, None, :]) @ eigenvectors.transpose(0, 2, 1) - curvature
        values, vectors = np.linalg.eigh(precision)
        # Removing a row cannot leave its logits wider than the prior does (covariance
        # |z|^2 / lambda): the floor keeps rows the approximation gets wrong (high leverage, a
        # structured curvature) from producing unbounded cavities and logits.
        floor = self.prior_precision_ / np.maximum(np.sum(rotated**2, axis=1), 1e-300)
        values = np.clip(values, floor[:, None], None)
        cavity = (vectors / values[:, None, :]) @ vectors.transpose(0, 2, 1)
        mean = rotated @ self.weights_ - np.einsum("nkl,nl->nk", cavity, targets - probabilities)
        return mean, cavity

    def _fit_covariance_scale(
        self,
        rotated: np.ndarray | None,
        data_eigenvalues: np.ndarray,
        probabilities: np.ndarray,
        targets: np.ndarray,
        design: np.ndarray,
    ) -> None:
        """Covariance scale and temperature minimising the cross-validated NLL of the training rows.

        Out-of-fold logits: for up to ``calibration_rows`` rows, means of the MAP refitted without
        the row's fold (``min(10, N)`` stratified folds, warm-started) and the cavity covariance of
        the row (:meth:`_leave_one_out`); above that, both from the cavity (approximate
        leave-one-out, accurate when no single row moves the fit), on every ``ceil(N /
        calibration_rows)``-th row of each class (two scalars are chosen: a few thousand rows fix
        them as well as all rows would, at a fraction of the cost). The scale ``tau`` is searched on a
        log grid from 1e-4 to 10, plus 0 (the plain MAP probabilities); the temperature ``T``
        (logits divided by it) from 1 to 4 (``calibrate_temperature``).

        The best pair replaces the plain MAP (``tau = 0, T = 1``) only when its mean gain in
        held-out NLL exceeds the standard error of the per-row gains (the one-standard-error
        rule): on a few rows the minimum of 294 noisy estimates otherwise strays from the MAP's
        probabilities, logistic regression's, on noise (docs/benchmarks.md, calibration: without
        the rule the head lost NLL and ECE to LR on faces, wine and 20 Newsgroups at 3 labels per
        class; with it, of 18 tasks it lost clearly only on the 20 Newsgroups pair).
        """
        self.covariance_scale_ = 1.0
        self.temperature_ = 1.0
        if not self.calibrate:
            return
        labels = targets.argmax(axis=1)
        n_rows = len(labels)
        refit = n_rows <= int(self.calibration_rows)
        if not refit:  # two scalars to choose: a stratified subsample of calibration_rows rows
            rows = np.sort(np.concatenate([
                members[:: max(1, math.ceil(len(labels) / max(int(self.calibration_rows), 1)))]
                for members in (np.flatnonzero(labels == k) for k in range(targets.shape[1]))
            ]))  # fmt: skip
            if rotated is None:  # many rows (the lazy path): rotate the subsample, in float32 as the MAP
                rotated = (design[rows].astype(np.float32) @ self.basis_.astype(np.float32)).astype(np.float64)
            else:
                rotated = rotated[rows]
            probabilities, targets, labels, n_rows = probabilities[rows], targets[rows], labels[rows], len(rows)
        loo_mean, cavity = self._leave_one_out(rotated, probabilities, targets)
        if refit:
            n_folds = min(10, n_rows)
            folds = stratified_folds(labels, targets.shape[1], n_folds)
            for fold in range(n_folds):
                held = folds == fold
                if not held.any() or held.all():
                    continue
                kept_eigenvalues = np.sum(rotated[~held] ** 2, axis=0)
                precision = self._map_precisions(len(kept_eigenvalues))
                lift = 1.0 / np.sqrt(kept_eigenvalues[:, None] / targets.shape[1] + precision)
                weights, _ = self._fit_map(rotated[~held], targets[~held], precision, lift, self.weights_)
                loo_mean[held] = rotated[held] @ weights

        variance = np.einsum("nkk->nk", cavity)
        # Flatten only: on a few separable examples every out-of-fold prediction is right, so the
        # cross-validated NLL always asks for sharper logits, which the test errors then punish.
        temperatures = _TEMPERATURES if self.calibrate_temperature else np.ones(1)
        scales = _SCALES
        def cv_nll(temperature: float) -> np.ndarray:  # (S, N): every scale at one temperature
            return probit_row_nll(loo_mean, variance, labels, temperature, scales)

        if n_rows * targets.shape[1] >= _THREADED_GRID_SIZE:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=2) as pool:
                row_losses = np.array(list(pool.map(cv_nll, temperatures)))  # (T, S, N)
        else:
            row_losses = np.array([cv_nll(t) for t in temperatures])
        losses = row_losses.mean(axis=2)
        # One-standard-error rule: leave the plain MAP (temperature 1, scale 0: the first
        # candidate, logistic regression's probabilities) only for a candidate whose gain in
        # cross-validated NLL exceeds the standard error of the per-row differences.
        best_t, best_scale = np.unravel_index(one_standard_error_choice(row_losses), losses.shape)
        self.calibration_nll_ = float(losses[best_t, best_scale])
        self.temperature_ = float(temperatures[best_t])
        self.covariance_scale_ = float(scales[best_scale])
        held_out = probit_softmax(loo_mean / self.temperature_, (self.covariance_scale_ / self.temperature_**2) * cavity)
        if is_degenerate(held_out, labels):
            warn_degenerate(
                _LOGGER, "LaplaceClassifierCore",
                f"its cross-validated predictions of the {n_rows} training rows are no better than the "
                f"class frequencies (NLL {self.calibration_nll_:.3f})",
                "The features may not separate these classes: try other feature layers or more labels.",
            )  # fmt: skip

    def _points(self) -> np.ndarray:
        if self._normal_points is None:
            self._normal_points = sobol_normal_points(
                int(self.num_prediction_samples), int(self.n_classes_), int(self.prediction_seed)
            )
        return self._normal_points

    def predict_samples(self, features: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities of posterior samples of the logits, ``(N, S, K)`` (deterministic)."""
        out = []
        for start in range(0, len(features), batch_size):
            mean, covariance = self.latent_moments(features[start : start + batch_size])
            out.append(mc_softmax_samples(mean, covariance, self._points()))
        return np.concatenate(out)

    def predict_proba(self, features: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Predictive class probabilities ``(N, K)`` (``predictive`` approximation)."""
        self._check_fitted()
        out = []
        for start in range(0, len(features), batch_size):
            chunk = features[start : start + batch_size]
            if self.predictive == "mc":
                out.append(self.predict_samples(chunk, batch_size).mean(axis=1))
            else:
                out.append(probit_softmax(*self.latent_moments(chunk)))
        probabilities = np.concatenate(out)
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def predict_uncertainty(self, features: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_proba` and the part of each row's entropy due to the unknown weights.

        The part is read from the Laplace posterior itself, with its covariance scaled by
        ``max(covariance_scale_, 1)`` (at least the plain posterior, whose prior precision the
        evidence chose) and the logits divided by ``temperature_``: over that posterior's Sobol
        samples ``p_s`` of the class probabilities, the mutual information
        ``I = H(E[p_s]) - E[H(p_s)]`` is the share ``I / H(E[p_s])`` of its predictive entropy
        due to the weights, and the epistemic part is that share of the entropy of
        :meth:`predict_proba`'s probabilities, ``H(p) * I / H(E[p_s])`` (so it lies between 0 and
        ``H(p)``). With ``covariance_scale_ >= 1`` and the ``"mc"`` predictive, ``p = E[p_s]`` and
        it is the mutual information of the predictive's own samples.

        Why the floor: the calibration may shrink the scale, down to 0 when the fitted weights'
        probabilities predict held-out training rows best. The probabilities keep that calibration,
        but a scale of 0 would make every row's epistemic part 0, although the posterior is wide
        exactly where the training rows say little, e.g. on inputs from outside the task
        (``python -m benchmarks.run --only ood``, the epistemic table).

        Returns
        -------
        probabilities : numpy.ndarray of shape (N, K)
        epistemic : numpy.ndarray of shape (N,)
        """
        from xfer.repurposers._uncertainty import entropy, mutual_information

        self._check_fitted()
        scale = float(self.covariance_scale_)
        out, shares = [], []
        for start in range(0, len(features), batch_size):
            # One pass over the rows for both covariances: the calibrated one (the probabilities,
            # as predict_proba) and the one at scale max(covariance_scale_, 1) (the share).
            mean, covariance = self._posterior_moments(features[start : start + batch_size])
            calibrated = (scale / self.temperature_**2) * covariance
            wide = calibrated if scale >= 1.0 else (1.0 / self.temperature_**2) * covariance
            if self.predictive == "mc":
                samples = mc_softmax_samples(mean, calibrated, self._points())
                out.append(samples.mean(axis=1))
                if wide is not calibrated:
                    samples = mc_softmax_samples(mean, wide, self._points())
            else:
                out.append(probit_softmax(mean, calibrated))
                samples = mc_softmax_samples(mean, wide, self._points())
            total = entropy(samples.mean(axis=1))
            share = np.divide(mutual_information(samples), total, out=np.zeros_like(total), where=total > 0)
            shares.append(np.clip(share, 0.0, 1.0))
        probabilities = np.concatenate(out)
        probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
        return probabilities, entropy(probabilities) * np.concatenate(shares)

    # ------------------------------------------------------------------- state
    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The fitted model as a strict-JSON config and plain float arrays (no training data)."""
        self._check_fitted()
        arrays = {
            "feature_mean": self.feature_mean_,
            "feature_scale": self.feature_scale_,
            "basis": self.basis_,
            "weights": self.weights_,
            "layer_sizes": np.asarray([len(c) for c in self.layer_indices_]),
            "layer_columns": np.concatenate(self.layer_indices_),
            "l2_layers": self.l2_layers_,
        }
        arrays.update({f"posterior.{k}": v for k, v in self.posterior_.items()})
        config = {
            "format_version": STATE_FORMAT_VERSION,
            "class": "LaplaceClassifierCore",
            "options": self._option_dict(),
            "n_classes": int(self.n_classes_),
            "n_features": int(self.n_features_),
            "structure": self.structure_,
            "prior_precision": float(self.prior_precision_),
            "covariance_scale": float(self.covariance_scale_),
            "temperature": float(self.temperature_),
            "log_evidence": float(self.log_evidence_) if math.isfinite(self.log_evidence_) else None,
        }
        return config, {
            k: np.asarray(v, dtype=np.int64 if k.startswith(("layer_", "l2_")) else np.float64) for k, v in arrays.items()
        }

    @classmethod
    def from_state(cls, config: dict, arrays: dict[str, np.ndarray]) -> LaplaceClassifierCore:
        """Rebuild a fitted core from :meth:`get_state`'s output.

        Raises
        ------
        SerializationError
            A config or arrays that do not describe a fitted Laplace classifier.
        """
        try:
            core = core_from_state(cls, config, "Laplace", STATE_FORMAT_VERSION)
            core.structure_ = _check_choice("structure", config["structure"], HESSIAN_STRUCTURES[1:])
            core.prior_precision_ = float(config["prior_precision"])
            core.covariance_scale_ = float(config["covariance_scale"])
            core.temperature_ = float(config["temperature"])
            core.log_evidence_ = config.get("log_evidence")
            d, k = core.n_features_, core.n_classes_
            core.feature_mean_ = np.asarray(arrays["feature_mean"], dtype=np.float64)
            core.feature_scale_ = np.asarray(arrays["feature_scale"], dtype=np.float64)
            core.basis_ = np.asarray(arrays["basis"], dtype=np.float64)
            core.weights_ = np.asarray(arrays["weights"], dtype=np.float64)
            sizes = np.asarray(arrays["layer_sizes"], dtype=np.int64)
            columns = np.asarray(arrays["layer_columns"], dtype=np.int64)
            if sizes.ndim != 1 or columns.shape != (int(sizes.sum()),) or columns.min() < 0 or columns.max() >= d:
                raise SerializationError("Laplace state layer_sizes/layer_columns do not match n_features.")
            core.layer_indices_ = list(np.split(columns, np.cumsum(sizes)[:-1]))
            if "l2_layers" in arrays:
                core.l2_layers_ = l2_layers_from_state(arrays["l2_layers"], len(sizes), "Laplace")
            elif int(config["format_version"]) < 2:  # every layer was normalised with apply_l2_norm
                core.l2_layers_ = np.full(len(sizes), bool(core.apply_l2_norm))
            else:
                raise SerializationError("Laplace state lacks the array 'l2_layers'.")
            rank = core.basis_.shape[1] if core.basis_.ndim == 2 else -1
            expected = {
                "feature_mean": (d,), "feature_scale": (d,), "basis": (d + 1, rank), "weights": (rank, k),
            }  # fmt: skip
            if core.structure_ == "full":
                expected["posterior.root"] = (rank * k, rank * k)
            elif core.structure_ == "kron":
                expected.update({
                    "posterior.data_eigenvalues": (rank,), "posterior.class_eigenvalues": (k,),
                    "posterior.class_eigenvectors": (k, k),
                })  # fmt: skip
            else:
                expected["posterior.curvature"] = (rank, k)
            for name, shape in expected.items():
                value = np.asarray(arrays[name])
                if value.shape != shape or not np.issubdtype(value.dtype, np.floating):
                    raise SerializationError(
                        f"Laplace state array {name!r} has shape {value.shape} and dtype {value.dtype}, "
                        f"expected {shape} floats."
                    )
            unexpected = set(arrays) - set(expected) - {"layer_sizes", "layer_columns", "l2_layers"}
            if unexpected:
                raise SerializationError(f"Unexpected Laplace state arrays: {sorted(unexpected)}.")
            core.posterior_ = {
                name[len("posterior.") :]: np.asarray(arrays[name], dtype=np.float64)
                for name in expected
                if name.startswith("posterior.")
            }
        except SerializationError:
            raise
        except (KeyError, ValueError, TypeError, InvalidArgumentError) as error:
            raise SerializationError(f"Corrupt or incompatible Laplace state: {error!r}") from error
        return core


__all__ = ["LaplaceClassifierCore", "mc_softmax_samples", "probit_softmax", "sobol_normal_points"]
