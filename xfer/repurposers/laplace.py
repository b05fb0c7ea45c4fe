"""Last-layer Laplace head: logistic regression with a Gaussian posterior over its weights."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from xfer.context import cpu
from xfer.repurposers.meta_model import MetaModelRepurposer
from xfer.serialization import register_repurposer

logger = logging.getLogger("xfer.repurposers.laplace")


@register_repurposer(key="xfer.LaplaceRepurposer")
class LaplaceRepurposer(MetaModelRepurposer):
    """Logistic regression on features with a Laplace posterior over the weights (closed form).

    The fitted weights are those of :class:`~xfer.LrRepurposer` on the same (L2-normalised)
    features with the same ``c`` (the intercept unpenalised; for two classes LR's binary model), and
    they get a Gaussian posterior: the curvature of the likelihood at the fitted weights plus an
    isotropic prior whose precision is chosen by the Laplace approximation of the marginal
    likelihood. Probabilities average the softmax over the Gaussian of the logits, whose spread
    grows where the training data say little. A scale of that Gaussian and a temperature are
    chosen by cross-validated NLL of the training rows, and kept only when they beat the plain
    fitted probabilities by more than one standard error; the scale may be 0 (the fitted weights'
    probabilities, possibly tempered). ``predict_uncertainty``'s epistemic part is read from the
    posterior at scale at least 1 whatever the calibration chose: the share of the entropy that
    posterior attributes to the weights (``LaplaceClassifierCore.predict_uncertainty``). It is
    larger on the benchmark's inputs from outside the task (``python -m benchmarks.run --only
    ood``, epistemic table), but it is at most the entropy: inputs whose logits the linear head
    pushes far out (e.g. unscaled tabular rows with their columns scrambled) get near-certain
    probabilities and a part near 0.
    Everything is linear algebra in NumPy: no sampling during fit, no GPU.

    Parameters
    ----------
    source_model : mx.mod.Module, ModelHandler, torch.nn.Module or None
        Source network; ``None`` means ``fit``/``predict`` take feature arrays.
    feature_layer_names : list of str
        Layers whose outputs are the features.
    context_function : callable or device, default=mx.cpu
        Default device of feature extraction.
    num_devices : int, default=1
        Number of devices for feature extraction.
    c : float, default=1.0
        Inverse regularisation strength of the fitted weights (``LrRepurposer``'s ``c``).
    prior_precision : float or None, default=None
        Precision of the Gaussian prior of the posterior; ``None`` chooses it by marginal
        likelihood.
    hessian_structure : {"auto", "full", "kron", "diag"}, default="auto"
        Structure of the posterior precision: exact (``"full"``), Kronecker-factored or diagonal;
        ``"auto"`` is exact while the problem is small enough and Kronecker-factored above.
    predictive : {"probit", "mc"}, default="probit"
        Probit approximation of the predictive or a deterministic Monte Carlo average.
    apply_l2_norm : bool, default=True
        Scale each layer's features to unit L2 norm per example before standardising. The angle
        between feature vectors then decides what is close: inputs from outside the task are
        told apart far better on pooled CNN features (``python -m benchmarks.run --only ood``).
        Layers whose norm few columns carry (fewer than 10 effective columns,
        ``_linear.l2_layers``: e.g. unscaled tabular data, where one column in large units would
        be erased) are left unnormalised; the fitted core's ``l2_layers_`` records the choice.
    standardize : {"layer", "column", "none"}, default="layer"
        Feature scaling (as ``LrRepurposer``'s).
    random_state : int, optional
        Kept for the common contract (the fit is deterministic).
    extraction_batch_size : int, optional
        Batch size for feature extraction.
    verbose : bool or int, default=False
        Accepted for the common contract (the fit has no long loop to show); log records go to
        ``xfer.repurposers.laplace`` whatever the value.

    Attributes
    ----------
    classes_ : ndarray
        Labels seen in ``fit``, in the order of ``predict_proba``'s columns.
    target_model_ : LaplaceClassifierCore
        The fitted model (``prior_precision_``, ``structure_``, ``log_evidence_``).

    Examples
    --------
    >>> import numpy as np
    >>> from xfer import LaplaceRepurposer
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.normal(0, 1, (20, 3)), rng.normal(3, 1, (20, 3))]
    >>> y = np.array(["cat"] * 20 + ["dog"] * 20)
    >>> head = LaplaceRepurposer(None, None).fit(X, y)   # source_model=None: X are features
    >>> head.predict(X[:2])
    array(['cat', 'cat'], dtype='<U3')
    """

    def __init__(
        self,
        source_model: Any,
        feature_layer_names: list[str] | None,
        context_function: Any = cpu,
        num_devices: int = 1,
        *,
        c: float = 1.0,
        prior_precision: float | None = None,
        hessian_structure: str = "auto",
        predictive: str = "probit",
        apply_l2_norm: bool = True,
        standardize: str = "layer",
        random_state: int | None = None,
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
        self.prior_precision = prior_precision
        self.hessian_structure = hessian_structure
        self.predictive = predictive
        self.apply_l2_norm = apply_l2_norm
        self.standardize = standardize
        self.random_state = random_state

    def _core(self) -> Any:
        from xfer.repurposers._checks import check_positive_float
        from xfer.repurposers._laplace_core import LaplaceClassifierCore

        check_positive_float("c", self.c)
        return LaplaceClassifierCore(
            map_precision=1.0 / float(self.c),
            prior_precision=self.prior_precision,
            hessian_structure=self.hessian_structure,
            predictive=self.predictive,
            apply_l2_norm=bool(self.apply_l2_norm),
            standardize=self.standardize,
        )

    _target_model_types = ("xfer.repurposers._laplace_core:LaplaceClassifierCore",)

    def _train_model_from_features(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        feature_indices_per_layer: list[np.ndarray] | None = None,
    ) -> Any:
        core = self._core()
        features, labels, n_classes, feature_indices_per_layer = self._hook_arguments(
            features, labels, feature_indices_per_layer
        )
        return core.fit(features, labels, n_classes, feature_indices_per_layer)

    def _predict_probability_from_features(self, features: np.ndarray) -> np.ndarray:
        return self.target_model_.predict_proba(features)

    def _predict_uncertainty_from_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.target_model_.predict_uncertainty(features)

    def _set_target_model_state(
        self, config: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> None:
        from xfer.repurposers._laplace_core import LaplaceClassifierCore

        self.target_model_ = LaplaceClassifierCore.from_state(config, arrays)


__all__ = ["LaplaceRepurposer"]
