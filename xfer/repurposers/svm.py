"""Support vector machines on standardised features of the source model."""

from __future__ import annotations

import logging
import numbers
import warnings
from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.metaestimators import available_if

from xfer._arguments import check_int, check_positive
from xfer.context import cpu
from xfer.exceptions import InvalidArgumentError, ProbabilityEstimatesDisabledError
from xfer.repurposers import _linear
from xfer.repurposers.meta_model import MetaModelRepurposer
from xfer.serialization import register_repurposer

logger = logging.getLogger("xfer.repurposers.svm")

_KERNELS = ("linear", "rbf", "poly", "sigmoid")

#: From this many training examples, probabilities are calibrated on a held-out 20%.
_HOLDOUT_CALIBRATION_FROM = 5000


class SvmModel:
    """A fitted (standardise -> SVM [-> sigmoid calibration]) model kept as arrays.

    Linear kernel: ``coef``/``intercept`` of a ``LinearSVC`` (one-vs-rest). Other kernels:
    ``support_vectors``/``dual_coef``/``intercept``/``n_support`` of an ``SVC`` (one-vs-one,
    turned into one-vs-rest scores). Optional per-class sigmoid calibration ``a``/``b`` as fitted
    by ``CalibratedClassifierCV(method='sigmoid', ensemble=False)``.
    """

    def __init__(self, config: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.config = dict(config)
        self.arrays = {name: np.asarray(value) for name, value in arrays.items()}

    @property
    def has_probabilities(self) -> bool:
        return "calibration_a" in self.arrays

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        arrays = self.arrays
        scaled = _linear.standardize(features, arrays["mean"], arrays["scale"])
        if self.config["kernel"] == "linear":
            return _linear.linear_decision(scaled, arrays["coef"], arrays["intercept"])
        kernel_values = _linear.kernel_matrix(
            scaled,
            arrays["support_vectors"],
            self.config["kernel"],
            float(self.config["gamma"]),
            int(self.config["degree"]),
            float(self.config["coef0"]),
        )
        return _linear.svc_decision(
            kernel_values, arrays["dual_coef"], arrays["intercept"], arrays["n_support"]
        )

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return _linear.sigmoid_calibrated_proba(
            self.decision_function(features),
            self.arrays["calibration_a"],
            self.arrays["calibration_b"],
        )

    def predict_codes(self, features: np.ndarray) -> np.ndarray:
        if self.has_probabilities:
            return np.argmax(self.predict_proba(features), axis=1)
        decision = self.decision_function(features)
        if decision.ndim == 1:
            return (decision > 0).astype(np.int64)
        return np.argmax(decision, axis=1)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return dict(self.config), dict(self.arrays)

    @property
    def n_classes_(self) -> int:
        """Number of classes (a linear model has one row of ``coef`` for two)."""
        if self.config["kernel"] == "linear":
            rows = int(self.arrays["coef"].shape[0])
            return 2 if rows == 1 else rows
        return int(len(self.arrays["n_support"]))

    @property
    def n_features_(self) -> int:
        """Width of the features the model takes."""
        return int(self.arrays["mean"].shape[0])

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> SvmModel:
        if config.get("kernel") not in _KERNELS:
            raise ValueError(f"unknown kernel {config.get('kernel')!r}")
        return cls(config, arrays)


def _probabilities_disabled() -> ProbabilityEstimatesDisabledError:
    return ProbabilityEstimatesDisabledError(
        "This SvmRepurposer has no probability estimates: set enable_probability_estimates=True "
        "and fit again to use predict_proba / predict_probability (predict / predict_label work "
        "without it)."
    )


@register_repurposer(key="xfer.SvmRepurposer")
class SvmRepurposer(MetaModelRepurposer):
    """Support vector machine on standardised features (Xfer's ``SvmRepurposer``).

    ``kernel='linear'`` trains a ``LinearSVC`` (one-vs-rest, fast on tens of thousands of
    examples); other kernels train an ``SVC`` (libsvm, one-vs-one). With
    ``enable_probability_estimates=True`` the SVM's decision values are calibrated with
    ``CalibratedClassifierCV(method='sigmoid')`` (cross-validated, up to 5 folds; from 5,000
    examples on, one SVM fit on 80% and calibration on a stratified held-out 20%), and
    ``predict`` is the argmax of those probabilities. Without it, ``predict`` is the argmax of
    the decision function and ``predict_proba`` raises.

    Parameters
    ----------
    source_model : mx.mod.Module, ModelHandler or None
        Source network; ``None`` means ``fit``/``predict`` take feature arrays.
    feature_layer_names : list of str
        Layers whose outputs are the features.
    context_function : callable or device, default=xfer.context.cpu
        Default device for feature extraction.
    num_devices : int, default=1
        Number of devices for feature extraction.
    c : float, default=1.0
        Penalty of the error term.
    kernel : {'linear', 'rbf', 'poly', 'sigmoid'}, default='linear'
        Kernel of the SVM.
    gamma : float, 'auto' or 'scale', default='auto'
        Kernel coefficient for 'rbf', 'poly', 'sigmoid' (``'auto'``: 1 / n_features;
        ``'scale'``: 1 / (n_features * X.var()) of the standardised features).
    enable_probability_estimates : bool, default=False
        Calibrate probabilities (needs at least 2 examples per class).
    degree : int, default=3
        Degree of the 'poly' kernel.
    coef0 : float, default=0.0
        Independent term of the 'poly' and 'sigmoid' kernels.
    max_iter : int, default=10000
        Iteration cap of ``LinearSVC`` (``SVC`` runs to convergence).
    standardize : {'layer', 'column', 'none'}, default='layer'
        Feature scaling before the classifier: ``'layer'`` centres every column and divides each
        feature layer's block by one scale (the RMS of its column standard deviations), keeping
        the relative scale of a layer's units (most accurate on Xfer's toy task);
        ``'column'`` z-scores every column (``StandardScaler``); ``'none'`` uses raw features.
    random_state : int, optional
        Seed of the solvers.
    n_jobs : int, default=-1
        Most threads for linear algebra (``-1``: all).
    extraction_batch_size : int, optional
        Batch size for feature extraction.
    verbose : bool or int, default=False
        ``1``/``True``: progress bars; ``0``/``False``: none. Log records go to the ``xfer``
        loggers whatever the value (see "Progress bars and logs" in :mod:`xfer`).
    """

    def __init__(
        self,
        source_model: Any,
        feature_layer_names: list[str] | None,
        context_function: Any = cpu,
        num_devices: int = 1,
        c: float = 1.0,
        kernel: str = "linear",
        gamma: float | str = "auto",
        enable_probability_estimates: bool = False,
        *,
        degree: int = 3,
        coef0: float = 0.0,
        max_iter: int = 10000,
        random_state: int | None = None,
        standardize: str = "layer",
        n_jobs: int = -1,
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
        self.c = c
        self.kernel = kernel
        self.gamma = gamma
        self.enable_probability_estimates = enable_probability_estimates
        self.degree = degree
        self.coef0 = coef0
        self.max_iter = max_iter
        self.random_state = random_state
        self.standardize = standardize
        self.n_jobs = n_jobs

    _target_model_types = (SvmModel,)

    def _gamma_value(self, scaled: np.ndarray) -> float:
        if self.gamma == "auto":
            return 1.0 / scaled.shape[1]
        if self.gamma == "scale":
            variance = float(scaled.var())
            return 1.0 / (scaled.shape[1] * variance) if variance > 0 else 1.0
        if (
            isinstance(self.gamma, bool)
            or not isinstance(self.gamma, numbers.Real)
            or self.gamma <= 0
        ):
            raise InvalidArgumentError(
                f"gamma must be 'auto', 'scale' or a positive number, got {self.gamma!r}."
            )
        return float(self.gamma)

    def _make_svm(self, scaled: np.ndarray) -> tuple[Any, dict[str, Any]]:
        if self.kernel == "linear":
            # liblinear's primal solver (scikit-learn's choice when n_samples > n_features) is
            # 5-20x slower than the dual one on wide features such as CNN embeddings (measured:
            # 3,000 x 1,280 took 226 s primal, 11 s dual; 10,000 x 64 took 0.5 s primal, 1.4 s dual).
            dual = True if scaled.shape[1] >= 128 else "auto"
            estimator = LinearSVC(
                C=self.c, dual=dual, max_iter=self.max_iter, random_state=self.random_state
            )
            return estimator, {"kernel": "linear"}
        gamma = self._gamma_value(scaled)
        estimator = SVC(
            C=self.c,
            kernel=self.kernel,
            gamma=gamma,
            degree=self.degree,
            coef0=self.coef0,
            random_state=self.random_state,
            decision_function_shape="ovr",
        )
        config = {
            "kernel": self.kernel,
            "gamma": gamma,
            "degree": int(self.degree),
            "coef0": float(self.coef0),
        }
        return estimator, config

    def _train_model_from_features(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        feature_indices_per_layer: list[np.ndarray] | None = None,
    ) -> SvmModel:
        from xfer.repurposers.lr import _thread_limits

        if self.kernel not in _KERNELS:
            raise InvalidArgumentError(
                f"kernel must be one of {list(_KERNELS)}, got {self.kernel!r}."
            )
        check_positive("c", self.c)
        check_int("max_iter", self.max_iter)
        check_int("degree", self.degree)
        _linear.check_standardize_mode(self.standardize)
        features, labels, _, feature_indices_per_layer = self._hook_arguments(
            features, labels, feature_indices_per_layer
        )
        features = np.asarray(features, dtype=np.float64)
        with (
            _thread_limits(self.n_jobs),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always", ConvergenceWarning)
            mean, scale = _linear.fit_standardizer(
                features, feature_indices_per_layer, self.standardize
            )
            scaled = _linear.standardize(features, mean, scale)
            estimator, config = self._make_svm(scaled)
            arrays: dict[str, np.ndarray] = {"mean": mean, "scale": scale}
            if self.enable_probability_estimates:
                smallest = int(np.bincount(labels).min())
                if smallest < 2:
                    raise InvalidArgumentError(
                        "enable_probability_estimates=True calibrates probabilities by "
                        "cross-validation and needs at least 2 examples of every class; one class "
                        "has 1. Add examples or set enable_probability_estimates=False."
                    )
                if len(labels) >= _HOLDOUT_CALIBRATION_FROM:
                    # Cross-validated calibration costs folds + 1 SVM fits (minutes at 10,000 x
                    # 1,280); with this much data a stratified held-out fifth calibrates as well.
                    fit_rows, calibration_rows = train_test_split(
                        np.arange(len(labels)), test_size=0.2, stratify=labels,
                        random_state=self.random_state,
                    )
                    estimator.fit(scaled[fit_rows], labels[fit_rows])
                    calibrated = CalibratedClassifierCV(
                        FrozenEstimator(estimator), method="sigmoid"
                    ).fit(scaled[calibration_rows], labels[calibration_rows])
                    fitted = calibrated.calibrated_classifiers_[0]
                else:
                    calibrated = CalibratedClassifierCV(
                        estimator, method="sigmoid", cv=min(5, smallest), ensemble=False
                    ).fit(scaled, labels)
                    fitted = calibrated.calibrated_classifiers_[0]
                    estimator = fitted.estimator
                arrays["calibration_a"] = np.array(
                    [cal.a_ for cal in fitted.calibrators], dtype=np.float64
                )
                arrays["calibration_b"] = np.array(
                    [cal.b_ for cal in fitted.calibrators], dtype=np.float64
                )
            else:
                estimator.fit(scaled, labels)
        for warning in caught:
            if issubclass(warning.category, ConvergenceWarning):
                warnings.warn(
                    f"SvmRepurposer: the SVM solver did not converge in max_iter={self.max_iter} "
                    "iterations; increase max_iter or lower c.",
                    ConvergenceWarning,
                    stacklevel=4,
                )
                break
        if self.kernel == "linear":
            arrays["coef"] = estimator.coef_
            arrays["intercept"] = estimator.intercept_
        else:
            arrays["support_vectors"] = estimator.support_vectors_
            arrays["dual_coef"] = estimator.dual_coef_
            arrays["intercept"] = estimator.intercept_
            arrays["n_support"] = estimator.n_support_.astype(np.int64)
        self.n_iter_ = int(np.max(estimator.n_iter_))
        config["probability"] = bool(self.enable_probability_estimates)
        return SvmModel(config, arrays)

    def _probability_check(self) -> bool:
        if not self.enable_probability_estimates:
            raise AttributeError(
                "predict_proba is available only when enable_probability_estimates=True."
            )
        return True

    @available_if(_probability_check)
    def predict_proba(self, X: Any, context: Any = None) -> np.ndarray:
        """Calibrated class probabilities (needs ``enable_probability_estimates=True``)."""
        return super().predict_proba(X, context=context)

    def predict_probability(self, test_iterator: Any, context: Any = None) -> np.ndarray:
        """Calibrated probabilities (Xfer spelling); ``ValueError`` without probability estimates.

        Parameters
        ----------
        test_iterator : ndarray, mx.io.DataIter, torch Tensor/Dataset/DataLoader or list of str
            Source-model inputs (or features without a source model).
        context : optional
            Device(s) for this call.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)

        Raises
        ------
        ProbabilityEstimatesDisabledError
            Fitted without ``enable_probability_estimates=True``.
        """
        if not self.enable_probability_estimates:
            raise _probabilities_disabled()
        return self.predict_proba(test_iterator, context=context)

    def _predict_probability_from_features(self, features: np.ndarray) -> np.ndarray:
        if not self.target_model_.has_probabilities:
            raise _probabilities_disabled()
        return self.target_model_.predict_proba(features)

    def _predict_label_from_features(self, features: np.ndarray) -> np.ndarray:
        return self.target_model_.predict_codes(features)

    def decision_function(self, X: Any, context: Any = None) -> np.ndarray:
        """The SVM's (uncalibrated) decision values, as scikit-learn's ``decision_function``.

        With it, scikit-learn's ``CalibratedClassifierCV`` calibrates this head, and scorers that
        read decision values (``roc_auc``) work on it.

        Parameters
        ----------
        X : ndarray, mx.io.DataIter or torch Dataset/DataLoader
            Source-model inputs, or features ``[N, D]`` when ``source_model`` is None.
        context : str, mx.Context, torch.device or list, optional
            Device(s) for feature extraction (default: the constructor's).

        Returns
        -------
        ndarray
            Shape ``(n_samples,)`` for two classes (positive values favour ``classes_[1]``), else
            ``(n_samples, n_classes)`` one-vs-rest scores in the order of ``classes_``.

        Raises
        ------
        NotFittedError
            Before ``fit``.
        """
        devices = self._resolve_devices(context)
        features = self._prediction_features(X, devices)
        return self.target_model_.decision_function(self._check_prediction_features(features))

    def decision_function_features(self, features: Any, context: Any = None) -> np.ndarray:
        """The SVM's (uncalibrated) decision values for features you extracted yourself.

        Parameters
        ----------
        features : array-like of shape (n_samples, n_features)
            Features as the head was trained on (concatenated feature layers).
        context : optional
            Ignored (the SVM runs on the CPU); accepted for a uniform signature.

        Returns
        -------
        ndarray
            As :meth:`decision_function`.
        """
        self._check_fitted()
        return self.target_model_.decision_function(
            self._check_prediction_features(self._as_feature_array(features))
        )

    def _set_target_model_state(
        self, config: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> None:
        self.target_model_ = SvmModel.from_state(config, arrays)


__all__ = ["SvmRepurposer", "SvmModel"]
