"""Tests of the GP classification core (exact Dirichlet GP and sparse variational GP)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from xfer.exceptions import (
    InvalidArgumentError,
    InvalidTypeError,
    NotFittedError,
    SerializationError,
)
from xfer.repurposers._gp_core import GpClassifierCore

CPU = torch.device("cpu")
LAYERS = [np.arange(32), np.arange(32, 64)]


@pytest.fixture(scope="module")
def digits5():
    """Digits 0-4: 150 training rows (64 pixel features, two 'layers' of 32), the rest for testing."""
    features, labels = load_digits(return_X_y=True)
    keep = labels < 5
    features, labels = features[keep], labels[keep]
    order = np.random.RandomState(0).permutation(len(labels))
    features, labels = features[order], labels[order]
    return features[:150], labels[:150], features[150:], labels[150:]


@pytest.fixture(scope="module")
def exact_gp(digits5):
    x_train, y_train, _, _ = digits5
    return GpClassifierCore(random_state=0).fit(x_train, y_train, 5, LAYERS, CPU)


@pytest.fixture(scope="module")
def sparse_gp(digits5):
    x_train, y_train, _, _ = digits5
    core = GpClassifierCore(
        random_state=0, exact_threshold=50, num_inducing=20, max_iterations=100,
        sparse_batch_size=150, sparse_learning_rate=0.05,
    )
    return core.fit(x_train, y_train, 5, LAYERS, CPU)


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(probs[np.arange(len(labels)), labels])))


def test_exact_fit_predict_shapes_and_accuracy(exact_gp, digits5):
    _, _, x_test, y_test = digits5
    assert exact_gp.mode_ == "exact"
    probs = exact_gp.predict_proba(x_test, CPU)
    assert probs.shape == (len(x_test), 5) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(probs > 0)
    assert np.mean(probs.argmax(axis=1) == y_test) > 0.95


def test_sparse_path_is_used_and_accurate(sparse_gp, digits5):
    _, _, x_test, y_test = digits5
    assert sparse_gp.mode_ == "sparse"
    probs = sparse_gp.predict_proba(x_test, CPU)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert np.mean(probs.argmax(axis=1) == y_test) > 0.9


def test_calibration_nll_beats_overconfident_baseline(exact_gp, digits5):
    x_train, y_train, x_test, y_test = digits5
    gp_nll = _nll(exact_gp.predict_proba(x_test, CPU), y_test)
    overfit = LogisticRegression(C=1e6, max_iter=5000).fit(x_train, y_train)
    baseline_nll = _nll(np.clip(overfit.predict_proba(x_test), 1e-15, 1.0), y_test)
    assert gp_nll < baseline_nll
    assert gp_nll < 0.25 * np.log(5)


@pytest.mark.parametrize("which", ["exact_gp", "sparse_gp"])
def test_far_away_points_get_near_uniform_probabilities(which, request, digits5):
    core = request.getfixturevalue(which)
    _, _, x_test, _ = digits5
    far = x_test[:20] + 1e4
    probs = core.predict_proba(far, CPU)
    np.testing.assert_allclose(probs, 0.2, atol=0.03)
    # ...while near the data the model is confident.
    assert core.predict_proba(x_test[:20], CPU).max(axis=1).mean() > 0.6


def test_prediction_is_deterministic_and_batch_independent(exact_gp, digits5):
    _, _, x_test, _ = digits5
    first = exact_gp.predict_proba(x_test, CPU)
    np.testing.assert_array_equal(first, exact_gp.predict_proba(x_test, CPU))
    np.testing.assert_allclose(first, exact_gp.predict_proba(x_test, CPU, batch_size=7), rtol=0, atol=1e-12)
    np.testing.assert_allclose(first[5:9], exact_gp.predict_proba(x_test[5:9], CPU), rtol=0, atol=1e-12)


def test_same_seed_same_fit(digits5, sparse_gp):
    x_train, y_train, x_test, _ = digits5
    again = GpClassifierCore(**sparse_gp._option_dict()).fit(x_train, y_train, 5, LAYERS, CPU)
    np.testing.assert_array_equal(sparse_gp.predict_proba(x_test, CPU), again.predict_proba(x_test, CPU))


@pytest.mark.parametrize("which", ["exact_gp", "sparse_gp"])
def test_state_round_trip_is_exact_and_json_safe(which, request, digits5):
    core = request.getfixturevalue(which)
    _, _, x_test, _ = digits5
    config, arrays = core.get_state()
    text = json.dumps(config, allow_nan=False)
    for name, array in arrays.items():
        assert isinstance(array, np.ndarray), name
        assert array.dtype != object and array.dtype.kind in "biuf", name
    loaded = GpClassifierCore.from_state(json.loads(text), {k: v.copy() for k, v in arrays.items()})
    np.testing.assert_array_equal(core.predict_proba(x_test, CPU), loaded.predict_proba(x_test, CPU))


def test_saved_training_data_only_where_prediction_needs_it(exact_gp, sparse_gp):
    _, exact_arrays = exact_gp.get_state()
    assert exact_arrays["train_features"].shape == (150, 64)
    _, sparse_arrays = sparse_gp.get_state()
    assert "train_features" not in sparse_arrays and "train_labels" not in sparse_arrays
    assert max(a.shape[0] if a.ndim else 0 for a in sparse_arrays.values()) < 150


def test_kernel_per_layer_both_ways(digits5, exact_gp):
    x_train, y_train, x_test, y_test = digits5
    assert len(exact_gp.get_state()[0]["hyperparameters"]["lengthscales"]) == 2
    single = GpClassifierCore(kernel_per_layer=False, max_iterations=30).fit(x_train, y_train, 5, LAYERS, CPU)
    config, _ = single.get_state()
    assert len(config["hyperparameters"]["lengthscales"]) == 1
    assert np.mean(single.predict_proba(x_test, CPU).argmax(axis=1) == y_test) > 0.9


def test_l2_norm_and_column_standardisation_run(digits5):
    x_train, y_train, x_test, y_test = digits5
    core = GpClassifierCore(apply_l2_norm=True, standardize="column", max_iterations=20, optimizer="adam")
    core.fit(x_train, y_train, 5, None, CPU)
    probs = core.predict_proba(x_test, CPU)
    assert np.mean(probs.argmax(axis=1) == y_test) > 0.85


def test_classes_absent_from_training_are_allowed(digits5):
    x_train, y_train, x_test, _ = digits5
    keep = y_train < 4
    core = GpClassifierCore(max_iterations=10).fit(x_train[keep], y_train[keep], 5, None, CPU)
    probs = core.predict_proba(x_test[:5], CPU)
    assert probs.shape == (5, 5)
    assert np.all(probs[:, 4] < 0.2)


def test_bad_arguments_raise_clear_errors(digits5, exact_gp):
    x_train, y_train, x_test, _ = digits5
    with pytest.raises(InvalidArgumentError, match="labels must lie in 0..2"):
        GpClassifierCore().fit(x_train, y_train, 3, None, CPU)
    with pytest.raises(InvalidArgumentError, match="standardize must be one of"):
        GpClassifierCore(standardize="zscore")
    with pytest.raises(InvalidArgumentError, match="max_iterations must be >= 1"):
        GpClassifierCore(max_iterations=0)
    with pytest.raises(InvalidArgumentError, match="outside 0..63"):
        GpClassifierCore().fit(x_train, y_train, 5, [np.arange(10, 70)], CPU)
    with pytest.raises(InvalidArgumentError, match="fitted on 64"):
        exact_gp.predict_proba(x_test[:, :10], CPU)
    with pytest.raises(InvalidArgumentError, match="NaN or infinite"):
        exact_gp.predict_proba(np.full((2, 64), np.nan), CPU)
    with pytest.raises(InvalidTypeError, match="torch.device"):
        exact_gp.predict_proba(x_test, "gpu:0")
    with pytest.raises(InvalidTypeError, match="integer numpy array"):
        GpClassifierCore().fit(x_train, y_train.astype(float), 5, None, CPU)
    with pytest.raises(NotFittedError):
        GpClassifierCore().predict_proba(x_test, CPU)


def test_corrupt_state_raises_serialization_error(sparse_gp):
    config, arrays = sparse_gp.get_state()
    broken = dict(arrays)
    broken.pop(next(k for k in broken if k.startswith("param.")))
    with pytest.raises(SerializationError):
        GpClassifierCore.from_state(config, broken)
    with pytest.raises(SerializationError, match="Not a GpClassifierCore"):
        GpClassifierCore.from_state({**config, "class": "Other"}, arrays)
    with pytest.raises(SerializationError, match=r"GP state format 99 is newer than this library supports \(1\); upgrade xfer"):
        GpClassifierCore.from_state({**config, "format_version": 99}, arrays)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("which", ["exact_gp", "sparse_gp"])
def test_cuda_and_cpu_probabilities_agree(which, request, digits5):
    core = request.getfixturevalue(which)
    _, _, x_test, _ = digits5
    cpu_probs = core.predict_proba(x_test, CPU)
    cuda_probs = core.predict_proba(x_test, torch.device("cuda", 0))
    np.testing.assert_allclose(cpu_probs, cuda_probs, atol=1e-5)
    np.testing.assert_array_equal(cpu_probs, core.predict_proba(x_test, CPU))


def test_repeated_training_points_fit():
    """Duplicated rows make the noise-free prior covariance singular (iris has duplicates)."""
    from sklearn.datasets import load_iris

    features, labels = load_iris(return_X_y=True)
    core = GpClassifierCore(random_state=0).fit(features, labels, 3, None, torch.device("cpu"))
    assert (core.predict_proba(features, torch.device("cpu")).argmax(1) == labels).mean() > 0.9
