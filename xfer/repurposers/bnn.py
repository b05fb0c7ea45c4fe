"""Bayesian neural network (mean-field variational) on features of the source model (PyTorch)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from xfer.context import cpu, resolve_context, to_torch
from xfer.exceptions import InvalidArgumentError
from xfer.repurposers.gp import _seed
from xfer.repurposers.meta_model import MetaModelRepurposer
from xfer.serialization import register_repurposer

logger = logging.getLogger("xfer.repurposers.bnn")


@register_repurposer(key="xfer.BnnRepurposer")
class BnnRepurposer(MetaModelRepurposer):
    """Mean-field Gaussian variational BNN on features (Xfer's ``BnnRepurposer``), in PyTorch.

    Prediction is deterministic (fixed Monte Carlo noise), so a loaded model predicts exactly
    what the saved one did. The BNN runs on ``context`` when given per call, else on
    ``bnn_context_function``; feature extraction uses ``context`` or ``context_function``.

    Parameters
    ----------
    source_model : mx.mod.Module, ModelHandler or None
        Source network; ``None`` means ``fit``/``predict`` take feature arrays.
    feature_layer_names : list of str
        Layers whose outputs are the features.
    context_function : callable or device, default=mx.cpu
        Default device of feature extraction.
    num_devices : int, default=1
        Number of devices for feature extraction.
    bnn_context_function : callable or device, default=mx.cpu
        Default device of the BNN.
    sigma : float or None, default=1.0
        Standard deviation of the Gaussian prior on every weight and hidden bias, on standardised
        features (Xfer's default was 100; 1 is the L2 penalty of ``LrRepurposer(c=1)``, see
        :doc:`/migrating_from_xfer`). ``None``: ``1 / sqrt(fan_in)`` for each layer's weights and
        1 for the biases. The output biases have a nearly flat prior (``LrRepurposer``'s
        unpenalised intercept); with two classes the output weights' is ``sigma / sqrt(2)``.
    num_layers : int, default=0
        Number of hidden layers (Xfer's default was 1). ``0``: Bayesian multinomial logistic
        regression whose posterior means start at the MAP; it trains on a few examples per class
        where a hidden layer of ``n_hidden`` units did not (see :doc:`/migrating_from_xfer`).
    n_hidden : int, default=10
        Units per hidden layer.
    num_samples_mc : int, default=3
        Monte Carlo samples per training step.
    learning_rate : float, default=1e-3
        Adam learning rate.
    batch_size : int, default=20
        Training minibatch size.
    num_epochs : int, default=200
        Training epochs.
    start_annealing, end_annealing : int, optional
        Epochs over which the KL weight is annealed from 0 to 1 (``start_annealing <
        num_epochs``).
    num_samples_mc_prediction : int, default=100
        Monte Carlo samples averaged at prediction.
    verbose : bool or int, default=0
        ``1``/``True``: progress bars; ``0``/``False``: none. Log records go to the ``xfer``
        loggers whatever the value (see "Progress bars and logs" in :mod:`xfer`).
    random_state : int, optional
        Seed of training.
    extraction_batch_size : int, optional
        Batch size for feature extraction.
    calibrate : bool, default=True
        With ``num_layers=0`` and 2 to 2,000 training rows in memory: the posterior means stay at
        the MAP (training fits the posterior's standard deviations), and a temperature and a scale
        of the posterior's variances are chosen by cross-validation on the training rows; the MAP's
        probabilities (logistic regression with ``LrRepurposer``'s penalty) are kept unless a choice
        beats them by more than one standard error (``BnnClassifierCore``'s ``calibrate``).
        ``False``: means and standard deviations train together and the fitted predictive is used as
        it is. Measured in :doc:`/migrating_from_xfer` ("calibrate").
    """

    def __init__(
        self,
        source_model: Any,
        feature_layer_names: list[str] | None,
        context_function: Any = cpu,
        num_devices: int = 1,
        bnn_context_function: Any = cpu,
        sigma: float | None = 1.0,
        num_layers: int = 0,
        n_hidden: int = 10,
        num_samples_mc: int = 3,
        learning_rate: float = 1e-3,
        batch_size: int = 20,
        num_epochs: int = 200,
        start_annealing: int | None = None,
        end_annealing: int | None = None,
        num_samples_mc_prediction: int = 100,
        verbose: int = 0,
        *,
        random_state: int | None = None,
        extraction_batch_size: int | None = None,
        calibrate: bool = True,
    ):
        super().__init__(
            source_model,
            feature_layer_names,
            context_function=context_function,
            num_devices=num_devices,
            extraction_batch_size=extraction_batch_size,
            verbose=verbose,
        )
        self.bnn_context_function = bnn_context_function
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
        self.random_state = random_state
        self.calibrate = calibrate

    def _bnn_device(self) -> Any:
        explicit = getattr(self, "_call_context_given", False)
        if explicit:
            return self._torch_device()
        return to_torch(resolve_context(self.bnn_context_function)[0])

    def fit(self, X: Any, y: Any = None, context: Any = None) -> BnnRepurposer:  # noqa: D102
        with self._explicit_context(context):
            return super().fit(X, y, context=context)

    def fit_features(self, features, labels, feature_indices_per_layer=None, context=None):  # noqa: D102
        with self._explicit_context(context):
            return super().fit_features(
                features, labels, feature_indices_per_layer, context=context
            )

    def predict_proba(self, X: Any, context: Any = None) -> np.ndarray:  # noqa: D102
        with self._explicit_context(context):
            return super().predict_proba(X, context=context)

    def predict(self, X: Any, context: Any = None) -> np.ndarray:  # noqa: D102
        with self._explicit_context(context):
            return super().predict(X, context=context)

    def predict_proba_features(self, features: Any, context: Any = None) -> np.ndarray:  # noqa: D102
        with self._explicit_context(context):
            return super().predict_proba_features(features, context=context)

    def predict_features(self, features: Any, context: Any = None) -> np.ndarray:  # noqa: D102
        with self._explicit_context(context):
            return super().predict_features(features, context=context)

    def _explicit_context(self, context: Any):
        from contextlib import contextmanager

        @contextmanager
        def scope():
            previous = getattr(self, "_call_context_given", False)
            self._call_context_given = context is not None
            try:
                yield
            finally:
                self._call_context_given = previous

        return scope()

    _target_model_types = ("xfer.repurposers._bnn_core:BnnClassifierCore",)

    def _train_model_from_features(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        feature_indices_per_layer: list[np.ndarray] | None = None,
    ) -> Any:
        from xfer.repurposers._bnn_core import BnnClassifierCore

        if self.start_annealing is not None and self.start_annealing >= self.num_epochs:
            raise InvalidArgumentError(
                f"start_annealing ({self.start_annealing}) must be smaller than num_epochs "
                f"({self.num_epochs})."
            )
        core = BnnClassifierCore(
            sigma=self.sigma,
            num_layers=self.num_layers,
            n_hidden=self.n_hidden,
            num_samples_mc=self.num_samples_mc,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            num_epochs=self.num_epochs,
            start_annealing=self.start_annealing,
            end_annealing=self.end_annealing,
            num_samples_mc_prediction=self.num_samples_mc_prediction,
            verbose=self.verbose,
            random_state=_seed(self.random_state),
            # Xfer's meaning: num_epochs decides the steps (with num_layers=0 they start at the MAP).
            min_steps=0,
            calibrate=self.calibrate,
        )
        features, labels, n_classes, feature_indices_per_layer = self._hook_arguments(
            features, labels, feature_indices_per_layer
        )
        return core.fit(features, labels, n_classes, self._bnn_device(), feature_indices_per_layer)

    # The core takes a FeatureStore too: it draws the minibatches from the files.
    _train_model_from_store = _train_model_from_features

    def _predict_probability_from_features(self, features: np.ndarray) -> np.ndarray:
        return self.target_model_.predict_proba(features, self._bnn_device())

    def _predict_uncertainty_from_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.target_model_.predict_uncertainty(features, self._bnn_device())

    def _set_target_model_state(
        self, config: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> None:
        from xfer.repurposers._bnn_core import BnnClassifierCore

        self.target_model_ = BnnClassifierCore.from_state(config, arrays)


__all__ = ["BnnRepurposer"]
