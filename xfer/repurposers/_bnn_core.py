"""Numerical core of the Bayesian-neural-network classification head (used by ``BnnRepurposer``).

:class:`BnnClassifierCore` is a mean-field Gaussian variational BNN ("Bayes by backprop",
Blundell et al., 2015) written directly in PyTorch:

* ``num_layers`` hidden ReLU layers of ``n_hidden`` units, then a linear output layer with one unit
  per class (Xfer's meaning: ``num_layers=1`` is one hidden layer; ``num_layers=0`` is Bayesian
  multinomial logistic regression).
* Inputs: each layer's features scaled to unit L2 norm per row, standardised like the other heads,
  and, with ``num_layers=0`` when the training rows span fewer directions than there are features
  (few-shot: ``N <= D``), taken as coordinates in that span (:meth:`BnnClassifierCore._fit_basis`).
* ``num_layers=0``: the posterior means start at the MAP (:meth:`BnnClassifierCore._map_init`), and the KL term has
  full weight from the first step (nothing to anneal: training starts at the mode), unless
  ``start_annealing``/``end_annealing`` are given. With ``calibrate`` (the default; up to 2,000
  rows in memory) the means stay at the MAP, training fits the standard deviations, and a
  temperature and a scale of the variances are chosen by cross-validation
  (:meth:`BnnClassifierCore._fit_calibration`).
* Every weight and bias ``w`` has the prior ``N(0, sigma^2)`` (Xfer's ``sigma`` is the prior
  standard deviation) and the posterior ``N(mu, softplus(rho)^2)``.
* Training maximises the ELBO with the *local reparameterisation trick* (Kingma et al., 2015):
  pre-activations are sampled from their Gaussian given the inputs, which is cheaper and has lower
  variance than sampling weights. ``num_samples_mc`` samples per step are drawn in one batched
  computation. The loss per step is ``mean NLL + beta(epoch) * KL / N``.
* KL annealing: ``beta`` grows linearly from 0 to 1 between epochs ``start_annealing`` and
  ``end_annealing`` (Xfer's schedule) and restarts at 0 on every :meth:`~BnnClassifierCore.fit`.
* Prediction samples ``num_samples_mc_prediction`` complete weight sets from a generator seeded by
  ``prediction_seed`` on the CPU, shares them across all rows, and averages the softmax
  probabilities (not labels), in float64: deterministic, independent of batching, identical after
  :meth:`~BnnClassifierCore.from_state`, and not quantised to ``1 / num_samples``.

How the parameters interact with ``N``: one epoch is one pass over the data in minibatches of
``batch_size`` rows, so an epoch takes ``ceil(N / batch_size)`` optimiser steps. To keep large data
sets affordable, an epoch is capped at ``max_steps_per_epoch`` steps (default 20) by enlarging the
minibatch to ``ceil(N / max_steps_per_epoch)`` rows; for ``N <= batch_size * max_steps_per_epoch``
(400 rows with the defaults) ``batch_size`` is used as given. Total steps are therefore at most
``num_epochs * max_steps_per_epoch``.

The minibatch grows only up to ``max_batch_size`` rows (default 512; up to
``max_batch_size * max_steps_per_epoch`` = 10,240 rows with the defaults every epoch is still one
pass and nothing changes). Above that, an epoch is ``max_steps_per_epoch`` minibatches of
``max_batch_size`` rows that continue through the shuffled rows where the previous epoch stopped,
so the fit costs ``num_epochs * max_steps_per_epoch`` steps of a bounded size whatever ``N``,
as stochastic variational inference does, instead of ``num_epochs`` passes over all the rows
(200 passes over 100,000 rows of 1,280 features read from disk took over 29 minutes). The
rule: what a step needs is a gradient whose noise is small beside its signal, and a minibatch of
512 rows already averages away most of the per-row noise (its standard error is 4.4% of one row's),
while the step budget is what Adam needs to move the variational parameters (each step moves a
parameter by about ``learning_rate``), which does not grow with ``N``. The posterior means start at
the MAP of all the rows (``num_layers=0``) whatever ``N``. The bounded fit matches the full-pass
one within the spread between seeds
(``tests/repurposers/test_bnn_core.py::test_a_bounded_minibatch_keeps_the_step_budget_and_the_fit``);
on 20,000 Fashion-MNIST images (raw pixels), minibatches of 512 against 1,000 rows gave accuracy
0.828 / 0.825 and NLL 0.622 / 0.624 on the 10,000 test images, at 132 / 160 s CPU.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xfer._progress import check_verbose, progress_bar
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
    check_standardize_mode,
    fit_standardizer,
    l2_layers,
    l2_layers_from_state,
    l2_normalize_layers,
)
from xfer.repurposers._uncertainty import (
    is_degenerate,
    one_standard_error_choice,
    probit_row_nll,
    stratified_folds,
    warn_degenerate,
)

_LOGGER = logging.getLogger("xfer.repurposers.bnn")

#: Variance scales of the calibration (multiplying the posterior's variances); the first, 0, is
#: the means alone (the MAP: the default of the choice), 1 the fitted posterior.
_VARIANCE_SCALES = np.concatenate([[0.0, 1.0], np.logspace(-2, 2, 17)])
#: Most rows the calibration cross-validates (one MAP refit per fold, up to 10 folds).
_CALIBRATION_ROWS = 2000

# 5: temperature and variance_scale (the calibration); 4: l2_layers (the layers apply_l2_norm normalises); 3: the span basis and MAP initialisation; 2: apply_l2_norm and layer columns; 1: no L2 norm.
STATE_FORMAT_VERSION = 5


def annealing_weight(epoch: int, start: int, end: int) -> float:
    """KL weight of ``epoch`` (0-based): 0 up to ``start``, linear to 1 at ``end``, then 1.

    Parameters
    ----------
    epoch : int
        Current epoch, counted from 0 within one :meth:`BnnClassifierCore.fit` call.
    start, end : int
        Annealing window (``start < end``).

    Returns
    -------
    float
        The weight in ``[0, 1]``.
    """
    return float(min(max(epoch - start, 0), end - start)) / float(end - start)


class BnnClassifierCore:
    """Mean-field Gaussian variational BNN classifier on feature arrays.

    Parameters
    ----------
    sigma : float or None, default=None
        Standard deviation of the Gaussian prior ``N(0, sigma^2)`` of every weight and bias
        (Xfer's meaning); ``None``: ``1 / sqrt(fan_in)`` for each layer's weights and 1 for the
        biases (see :meth:`_prior_std`).
    num_layers : int, default=1
        Number of hidden ReLU layers (0: Bayesian multinomial logistic regression).
    n_hidden : int, default=10
        Units per hidden layer.
    num_samples_mc : int, default=3
        Monte Carlo samples of the ELBO per optimiser step (drawn in one batch).
    learning_rate : float, default=1e-3
        Adam learning rate.
    batch_size : int, default=20
        Minibatch size (enlarged for large data sets, see ``max_steps_per_epoch``).
    num_epochs : int, default=200
        Passes over the training data.
    start_annealing : int or None, default=None
        Epoch at which the KL weight starts to grow from 0; ``None`` means ``int(0.1 * num_epochs)``.
    end_annealing : int or None, default=None
        Epoch at which the KL weight reaches 1; ``None`` means
        ``start_annealing + max(int(0.1 * num_epochs), 1)``.
    num_samples_mc_prediction : int, default=100
        Weight samples averaged at prediction.
    verbose : bool or int, default=0
        ``> 0``: a tqdm bar over epochs. The loss of every epoch is logged to
        ``xfer.repurposers.bnn`` (INFO) whatever the value.
    random_state : int or None, default=None
        Seed of initialisation, minibatch order and training noise; ``None`` draws a fresh seed
        from NumPy's global generator at each fit.
    max_steps_per_epoch : int, default=20
        Cap on optimiser steps per epoch; above it the minibatch grows to
        ``ceil(N / max_steps_per_epoch)`` rows, up to ``max_batch_size``.
    max_batch_size : int or None, default=512
        Largest minibatch the enlargement above makes (a larger ``batch_size`` is kept as given).
        Above ``max_batch_size * max_steps_per_epoch`` rows an epoch is ``max_steps_per_epoch``
        minibatches of this size that continue through the shuffled rows from where the previous
        epoch stopped (part of a pass), so the cost of a fit does not grow with ``N``; ``None``:
        no bound (every epoch a full pass; the cost grows linearly with ``N``).
    prediction_seed : int, default=0
        Seed of the prediction weight samples (saved with the model).
    min_steps : int, default=2000
        At least this many optimiser steps in all: when ``num_epochs`` epochs of minibatches are
        fewer, every epoch makes several passes over the data (20 examples in minibatches of 20
        would otherwise get 200 steps, far from trained).
    apply_l2_norm : bool, default=True
        Scale each layer's features to unit L2 norm per row before standardising (bounded inputs
        keep the ReLU network from extrapolating to confident logits far from the data).
        Layers whose norm few columns carry (fewer than 10 effective columns,
        ``_linear.l2_layers``: e.g. unscaled tabular data, where one column in large units would
        be erased) are left unnormalised; ``l2_layers_`` records the choice.
    project_to_span : bool, default=True
        With ``num_layers=0``, when the training rows span fewer directions than there are
        features (``N <= D``), take the standardised features' coordinates in that span (the
        prior restricted to the directions the data can inform; see :meth:`_fit_basis`).
    calibrate : bool, default=True
        With ``num_layers=0`` and 2 to 2,000 rows in memory: hold the posterior means at the MAP
        (training fits only the posterior's standard deviations; ``means_at_map_``), then choose a
        temperature (1 to 4, dividing the logits) and a scale of the posterior's variances (0 to
        100) by cross-validation on the training rows (up to 10 folds, each holding every class in
        turn): each fold's means are the MAP refitted without the fold (exactly what the means are
        for all the rows), the variances the fitted posterior's, under the probit approximation. The
        MAP's predictive (temperature 1, scale 0: logistic regression with ``LrRepurposer``'s
        penalty) is kept unless the best candidate's gain in held-out NLL exceeds the standard error
        of the per-row gains (the rule of the Laplace head,
        ``_uncertainty.one_standard_error_choice``) and the candidate beats predicting the class
        frequencies by more than the standard error of its gains. ``temperature_`` and
        ``variance_scale_`` record the choice (1 and 1 without a calibration). Why: the fitted
        standard deviations are set by the step budget, not by the data (they start at a tenth of
        the weight scale and 200 Adam steps move them little; 4,000 steps take them towards the
        mean-field posterior, whose spread in the directions few rows constrain flattened the
        predictions: 20 Newsgroups 20 per class NLL 1.419 with the means held and no choice), and
        when the means train too they grow to offset the noise on the training rows (3-14% in norm
        on 20-40 rows) while no fold refit could reproduce them. ``False``: the means train with the
        standard deviations and the predictive is the fitted one (the behaviour before 2026-12).
    standardize : {"layer", "column", "none"}, default="layer"
        Feature scaling before the network, shared with the other heads
        (``_linear.fit_standardizer``; ``"layer"`` is ``LrRepurposer``'s default).
    num_threads : int or None, default=None
        torch intra-op threads during fit and predict; ``None`` picks 1 thread when a step's
        work is tiny (where threading overhead dominates), else leaves torch's setting.

    Raises
    ------
    InvalidArgumentError
        ``start_annealing >= num_epochs``, ``end_annealing > num_epochs``,
        ``end_annealing <= start_annealing``, or a non-positive size/rate.
    InvalidTypeError
        An option of the wrong type.
    """

    def __init__(
        self,
        *,
        sigma: float | None = None,
        num_layers: int = 1,
        n_hidden: int = 10,
        num_samples_mc: int = 3,
        learning_rate: float = 1e-3,
        batch_size: int = 20,
        num_epochs: int = 200,
        start_annealing: int | None = None,
        end_annealing: int | None = None,
        num_samples_mc_prediction: int = 100,
        verbose: int = 0,
        random_state: int | None = None,
        max_steps_per_epoch: int = 20,
        max_batch_size: int | None = 512,
        prediction_seed: int = 0,
        num_threads: int | None = None,
        min_steps: int = 2000,
        apply_l2_norm: bool = True,
        project_to_span: bool = True,
        standardize: str = "layer",
        calibrate: bool = True,
    ) -> None:
        self.sigma = sigma
        self.num_layers = num_layers
        self.n_hidden = n_hidden
        self.num_samples_mc = num_samples_mc
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.num_epochs = num_epochs
        self.start_annealing = start_annealing
        self.end_annealing = end_annealing
        self.num_samples_mc_prediction = num_samples_mc_prediction
        self.verbose = verbose
        self.random_state = random_state
        self.max_steps_per_epoch = max_steps_per_epoch
        self.max_batch_size = max_batch_size
        self.prediction_seed = prediction_seed
        self.num_threads = num_threads
        self.min_steps = min_steps
        self.apply_l2_norm = apply_l2_norm
        self.project_to_span = project_to_span
        self.standardize = standardize
        self.calibrate = calibrate
        self._validate_options()
        self._reset_fitted()

    # ------------------------------------------------------------------ options
    def annealing_window(self) -> tuple[int, int]:
        """The ``(start, end)`` epochs of KL annealing after applying the defaults.

        Returns
        -------
        tuple of int
            ``start < end <= num_epochs``.
        """
        start = int(0.1 * self.num_epochs) if self.start_annealing is None else int(self.start_annealing)
        if self.end_annealing is None:
            end = start + max(int(0.1 * self.num_epochs), 1)
        else:
            end = int(self.end_annealing)
        return start, end

    def _validate_options(self) -> None:
        if self.sigma is not None:
            check_positive_float("sigma", self.sigma)
        check_int("min_steps", self.min_steps, 0)
        if not isinstance(self.calibrate, (bool, np.bool_)):
            raise InvalidTypeError(f"calibrate must be True or False, got {self.calibrate!r}.")
        check_standardize_mode(self.standardize)
        check_int("num_layers", self.num_layers, 0)
        check_int("n_hidden", self.n_hidden, 1)
        check_int("num_samples_mc", self.num_samples_mc, 1)
        check_positive_float("learning_rate", self.learning_rate)
        check_int("batch_size", self.batch_size, 1)
        check_int("num_epochs", self.num_epochs, 1)
        check_int("start_annealing", self.start_annealing, 0, allow_none=True)
        check_int("end_annealing", self.end_annealing, 1, allow_none=True)
        check_int("num_samples_mc_prediction", self.num_samples_mc_prediction, 1)
        check_verbose(self.verbose)
        check_int("random_state", self.random_state, 0, allow_none=True)
        check_int("max_steps_per_epoch", self.max_steps_per_epoch, 1)
        check_int("max_batch_size", self.max_batch_size, 1, allow_none=True)
        check_int("prediction_seed", self.prediction_seed, 0)
        check_int("num_threads", self.num_threads, 1, allow_none=True)
        if self.start_annealing is not None and self.start_annealing >= self.num_epochs:
            raise InvalidArgumentError(
                "start_annealing must be smaller than the number of epochs: got "
                f"start_annealing={self.start_annealing}, num_epochs={self.num_epochs}."
            )
        start, end = self.annealing_window()
        if self.end_annealing is not None and end > self.num_epochs:
            raise InvalidArgumentError(
                "end_annealing must not exceed the number of epochs: got "
                f"end_annealing={end}, num_epochs={self.num_epochs}."
            )
        if end <= start:
            raise InvalidArgumentError(
                "end_annealing must be greater than start_annealing: got "
                f"start_annealing={start}, end_annealing={end}."
            )

    def _option_dict(self) -> dict[str, Any]:
        return {
            "sigma": None if self.sigma is None else float(self.sigma),
            "min_steps": int(self.min_steps),
            "apply_l2_norm": bool(self.apply_l2_norm),
            "project_to_span": bool(self.project_to_span),
            "standardize": str(self.standardize),
            "calibrate": bool(self.calibrate),
            "num_layers": int(self.num_layers),
            "n_hidden": int(self.n_hidden),
            "num_samples_mc": int(self.num_samples_mc),
            "learning_rate": float(self.learning_rate),
            "batch_size": int(self.batch_size),
            "num_epochs": int(self.num_epochs),
            "start_annealing": None if self.start_annealing is None else int(self.start_annealing),
            "end_annealing": None if self.end_annealing is None else int(self.end_annealing),
            "num_samples_mc_prediction": int(self.num_samples_mc_prediction),
            "verbose": int(self.verbose),
            "random_state": None if self.random_state is None else int(self.random_state),
            "max_steps_per_epoch": int(self.max_steps_per_epoch),
            "max_batch_size": None if self.max_batch_size is None else int(self.max_batch_size),
            "prediction_seed": int(self.prediction_seed),
            "num_threads": None if self.num_threads is None else int(self.num_threads),
        }

    def _reset_fitted(self) -> None:
        self.n_classes_: int | None = None
        self.n_features_: int | None = None
        self.layer_indices_: list[np.ndarray] | None = None
        self.l2_layers_: np.ndarray | None = None  # per layer: L2-normalised (``apply_l2_norm``)
        self.feature_mean_: np.ndarray | None = None
        self.feature_scale_: np.ndarray | None = None
        # Per layer: weight_mu (in, out), weight_rho (in, out), bias_mu (out,), bias_rho (out,).
        self.params_: list[dict[str, torch.Tensor]] | None = None
        self.loss_history_: list[float] = []
        self.annealing_weights_: list[float] = []
        self.effective_batch_size_: int | None = None
        self.basis_: np.ndarray | None = None  # (D, r) orthonormal span of the training rows, or None
        self.map_initialised_: bool = False
        self.temperature_: float = 1.0  # the calibration's choice (calibrate)
        self.means_at_map_: bool = False  # training held the posterior means at the MAP (calibrate)
        self.variance_scale_: float = 1.0
        self._prediction_noise: dict[tuple[str, int | None], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    # -------------------------------------------------------------- internals
    def _n_inputs(self) -> int:
        """Width of the network's input: the span basis's rank, or the number of features."""
        return self.n_features_ if self.basis_ is None else int(self.basis_.shape[1])

    def _layer_sizes(self) -> list[int]:
        return [self._n_inputs()] + [int(self.n_hidden)] * int(self.num_layers) + [self.n_classes_]

    def _l2(self, features: np.ndarray) -> np.ndarray:
        if not self.l2_layers_.any():
            return features
        return l2_normalize_layers(features, self.layer_indices_, self.l2_layers_)

    def _transform(self, features: np.ndarray) -> np.ndarray:
        """The network's inputs: standardised features, in the span basis when there is one."""
        normalised = self._l2(features)
        scaled = normalised.astype(np.float64, copy=normalised is features)  # a copy of our own
        scaled -= self.feature_mean_
        scaled /= self.feature_scale_
        return scaled if self.basis_ is None else scaled @ self.basis_

    def _fit_basis(self, scaled: np.ndarray) -> None:
        """``basis_``: orthonormal columns spanning the standardised training rows, when they span
        fewer than all ``D`` directions (``N <= D``); ``None`` otherwise.

        The likelihood does not involve a weight direction orthogonal to every training row, so
        there the posterior is the prior. Dropping those directions is the same model with the
        prior restricted to the rows' span (the representer theorem: the MAP lies in it anyway):
        the first layer has ``r x H`` weights instead of ``D x H`` (20 rows of 1,280 features:
        at most 20 input directions, not 1,280, so the KL term no longer swamps 20 examples),
        and a test row is judged by its component in that span. Only for ``num_layers=0``, where
        it is exactly that restriction of the prior: a hidden layer initialised for unit-scale
        inputs trained worse on the span's coordinates (whose scales are the rows' singular
        values): faces 0.904 vs 0.980, R8 0.597 vs 0.736 with ``sigma=100, num_layers=1``. Without it, the prior's variance
        in the directions the data never constrained (``sigma^2 |x_perp|^2`` per logit, hundreds
        on a few hundred standardised features) flattened the predictions on the task's own
        inputs (Reuters R8, 5 per class: mean top probability 0.59 at accuracy 0.85, where
        logistic regression has 0.76; measured with the benchmark's tasks, 5 draws).
        """
        self.basis_ = None
        if not self.project_to_span or int(self.num_layers) != 0 or scaled.shape[0] > scaled.shape[1]:
            return
        _, singular, vt = np.linalg.svd(scaled, full_matrices=False)
        keep = singular**2 > 1e-10 * max(float(singular.max()) ** 2, 1e-300)
        if 0 < int(keep.sum()) < scaled.shape[1]:  # constant rows span nothing: keep the features
            self.basis_ = np.ascontiguousarray(vt[keep].T)

    def _threads(self, work_per_step: float) -> int | None:
        if self.num_threads is not None:
            return int(self.num_threads)
        return 1 if work_per_step < 5e6 else None

    def _layout(self) -> list[tuple[int, int, int, int]]:
        """``(fan_in, fan_out, weight_offset, bias_offset)`` of each layer in the flat parameter vector."""
        sizes = self._layer_sizes()
        layout = []
        offset = 0
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layout.append((fan_in, fan_out, offset, offset + fan_in * fan_out))
            offset += fan_in * fan_out + fan_out
        return layout

    def _check_fits_in_memory(self) -> None:
        """Refuse a network whose parameters (with their gradients, Adam's moments and the
        Monte Carlo weight samples of training and prediction) cannot fit in this machine's RAM."""
        n_in, n_out, n_params = self._n_inputs(), self.n_classes_, self._num_params()
        per_param = 32 + 4 * int(self.num_samples_mc) + 16 * int(self.num_samples_mc_prediction)
        needed = n_params * per_param
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, OSError, ValueError):  # not POSIX: no bound known
            return
        if needed > available:
            self._reset_fitted()
            raise InvalidArgumentError(
                f"The BNN of num_layers={self.num_layers}, n_hidden={self.n_hidden} on "
                f"{n_in} features and {n_out} classes has {n_params:,} weights "
                f"and needs about {needed / 2**30:,.1f} GiB (this machine has "
                f"{available / 2**30:,.1f} GiB): use fewer or smaller hidden layers (or fewer "
                "num_samples_mc_prediction)."
            )

    def _num_params(self) -> int:
        """Weights and biases of all layers, counted without listing the layers (num_layers may
        be huge: :meth:`_check_fits_in_memory` asks before anything is built)."""
        n_in, hidden, layers, n_out = self._n_inputs(), int(self.n_hidden), int(self.num_layers), self.n_classes_
        if layers == 0:
            return (n_in + 1) * n_out
        return (n_in + 1) * hidden + (layers - 1) * (hidden + 1) * hidden + (hidden + 1) * n_out

    def _unflatten(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views ``(weight (in, out), bias (out,))`` of each layer into a flat vector."""
        views = []
        for fan_in, fan_out, weight_offset, bias_offset in self._layout():
            weight = flat[weight_offset:bias_offset].view(fan_in, fan_out)
            bias = flat[bias_offset : bias_offset + fan_out]
            views.append((weight, bias))
        return views

    def _init_flat(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial posterior means (He-uniform weights, zero biases) and softplus-inverse stds."""
        mu = torch.zeros(self._num_params())
        rho = torch.zeros(self._num_params())
        layout = self._layout()
        for index, (fan_in, fan_out, weight_offset, bias_offset) in enumerate(layout):
            gain = 3.0 if index == len(layout) - 1 else 6.0  # ReLU gain on hidden layers
            bound = math.sqrt(gain / fan_in)
            mu[weight_offset:bias_offset] = (torch.rand(fan_in * fan_out, generator=generator) * 2.0 - 1.0) * bound
            # Initial posterior std: a tenth of the initial weight scale, so pre-activation noise
            # starts at about 10% of the signal whatever the width.
            init_std = 0.1 / math.sqrt(fan_in)
            rho[weight_offset : bias_offset + fan_out] = math.log(math.expm1(init_std))
        return mu, rho

    @staticmethod
    def _map_weights(
        inputs: Any, labels: np.ndarray, n_classes: int, precision: np.ndarray, chunk: int = 4096
    ) -> np.ndarray:
        """MAP ``(D + 1, K)`` (bias last) of multinomial logistic regression with the Gaussian prior of
        per-weight ``precision`` (same shape), by L-BFGS preconditioned per input column by
        ``sqrt(sum_n x_nj^2 / K + precision)`` (the curvature at the uniform start).

        ``inputs``: an array, or rows on disk (``_out_of_core.StoreRows``); either is read in
        blocks of ``chunk`` rows, rounded to float32 as training sees them, so the two give the
        same MAP.
        """
        from scipy.special import log_softmax

        from xfer.repurposers._laplace_core import lbfgs

        n_rows = len(inputs)
        targets = np.eye(n_classes)[labels]
        starts = range(0, n_rows, chunk)

        def block(start: int) -> np.ndarray:
            rows = inputs[start : min(start + chunk, n_rows)]
            design = np.ones((len(rows), rows.shape[1] + 1))
            design[:, :-1] = rows.astype(np.float32)  # rounded as training sees the rows
            return design

        blocks = [block(start) for start in starts] if isinstance(inputs, np.ndarray) else None  # in memory: once
        squares = sum(np.sum((blocks[i] if blocks else block(start)) ** 2, axis=0) for i, start in enumerate(starts))
        scale = np.sqrt(squares[:, None] / n_classes + precision)

        def loss_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
            weights = flat.reshape(-1, n_classes) / scale
            loss = 0.5 * np.sum(precision * weights**2)
            grad = precision * weights
            for i, start in enumerate(starts):
                design = blocks[i] if blocks else block(start)
                log_p = log_softmax(design @ weights, axis=1)
                target = targets[start : start + len(design)]
                loss -= np.sum(target * log_p)
                grad += design.T @ (np.exp(log_p) - target)
            return loss / n_rows, (grad / scale).ravel() / n_rows

        solution, _ = lbfgs(loss_and_grad, np.zeros(scale.size), 2000, 1e-6)
        return solution.reshape(-1, n_classes) / scale

    def _prior_precision_matrix(self, prior_std: np.ndarray) -> np.ndarray:
        """``(D + 1, K)`` prior precisions of the single layer's weights and (last row) biases."""
        ((n_inputs, n_classes, weight_offset, bias_offset),) = self._layout()
        return np.concatenate([
            prior_std[weight_offset:bias_offset].reshape(n_inputs, n_classes),
            prior_std[bias_offset:][None, :],
        ]) ** -2.0  # fmt: skip

    def _map_init(self, inputs: Any, labels: np.ndarray, prior_std: np.ndarray) -> torch.Tensor:
        """Posterior means at the MAP (``num_layers=0``: Bayesian multinomial logistic regression).

        Training then starts at the mode of the posterior instead of at a random network that the
        first hundreds of steps spend finding the data (what left 20 rows of 1,280 features
        untrained while the KL term pulled every weight to the prior).
        """
        # From disk, a block is at most what the store reads at a time (its chunk_mb).
        chunk = 4096 if isinstance(inputs, np.ndarray) else min(4096, inputs.store.chunk_rows())
        weights = self._map_weights(
            inputs, labels, int(self.n_classes_), self._prior_precision_matrix(prior_std), chunk
        )
        return torch.as_tensor(np.concatenate([weights[:-1].ravel(), weights[-1]]), dtype=torch.float32)

    def _prior_std(self) -> torch.Tensor:
        """Prior standard deviation of every parameter, in the flat layout.

        ``sigma`` given: ``sigma`` everywhere (Xfer's meaning). ``sigma=None``: ``1 / sqrt(fan_in)``
        for the weights of each layer and 1 for the biases, so that the prior's pre-activations
        have unit scale whatever the width (a prior of 100 on 1,280 standardised inputs lets the
        logits reach thousands: the KL then barely constrains anything and the network is as
        over-confident as a maximum-likelihood fit).

        Either way the output layer's biases get a nearly flat prior (standard deviation 1,000:
        the Laplace head's ``_BIAS_PRECISION``), as ``LrRepurposer``'s unpenalised intercept: a
        penalised bias pulls the class frequencies towards uniform, which cost 0.04 of accuracy
        on iris at 5 labels per class (0.892 against logistic regression's 0.930). With two
        classes the output weights' standard deviation is divided by ``sqrt(2)``: the logit
        difference ``(w_1 - w_0) x`` then has the prior of one weight vector, as in the binomial
        model ``LrRepurposer`` fits (the Laplace head doubles its penalty for the same reason).
        """
        from xfer.repurposers._laplace_core import _BIAS_PRECISION

        if self.sigma is not None:
            std = torch.full((self._num_params(),), float(self.sigma))
        else:
            std = torch.ones(self._num_params())
            for fan_in, _, weight_offset, bias_offset in self._layout():
                std[weight_offset:bias_offset] = 1.0 / math.sqrt(fan_in)
        _, n_classes, weight_offset, bias_offset = self._layout()[-1]
        if n_classes == 2:  # the prior of the logit difference: LrRepurposer's binomial penalty
            std[weight_offset:bias_offset] /= math.sqrt(2.0)
        std[bias_offset : bias_offset + n_classes] = _BIAS_PRECISION**-0.5
        return std

    def _kl(self, mu: torch.Tensor, std: torch.Tensor, prior_std: torch.Tensor) -> torch.Tensor:
        """Closed-form KL(q || N(0, prior_std^2)) summed over all weights and biases."""
        return (
            torch.log(prior_std).sum()
            - torch.log(std).sum()
            + ((std.pow(2) + mu.pow(2)) / (2.0 * prior_std.pow(2))).sum()
            - 0.5 * mu.numel()
        )

    def _sample_logits_local(
        self, mu: torch.Tensor, var: torch.Tensor, x: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Logits ``(S, B, K)`` by local reparameterisation, S = ``num_samples_mc``."""
        n_samples = int(self.num_samples_mc)
        means = self._unflatten(mu)
        variances = self._unflatten(var)
        h = x  # (B, D) for the first layer, then (S, B, H)
        last = len(means) - 1
        for index, ((w_mu, b_mu), (w_var, b_var)) in enumerate(zip(means, variances)):
            mean = torch.addmm(b_mu, h, w_mu) if h.dim() == 2 else h @ w_mu + b_mu
            act_var = torch.addmm(b_var, h * h, w_var) if h.dim() == 2 else (h * h) @ w_var + b_var
            shape = (n_samples, *mean.shape) if index == 0 else mean.shape
            noise = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
            h = torch.addcmul(mean, act_var.sqrt(), noise)
            if index < last:
                h = torch.relu(h)
        return h

    # --------------------------------------------------------------------- fit
    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        n_classes: int,
        device: torch.device,
        feature_indices_per_layer: list[np.ndarray] | None = None,
    ) -> BnnClassifierCore:
        """Train the variational posterior from scratch (the KL schedule restarts).

        Parameters
        ----------
        features : numpy.ndarray or FeatureStore
            Float array of shape ``(N, D)``, or features on disk (each minibatch is then read
            from the files).
        labels : numpy.ndarray
            Integer class indices in ``0..n_classes-1``, shape ``(N,)``.
        n_classes : int
            Number of classes ``K >= 2`` (classes missing from ``labels`` are allowed).
        device : torch.device
            Device to train on.
        feature_indices_per_layer : list of numpy.ndarray, optional
            Columns of each source layer (``apply_l2_norm`` normalises each layer's block).

        Returns
        -------
        BnnClassifierCore
            ``self``.

        Raises
        ------
        InvalidArgumentError
            Bad options, shapes, label values or non-finite features.
        InvalidTypeError
            Arguments of the wrong type.
        """
        self._validate_options()
        store = features if isinstance(features, FeatureStore) else None
        if store is None:
            features = check_features(features)
        n, n_columns = (len(store), store.num_features) if store is not None else features.shape
        check_int("n_classes", n_classes, 2)
        if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
            raise InvalidTypeError("labels must be an integer numpy array of class indices 0..n_classes-1.")
        if labels.shape != (n,):
            raise InvalidArgumentError(f"labels must have shape ({n},), got {labels.shape}.")
        if labels.min() < 0 or labels.max() >= n_classes:
            raise InvalidArgumentError(
                f"labels must lie in 0..{n_classes - 1} (n_classes={n_classes}); got values from "
                f"{labels.min()} to {labels.max()}."
            )
        device = check_device(device)

        self._reset_fitted()
        self.n_classes_ = int(n_classes)
        self.n_features_ = int(n_columns)
        self.layer_indices_ = [np.arange(n_columns)] if feature_indices_per_layer is None else [
            np.asarray(columns, dtype=np.int64) for columns in feature_indices_per_layer
        ]
        self._check_fits_in_memory()
        self.l2_layers_ = np.zeros(len(self.layer_indices_), bool)
        if self.apply_l2_norm:  # the layers whose norm is spread over many columns (_linear.l2_layers)
            if store is None:
                self.l2_layers_ = l2_layers(features, self.layer_indices_)
            else:
                mean, std = _out_of_core.column_moments(store)
                self.l2_layers_ = l2_layers(None, self.layer_indices_, std**2 + mean**2)
        if store is None:
            normalised = self._l2(features).astype(np.float64)
            self.feature_mean_, self.feature_scale_ = fit_standardizer(normalised, self.layer_indices_, self.standardize)
            self._fit_basis((normalised - self.feature_mean_) / self.feature_scale_)
        else:
            self.feature_mean_, self.feature_scale_ = _out_of_core.fit_standardizer(
                store, self.layer_indices_, self.standardize, transform=self._l2
            )

        batch = int(self.batch_size)
        if math.ceil(n / batch) > int(self.max_steps_per_epoch):
            batch = math.ceil(n / int(self.max_steps_per_epoch))
            if self.max_batch_size is not None:
                batch = min(batch, max(int(self.max_batch_size), int(self.batch_size)))
            _LOGGER.info(
                "%d rows: minibatch enlarged from %d to %d rows (max_steps_per_epoch=%d, max_batch_size=%s).",
                n, self.batch_size, batch, self.max_steps_per_epoch, self.max_batch_size,
            )
        batch = min(batch, n)
        self.effective_batch_size_ = batch

        seed = (
            int(np.random.randint(0, 2**31 - 1)) if self.random_state is None else int(self.random_state)
        )
        work = batch * float(self.num_samples_mc) * (self._n_inputs() + self.n_hidden * self.num_layers) * max(
            self.n_hidden, self.n_classes_
        )
        self.means_at_map_ = self._calibrates(n, store is None)
        with torch_num_threads(self._threads(work)):
            self._train(features, labels, device, batch, seed)
            if store is None:
                self._fit_calibration(features, labels)
                self._check_degenerate(features, labels, device)
        return self

    def _calibrates(self, n_rows: int, in_memory: bool) -> bool:
        """Whether this fit holds the means at the MAP and chooses a calibration (``calibrate``)."""
        return bool(self.calibrate) and int(self.num_layers) == 0 and in_memory and 2 <= n_rows <= _CALIBRATION_ROWS

    def _fit_calibration(self, features: np.ndarray, labels: np.ndarray) -> None:
        """``temperature_`` and ``variance_scale_`` by cross-validation (see ``calibrate``).

        Out-of-fold logits of each row: mean from the MAP refitted without the row's fold (the
        posterior means are the MAP of all the rows: training held them), variance from the fitted
        posterior (``sum_j x_j^2 s_jk^2 + s_bk^2``, the mean field's). Candidates: the Laplace head's
        temperatures (1 to 4) times :data:`_VARIANCE_SCALES`; the first, the MAP's predictive. The
        MAP is the default because it is the one part of the fit the data decide: the fitted
        standard deviations depend on the number of optimiser steps (see ``calibrate``).
        """
        self.temperature_, self.variance_scale_ = 1.0, 1.0
        n_rows, n_classes = len(labels), int(self.n_classes_)
        if not self.means_at_map_:
            return
        from xfer.repurposers._laplace_core import _TEMPERATURES

        inputs = self._transform(features)
        precision = self._prior_precision_matrix(self._prior_std().double().numpy())
        # Every fold holds every class's rows in turn, so removing a fold keeps the class
        # frequencies: the output biases (nearly unpenalised) follow them, and a fold of one class
        # (16 rows in 10 folds) shifted them against the held-out rows, whose out-of-fold
        # predictions then looked worse than chance and the choice flattened a sound fit.
        counts = np.bincount(labels, minlength=n_classes)
        n_folds = min(10, int(counts[counts > 0].min()))
        if n_folds < 2:  # a class with one row: no fold can hold it out and keep it
            return
        folds = stratified_folds(labels, n_classes, n_folds)
        means = np.zeros((n_rows, n_classes))
        for fold in range(n_folds):
            held = folds == fold
            if held.any() and not held.all():
                weights = self._map_weights(inputs[~held], labels[~held], n_classes, precision)
                means[held] = inputs[held].astype(np.float32) @ weights[:-1] + weights[-1]
        layer = self.params_[0]
        weight_var = F.softplus(layer["weight_rho"].double()).numpy() ** 2
        bias_var = F.softplus(layer["bias_rho"].double()).numpy() ** 2
        variance = (inputs.astype(np.float32).astype(np.float64) ** 2) @ weight_var + bias_var
        row_losses = np.array([
            probit_row_nll(means, variance, labels, t, _VARIANCE_SCALES) for t in _TEMPERATURES
        ])  # fmt: skip
        # Only candidates whose held-out NLL beats predicting the class frequencies by more than
        # the standard error of the per-row gains: where the folds' refits predict no better than
        # chance (a few rows), the choice is near-uniform probabilities (temperature 4, variances
        # x 100), which says more about the folds than about the fit of all the rows.
        chance = -np.log(counts[labels] / n_rows)
        losses = row_losses.reshape(-1, n_rows)
        gains = chance - losses
        informative = gains.mean(axis=1) > gains.std(axis=1, ddof=1) / np.sqrt(n_rows)
        informative[0] = True  # the MAP's predictive: the default
        losses = np.where(informative[:, None], losses, np.inf)
        best_t, best_scale = np.unravel_index(one_standard_error_choice(losses), row_losses.shape[:2])
        self.temperature_ = float(_TEMPERATURES[best_t])
        self.variance_scale_ = float(_VARIANCE_SCALES[best_scale])
        self._prediction_noise = {}
        _LOGGER.info(
            "calibration (%d folds; %d of %d candidates beat the class frequencies): temperature %.3g, "
            "variance scale %.3g.", n_folds, int(informative.sum()), informative.size, self.temperature_,
            self.variance_scale_,
        )

    def _check_degenerate(self, features: np.ndarray, labels: np.ndarray, device: torch.device) -> None:
        """Warn when even the training rows' own predictions are no better than class frequencies."""
        probabilities = self.predict_proba(features, device)
        if is_degenerate(probabilities, labels):
            warn_degenerate(
                _LOGGER, "BnnClassifierCore",
                f"its predictions of its own {len(labels)} training rows are no better than the class "
                f"frequencies (final loss {self.loss_history_[-1]:.3f})",
                "Train longer (num_epochs, min_steps), raise learning_rate, or use a tighter prior "
                "(sigma=None).",
            )  # fmt: skip

    @staticmethod
    def _minibatches(n: int, batch: int, generator: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
        """Row indices of the minibatches, pass after pass: each pass a fresh permutation of the
        ``n`` rows cut into ``ceil(n / batch)`` pieces (the last one shorter)."""
        while True:
            permutation = torch.randperm(n, generator=generator).to(device)
            for offset in range(0, n, batch):
                yield permutation[offset : offset + batch]

    def _train(self, features: np.ndarray, labels: np.ndarray, device: torch.device, batch: int, seed: int) -> None:
        if isinstance(features, FeatureStore):  # minibatches gathered from the files
            x_all = _out_of_core.StoreRows(features, self._transform, self._n_inputs(), torch.float32, device)
        else:
            x_all = torch.as_tensor(self._transform(features), dtype=torch.float32, device=device)
        y_all = torch.as_tensor(labels.astype(np.int64), device=device)
        n = x_all.shape[0]
        init_generator = torch.Generator(device="cpu").manual_seed(seed)
        mu0, rho0 = self._init_flat(init_generator)
        prior_std = self._prior_std()
        self.map_initialised_ = int(self.num_layers) == 0
        if self.map_initialised_:
            rows = x_all if isinstance(x_all, _out_of_core.StoreRows) else x_all.double().cpu().numpy()
            mu0 = self._map_init(rows, labels, prior_std.double().numpy())
        n_params = mu0.numel()
        # One leaf vector [mu, rho] and a hand-written Adam (the update of torch.optim.Adam, without
        # its per-step dispatch and profiling overhead, which dominated the tiny steps of this model).
        theta = torch.cat([mu0, rho0]).to(device).requires_grad_(True)
        adam_m = torch.zeros_like(theta, requires_grad=False)
        adam_v = torch.zeros_like(theta, requires_grad=False)
        beta1, beta2, eps, lr = 0.9, 0.999, 1e-8, float(self.learning_rate)
        noise_generator = torch.Generator(device=device).manual_seed(seed + 1)
        prior_std = prior_std.to(device)
        start, end = self.annealing_window()
        anneal = not self.map_initialised_ or self.start_annealing is not None or self.end_annealing is not None
        # One epoch: a pass of ceil(n / batch) minibatches, or max_steps_per_epoch of them where the
        # minibatch could not grow enough (max_batch_size); then repeated to reach min_steps.
        steps_per_round = min(math.ceil(n / batch), int(self.max_steps_per_epoch))
        passes = max(1, math.ceil(int(self.min_steps) / (int(self.num_epochs) * steps_per_round)))
        if passes > 1:
            _LOGGER.info(
                "%d rows: %d rounds of %d steps per epoch to reach min_steps=%d optimiser steps.",
                n, passes, steps_per_round, self.min_steps,
            )
        steps_per_epoch = passes * steps_per_round
        minibatches = self._minibatches(n, batch, init_generator, device)
        bar = progress_bar(total=int(self.num_epochs), desc="BNN", leave=False, verbose=self.verbose)
        adam_step = 0
        for epoch in range(int(self.num_epochs)):
            beta = annealing_weight(epoch, start, end) if anneal else 1.0
            self.annealing_weights_.append(beta)
            epoch_loss = torch.zeros((), device=device)
            for _ in range(steps_per_epoch):
                idx = next(minibatches)
                mu, rho = theta[:n_params], theta[n_params:]
                std = F.softplus(rho)
                logits = self._sample_logits_local(mu, std * std, x_all[idx], noise_generator)
                target = y_all[idx].repeat(logits.shape[0])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target)
                if beta > 0:
                    loss = loss + (beta / n) * self._kl(mu, std, prior_std)
                (grad,) = torch.autograd.grad(loss, theta)
                if self.means_at_map_:  # only the standard deviations train (Adam leaves these as they are)
                    grad[:n_params] = 0.0
                with torch.no_grad():
                    adam_step += 1
                    adam_m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                    adam_v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                    step_size = lr / (1.0 - beta1**adam_step)
                    denom = (adam_v / (1.0 - beta2**adam_step)).sqrt_().add_(eps)
                    theta.addcdiv_(adam_m, denom, value=-step_size)
                epoch_loss += loss.detach()
            value = float(epoch_loss) / steps_per_epoch
            self.loss_history_.append(value)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}", kl_weight=f"{beta:.2f}")
            _LOGGER.info("epoch %d: loss %.5f, KL weight %.3f", epoch, value, beta)
        if bar is not None:
            bar.close()
        mu = theta[:n_params].detach().clone()
        rho = theta[n_params:].detach().clone()
        self.params_ = [
            {"weight_mu": w_mu, "weight_rho": w_rho, "bias_mu": b_mu, "bias_rho": b_rho}
            for (w_mu, b_mu), (w_rho, b_rho) in zip(self._unflatten(mu), self._unflatten(rho))
        ]

    # ----------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        if self.params_ is None:
            raise NotFittedError("This BnnClassifierCore is not fitted yet: call fit first.")

    def _weight_samples(
        self, device: torch.device, variance_scale: float | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``num_samples_mc_prediction`` weight and bias sets per layer, float64, on ``device``.

        Drawn on the CPU from ``prediction_seed`` so every device and every call sees the same set;
        the posterior's variances times ``variance_scale`` (default: ``variance_scale_``).
        """
        scale = self.variance_scale_ if variance_scale is None else float(variance_scale)
        key = (device.type, device.index, scale)
        if key in self._prediction_noise:
            return self._prediction_noise[key]
        generator = torch.Generator(device="cpu").manual_seed(int(self.prediction_seed))
        n_samples = int(self.num_samples_mc_prediction)
        # The calibration: posterior standard deviations times sqrt(variance_scale_), the last
        # layer's weights and biases (so its logits) divided by temperature_.
        spread = math.sqrt(scale)
        samples = []
        for index, layer in enumerate(self.params_):
            w_mu = layer["weight_mu"].detach().cpu().to(torch.float64)
            w_std = F.softplus(layer["weight_rho"].detach().cpu().to(torch.float64)) * spread
            b_mu = layer["bias_mu"].detach().cpu().to(torch.float64)
            b_std = F.softplus(layer["bias_rho"].detach().cpu().to(torch.float64)) * spread
            w = w_mu + w_std * torch.randn((n_samples, *w_mu.shape), generator=generator, dtype=torch.float64)
            b = b_mu + b_std * torch.randn((n_samples, *b_mu.shape), generator=generator, dtype=torch.float64)
            if index == len(self.params_) - 1:
                w, b = w / self.temperature_, b / self.temperature_
            samples.append((w.to(device), b.to(device)))
        # Keep one device's copies (the calibrated set, and the posterior's for predict_uncertainty).
        self._prediction_noise = {k: v for k, v in self._prediction_noise.items() if k[:2] == key[:2]}
        self._prediction_noise[key] = samples
        return samples

    @staticmethod
    def _log_softmax(h: torch.Tensor, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Log-probabilities ``(S, B, K)`` of the rows ``h`` under each weight sample."""
        for index, (w, b) in enumerate(samples):
            h = torch.matmul(h, w) + b.unsqueeze(-2)  # (S, B, out)
            if index < len(samples) - 1:
                h = torch.relu(h)
        return torch.log_softmax(h, dim=-1)

    def predict_proba(
        self, features: np.ndarray, device: torch.device, batch_size: int = 4096, _information: bool = False
    ) -> np.ndarray:
        """Posterior predictive class probabilities (Monte Carlo average of softmax), deterministic.

        Parameters
        ----------
        features : numpy.ndarray
            Shape ``(N, D)``.
        device : torch.device
            Device to compute on.
        batch_size : int, default=4096
            Rows per batch (all Monte Carlo samples of a batch are computed at once).

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
        self._check_fitted()
        features = check_features(features, self.n_features_)
        device = check_device(device)
        check_int("batch_size", batch_size, 1)
        x_np = self._transform(features)
        samples = self._weight_samples(device)
        out: list[torch.Tensor] = []
        information: list[torch.Tensor] | None = [] if _information else None
        # The epistemic part reads the posterior at variance scale >= 1: a calibration that keeps
        # the MAP's probabilities (scale 0) does not erase the posterior's spread.
        posterior = samples if self.variance_scale_ >= 1.0 else self._weight_samples(device, 1.0)
        with torch.no_grad():
            for start in range(0, x_np.shape[0], batch_size):
                h = torch.as_tensor(x_np[start : start + batch_size], dtype=torch.float64, device=device)
                log_p = self._log_softmax(h, samples)
                probs = log_p.exp().mean(dim=0)
                out.append(probs / probs.sum(dim=-1, keepdim=True))
                if information is not None:
                    if posterior is not samples:
                        log_p = self._log_softmax(h, posterior)
                    mean = log_p.exp().mean(dim=0)
                    mean = mean / mean.sum(dim=-1, keepdim=True)
                    expected = -(log_p.exp() * log_p).sum(-1).mean(dim=0)
                    total = -(mean * mean.clamp_min(1e-300).log()).sum(-1)
                    information.append((total - expected).clamp_min(0.0))
        probabilities = torch.cat(out).cpu().numpy()
        if information is None:
            return probabilities
        return probabilities, torch.cat(information).cpu().numpy()

    def predict_uncertainty(
        self, features: np.ndarray, device: torch.device, batch_size: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_proba` and the mutual information between prediction and weights.

        The mutual information is the posterior's at ``max(variance_scale_, 1)`` times its
        variances (and ``temperature_``): where the calibration kept the MAP's probabilities
        (scale 0), inputs far from the training rows still get the larger epistemic part.

        Returns
        -------
        probabilities : numpy.ndarray of shape (N, K)
        mutual_information : numpy.ndarray of shape (N,)
        """
        return self.predict_proba(features, device, batch_size, _information=True)

    # ------------------------------------------------------------------- state
    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The fitted model as a strict-JSON config and plain numeric arrays.

        Returns
        -------
        config : dict
            Options, sizes and training summary (JSON-safe).
        arrays : dict of str to numpy.ndarray
            ``feature_mean``, ``feature_scale`` and ``layer{i}.{weight,bias}_{mu,rho}``
            (float32); no training data.
        """
        self._check_fitted()
        arrays: dict[str, np.ndarray] = {
            "feature_mean": np.asarray(self.feature_mean_, dtype=np.float64),
            "feature_scale": np.asarray(self.feature_scale_, dtype=np.float64),
            "layer_sizes": np.asarray([len(c) for c in self.layer_indices_], dtype=np.int64),
            "layer_columns": np.concatenate(self.layer_indices_).astype(np.int64),
            "l2_layers": np.asarray(self.l2_layers_, dtype=np.int64),
        }
        if self.basis_ is not None:
            arrays["basis"] = np.asarray(self.basis_, dtype=np.float64)
        for index, layer in enumerate(self.params_):
            for name, tensor in layer.items():
                arrays[f"layer{index}.{name}"] = tensor.detach().cpu().numpy().copy()
        final_loss = self.loss_history_[-1] if self.loss_history_ else None
        config = {
            "format_version": STATE_FORMAT_VERSION,
            "class": "BnnClassifierCore",
            "options": self._option_dict(),
            "n_classes": int(self.n_classes_),
            "n_features": int(self.n_features_),
            "effective_batch_size": None if self.effective_batch_size_ is None else int(self.effective_batch_size_),
            "temperature": float(self.temperature_),
            "variance_scale": float(self.variance_scale_),
            "means_at_map": bool(self.means_at_map_),
            "final_loss": final_loss if final_loss is not None and math.isfinite(final_loss) else None,
        }
        return config, arrays

    @classmethod
    def from_state(cls, config: dict, arrays: dict[str, np.ndarray]) -> BnnClassifierCore:
        """Rebuild a fitted classifier from :meth:`get_state`'s output.

        Parameters
        ----------
        config : dict
            The config returned by :meth:`get_state`.
        arrays : dict of str to numpy.ndarray
            The arrays returned by :meth:`get_state`.

        Returns
        -------
        BnnClassifierCore
            A fitted classifier whose predictions equal the saved one's.

        Raises
        ------
        SerializationError
            A config or arrays that do not describe a fitted BNN classifier.
        """
        try:
            core = core_from_state(cls, config, "BNN", STATE_FORMAT_VERSION)
            core.effective_batch_size_ = config.get("effective_batch_size")
            # Format 5: the calibration's choice (earlier states predict without one).
            core.temperature_ = float(config.get("temperature", 1.0))
            core.variance_scale_ = float(config.get("variance_scale", 1.0))
            core.means_at_map_ = bool(config.get("means_at_map", False))
            if not (math.isfinite(core.temperature_) and core.temperature_ > 0 and math.isfinite(core.variance_scale_)
                    and core.variance_scale_ >= 0):
                raise SerializationError(
                    f"BNN temperature {core.temperature_} / variance_scale {core.variance_scale_} must be "
                    "positive / non-negative numbers."
                )
            version = int(config["format_version"])
            if version < 2:  # written before L2 normalisation existed
                core.apply_l2_norm = False
                core.layer_indices_ = [np.arange(core.n_features_)]
                core.l2_layers_ = np.zeros(1, bool)
            else:
                sizes = np.asarray(arrays["layer_sizes"], dtype=np.int64)
                columns = np.asarray(arrays["layer_columns"], dtype=np.int64)
                if columns.shape != (int(sizes.sum()),) or columns.min() < 0 or columns.max() >= core.n_features_:
                    raise SerializationError("BNN layer_sizes/layer_columns do not match n_features.")
                core.layer_indices_ = list(np.split(columns, np.cumsum(sizes)[:-1]))
                if version < 4:  # every layer was normalised with apply_l2_norm
                    core.l2_layers_ = np.full(len(sizes), bool(core.apply_l2_norm))
                else:
                    core.l2_layers_ = l2_layers_from_state(arrays["l2_layers"], len(sizes), "BNN")
            core.feature_mean_ = np.asarray(arrays["feature_mean"], dtype=np.float64)
            core.feature_scale_ = np.asarray(arrays["feature_scale"], dtype=np.float64)
            if "basis" in arrays:  # format 3: the span of the training rows
                basis = np.asarray(arrays["basis"], dtype=np.float64)
                if basis.ndim != 2 or basis.shape[0] != core.n_features_ or not 0 < basis.shape[1] <= core.n_features_:
                    raise SerializationError(f"BNN basis has shape {basis.shape}, expected ({core.n_features_}, r).")
                core.basis_ = basis
            if core.feature_mean_.shape != (core.n_features_,) or core.feature_scale_.shape != (core.n_features_,):
                raise SerializationError("feature_mean/feature_scale do not match n_features.")
            sizes = core._layer_sizes()
            params = []
            for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
                layer = {}
                for name, shape in (
                    ("weight_mu", (fan_in, fan_out)),
                    ("weight_rho", (fan_in, fan_out)),
                    ("bias_mu", (fan_out,)),
                    ("bias_rho", (fan_out,)),
                ):
                    value = np.asarray(arrays[f"layer{index}.{name}"])
                    if value.shape != shape or not np.issubdtype(value.dtype, np.floating):
                        raise SerializationError(
                            f"BNN array layer{index}.{name} has shape {value.shape} and dtype "
                            f"{value.dtype}, expected {shape} floats."
                        )
                    layer[name] = torch.as_tensor(value.copy())
                params.append(layer)
            core.params_ = params
        except SerializationError:
            raise
        except (KeyError, ValueError, TypeError) as error:
            raise SerializationError(f"Corrupt or incompatible BNN state: {error!r}") from error
        return core


__all__ = ["BnnClassifierCore", "annealing_weight"]
