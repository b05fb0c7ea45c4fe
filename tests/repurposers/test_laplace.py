"""LaplaceRepurposer: the shared battery, save/load, and what its posterior adds to logistic regression."""

from __future__ import annotations

import numpy as np
import pytest

import xfer
from xfer import LaplaceRepurposer, LrRepurposer
from xfer.testing import RepurposerTestCase, make_blob_features


class TestLaplaceRepurposer(RepurposerTestCase):
    def create_repurposer(self, source_model=None, feature_layer_names=None, **kwargs):
        return LaplaceRepurposer(source_model, feature_layer_names, random_state=0, **kwargs)


class TestLaplaceBinary(TestLaplaceRepurposer):
    n_classes = 2


def test_is_exported_and_registered():
    assert xfer.LaplaceRepurposer is LaplaceRepurposer
    from xfer.serialization import registered_repurposers

    assert registered_repurposers()["xfer.LaplaceRepurposer"] is LaplaceRepurposer


def test_same_decisions_as_logistic_regression_without_l2():
    """The mean of the posterior is LrRepurposer's fit (same c, same scaling)."""
    X, y = make_blob_features(25, 3, 8, seed=2)
    X = X + np.random.RandomState(0).normal(0, 2.5, X.shape)
    lr = LrRepurposer(None, None, c=0.5).fit(X, y)
    laplace = LaplaceRepurposer(None, None, c=0.5, apply_l2_norm=False).fit(X, y)
    np.testing.assert_array_equal(lr.predict(X), laplace.predict(X))


def test_logit_variance_grows_away_from_the_data():
    X, y = make_blob_features(20, 3, 6, seed=1)
    head = LaplaceRepurposer(None, None, apply_l2_norm=False).fit(X, y)
    variance = lambda rows: np.einsum("nkk->n", head.target_model_.latent_moments(rows)[1])  # noqa: E731
    far = np.random.RandomState(3).normal(0, 40, (30, 6))
    assert variance(far).min() > variance(X).max() or head.target_model_.covariance_scale_ == 0.0
    core = head.target_model_
    core.covariance_scale_, core.temperature_ = 1.0, 1.0  # the plain posterior
    assert variance(far).min() > variance(X).max()
    assert head.predict_proba(far).max(axis=1).mean() < head.predict_proba(X).max(axis=1).mean()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"c": 0}, "c must be a positive finite number"),
        ({"hessian_structure": "block"}, r"hessian_structure must be one of \['auto', 'full', 'kron', 'diag'\]"),
        ({"predictive": "sample"}, r"predictive must be one of \['probit', 'mc'\]"),
        ({"prior_precision": -1.0}, "prior_precision must be a positive finite number"),
        ({"standardize": "z"}, "standardize must be one of"),
    ],
)
def test_bad_parameters_rejected_in_fit(params, message):
    X, y = make_blob_features()
    head = LaplaceRepurposer(None, None, **params)  # __init__ only stores
    with pytest.raises(ValueError, match=message):
        head.fit(X, y)


def test_no_epistemic_part_when_the_calibration_keeps_the_fitted_probabilities():
    """Separated classes: the calibration keeps scale 0, so predict_uncertainty reports no
    epistemic part (the docstring says so); the plain posterior (scale 1) would report one."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    X = rng.normal(size=(30, 20)) + 6.0 * np.eye(3, 20)[y]
    head = LaplaceRepurposer(None, None, apply_l2_norm=False).fit(X, y)
    far = rng.normal(0, 5, (5, 20))
    assert head.target_model_.covariance_scale_ == 0.0
    np.testing.assert_allclose(head.predict_uncertainty(far).epistemic, 0.0, atol=1e-12)
    head.target_model_.covariance_scale_ = 1.0
    assert np.all(head.predict_uncertainty(far).epistemic > 1e-6)
