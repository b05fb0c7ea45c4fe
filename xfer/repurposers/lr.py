"""Logistic regression on standardised features of the source model."""

from __future__ import annotations

import contextlib
import logging
import numbers
import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from xfer._arguments import check_int, check_positive
from xfer.context import cpu
from xfer.exceptions import InvalidArgumentError
from xfer.repurposers import _linear
from xfer.repurposers.meta_model import MetaModelRepurposer, TargetModelInfo
from xfer.serialization import register_repurposer

logger = logging.getLogger("xfer.repurposers.lr")


#: The most threads n_jobs may ask for (a C int, what BLAS/OpenMP take).
_MAX_THREADS = 2**31 - 1


def _thread_limit(n_jobs: Any) -> int | None:
    """``n_jobs`` as a BLAS/OpenMP thread limit (``-1``/``None``: no limit)."""
    if n_jobs is None or n_jobs == -1:
        return None
    if (
        isinstance(n_jobs, bool)
        or not isinstance(n_jobs, numbers.Integral)
        or n_jobs == 0
        or n_jobs < -1
    ):
        raise InvalidArgumentError(f"n_jobs must be a positive integer or -1, got {n_jobs!r}.")
    if n_jobs > _MAX_THREADS:
        raise InvalidArgumentError(
            f"n_jobs={n_jobs} is more threads than can be asked for (at most {_MAX_THREADS}); "
            "use -1 for every core."
        )
    return int(n_jobs)


def _thread_limits(n_jobs: Any) -> contextlib.AbstractContextManager:
    """BLAS/OpenMP limited to ``n_jobs`` threads inside the block; nothing to do for ``-1``/``None``.

    ``threadpool_limits(limits=None)`` limits nothing but still finds every native thread pool of
    the process (~0.017 s of CPU on a process's first fit with MXNet and scikit-learn loaded,
    ~0.003 s after): the default skips it.
    """
    limit = _thread_limit(n_jobs)
    return contextlib.nullcontext() if limit is None else threadpool_limits(limits=limit)


class LogisticModel:
    """A fitted (standardise -> logistic regression) model kept as arrays.

    Predicts exactly what the scikit-learn scaler + ``LogisticRegression`` pair predicted,
    without scikit-learn objects.
    """

    def __init__(
        self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: np.ndarray
    ):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        scaled = _linear.standardize(features, self.mean, self.scale)
        return _linear.linear_decision(scaled, self.coef, self.intercept)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return _linear.logistic_proba(self.decision_function(features))

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": self.intercept,
        }
        return {"model": "logistic"}, arrays

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> LogisticModel:
        return cls(arrays["mean"], arrays["scale"], arrays["coef"], arrays["intercept"])

    @property
    def n_classes_(self) -> int:
        """Number of classes (one row of ``coef`` for two)."""
        return 2 if self.coef.shape[0] == 1 else int(self.coef.shape[0])

    @property
    def n_features_(self) -> int:
        """Width of the features the model takes."""
        return int(self.coef.shape[1])

    @classmethod
    def from_sklearn(cls, estimator: LogisticRegression) -> LogisticModel:
        """The same predictions as a fitted scikit-learn ``LogisticRegression`` (on unscaled
        features), as arrays.

        Raises
        ------
        NotFittedError
            The estimator is not fitted.
        InvalidArgumentError
            Its probabilities are not the logistic/softmax of its decision values (a
            one-vs-rest model of an old scikit-learn).
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(estimator, ["coef_", "intercept_", "classes_"])
        coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
        intercept = np.broadcast_to(
            np.asarray(estimator.intercept_, dtype=np.float64), (coef.shape[0],)
        ).copy()
        n_features = coef.shape[1]
        model = cls(np.zeros(n_features), np.ones(n_features), coef, intercept)
        probe = np.random.RandomState(0).normal(size=(4, n_features))
        if not np.allclose(model.predict_proba(probe), estimator.predict_proba(probe), atol=1e-8):
            raise InvalidArgumentError(
                "This LogisticRegression's probabilities are not the softmax (binary: logistic) "
                "of its decision values (a one-vs-rest model?), which LrRepurposer's model "
                "computes: refit it with this scikit-learn, or fit the LrRepurposer."
            )
        return model


@register_repurposer(key="xfer.LrRepurposer")
class LrRepurposer(MetaModelRepurposer):
    """Logistic regression on standardised features (Xfer's ``LrRepurposer``).

    Features are standardised (see ``standardize``), then a multinomial
    (binary: logistic) L2-regularised ``LogisticRegression`` is fitted with L-BFGS. Training runs
    to convergence: if ``max_iter`` is reached, the cap is raised tenfold once, and a
    ``ConvergenceWarning`` is issued only if that does not converge either.

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
    tol : float, default=1e-4
        Stopping tolerance of the solver.
    c : float, default=1.0
        Inverse regularisation strength (scikit-learn's ``C``).
    n_jobs : int, default=-1
        Most threads used by the solver's linear algebra (``-1``: all). scikit-learn >= 1.8 no
        longer parallelises ``LogisticRegression`` over classes, so this is a thread limit.
    max_iter : int, default=1000
        Iteration cap of the solver (raised automatically once if not converged).
    standardize : {'layer', 'column', 'none'}, default='layer'
        Feature scaling before the classifier: ``'layer'`` centres every column and divides each
        feature layer's block by one scale (the RMS of its column standard deviations), keeping
        the relative scale of a layer's units (most accurate on Xfer's toy task);
        ``'column'`` z-scores every column (``StandardScaler``); ``'none'`` uses raw features.
    random_state : int, optional
        Kept for the common contract (L-BFGS is deterministic).
    extraction_batch_size : int, optional
        Batch size for feature extraction.
    verbose : bool or int, default=False
        ``1``/``True``: progress bars; ``0``/``False``: none. Log records go to the ``xfer``
        loggers whatever the value (see "Progress bars and logs" in :mod:`xfer`).

    Attributes
    ----------
    classes_ : ndarray
        Labels seen in ``fit``, in the order of ``predict_proba``'s columns.
    target_model_ : LogisticModel
        The fitted model as arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from xfer import LrRepurposer
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.normal(0, 1, (20, 3)), rng.normal(3, 1, (20, 3))]
    >>> y = np.array(["cat"] * 20 + ["dog"] * 20)
    >>> rep = LrRepurposer(None, None).fit(X, y)   # source_model=None: X are features
    >>> rep.predict(X[:2])
    array(['cat', 'cat'], dtype='<U3')
    """

    def __init__(
        self,
        source_model: Any,
        feature_layer_names: list[str] | None,
        context_function: Any = cpu,
        num_devices: int = 1,
        tol: float = 1e-4,
        c: float = 1.0,
        n_jobs: int = -1,
        *,
        max_iter: int = 1000,
        random_state: int | None = None,
        standardize: str = "layer",
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
        self.tol = tol
        self.c = c
        self.n_jobs = n_jobs
        self.max_iter = max_iter
        self.random_state = random_state
        self.standardize = standardize

    _target_model_types = (LogisticModel, LogisticRegression)

    def _describe_target_model(self, model: Any) -> Any:
        """A :class:`LogisticModel` (classes ``0..K-1``), or a fitted scikit-learn
        ``LogisticRegression``, held as the equivalent ``LogisticModel`` with its ``classes_``."""
        if isinstance(model, LogisticRegression):
            converted = LogisticModel.from_sklearn(model)  # checks that it is fitted
            return TargetModelInfo(converted, np.asarray(model.classes_), converted.n_features_)
        return super()._describe_target_model(model)

    def _check_options(self) -> None:
        check_positive("c", self.c)
        check_positive("tol", self.tol)
        check_int("max_iter", self.max_iter)
        _linear.check_standardize_mode(self.standardize)

    def _warn_not_converged(self) -> None:
        warnings.warn(
            f"LrRepurposer: logistic regression did not converge in {10 * self.max_iter} "
            f"iterations (tol={self.tol}). Increase max_iter or tol, or lower c.",
            ConvergenceWarning,
            stacklevel=5,
        )

    def _train_model_from_features(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        feature_indices_per_layer: list[np.ndarray] | None = None,
    ) -> LogisticModel:
        self._check_options()
        features, labels, _, feature_indices_per_layer = self._hook_arguments(
            features, labels, feature_indices_per_layer
        )
        features = np.asarray(features, dtype=np.float64)
        with _thread_limits(self.n_jobs):
            mean, scale = _linear.fit_standardizer(
                features, feature_indices_per_layer, self.standardize
            )
            scaled = _linear.standardize(features, mean, scale)
            classifier = LogisticRegression(
                C=self.c, tol=self.tol, max_iter=self.max_iter, random_state=self.random_state
            )
            for attempt, cap in enumerate((self.max_iter, 10 * self.max_iter)):
                classifier.set_params(max_iter=cap, warm_start=attempt > 0)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    classifier.fit(scaled, labels)
                if not any(issubclass(w.category, ConvergenceWarning) for w in caught):
                    break
                logger.info(
                    "LogisticRegression did not converge in %d iterations; continuing.", cap
                )
            else:
                self._warn_not_converged()
        self.n_iter_ = int(np.max(classifier.n_iter_))
        return LogisticModel(mean, scale, classifier.coef_, classifier.intercept_)

    def _train_model_from_store(
        self, store: Any, labels: np.ndarray, feature_indices_per_layer: list[np.ndarray]
    ) -> LogisticModel:
        """The same fit from features on disk: L-BFGS on the same objective, one pass over the
        store per evaluation (see :mod:`xfer.repurposers._out_of_core`)."""
        from xfer.repurposers import _out_of_core

        self._check_options()
        with _thread_limits(self.n_jobs):
            mean, scale = _out_of_core.fit_standardizer(
                store, feature_indices_per_layer, self.standardize
            )
            coef, intercept, iterations, converged = _out_of_core.fit_logistic(
                store, labels, len(self.classes_), mean, scale, self.c, self.tol, self.max_iter
            )
        if not converged:
            self._warn_not_converged()
        self.n_iter_ = iterations
        return LogisticModel(mean, scale, coef, intercept)

    def _predict_probability_from_features(self, features: np.ndarray) -> np.ndarray:
        return self.target_model_.predict_proba(features)

    def _set_target_model_state(
        self, config: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> None:
        self.target_model_ = LogisticModel.from_state(config, arrays)


__all__ = ["LrRepurposer", "LogisticModel"]
