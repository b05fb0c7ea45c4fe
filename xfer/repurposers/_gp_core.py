"""Numerical core of the Gaussian-process classification head (used by ``GpRepurposer``).

:class:`GpClassifierCore` works on plain feature arrays: it knows nothing about label values, source
models or files. It trains **all classes together** in one batched GPyTorch model:

* **Exact path** (``N <= exact_threshold``, default 2000): Dirichlet-based GP classification
  (Milios et al., 2018, "Dirichlet-based Gaussian processes for large-scale calibrated
  classification"). The one-hot labels are turned into Dirichlet pseudo-counts
  ``alpha = y + alpha_epsilon``; each class gets a GP regression on ``log(alpha) - s2 / 2`` with
  fixed heteroscedastic noise ``s2 = log(1 / alpha + 1)`` (the transform of
  :class:`gpytorch.likelihoods.DirichletClassificationLikelihood`). The K regressions form one batch
  of exact GPs sharing the kernel hyper-parameters, trained on the exact marginal likelihood.
* **Sparse path** (``N > exact_threshold``): a whitened sparse variational GP (SVGP, Hensman et
  al., 2015) with ``num_inducing`` inducing points shared by the K latent functions (one batched
  variational distribution; ``K_uu`` and its Cholesky factor computed once for all classes), a
  softmax likelihood whose expected log-likelihood is estimated by Monte Carlo on the per-point
  marginals, and minibatch Adam. No ``N x N`` matrix is ever formed. The GPyTorch kernel is used
  directly: GPyTorch's generic ``VariationalStrategy`` evaluated ``(M + B)^2`` kernel blocks and
  was about 30 times slower per step on 1,280-wide features.

The kernel is a sum of one scaled RBF kernel per source layer, each on its layer's columns
(``active_dims``), as in Xfer; or, with ``kernel_per_layer=False``, one scaled RBF (optionally ARD)
on all columns.

Predictive probabilities average the softmax of latent samples ``f = mu + sd * z`` over a fixed set
of scrambled Sobol normal points ``z`` (drawn once from ``prediction_seed`` on the CPU and shared by
every row), so prediction is deterministic, does not depend on how rows are batched, agrees between
CPU and CUDA, and is not quantised.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import gpytorch
import numpy as np
import torch
from linear_operator.operators import DenseLinearOperator

from xfer._progress import progress_bar
from xfer.context import torch_num_threads
from xfer.exceptions import (
    InvalidArgumentError,
    InvalidTypeError,
    NotFittedError,
    SerializationError,
)
from xfer.feature_store import FeatureStore
from xfer.repurposers import _out_of_core
from xfer.repurposers._checks import (
    check_device,
    check_features,
    check_int,
    check_positive_float,
    core_from_state,
)
from xfer.repurposers._linear import (
    fit_standardizer,
    l2_layers,
    l2_layers_from_state,
    l2_normalize_layers,
)
from xfer.repurposers._optim import Adam, minimize_lbfgs
from xfer.repurposers._uncertainty import is_degenerate, warn_degenerate

_LOGGER = logging.getLogger("xfer.repurposers.gp")

# 3: l2_layers (the layers apply_l2_norm normalises; older states: every layer when apply_l2_norm);
# 2: temperature_, variance_scale_ (version 1 states load with 1 and 1).
STATE_FORMAT_VERSION = 3
#: ``standardize`` values: the shared modes of ``_linear.fit_standardizer`` and the GP's "auto".
STANDARDIZE_CHOICES = ("auto", "layer", "column", "none")
#: Scales of the latent variance searched by the exact path's calibration.
VARIANCE_SCALES = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01)
#: Largest temperature the calibration searches.
MAX_TEMPERATURE = 10.0
#: Sobol points of the calibration's search (the final comparison uses the prediction's points).
SEARCH_POINTS = 64
#: Training rows (at most) whose predictions set the sparse path's temperature.
SPARSE_CALIBRATION_ROWS = 2000
_OPTIMIZER_CHOICES = ("adam", "lbfgs")
_PARAM_PREFIX = "param."
_INDUCING_KEY = "inducing_points"
_SPARSE_JITTER = 1e-4
# Buffers that the model rebuilds itself (kernel block layout).
_DERIVED_STATE = frozenset({"covar_module._column_block"})
# Cholesky everywhere on the exact path (no random probe vectors of CG/Lanczos): deterministic.
_MAX_CHOLESKY_SIZE = 1_000_000


def _gp_settings() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(gpytorch.settings.max_cholesky_size(_MAX_CHOLESKY_SIZE))
    stack.enter_context(gpytorch.settings.fast_computations(False, False, False))
    stack.enter_context(gpytorch.settings.fast_pred_var(False))
    stack.enter_context(gpytorch.settings.skip_posterior_variances(False))
    return stack


def _check_labels(labels: Any, n_rows: int, n_classes: Any) -> np.ndarray:
    check_int("n_classes", n_classes, 2)
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidTypeError(
            "labels must be an integer numpy array of class indices 0..n_classes-1 "
            f"(got {type(labels).__name__}{'' if not isinstance(labels, np.ndarray) else ' of dtype ' + str(labels.dtype)})."
        )
    if labels.shape != (n_rows,):
        raise InvalidArgumentError(f"labels must have shape ({n_rows},), got {labels.shape}.")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise InvalidArgumentError(
            f"labels must lie in 0..{n_classes - 1} (n_classes={n_classes}); got values "
            f"from {labels.min()} to {labels.max()}."
        )
    return labels.astype(np.int64)


def _check_layer_indices(
    feature_indices_per_layer: Any, n_features: int
) -> list[np.ndarray]:
    if feature_indices_per_layer is None:
        return [np.arange(n_features, dtype=np.int64)]
    if not isinstance(feature_indices_per_layer, (list, tuple)):
        raise InvalidTypeError(
            "feature_indices_per_layer must be a list of integer arrays (or None), got "
            f"{type(feature_indices_per_layer).__name__}."
        )
    if len(feature_indices_per_layer) == 0:
        raise InvalidArgumentError("feature_indices_per_layer is empty: give one array per layer or None.")
    layers = []
    for i, indices in enumerate(feature_indices_per_layer):
        indices = np.asarray(indices)
        if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
            raise InvalidArgumentError(
                f"feature_indices_per_layer[{i}] must be a non-empty 1-D integer array, got "
                f"shape {indices.shape} dtype {indices.dtype}."
            )
        if indices.min() < 0 or indices.max() >= n_features:
            raise InvalidArgumentError(
                f"feature_indices_per_layer[{i}] has column indices outside 0..{n_features - 1}."
            )
        layers.append(indices.astype(np.int64))
    return layers


def _to_json_float(value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise SerializationError(f"Non-finite hyper-parameter {value!r} cannot be saved as strict JSON.")
    return value


class LayerwiseRBFKernel(gpytorch.kernels.Kernel):
    """Sum of scaled RBF kernels, one per contiguous block of columns (one block per source layer).

    ``k(x, x') = sum_l s_l * exp(-|x_l - x'_l|^2 / (2 * ell_l^2))`` where ``x_l`` is block ``l``.
    Equivalent to an ``AdditiveKernel`` of ``ScaleKernel(RBFKernel(active_dims=...))`` terms, but
    evaluated with one scaling and one matrix product per block, and with the constant diagonal
    computed directly: GPyTorch's generic kernel path is several times slower on wide features.

    Parameters
    ----------
    block_sizes : list of int
        Number of columns of each block, in column order.
    ard : bool, default=False
        One lengthscale per column instead of one per block.
    """

    has_lengthscale = False

    def __init__(self, block_sizes: list[int], ard: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.block_sizes = [int(s) for s in block_sizes]
        self.ard = bool(ard)
        n_blocks = len(self.block_sizes)
        n_lengthscales = sum(self.block_sizes) if self.ard else n_blocks
        self.register_parameter("raw_lengthscale", torch.nn.Parameter(torch.zeros(n_lengthscales)))
        self.register_constraint("raw_lengthscale", gpytorch.constraints.Positive())
        self.register_parameter("raw_outputscale", torch.nn.Parameter(torch.zeros(n_blocks)))
        self.register_constraint("raw_outputscale", gpytorch.constraints.Positive())
        self.register_buffer(
            "_column_block", torch.repeat_interleave(torch.arange(n_blocks), torch.tensor(self.block_sizes))
        )

    @property
    def lengthscale(self) -> torch.Tensor:
        return self.raw_lengthscale_constraint.transform(self.raw_lengthscale)

    @lengthscale.setter
    def lengthscale(self, value: torch.Tensor) -> None:
        value = torch.as_tensor(value, dtype=self.raw_lengthscale.dtype, device=self.raw_lengthscale.device)
        self.initialize(raw_lengthscale=self.raw_lengthscale_constraint.inverse_transform(value))

    @property
    def outputscale(self) -> torch.Tensor:
        return self.raw_outputscale_constraint.transform(self.raw_outputscale)

    @outputscale.setter
    def outputscale(self, value: torch.Tensor) -> None:
        value = torch.as_tensor(value, dtype=self.raw_outputscale.dtype, device=self.raw_outputscale.device)
        self.initialize(raw_outputscale=self.raw_outputscale_constraint.inverse_transform(value))

    def _column_lengthscale(self) -> torch.Tensor:
        lengthscale = self.lengthscale
        return lengthscale if self.ard else lengthscale[self._column_block]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params: Any) -> torch.Tensor:
        outputscale = self.outputscale
        if diag and x1 is x2:  # k(x, x) = sum of outputscales: no pass over the data needed
            return outputscale.sum().expand(x1.shape[:-1])
        if self.ard:
            inverse = self.lengthscale.reciprocal()
            x1 = x1 * inverse
            x2 = x2 * inverse
            inverse_sq = [None] * len(self.block_sizes)
        else:
            # One lengthscale per block: scale the squared distances, not the (wide) inputs, so the
            # data batch only enters one matrix product and its row norms.
            inverse_sq = list(self.lengthscale.pow(-2).unbind())
        result = None
        start = 0
        for block, size in enumerate(self.block_sizes):
            a = x1[..., start : start + size]
            b = x2[..., start : start + size]
            start += size
            if diag:
                sq_dist = (a - b).pow(2).sum(-1)
            else:
                sq_dist = (
                    a.pow(2).sum(-1, keepdim=True)
                    + b.pow(2).sum(-1).unsqueeze(-2)
                    - 2.0 * (a @ b.transpose(-1, -2))
                ).clamp_min(0.0)
            if inverse_sq[block] is not None:
                sq_dist = sq_dist * inverse_sq[block]
            term = outputscale[block] * torch.exp(-0.5 * sq_dist)
            result = term if result is None else result + term
        return result


class _ExactDirichletGP(gpytorch.models.ExactGP):
    """K exact GP regressions on Dirichlet-transformed targets, sharing one kernel."""

    def __init__(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        likelihood: gpytorch.likelihoods.Likelihood,
        covar_module: gpytorch.kernels.Kernel,
        n_classes: int,
    ) -> None:
        super().__init__(train_x, train_y, likelihood)
        # One constant shared by all classes: far from the data every class has the same prior,
        # so the prediction there is uniform (a per-class constant would encode class frequency).
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = covar_module
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        n = x.shape[-2]
        mean = self.mean_module.constant.reshape(()).expand(self.n_classes, n)
        # Evaluate the shared kernel once; expanding a lazy kernel would evaluate it K times.
        covar = self.covar_module(x).to_dense().expand(self.n_classes, n, n)
        # As a linear operator: a dense tensor would make torch factorise the noise-free prior
        # covariance, which is singular when training points repeat (iris has duplicates).
        return gpytorch.distributions.MultivariateNormal(mean, DenseLinearOperator(covar))


class _SparseSoftmaxGP(gpytorch.Module):
    """K latent SVGP functions (whitened, Titsias/Hensman) sharing inducing inputs and kernel.

    Because the kernel is shared by the classes, ``K_uu`` and its Cholesky factor are computed
    once per step for all K functions; each class has its own whitened variational distribution
    ``q(v_k) = N(m_k, S_k S_k^T)`` with ``u_k = L v_k``. Marginals at inputs ``x``:
    ``mean_k = A^T m_k`` and ``var_k = k(x, x) - |A|^2 + |S_k^T A|^2`` with ``A = L^{-1} K_ux``.
    Only ``M x B`` cross-covariances are formed (no ``N x N`` or ``B x B`` matrix).
    """

    def __init__(
        self, inducing_points: torch.Tensor, covar_module: gpytorch.kernels.Kernel, n_classes: int
    ) -> None:
        super().__init__()
        num_inducing = inducing_points.shape[-2]
        self.inducing_points = torch.nn.Parameter(inducing_points.clone())
        self.variational_mean = torch.nn.Parameter(
            torch.zeros(n_classes, num_inducing, dtype=inducing_points.dtype)
        )
        self.chol_variational_covar = torch.nn.Parameter(
            torch.eye(num_inducing, dtype=inducing_points.dtype).repeat(n_classes, 1, 1)
        )
        self.covar_module = covar_module
        self.n_classes = n_classes

    def _scale_tril(self) -> torch.Tensor:
        return self.chol_variational_covar.tril()

    def _chol_uu(self) -> torch.Tensor:
        kuu = self.covar_module(self.inducing_points, self.inducing_points).to_dense()
        jitter = _SPARSE_JITTER * self.covar_module.outputscale.sum()
        eye = torch.eye(kuu.shape[-1], dtype=kuu.dtype, device=kuu.device)
        return torch.linalg.cholesky(kuu + jitter * eye)

    def moments(self, x: torch.Tensor, chol_uu: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent marginal means and variances at ``x``, each ``(B, K)``."""
        if chol_uu is None:
            chol_uu = self._chol_uu()
        kux = self.covar_module(self.inducing_points, x).to_dense()  # (M, B)
        a = torch.linalg.solve_triangular(chol_uu, kux, upper=False)  # (M, B)
        mean = a.T @ self.variational_mean.T  # (B, K)
        projected = self._scale_tril().transpose(-1, -2) @ a  # (K, M, B)
        prior = self.covar_module(x, x, diag=True)  # (B,)
        var = prior.unsqueeze(-1) - a.pow(2).sum(0).unsqueeze(-1) + projected.pow(2).sum(-2).T
        return mean, var.clamp_min(1e-10)

    def kl_divergence(self) -> torch.Tensor:
        """Sum over classes of KL(N(m_k, S_k S_k^T) || N(0, I))."""
        scale = self._scale_tril()
        num_inducing = scale.shape[-1]
        trace = scale.pow(2).sum()
        log_det = 2.0 * scale.diagonal(dim1=-2, dim2=-1).abs().clamp_min(1e-20).log().sum()
        return 0.5 * (trace + self.variational_mean.pow(2).sum() - log_det - self.n_classes * num_inducing)


def dirichlet_targets(
    labels: torch.Tensor, n_classes: int, alpha_epsilon: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dirichlet transform of Milios et al. (2018).

    Parameters
    ----------
    labels : torch.Tensor
        Integer class indices, shape ``(N,)``.
    n_classes : int
        Number of classes ``K`` (classes absent from ``labels`` are allowed).
    alpha_epsilon : float
        Pseudo-count of the classes an example does not belong to.
    dtype : torch.dtype
        Floating type of the result.

    Returns
    -------
    targets : torch.Tensor
        ``log(alpha) - noise / 2``, shape ``(K, N)``.
    noise : torch.Tensor
        ``log(1 / alpha + 1)``, shape ``(K, N)``.
    """
    alpha = torch.full((labels.shape[0], n_classes), alpha_epsilon, dtype=dtype, device=labels.device)
    alpha[torch.arange(labels.shape[0], device=labels.device), labels] += 1.0
    noise = torch.log(alpha.reciprocal() + 1.0)
    targets = alpha.log() - 0.5 * noise
    return targets.T.contiguous(), noise.T.contiguous()


def sobol_normal_points(num_samples: int, dim: int, seed: int) -> torch.Tensor:
    """Scrambled Sobol points mapped to standard normals, shape ``(num_samples, dim)``, float64, CPU."""
    engine = torch.quasirandom.SobolEngine(dimension=dim, scramble=True, seed=seed)
    uniform = engine.draw(num_samples, dtype=torch.float64)
    uniform = uniform.clamp(1e-10, 1.0 - 1e-10)
    return torch.special.ndtri(uniform)


def mc_softmax(
    mean: torch.Tensor, variance: torch.Tensor, normal_points: torch.Tensor, return_mutual_information: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Average of ``softmax(mean + sqrt(variance) * z)`` over the rows ``z`` of ``normal_points``.

    Parameters
    ----------
    mean, variance : torch.Tensor
        Latent marginal means and variances, shape ``(N, K)``.
    normal_points : torch.Tensor
        Standard-normal points, shape ``(S, K)``, shared by all rows.
    return_mutual_information : bool, default=False
        Also return ``H(mean_s p_s) - mean_s H(p_s)`` per row (the epistemic part of the entropy).

    Returns
    -------
    torch.Tensor
        Probabilities, float64, shape ``(N, K)`` (and the mutual information, shape ``(N,)``).
    """
    mean = mean.to(torch.float64)
    std = variance.to(torch.float64).clamp_min(0.0).sqrt()
    z = normal_points.to(device=mean.device, dtype=torch.float64)
    # Chunk rows so that the (rows, S, K) block stays around 32 MB.
    chunk = max(1, (4_000_000 // max(1, z.shape[0] * z.shape[1])))
    out, expected_entropy = [], []
    for start in range(0, mean.shape[0], chunk):
        m = mean[start : start + chunk, None, :]
        s = std[start : start + chunk, None, :]
        log_p = torch.log_softmax(m + s * z[None], dim=-1)
        out.append(log_p.exp().mean(dim=1))
        if return_mutual_information:
            expected_entropy.append(-(log_p.exp() * log_p).sum(-1).mean(dim=1))
    probs = torch.cat(out, dim=0)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    if not return_mutual_information:
        return probs
    total = -(probs * probs.clamp_min(1e-300).log()).sum(-1)
    return probs, (total - torch.cat(expected_entropy)).clamp_min(0.0)


class GpClassifierCore:
    """Multi-class GP classifier on feature arrays, all classes in one batched GPyTorch model.

    Parameters
    ----------
    max_iterations : int, default=100
        Exact path: optimiser steps (Adam) or function evaluations (L-BFGS) on the exact marginal
        likelihood (Xfer's ``max_function_evaluations``). Sparse path: passes over the data
        (epochs) of minibatch Adam on the ELBO, capped so that the total number of minibatch steps
        is at most ``max_sparse_steps``.
    num_inducing : int, default=100
        Inducing points of the sparse path (shared by all classes).
    apply_l2_norm : bool, default=False
        Scale each row of each layer's block to unit L2 norm before standardisation.
    kernel_per_layer : bool, default=True
        One scaled RBF term per source layer, summed (Xfer). ``False``: one scaled RBF on all columns.
    random_state : int or None, default=None
        Seeds inducing-point selection, minibatch order and Monte Carlo noise of training.
        ``None`` uses seed 0 (training is deterministic either way).
    verbose : bool or int, default=False
        Show a tqdm bar. The loss is logged to ``xfer.repurposers.gp`` (DEBUG, every 25 steps)
        whatever the value.
    exact_threshold : int, default=2000
        Largest number of training rows fitted by the exact GP; above it the sparse GP is used.
    standardize : {"auto", "layer", "column", "none"}, default="auto"
        Feature scaling (``_linear.fit_standardizer``): ``"layer"`` centres each column and divides
        each layer's block by one scale (its RMS column standard deviation), keeping the relative
        scale of units; ``"column"``: per-column z-scores; ``"none"``. ``"auto"``: ``"layer"``
        (after the L2 normalisation of ``apply_l2_norm``), except that on the exact path a layer
        whose norm is carried by fewer than 10 effective columns (``_linear.l2_layers``: e.g.
        tabular columns in unrelated units, where the largest column dominates the kernel's
        distances) also gets a second candidate, per-column z-scores without L2 normalisation,
        and the fit keeps the candidate of higher marginal likelihood (with the priors of
        ``prior_width``: the criterion that sets the kernel's hyper-parameters; see
        :meth:`_fit_exact_candidates`). The sparse path uses ``"layer"``.
    ard : bool, default=False
        One lengthscale per column (only sensible for few columns).
    alpha_epsilon : float, default=0.01
        Dirichlet pseudo-count of the exact path; smaller values give sharper probabilities.
    learn_additional_noise : bool, default=True
        Exact path: learn a homoscedastic noise on top of the Dirichlet noise.
    optimizer : {"lbfgs", "adam"}, default="lbfgs"
        Optimiser of the exact path (the sparse path always uses minibatch Adam). L-BFGS (SciPy's
        L-BFGS-B, whose line search keeps the strong Wolfe conditions) usually converges in 20-40
        evaluations.
    learning_rate : float, default=0.1
        Adam learning rate of the exact path (the sparse path uses ``sparse_learning_rate``).
    sparse_learning_rate : float, default=0.03
        Adam learning rate of the sparse path. At 10,000 rows (1,000 steps) 0.03 gave lower NLL
        and ECE than 0.01 on EfficientNet-Lite0 features and on raw pixels of Fashion-MNIST
        (``python -m benchmarks.run --only calibration``); 0.1 was worse again.
    sparse_batch_size : int, default=1024
        Minibatch size of the sparse path.
    max_sparse_steps : int, default=1000
        Cap on the total number of minibatch steps of the sparse path.
    num_likelihood_samples : int, default=8
        Monte Carlo samples of the softmax expected log-likelihood (sparse training); the noise
        comes from a CPU generator seeded by ``random_state``.
    num_prediction_samples : int, default=256
        Sobol points averaged at prediction.
    prediction_seed : int, default=0
        Scrambling seed of the Sobol points (part of the saved state).
    prior_width : float or None, default=1.0
        Exact path: standard deviation of log-normal priors on the kernel's lengthscales and
        signal variances, centred on their data-derived starting values (median distance, target
        variance), and on the calibration's temperature and variance scale, centred on 1. Keeps
        the marginal likelihood from running away to the degenerate optima (everything noise, or
        no correlation between examples) and the calibration from sharpening without evidence.
        ``None``: plain maximum likelihood and leave-one-out NLL.
    calibrate : bool, default=True
        Exact path: choose the temperature of the latent functions and the scale of their variance
        by the NLL of the training rows held out, exactly: leave-one-out, extrapolated to the full
        class sizes with leave-pair-out (``temperature_``, ``variance_scale_``; see
        :meth:`_calibrate`). Sparse path: the temperature alone, by the NLL of (at most
        ``SPARSE_CALIBRATION_ROWS``) training rows (:meth:`_calibrate_sparse`). ``False``: both 1,
        the plain posterior.
    min_temperature : float, default=0.1
        Smallest temperature searched (the largest sharpening of the latent functions); below 10,
        the largest.

    Notes
    -----
    Features are processed in float64 on the exact path and float32 on the sparse path; latent
    moments are turned into probabilities in float64.

    The saved state of an exact model contains its (pre-processed) training features and labels:
    exact GP prediction needs them. A sparse model saves only the inducing points, variational
    parameters and hyper-parameters.
    """

    def __init__(
        self,
        *,
        max_iterations: int = 100,
        num_inducing: int = 100,
        apply_l2_norm: bool = False,
        kernel_per_layer: bool = True,
        random_state: int | None = None,
        verbose: bool = False,
        exact_threshold: int = 2000,
        standardize: str = "auto",
        ard: bool = False,
        alpha_epsilon: float = 0.01,
        learn_additional_noise: bool = True,
        optimizer: str = "lbfgs",
        learning_rate: float = 0.1,
        sparse_learning_rate: float = 0.03,
        sparse_batch_size: int = 1024,
        max_sparse_steps: int = 1000,
        num_likelihood_samples: int = 8,
        num_prediction_samples: int = 256,
        prediction_seed: int = 0,
        prior_width: float | None = 1.0,
        calibrate: bool = True,
        min_temperature: float = 0.1,
    ) -> None:
        self.max_iterations = max_iterations
        self.num_inducing = num_inducing
        self.apply_l2_norm = apply_l2_norm
        self.kernel_per_layer = kernel_per_layer
        self.random_state = random_state
        self.verbose = verbose
        self.exact_threshold = exact_threshold
        self.standardize = standardize
        self.ard = ard
        self.alpha_epsilon = alpha_epsilon
        self.learn_additional_noise = learn_additional_noise
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.sparse_learning_rate = sparse_learning_rate
        self.sparse_batch_size = sparse_batch_size
        self.max_sparse_steps = max_sparse_steps
        self.num_likelihood_samples = num_likelihood_samples
        self.num_prediction_samples = num_prediction_samples
        self.prediction_seed = prediction_seed
        self.prior_width = prior_width
        self.calibrate = calibrate
        self.min_temperature = min_temperature
        self._validate_options()
        self._reset_fitted()

    # ------------------------------------------------------------------ options
    def _option_dict(self) -> dict[str, Any]:
        return {
            "max_iterations": int(self.max_iterations),
            "num_inducing": int(self.num_inducing),
            "apply_l2_norm": bool(self.apply_l2_norm),
            "kernel_per_layer": bool(self.kernel_per_layer),
            "random_state": None if self.random_state is None else int(self.random_state),
            "verbose": bool(self.verbose),
            "exact_threshold": int(self.exact_threshold),
            "standardize": str(self.standardize),
            "ard": bool(self.ard),
            "alpha_epsilon": float(self.alpha_epsilon),
            "learn_additional_noise": bool(self.learn_additional_noise),
            "optimizer": str(self.optimizer),
            "learning_rate": float(self.learning_rate),
            "sparse_learning_rate": float(self.sparse_learning_rate),
            "sparse_batch_size": int(self.sparse_batch_size),
            "max_sparse_steps": int(self.max_sparse_steps),
            "num_likelihood_samples": int(self.num_likelihood_samples),
            "num_prediction_samples": int(self.num_prediction_samples),
            "prediction_seed": int(self.prediction_seed),
            "prior_width": None if self.prior_width is None else float(self.prior_width),
            "calibrate": bool(self.calibrate),
            "min_temperature": float(self.min_temperature),
        }

    def _validate_options(self) -> None:
        check_int("max_iterations", self.max_iterations, 1)
        check_int("num_inducing", self.num_inducing, 1)
        check_int("exact_threshold", self.exact_threshold, 0)
        check_int("sparse_batch_size", self.sparse_batch_size, 1)
        check_int("max_sparse_steps", self.max_sparse_steps, 1)
        check_int("num_likelihood_samples", self.num_likelihood_samples, 1)
        check_int("num_prediction_samples", self.num_prediction_samples, 1)
        check_int("prediction_seed", self.prediction_seed, 0)
        check_int("random_state", self.random_state, 0, allow_none=True)
        check_positive_float("alpha_epsilon", self.alpha_epsilon)
        check_positive_float("learning_rate", self.learning_rate)
        check_positive_float("sparse_learning_rate", self.sparse_learning_rate)
        check_positive_float("min_temperature", self.min_temperature)
        if self.min_temperature >= MAX_TEMPERATURE:
            raise InvalidArgumentError(
                f"min_temperature must be below {MAX_TEMPERATURE:g}, the largest temperature the "
                f"calibration searches; got {self.min_temperature!r}. Use calibrate=False for T = 1."
            )
        if self.prior_width is not None:
            check_positive_float("prior_width", self.prior_width)
        if self.standardize not in STANDARDIZE_CHOICES:
            raise InvalidArgumentError(
                f"standardize must be one of {list(STANDARDIZE_CHOICES)}, got {self.standardize!r}."
            )
        if self.optimizer not in _OPTIMIZER_CHOICES:
            raise InvalidArgumentError(
                f"optimizer must be one of {_OPTIMIZER_CHOICES}, got {self.optimizer!r}."
            )

    def _reset_fitted(self) -> None:
        self.n_classes_: int | None = None
        self.n_features_: int | None = None
        self.mode_: str | None = None
        self.layer_indices_: list[np.ndarray] | None = None
        self.feature_mean_: np.ndarray | None = None
        self.feature_scale_: np.ndarray | None = None
        self.l2_layers_: np.ndarray | None = None  # per layer: L2-normalised
        self.train_features_: np.ndarray | None = None  # exact path only (pre-processed)
        self.train_labels_: np.ndarray | None = None  # exact path only
        self.model_: gpytorch.models.GP | None = None
        self._exact_cache: dict[str, torch.Tensor] | None = None
        self.loss_history_: list[float] = []
        self._normal_points: torch.Tensor | None = None
        self.temperature_: float = 1.0
        self.variance_scale_: float = 1.0
        self.loo_nll_: float | None = None

    # ------------------------------------------------------------- preprocess
    def _l2(self, features: np.ndarray) -> np.ndarray:
        flags = self.l2_layers_
        return l2_normalize_layers(features, self.layer_indices_, flags) if flags.any() else features

    def _preprocessing_candidates(self, features: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(l2_layers, feature_mean, feature_scale)`` of each pre-processing the exact fit compares.

        The first is the plain one: every layer L2-normalised when ``apply_l2_norm``, then
        ``standardize`` (``"layer"`` for ``"auto"``). With ``"auto"`` and layers whose norm is
        carried by fewer than ``L2_MIN_EFFECTIVE_COLUMNS`` columns (:func:`_linear.l2_layers`), a
        second one gives those layers per-column z-scores and no L2 normalisation.
        """
        features = features.astype(np.float64)
        mode = "layer" if self.standardize == "auto" else self.standardize
        self.l2_layers_ = np.full(len(self.layer_indices_), bool(self.apply_l2_norm))
        candidates = [(self.l2_layers_, *fit_standardizer(self._l2(features), self.layer_indices_, mode))]
        few_columns = ~l2_layers(features, self.layer_indices_)
        if self.standardize != "auto" or not few_columns.any():
            return candidates
        self.l2_layers_ = candidates[0][0] & ~few_columns
        normalised = self._l2(features)
        mean, scale = fit_standardizer(normalised, self.layer_indices_, "layer")
        column_mean, column_scale = fit_standardizer(normalised, self.layer_indices_, "column")
        for index in np.flatnonzero(few_columns):
            columns = self.layer_indices_[index]
            mean[columns], scale[columns] = column_mean[columns], column_scale[columns]
        candidates.append((self.l2_layers_, mean, scale))
        return candidates

    def _kernel_columns(self) -> np.ndarray:
        """Columns the kernel sees, in block order (layers concatenated, or all columns)."""
        if self.kernel_per_layer:
            return np.concatenate(self.layer_indices_)
        return np.arange(self.n_features_)

    def _block_sizes(self) -> list[int]:
        if self.kernel_per_layer:
            return [len(i) for i in self.layer_indices_]
        return [int(self.n_features_)]

    def _transform(self, features: np.ndarray) -> np.ndarray:
        features = self._l2(features.astype(np.float64))
        features = (features - self.feature_mean_) / self.feature_scale_
        return np.ascontiguousarray(features[:, self._kernel_columns()])

    # ------------------------------------------------------------------- model
    def _dtype(self) -> torch.dtype:
        return torch.float64 if self.mode_ == "exact" else torch.float32

    def _build_kernel(self) -> LayerwiseRBFKernel:
        return LayerwiseRBFKernel(self._block_sizes(), ard=bool(self.ard)).to(self._dtype())

    def _init_hyperparameters(
        self, kernel: LayerwiseRBFKernel, x: np.ndarray, rng: np.random.RandomState, total_variance: float
    ) -> None:
        """Median-distance heuristic for each block's lengthscale; outputscales share ``total_variance``."""
        subset = x[rng.choice(x.shape[0], size=min(x.shape[0], 500), replace=False)]
        lengthscales = []
        start = 0
        for size in kernel.block_sizes:
            block = subset[:, start : start + size]
            start += size
            sq = np.sum(block**2, axis=1)
            d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * block @ block.T, 0.0)
            off = d2[~np.eye(d2.shape[0], dtype=bool)]
            median = float(np.sqrt(np.median(off))) if off.size else 1.0
            if not np.isfinite(median) or median <= 1e-6:
                median = 1.0
            lengthscales.extend([median] * (size if kernel.ard else 1))
        kernel.lengthscale = torch.tensor(lengthscales)
        n_blocks = len(kernel.block_sizes)
        kernel.outputscale = torch.full((n_blocks,), max(total_variance, 1e-3) / n_blocks)

    def _build_exact(self, x: torch.Tensor, y: torch.Tensor) -> None:
        targets, noise = dirichlet_targets(y, self.n_classes_, float(self.alpha_epsilon), x.dtype)
        likelihood = gpytorch.likelihoods.FixedNoiseGaussianLikelihood(
            noise=noise,
            learn_additional_noise=bool(self.learn_additional_noise),
            batch_shape=torch.Size([self.n_classes_]),
        )
        model = _ExactDirichletGP(x, targets, likelihood, self._build_kernel(), self.n_classes_)
        self.model_ = model.to(dtype=x.dtype, device=x.device)

    def _build_sparse(self, inducing: torch.Tensor) -> None:
        model = _SparseSoftmaxGP(inducing, self._build_kernel(), self.n_classes_)
        self.model_ = model.to(dtype=inducing.dtype, device=inducing.device)

    # --------------------------------------------------------------------- fit
    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        feature_indices_per_layer: list[np.ndarray] | None,
        device: torch.device,
    ) -> GpClassifierCore:
        """Fit kernel hyper-parameters (and the variational posterior on the sparse path).

        Parameters
        ----------
        features : numpy.ndarray or FeatureStore
            Float array of shape ``(N, D)``, or features on disk (the sparse path then reads
            each minibatch from the files; a store of at most ``exact_threshold`` rows is loaded).
        labels : numpy.ndarray
            Integer class indices in ``0..n_classes-1``, shape ``(N,)``.
        n_classes : int
            Number of classes ``K >= 2`` (classes missing from ``labels`` are allowed).
        feature_indices_per_layer : list of numpy.ndarray or None
            Column indices of each source layer in ``features``; ``None`` means one block.
        device : torch.device
            Device to train on.

        Returns
        -------
        GpClassifierCore
            ``self``.

        Raises
        ------
        InvalidArgumentError
            Wrong shapes, label values outside ``0..n_classes-1``, non-finite features.
        InvalidTypeError
            Arguments of the wrong type.
        """
        self._validate_options()
        store = features if isinstance(features, FeatureStore) else None
        if store is not None and len(store) <= self.exact_threshold:
            features, store = store.to_array()[0], None  # small enough for the exact GP
        if store is None:
            features = check_features(features)
        n_rows, n_columns = (len(store), store.num_features) if store is not None else features.shape
        labels = _check_labels(labels, n_rows, n_classes)
        device = check_device(device)
        layers = _check_layer_indices(feature_indices_per_layer, n_columns)

        self._reset_fitted()
        self.n_classes_ = int(n_classes)
        self.n_features_ = int(n_columns)
        self.layer_indices_ = layers
        self.mode_ = "exact" if n_rows <= self.exact_threshold else "sparse"
        seed = 0 if self.random_state is None else int(self.random_state)
        rng = np.random.RandomState(seed)

        mode = "layer" if self.standardize == "auto" else self.standardize
        self.l2_layers_ = np.full(len(layers), bool(self.apply_l2_norm))
        candidates = None
        if self.mode_ == "exact":
            candidates = self._preprocessing_candidates(features)
            self.l2_layers_, self.feature_mean_, self.feature_scale_ = candidates[0]
            x_np = self._transform(features)
        elif store is None:
            self.feature_mean_, self.feature_scale_ = fit_standardizer(
                self._l2(features.astype(np.float64)), self.layer_indices_, mode
            )
            x_np = self._transform(features)
        else:  # rows are read, pre-processed and moved to the device one minibatch at a time
            self.feature_mean_, self.feature_scale_ = _out_of_core.fit_standardizer(
                store, self.layer_indices_, mode, transform=self._l2
            )
            x_np = _out_of_core.StoreRows(
                store, self._transform, len(self._kernel_columns()), torch.float32, device
            )
        _LOGGER.info(
            "Fitting %s GP: %d rows, %d columns, %d classes, %d kernel block(s).",
            self.mode_, x_np.shape[0], x_np.shape[1], self.n_classes_, len(self._block_sizes()),
        )
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _gp_settings():
            torch.manual_seed(seed)
            if self.mode_ == "exact":
                # K batched N x N Cholesky factorisations: below ~1e9 flops one thread is fastest.
                work = self.n_classes_ * float(x_np.shape[0]) ** 3
                with torch_num_threads(1 if work < 1e9 and device.type == "cpu" else None):
                    self._fit_exact_candidates(features, candidates, labels, device, seed)
                    self.model_.eval()
                    self._calibrate(device)  # same sizes of work: K N x N inverses, N x S x K softmaxes
                # Prediction refactorises as a loaded model does (same threads: same rounding).
                self._exact_cache = None
            else:
                self._fit_sparse(x_np, labels, device, rng, seed)
                self.model_.eval()
                if self.calibrate:
                    self._calibrate_sparse(x_np, labels, device, rng)
        self.model_.eval()
        return self

    def leave_one_out_moments(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact leave-one-out means and variances ``(N, K)`` of the latent functions (exact path).

        For class ``k`` with ``C = K_xx + diag(noise_k)`` and ``a = C^-1 (y_k - m)``: the mean at
        training row ``i`` without row ``i`` is ``y_ik - a_i / [C^-1]_ii`` and the latent variance
        ``1 / [C^-1]_ii - noise_ik`` (Rasmussen & Williams, 2006, eq. 5.12, minus the row's noise).
        """
        return self._held_out_moments(device, np.arange(len(self.train_labels_)))

    def leave_pair_out_moments(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent means and variances ``(N, K)`` of each training row without itself and one other
        row of its class (the next one in row order, cyclically); a class's only row: without itself.

        The block version of :meth:`leave_one_out_moments`: with ``S = {i, j}``, ``B = [C^-1]_SS``
        (2 x 2) and ``a = C^-1 (y_k - m)``, the means at ``S`` without ``S`` are ``y_S - B^-1 a_S``
        and their covariance ``B^-1`` (minus the rows' noise on the diagonal).
        """
        labels = self.train_labels_
        partners = np.arange(len(labels))
        for k in np.unique(labels):
            members = np.flatnonzero(labels == k)
            partners[members] = np.roll(members, -1)
        return self._held_out_moments(device, partners)

    def _held_out_moments(self, device: torch.device, partners: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Moments of row ``i`` without rows ``i`` and ``partners[i]`` (``partners[i] == i``: LOO)."""
        cache = self._exact_cache_for(device)
        targets, noise = dirichlet_targets(
            torch.as_tensor(self.train_labels_, device=device), self.n_classes_, float(self.alpha_epsilon),
            torch.float64,
        )  # fmt: skip
        i = torch.arange(len(partners), device=device)
        j = torch.as_tensor(partners, device=device)
        with torch.no_grad():
            inverse = torch.cholesky_inverse(cache["chol"])  # (K, N, N)
            weights = cache["weights"].T  # (K, N)
            p_ii, p_jj, p_ij = inverse[:, i, i], inverse[:, j, j], inverse[:, i, j]
            alone = (j == i).expand_as(p_ii)
            determinant = torch.where(alone, p_ii, p_ii * p_jj - p_ij**2)
            # Row i of the inverse of the 2 x 2 block [[p_ii, p_ij], [p_ij, p_jj]] (1 x 1 when alone).
            own = torch.where(alone, 1.0 / p_ii, p_jj / determinant)
            cross = torch.where(alone, torch.zeros_like(p_ij), -p_ij / determinant)
            mean = targets - (own * weights[:, i] + cross * weights[:, j])
            variance = (own - noise - self._additional_noise()).clamp_min(1e-10)
        return mean.T, variance.T

    def _additional_noise(self, detach: bool = True) -> torch.Tensor | float:
        """The learned homoscedastic noise, shape ``(K or 1, 1)`` (0 without it)."""
        if not self.learn_additional_noise:
            return 0.0
        noise = self.model_.likelihood.second_noise.reshape(-1, 1).to(torch.float64)
        return noise.detach() if detach else noise

    def _calibrate(self, device: torch.device) -> None:
        """Temperature and variance scale of the latent functions from held-out predictions of the
        training rows; degenerate-fit warning.

        The Dirichlet transform fixes the latent scale through ``alpha_epsilon``, which suits some
        tasks and leaves others far too flat (35 classes with 5 examples each: mean top probability
        0.25 at 83% accuracy). Prediction is ``E[softmax((m + sqrt(c v) z) / T)]``.

        1. ``(T_1, c_1)`` minimise the leave-one-out objective (:meth:`_search_calibration`).
        2. Leave-one-out predictions of a row see ``n - 1`` examples of its class where a test row
           sees ``n`` (``n`` labels per class on average): with few labels they are much less
           accurate (20 classes x 3 labels of MiniLM features: mean margin of the true class -0.3
           left out, +0.2 on test rows, with the same variance), so ``(T_1, c_1)`` fit an easier
           model's errors and leave the predictions under-confident. A bias of order ``1 / n``
           is extrapolated away as in the jackknife: ``(T_2, c_2)`` minimise the same objective
           on leave-pair-out predictions (``n - 2`` examples, :meth:`leave_pair_out_moments`), and
           ``log T = log T_1 + (n - 2) / n * (log T_1 - log T_2)`` (the value at ``n`` of the line
           in ``1 / n`` through ``n - 1`` and ``n - 2``), the same for ``log c``; clipped to the
           searched ranges. With ``n <= 2`` (nothing to extrapolate from): ``(T_1, c_1)``.
        """
        loo = self.leave_one_out_moments(device)
        log_t, log_c = self._search_calibration(*loo)
        labels = self.train_labels_
        per_class = len(labels) / len(np.unique(labels))
        if self.calibrate and per_class > 2:
            pair_log_t, pair_log_c = self._search_calibration(*self.leave_pair_out_moments(device))
            slope = (per_class - 2) / per_class
            log_t = float(np.clip(log_t + slope * (log_t - pair_log_t), math.log(float(self.min_temperature)), math.log(MAX_TEMPERATURE)))
            log_c = float(np.clip(log_c + slope * (log_c - pair_log_c), math.log(min(VARIANCE_SCALES)), 0.0))
        self.temperature_, self.variance_scale_ = math.exp(log_t), math.exp(log_c)
        mean, variance = loo
        held_out = mc_softmax(
            mean / self.temperature_, self.variance_scale_ * variance / self.temperature_**2, self._points()
        ).cpu().numpy()  # fmt: skip
        self.loo_nll_ = float(-np.log(np.clip(held_out[np.arange(len(labels)), labels], 1e-300, None)).mean())
        if is_degenerate(held_out, labels):
            warn_degenerate(
                _LOGGER, "GpClassifierCore",
                f"its leave-one-out predictions of the {len(labels)} training rows are no better than "
                f"the class frequencies (NLL {self.loo_nll_:.3f}); kernel lengthscales "
                f"{[round(v, 3) for v in self.model_.covar_module.lengthscale.detach().tolist()]}",
                "The features may not separate these classes, or there are too few examples: "
                "try other feature layers, more labels, or LrRepurposer/LaplaceRepurposer.",
            )  # fmt: skip

    def _search_calibration(
        self,
        mean: torch.Tensor,
        variance: torch.Tensor,
        labels: np.ndarray | None = None,
        scales: tuple[float, ...] = VARIANCE_SCALES,
    ) -> tuple[float, float]:
        """``(log T, log c)`` minimising the held-out NLL of the training rows (moments ``(N, K)``;
        ``labels``: their classes, default the exact path's training labels; ``scales``: the
        variance scales searched, ``(1.0,)`` for the temperature alone).

        The objective: summed NLL of ``E[softmax((m + sqrt(c v) z) / T)]`` at the true labels plus,
        with ``prior_width``, the negative log of log-normal priors on ``T`` and ``c`` centred on 1,
        so that a few separable rows (every one predicted right when held out) cannot ask for
        unbounded sharpening. ``T`` from ``min_temperature`` to ``MAX_TEMPERATURE``, ``c`` in
        ``VARIANCE_SCALES``: the temperature alone cannot sharpen a prediction whose latent variance
        swamps the differences of its means (dividing by ``T`` scales both), hence ``c``.

        The search: for each ``c``, a bounded Brent search over ``log T`` on the objective
        estimated with ``SEARCH_POINTS`` Sobol points (the NLL of a softmax is convex in ``1 / T``,
        so unimodal in ``log T``); then the best ``T`` of each ``c`` and the plain posterior
        (``T = c = 1``, first: it wins ties) are compared with the prediction's own points, and
        the best of them is refined jointly in ``(log T, log c)`` by L-BFGS-B (gradients by
        autograd, the prediction's points, ``c`` continuous in ``[0.01, 1]``); the refined point
        is kept only if it lowers the objective. The continuous ``c`` matters for the
        extrapolation of :meth:`_calibrate`, which would otherwise jump between grid values.
        Never worse than the plain posterior. ``calibrate=False``: ``(0, 0)``.
        """
        from scipy.optimize import minimize_scalar

        labels = torch.as_tensor(self.train_labels_ if labels is None else labels, device=mean.device)
        rows = torch.arange(len(labels), device=mean.device)
        width = None if self.prior_width is None else float(self.prior_width)

        def objective(log_temperature: float, scale: float, points: torch.Tensor) -> float:
            with torch.no_grad():
                return float(differentiable(torch.tensor([log_temperature, math.log(scale)], dtype=torch.float64), points))

        def differentiable(logs: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
            temperature, scale = logs.exp().to(mean.device).unbind()
            p = mc_softmax(mean / temperature, scale * variance / temperature**2, points)[rows, labels]
            value = -p.clamp_min(1e-300).log().sum()
            if width is not None:
                value = value + 0.5 * (logs / width).pow(2).sum().to(value.device)
            return value

        candidates = [(0.0, 1.0)]
        if self.calibrate:
            search_points = sobol_normal_points(SEARCH_POINTS, int(self.n_classes_), int(self.prediction_seed))
            bounds = (math.log(float(self.min_temperature)), math.log(MAX_TEMPERATURE))
            for scale in scales:
                found = minimize_scalar(
                    lambda t, c=scale: objective(t, c, search_points), bounds=bounds, method="bounded",
                    options={"xatol": 0.02},
                )  # fmt: skip
                candidates.append((float(found.x), scale))
        points = self._points()
        best_log_t, best_scale = min(candidates, key=lambda candidate: objective(*candidate, points))
        if not self.calibrate:
            return best_log_t, math.log(best_scale)
        from scipy.optimize import minimize

        def value_and_gradient(logs: np.ndarray) -> tuple[float, np.ndarray]:
            logs = torch.tensor(logs, dtype=torch.float64, requires_grad=True)
            with torch.enable_grad():
                value = differentiable(logs, points)
                value.backward()
            return float(value.detach()), logs.grad.numpy().copy()

        start = np.array([best_log_t, math.log(best_scale)])
        bounds = [(math.log(float(self.min_temperature)), math.log(MAX_TEMPERATURE)), (math.log(min(scales)), 0.0)]
        refined = minimize(value_and_gradient, start, jac=True, method="L-BFGS-B", bounds=bounds)
        if np.all(np.isfinite(refined.x)) and refined.fun < objective(best_log_t, best_scale, points):
            return float(refined.x[0]), float(refined.x[1])
        return best_log_t, math.log(best_scale)

    def _calibrate_sparse(
        self, x: np.ndarray | _out_of_core.StoreRows, labels: np.ndarray, device: torch.device,
        rng: np.random.RandomState,
    ) -> None:
        """Temperature of the sparse path's latent functions from the NLL of its training rows.

        The sparse path is trained on the softmax likelihood itself with a capped number of
        minibatch steps, and its latent functions stay too flat: predictions under-confident
        (``tests/repurposers/test_gp_core.py::``
        ``test_sparse_path_temperature_minimises_training_nll_and_sharpens``). The temperature
        ``T`` minimising the NLL of (at most ``SPARSE_CALIBRATION_ROWS`` random) training rows
        plus the log-normal prior of ``prior_width`` (:meth:`_search_calibration`, the variance
        scale kept at 1) is used. These rows are not held out: ``num_inducing`` points summarise
        the rows, so the fit predicts its training rows only somewhat better than new ones, and
        ``T`` is somewhat lower than the best ``T`` for new rows. ``calibrate=False``: ``T = 1``.
        """
        n = len(labels)
        rows = np.arange(n)
        if n > SPARSE_CALIBRATION_ROWS:
            rows = np.sort(rng.choice(n, SPARSE_CALIBRATION_ROWS, replace=False))
        batch = int(self.sparse_batch_size)
        means, variances = [], []
        with torch.no_grad():
            chol_uu = self.model_._chol_uu()
            for start in range(0, len(rows), batch):
                chunk = rows[start : start + batch]
                if isinstance(x, _out_of_core.StoreRows):
                    xb = x[torch.as_tensor(chunk)]
                else:
                    xb = torch.as_tensor(x[chunk], dtype=torch.float32, device=device)
                mean, variance = self.model_.moments(xb, chol_uu)
                means.append(mean.to(torch.float64))
                variances.append(variance.to(torch.float64))
        log_t, _ = self._search_calibration(torch.cat(means), torch.cat(variances), labels[rows], scales=(1.0,))
        self.temperature_, self.variance_scale_ = math.exp(log_t), 1.0

    def _progress(self, total: int, desc: str) -> Any:
        return progress_bar(total=total, desc=desc, leave=False, verbose=self.verbose)

    def _fit_exact_candidates(
        self,
        features: np.ndarray,
        candidates: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
        labels: np.ndarray,
        device: torch.device,
        seed: int,
    ) -> None:
        """Fit the exact GP on each pre-processing of :meth:`_preprocessing_candidates` and keep the
        one whose fit reaches the lower training objective.

        The objective is the negative log marginal likelihood of the Dirichlet targets (the same
        targets whatever the inputs' scaling, so the values compare), per row, plus the
        hyper-parameters' log-normal priors: type-II maximum likelihood, the rule that already
        chooses the lengthscales and signal variances, here choosing the inputs' scaling too. On
        unscaled tabular columns it picks per-column z-scores (sklearn wine, 5 draws: 5 of 5), on
        network features and pixels the plain scaling (a layer spread over >= 10 columns has no
        second candidate).
        """
        best = None
        for flags, mean, scale in candidates:
            self.l2_layers_, self.feature_mean_, self.feature_scale_ = flags, mean, scale
            self.loss_history_ = []
            objective = self._fit_exact(
                self._transform(features), labels, device, np.random.RandomState(seed), score=len(candidates) > 1
            )
            _LOGGER.debug("Exact GP: L2 layers %s, objective %.6f.", flags.tolist(), objective)
            objective = objective if math.isfinite(objective) else math.inf  # a failed fit loses
            if best is None or objective < best[0]:
                best = (objective, flags, mean, scale, self.model_, self.train_features_, self.loss_history_)
        (_, self.l2_layers_, self.feature_mean_, self.feature_scale_, self.model_, self.train_features_,
         self.loss_history_) = best  # fmt: skip

    def _fit_exact(
        self,
        x_np: np.ndarray,
        labels: np.ndarray,
        device: torch.device,
        rng: np.random.RandomState,
        score: bool = False,
    ) -> float:
        """Fit the kernel hyper-parameters on ``x_np``; with ``score``, return the final training
        objective (else ``nan``)."""
        self.train_features_ = x_np
        self.train_labels_ = labels
        x = torch.as_tensor(x_np, dtype=torch.float64, device=device)
        y = torch.as_tensor(labels, dtype=torch.long, device=device)
        self._build_exact(x, y)
        model = self.model_
        targets = model.train_targets
        model.mean_module.constant = targets.mean()
        self._init_hyperparameters(model.covar_module, x_np, rng, float(targets.var(dim=-1).mean()))
        model.train()
        fixed_noise = dirichlet_targets(y, self.n_classes_, float(self.alpha_epsilon), x.dtype)[1]
        bar = self._progress(int(self.max_iterations), "GP (exact)")
        kernel = model.covar_module
        centre = [kernel.lengthscale.detach().log().clone(), kernel.outputscale.detach().log().clone()]
        width = None if self.prior_width is None else float(self.prior_width)

        def loss_fn() -> torch.Tensor:
            loss = self._negative_log_marginal_likelihood(x, targets, fixed_noise)
            if width is not None:
                # Log-normal priors centred on the data-derived initial values: the lengthscales and
                # signal variances cannot run away to the "all noise" or "no correlation" optima.
                penalty = ((kernel.lengthscale.log() - centre[0]) / width).pow(2).sum()
                penalty = penalty + ((kernel.outputscale.log() - centre[1]) / width).pow(2).sum()
                loss = loss + 0.5 * penalty / x.shape[0]
            return loss

        if self.optimizer == "adam":
            opt = Adam(model.parameters(), lr=float(self.learning_rate))
            for step in range(int(self.max_iterations)):
                opt.zero_grad()
                loss = loss_fn()
                loss.backward()
                opt.step()
                self._record(loss, step, bar)
        else:
            evaluations = [0]

            def recorded_loss() -> torch.Tensor:
                loss = loss_fn()
                self._record(loss, evaluations[0], bar)
                evaluations[0] += 1
                return loss

            minimize_lbfgs(model.parameters(), recorded_loss, int(self.max_iterations))
        if bar is not None:
            bar.close()
        if not score:
            return math.nan
        with torch.no_grad():
            return float(loss_fn())

    def _negative_log_marginal_likelihood(
        self, x: torch.Tensor, targets: torch.Tensor, fixed_noise: torch.Tensor
    ) -> torch.Tensor:
        """Summed over the K classes, per training row: ``-log N(y_k | m, K_xx + diag(noise_k)) / N``.

        GPyTorch's ``ExactMarginalLogLikelihood(likelihood, model)(model(x), y).sum()`` with the
        sign flipped, computed from one Cholesky factor per class. Written out because GPyTorch's
        version goes through ``torch.broadcast_shapes``, whose first call imports SymPy in torch
        2.13 (about 0.7 s of a fresh process's first fit). Not positive definite: ``inf``, which
        the optimisers treat as a step to take back.
        """
        model = self.model_
        n = x.shape[0]
        kxx = model.covar_module(x, x).to_dense()
        noise = fixed_noise + self._additional_noise(detach=False)
        chol, info = torch.linalg.cholesky_ex(kxx.expand(self.n_classes_, n, n) + torch.diag_embed(noise))
        if bool(info.any()):
            return torch.full((), math.inf, dtype=x.dtype, device=x.device, requires_grad=True)
        residual = (targets - model.mean_module.constant.reshape(())).unsqueeze(-1)
        whitened = torch.linalg.solve_triangular(chol, residual, upper=False)
        half_log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        per_class = 0.5 * whitened.pow(2).sum((-2, -1)) + half_log_det + 0.5 * n * math.log(2 * math.pi)
        return per_class.sum() / n

    def _record(self, loss: torch.Tensor, step: int, bar: Any) -> None:
        value = float(loss.detach())
        self.loss_history_.append(value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
        if step % 25 == 0:
            _LOGGER.debug("step %d: loss %.5f", step, value)

    def _fit_sparse(
        self, x_np: np.ndarray, labels: np.ndarray, device: torch.device, rng: np.random.RandomState, seed: int
    ) -> None:
        n = x_np.shape[0]
        if isinstance(x_np, _out_of_core.StoreRows):  # minibatches gathered from the files
            x = x_np
        else:
            x = torch.as_tensor(x_np, dtype=torch.float32, device=device)
        y = torch.as_tensor(labels, dtype=torch.long, device=device)
        num_inducing = min(int(self.num_inducing), n)
        # Stratified choice of inducing inputs: every class is represented.
        order = rng.permutation(n)
        per_class = [order[labels[order] == k] for k in range(self.n_classes_)]
        picked: list[int] = []
        depth = 0
        while len(picked) < num_inducing:
            for members in per_class:
                if depth < len(members) and len(picked) < num_inducing:
                    picked.append(int(members[depth]))
            depth += 1
        inducing = x[torch.as_tensor(np.sort(picked), device=device)].clone()
        self._build_sparse(inducing)
        model = self.model_
        self._init_hyperparameters(model.covar_module, x_np, rng, 1.0)
        model.train()
        opt = Adam(model.parameters(), lr=float(self.sparse_learning_rate))
        batch = min(int(self.sparse_batch_size), n)
        steps_per_epoch = math.ceil(n / batch)
        total = min(int(self.max_iterations) * steps_per_epoch, int(self.max_sparse_steps))
        # Minibatch order and likelihood noise come from a CPU generator: reproducible on any device.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        n_samples = int(self.num_likelihood_samples)
        bar = self._progress(total, "GP (sparse)")
        step = 0
        while step < total:
            permutation = torch.randperm(n, generator=generator).to(device)
            for start in range(0, n, batch):
                if step >= total:
                    break
                idx = permutation[start : start + batch]
                noise = torch.randn(n_samples, idx.shape[0], self.n_classes_, generator=generator)
                opt.zero_grad()
                mean, var = model.moments(x[idx])
                latent = mean + var.sqrt() * noise.to(device)
                # Expected log-likelihood of the softmax, per data point (MC), minus KL / N.
                log_lik = torch.log_softmax(latent, dim=-1).gather(
                    -1, y[idx].expand(n_samples, -1).unsqueeze(-1)
                ).mean()
                kl = model.kl_divergence()
                loss = kl / n - log_lik
                loss.backward()
                opt.step()
                self._record(loss, step, bar)
                step += 1
        if bar is not None:
            bar.close()

    # ----------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        if self.model_ is None:
            raise NotFittedError("This GpClassifierCore is not fitted yet: call fit first.")

    def _points(self) -> torch.Tensor:
        if self._normal_points is None:
            self._normal_points = sobol_normal_points(
                int(self.num_prediction_samples), int(self.n_classes_), int(self.prediction_seed)
            )
        return self._normal_points

    def _exact_cache_for(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Cholesky factors and weights of the K exact posteriors on ``device`` (computed once)."""
        if self._exact_cache is not None and self._exact_cache["x"].device == device:
            return self._exact_cache
        model = self.model_.to(device)
        x = torch.as_tensor(self.train_features_, dtype=torch.float64, device=device)
        targets, noise = dirichlet_targets(
            torch.as_tensor(self.train_labels_, device=device), self.n_classes_, float(self.alpha_epsilon), torch.float64
        )
        with torch.no_grad(), _gp_settings():
            kxx = model.covar_module(x, x).to_dense()
            noise_total = noise + self._additional_noise()
            covar = kxx.expand(self.n_classes_, -1, -1) + torch.diag_embed(noise_total)
            chol, info = torch.linalg.cholesky_ex(covar)
            jitter = 1e-8 * float(kxx.diagonal().mean())
            while bool(info.any()):
                if jitter > 1.0:
                    raise SerializationError("The exact GP covariance is not positive definite.")
                chol, info = torch.linalg.cholesky_ex(
                    covar + jitter * torch.eye(x.shape[0], dtype=torch.float64, device=device)
                )
                jitter *= 10
            constant = model.mean_module.constant.reshape(())
            weights = torch.cholesky_solve((targets - constant).unsqueeze(-1), chol).squeeze(-1)  # (K, N)
        self._exact_cache = {"x": x, "chol": chol, "weights": weights.T.contiguous(), "constant": constant}
        return self._exact_cache

    def latent_moments(
        self, features: np.ndarray, device: torch.device, batch_size: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and variances of the K latent functions.

        Parameters
        ----------
        features : numpy.ndarray
            Shape ``(N, D)``.
        device : torch.device
            Device to compute on.
        batch_size : int, default=1024
            Rows per batch.

        Returns
        -------
        mean, variance : numpy.ndarray
            float64 arrays of shape ``(N, K)``.
        """
        mean, variance = self._latent_moments_torch(features, device, batch_size)
        return mean.cpu().numpy(), variance.cpu().numpy()

    def _latent_moments_torch(
        self, features: np.ndarray, device: torch.device, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_fitted()
        features = check_features(features, self.n_features_)
        device = check_device(device)
        check_int("batch_size", batch_size, 1)
        x_np = self._transform(features)
        dtype = self._dtype()
        means, variances = [], []
        model = self.model_.to(device)
        model.eval()
        cache = self._exact_cache_for(device) if self.mode_ == "exact" else None
        chol_uu = None
        with torch.no_grad(), _gp_settings():
            for start in range(0, x_np.shape[0], batch_size):
                xb = torch.as_tensor(x_np[start : start + batch_size], dtype=dtype, device=device)
                if cache is not None:
                    cross = model.covar_module(xb, cache["x"]).to_dense()  # (B, N)
                    mean = cache["constant"] + cross @ cache["weights"]  # (B, K)
                    half = torch.linalg.solve_triangular(
                        cache["chol"], cross.T.expand(self.n_classes_, -1, -1), upper=False
                    )  # (K, N, B)
                    prior = model.covar_module(xb, xb, diag=True)  # (B,)
                    var = (prior.unsqueeze(0) - half.pow(2).sum(-2)).T  # (B, K)
                else:
                    if chol_uu is None:
                        chol_uu = model._chol_uu()
                    mean, var = model.moments(xb, chol_uu)
                means.append(mean.to(torch.float64))
                variances.append(var.to(torch.float64).clamp_min(0.0))
        return torch.cat(means), torch.cat(variances)

    def predict_proba(self, features: np.ndarray, device: torch.device, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities, deterministic.

        Parameters
        ----------
        features : numpy.ndarray
            Shape ``(N, D)``.
        device : torch.device
            Device to compute on.
        batch_size : int, default=1024
            Rows per batch (does not change the result beyond floating-point rounding).

        Returns
        -------
        numpy.ndarray
            float64 array of shape ``(N, K)`` whose rows sum to one.

        Raises
        ------
        NotFittedError
            Called before :meth:`fit`.
        InvalidArgumentError
            Wrong number of columns or non-finite values.
        """
        mean, variance = self._calibrated_moments(features, device, batch_size)
        return mc_softmax(mean, variance, self._points()).cpu().numpy()

    def predict_uncertainty(
        self, features: np.ndarray, device: torch.device, batch_size: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_proba` and the mutual information between prediction and latent functions.

        Returns
        -------
        probabilities : numpy.ndarray of shape (N, K)
        mutual_information : numpy.ndarray of shape (N,)
        """
        mean, variance = self._calibrated_moments(features, device, batch_size)
        probs, information = mc_softmax(mean, variance, self._points(), return_mutual_information=True)
        return probs.cpu().numpy(), information.cpu().numpy()

    def _calibrated_moments(
        self, features: np.ndarray, device: torch.device, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent moments with the calibration applied: ``m / T`` and ``c v / T^2``."""
        mean, variance = self._latent_moments_torch(features, device, batch_size)
        temperature = float(self.temperature_)
        return mean / temperature, float(self.variance_scale_) * variance / temperature**2

    # ------------------------------------------------------------------- state
    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Everything prediction needs, as a strict-JSON config and plain numeric arrays.

        Returns
        -------
        config : dict
            Options, fitted sizes and readable hyper-parameters (JSON-safe).
        arrays : dict of str to numpy.ndarray
            Pre-processing statistics, layer columns and model parameters. An exact model also
            stores its pre-processed training features (only the kernel's columns) and labels:
            exact GP prediction needs them. A sparse model stores no training data, only the
            inducing points and variational parameters.
        """
        self._check_fitted()
        arrays: dict[str, np.ndarray] = {
            "feature_mean": np.asarray(self.feature_mean_, dtype=np.float64),
            "feature_scale": np.asarray(self.feature_scale_, dtype=np.float64),
            "layer_columns": np.concatenate(self.layer_indices_).astype(np.int64),
            "layer_sizes": np.asarray([len(i) for i in self.layer_indices_], dtype=np.int64),
            "l2_layers": np.asarray(self.l2_layers_, dtype=np.int64),
        }
        for name, tensor in self.model_.state_dict().items():
            if name in _DERIVED_STATE or name.startswith("likelihood.noise_covar."):
                continue  # rebuilt from the labels and the kernel's construction
            arrays[_PARAM_PREFIX + name] = tensor.detach().cpu().numpy().copy()
        if self.mode_ == "exact":
            arrays["train_features"] = np.asarray(self.train_features_, dtype=np.float64)
            arrays["train_labels"] = np.asarray(self.train_labels_, dtype=np.int64)
        config = {
            "format_version": STATE_FORMAT_VERSION,
            "class": "GpClassifierCore",
            "options": self._option_dict(),
            "mode": self.mode_,
            "n_classes": int(self.n_classes_),
            "n_features": int(self.n_features_),
            "hyperparameters": self._readable_hyperparameters(),
            "final_loss": _to_json_float(self.loss_history_[-1]) if self.loss_history_ else None,
            "temperature": _to_json_float(self.temperature_),
            "variance_scale": _to_json_float(self.variance_scale_),
        }
        return config, arrays

    def _readable_hyperparameters(self) -> dict[str, Any]:
        kernel = self.model_.covar_module
        out: dict[str, Any] = {
            "outputscales": [_to_json_float(v) for v in kernel.outputscale.detach().cpu().tolist()],
            "lengthscales": [_to_json_float(v) for v in kernel.lengthscale.detach().cpu().tolist()],
        }
        if self.mode_ == "exact":
            out["constant_mean"] = _to_json_float(self.model_.mean_module.constant.detach().reshape(-1)[0])
            if self.learn_additional_noise:
                out["additional_noise"] = [
                    _to_json_float(v) for v in self.model_.likelihood.second_noise.detach().reshape(-1).tolist()
                ]
        return out

    @classmethod
    def from_state(cls, config: dict, arrays: dict[str, np.ndarray]) -> GpClassifierCore:
        """Rebuild a fitted classifier from :meth:`get_state`'s output (on the CPU).

        Parameters
        ----------
        config : dict
            The config returned by :meth:`get_state`.
        arrays : dict of str to numpy.ndarray
            The arrays returned by :meth:`get_state`.

        Returns
        -------
        GpClassifierCore
            A fitted classifier that predicts what the saved one did.

        Raises
        ------
        SerializationError
            A config or arrays that do not describe a fitted GP classifier.
        """
        try:
            core = core_from_state(cls, config, "GP", STATE_FORMAT_VERSION)
            core.mode_ = str(config["mode"])
            core.temperature_ = float(config.get("temperature", 1.0))
            core.variance_scale_ = float(config.get("variance_scale", 1.0))
            if core.mode_ not in ("exact", "sparse"):
                raise SerializationError(f"Unknown GP mode {core.mode_!r}.")
            sizes = np.asarray(arrays["layer_sizes"], dtype=np.int64)
            columns = np.asarray(arrays["layer_columns"], dtype=np.int64)
            core.layer_indices_ = list(np.split(columns, np.cumsum(sizes)[:-1]))
            core.feature_mean_ = np.asarray(arrays["feature_mean"], dtype=np.float64)
            core.feature_scale_ = np.asarray(arrays["feature_scale"], dtype=np.float64)
            if "l2_layers" in arrays:
                core.l2_layers_ = l2_layers_from_state(arrays["l2_layers"], len(sizes), "GP")
            elif int(config["format_version"]) < 3:  # every layer normalised when apply_l2_norm
                core.l2_layers_ = np.full(len(sizes), bool(core.apply_l2_norm))
            else:
                raise SerializationError("GP state (format 3) lacks the array 'l2_layers'.")
            params = {k[len(_PARAM_PREFIX) :]: torch.as_tensor(np.asarray(v)) for k, v in arrays.items() if k.startswith(_PARAM_PREFIX)}
            if core.mode_ == "exact":
                core.train_features_ = np.asarray(arrays["train_features"], dtype=np.float64)
                core.train_labels_ = np.asarray(arrays["train_labels"], dtype=np.int64)
                core._build_exact(
                    torch.as_tensor(core.train_features_, dtype=torch.float64),
                    torch.as_tensor(core.train_labels_, dtype=torch.long),
                )
            else:
                core._build_sparse(params[_INDUCING_KEY].to(torch.float32))
            state = core.model_.state_dict()
            expected = {k for k in state if k not in _DERIVED_STATE and not k.startswith("likelihood.noise_covar.")}
            if set(params) != expected:
                raise SerializationError(
                    f"GP state arrays do not match the model: missing {sorted(expected - set(params))}, "
                    f"unexpected {sorted(set(params) - expected)}."
                )
            for key, value in params.items():
                if tuple(value.shape) != tuple(state[key].shape):
                    raise SerializationError(f"GP state array {key!r} has shape {tuple(value.shape)}, expected {tuple(state[key].shape)}.")
                state[key] = value.to(state[key].dtype)
            core.model_.load_state_dict(state, strict=True)
        except SerializationError:
            raise
        except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as error:
            raise SerializationError(f"Corrupt or incompatible GP state: {error!r}") from error
        core.model_.eval()
        return core


__all__ = ["GpClassifierCore", "dirichlet_targets", "mc_softmax", "sobol_normal_points"]
