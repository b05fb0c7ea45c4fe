"""SvmRepurposer: the shared battery for linear/kernel SVMs, with and without probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from xfer import SvmRepurposer
from xfer.exceptions import NotFittedError, ProbabilityEstimatesDisabledError
from xfer.testing import RepurposerTestCase, make_blob_features


class TestSvmLinear(RepurposerTestCase):
    has_predict_proba = False

    def create_repurposer(self, source_model=None, feature_layer_names=None, **kwargs):
        return SvmRepurposer(source_model, feature_layer_names, random_state=0, **kwargs)


class TestSvmLinearProbabilities(RepurposerTestCase):
    def create_repurposer(self, source_model=None, feature_layer_names=None, **kwargs):
        return SvmRepurposer(
            source_model,
            feature_layer_names,
            enable_probability_estimates=True,
            random_state=0,
            **kwargs,
        )


class TestSvmRbfProbabilities(RepurposerTestCase):
    def create_repurposer(self, source_model=None, feature_layer_names=None, **kwargs):
        return SvmRepurposer(
            source_model,
            feature_layer_names,
            kernel="rbf",
            enable_probability_estimates=True,
            random_state=0,
            **kwargs,
        )


class TestSvmPolyBinary(RepurposerTestCase):
    has_predict_proba = False
    n_classes = 2

    def create_repurposer(self, source_model=None, feature_layer_names=None, **kwargs):
        return SvmRepurposer(
            source_model, feature_layer_names, kernel="poly", random_state=0, **kwargs
        )


def _reference(kernel, probability, X, y):
    scaled = StandardScaler().fit_transform(X.astype(np.float64))
    if kernel == "linear":
        base = LinearSVC(dual="auto", max_iter=10000, random_state=0)
    else:
        base = SVC(kernel=kernel, gamma=1.0 / X.shape[1], random_state=0)
    if probability:
        model = CalibratedClassifierCV(base, method="sigmoid", cv=5, ensemble=False).fit(scaled, y)
        return model.predict_proba(scaled)
    return base.fit(scaled, y).decision_function(scaled)


@pytest.mark.parametrize("kernel", ["linear", "rbf", "poly", "sigmoid"])
@pytest.mark.parametrize("probability", [False, True])
@pytest.mark.parametrize("n_classes", [2, 4])
def test_equal_to_scikit_learn(kernel, probability, n_classes):
    X, y = make_blob_features(25, n_classes, 8, seed=7)
    X = X + np.random.RandomState(0).normal(0, 3, X.shape)
    repurposer = SvmRepurposer(
        None,
        None,
        kernel=kernel,
        enable_probability_estimates=probability,
        random_state=0,
        standardize="column",
    ).fit(X, y)
    reference = _reference(kernel, probability, X, y)
    ours = repurposer.predict_proba(X) if probability else repurposer.decision_function_features(X)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10)


def test_probabilities_disabled_is_a_value_error():
    X, y = make_blob_features()
    repurposer = SvmRepurposer(None, None).fit(X, y)
    assert not hasattr(repurposer, "predict_proba")  # scikit-learn's convention (like SVC)
    with pytest.raises(ValueError, match="enable_probability_estimates=True"):
        repurposer.predict_probability(X)
    with pytest.raises(ProbabilityEstimatesDisabledError):
        repurposer.predict_proba_features(X)


def test_probabilities_need_two_examples_per_class():
    X, y = make_blob_features(5, 3, 4)
    y[0] = 9
    with pytest.raises(ValueError, match="at least 2 examples"):
        SvmRepurposer(None, None, enable_probability_estimates=True).fit(X, y)


@pytest.mark.parametrize(
    ("params", "message"),
    [({"kernel": "precomputed"}, "kernel must be"), ({"kernel": "rbf", "gamma": -1}, "gamma")],
)
def test_bad_parameters(params, message):
    X, y = make_blob_features()
    with pytest.raises(ValueError, match=message):
        SvmRepurposer(None, None, **params).fit(X, y)


def test_linear_scales_to_ten_thousand_examples():
    import time

    rng = np.random.RandomState(0)
    centres = rng.normal(0, 1, (10, 64))
    y = rng.randint(0, 10, 10_000)
    X = centres[y] + rng.normal(0, 1.5, (10_000, 64))
    start = time.perf_counter()
    repurposer = SvmRepurposer(None, None, enable_probability_estimates=True, random_state=0).fit(
        X, y
    )
    assert time.perf_counter() - start < 30
    assert repurposer.score(X, y) > 0.9


def test_large_data_calibrates_on_a_held_out_fifth(monkeypatch, tmp_path):
    """From _HOLDOUT_CALIBRATION_FROM examples on: one SVM fit, sigmoid calibration on 20%."""
    import xfer
    import xfer.repurposers.svm as svm_module
    from xfer.testing import make_blob_features

    monkeypatch.setattr(svm_module, "_HOLDOUT_CALIBRATION_FROM", 50)
    features, labels = make_blob_features(n_per_class=40, n_classes=3, n_features=8, seed=1)
    head = xfer.SvmRepurposer(None, None, enable_probability_estimates=True, random_state=0)
    head.fit(features, labels)
    proba = head.predict_proba(features)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(head.predict(features), head.classes_[proba.argmax(1)])
    assert head.score(features, labels) > 0.95
    head.save(tmp_path / "svm")
    np.testing.assert_array_equal(xfer.load(tmp_path / "svm").predict_proba(features), proba)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_decision_function_lets_scikit_learn_calibrate_and_score_the_svm(n_classes):
    """CalibratedClassifierCV needs decision_function; neg_log_loss and roc_auc then work."""
    from sklearn.model_selection import cross_val_score

    features, labels = make_blob_features(n_per_class=12, n_classes=n_classes, seed=3)
    names = np.array(["ant", "bee", "cow"])[labels]
    svm = SvmRepurposer(None, None, random_state=0).fit(features, names)
    decision = svm.decision_function(features)
    assert decision.shape == ((24,) if n_classes == 2 else (36, 3))
    if n_classes == 2:  # positive values favour classes_[1], as in scikit-learn
        assert (svm.classes_[(decision > 0).astype(int)] == svm.predict(features)).all()
    else:
        assert (svm.classes_[decision.argmax(axis=1)] == svm.predict(features)).all()
    np.testing.assert_array_equal(decision, svm.decision_function_features(features))

    calibrated = CalibratedClassifierCV(SvmRepurposer(None, None, random_state=0), cv=3)
    proba = calibrated.fit(features, names).predict_proba(features)
    assert proba.shape == (len(names), n_classes)
    scores = cross_val_score(calibrated, features, names, cv=3, scoring="neg_log_loss")
    assert np.all(np.isfinite(scores)) and np.all(scores <= 0)
    if n_classes == 2:
        auc = cross_val_score(SvmRepurposer(None, None), features, names, cv=3, scoring="roc_auc")
        assert np.all(auc > 0.9)


def test_decision_function_through_the_source_model(digits_source_model, target_digits):
    images, labels = target_digits
    svm = SvmRepurposer(digits_source_model, ["fc1"]).fit(images[:60], labels[:60])
    features = svm.get_features_from_source_model(images[60:80]).features
    np.testing.assert_allclose(
        svm.decision_function(images[60:80]), svm.decision_function_features(features)
    )
    with pytest.raises(NotFittedError):
        SvmRepurposer(None, None).decision_function(features)
