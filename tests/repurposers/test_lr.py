"""LrRepurposer: the shared battery plus equality with scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from xfer import LrRepurposer
from xfer.testing import RepurposerTestCase, make_blob_features


class TestLrRepurposer(RepurposerTestCase):
    def create_repurposer(self, source_model=None, feature_layer_names=None, **kwargs):
        return LrRepurposer(source_model, feature_layer_names, random_state=0, **kwargs)


class TestLrBinary(TestLrRepurposer):
    n_classes = 2


@pytest.mark.parametrize("n_classes", [2, 4])
def test_probabilities_equal_scikit_learn(n_classes):
    X, y = make_blob_features(30, n_classes, 10, seed=3)
    X = X + np.random.RandomState(0).normal(0, 3, X.shape)  # overlapping classes
    repurposer = LrRepurposer(None, None, c=0.5, tol=1e-6, standardize="column").fit(X, y)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, tol=1e-6, max_iter=1000))
    reference.fit(X.astype(np.float64), y)
    np.testing.assert_allclose(
        repurposer.predict_proba(X), reference.predict_proba(X), rtol=0, atol=1e-10
    )


def test_c_and_tol_are_honoured():
    X, y = make_blob_features(30, 3, 10, seed=4)
    weak = LrRepurposer(None, None, c=1e-3).fit(X, y).target_model_.coef
    strong = LrRepurposer(None, None, c=1e3).fit(X, y).target_model_.coef
    assert np.abs(weak).sum() < np.abs(strong).sum() / 10


def test_not_converged_raises_cap_then_warns():
    X, y = make_blob_features(50, 3, 10, seed=5)
    X = X + np.random.RandomState(1).normal(0, 3, X.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converged = LrRepurposer(None, None, max_iter=2, tol=1e-3).fit(X, y)  # cap raised once
    assert converged.n_iter_ > 2
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        LrRepurposer(None, None, max_iter=1, tol=1e-12, c=1e6).fit(X, y)


@pytest.mark.parametrize(
    ("params", "message"),
    [({"c": 0}, "c must be a positive"), ({"tol": -1}, "tol must be"), ({"n_jobs": 0}, "n_jobs")],
)
def test_bad_parameters_rejected_in_fit(params, message):
    X, y = make_blob_features()
    repurposer = LrRepurposer(None, None, **params)  # __init__ only stores
    with pytest.raises(ValueError, match=message):
        repurposer.fit(X, y)


def test_xfer_signature_defaults():
    repurposer = LrRepurposer("model", ["fc1"])
    params = repurposer.get_params()
    assert (params["tol"], params["c"], params["n_jobs"], params["num_devices"]) == (
        1e-4,
        1.0,
        -1,
        1,
    )


def test_layer_standardisation_keeps_relative_scale_within_a_layer():
    from xfer.repurposers import _linear

    rng = np.random.RandomState(0)
    features = np.c_[
        rng.normal(0, 1, (50, 2)), rng.normal(0, 10, (50, 1)), rng.normal(5, 3, (50, 2))
    ]
    layers = [np.arange(3), np.arange(3, 5)]
    mean, scale = _linear.fit_standardizer(features, layers, "layer")
    np.testing.assert_allclose(mean, features.mean(0))
    assert scale[0] == scale[1] == scale[2] and scale[3] == scale[4]
    np.testing.assert_allclose(scale[0], np.sqrt(features[:, :3].var(0).mean()))
    mean, scale = _linear.fit_standardizer(features, layers, "none")
    assert not mean.any() and (scale == 1).all()


def test_unknown_standardize_mode():
    X, y = make_blob_features()
    with pytest.raises(ValueError, match="standardize must be one of"):
        LrRepurposer(None, None, standardize="minmax").fit(X, y)


@pytest.mark.parametrize("head", ["lr", "svm"])
def test_n_jobs_limits_blas_threads_and_the_default_skips_the_thread_pool_scan(head, monkeypatch):
    # threadpool_limits(limits=None) limits nothing but scans every loaded native library
    # (~0.07 s of CPU per fit): the default n_jobs=-1 must not pay it; n_jobs=k still limits.
    import threadpoolctl

    from xfer.repurposers import lr as lr_module
    from xfer.repurposers import svm as svm_module

    made = svm_module.SvmRepurposer if head == "svm" else LrRepurposer
    X, y = make_blob_features(30, 3, 10, seed=5)
    limits, seen = [], []

    def recording_limits(limits=None, **kwargs):
        seen.append(limits)
        return threadpoolctl.threadpool_limits(limits=limits, **kwargs)

    def fit_seeing_blas_threads(n_jobs):
        limits.clear()
        original = lr_module._linear.standardize

        def standardize(*args):
            info = threadpoolctl.threadpool_info()
            limits.append({pool["num_threads"] for pool in info if pool["user_api"] == "blas"})
            return original(*args)

        monkeypatch.setattr(lr_module._linear, "standardize", standardize)
        try:
            fitted = made(None, None, n_jobs=n_jobs, random_state=0).fit(X, y)
            return fitted.decision_function(X) if head == "svm" else fitted.predict_proba(X)
        finally:
            monkeypatch.setattr(lr_module._linear, "standardize", original)

    monkeypatch.setattr(lr_module, "threadpool_limits", recording_limits)
    default = fit_seeing_blas_threads(-1)
    assert seen == []
    one = fit_seeing_blas_threads(1)
    assert seen == [1] and limits[0] == {1}  # inside the fit (predicting standardises too)
    np.testing.assert_allclose(one, default, rtol=0, atol=1e-12)
