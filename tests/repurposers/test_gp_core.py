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


def test_sparse_path_temperature_minimises_training_nll_and_sharpens(sparse_gp, digits5):
    """The sparse path is trained on the softmax likelihood with few steps per row and stays
    under-confident; its temperature is set on its training rows' NLL (with the prior), and the
    predictions use it."""
    from xfer.repurposers._gp_core import mc_softmax

    x_train, y_train, x_test, y_test = digits5
    temperature = sparse_gp.temperature_
    assert sparse_gp.variance_scale_ == 1.0 and 0.1 <= temperature < 0.9

    def objective(t: float, features: np.ndarray, labels: np.ndarray) -> float:
        mean, variance = (torch.as_tensor(a) for a in sparse_gp.latent_moments(features, CPU))
        probs = mc_softmax(mean / t, variance / t**2, sparse_gp._points()).numpy()
        return _nll(probs, labels) * len(labels) + 0.5 * np.log(t) ** 2  # the prior of prior_width=1

    at = objective(temperature, x_train, y_train)
    assert at <= objective(temperature * 1.05, x_train, y_train) + 1e-6
    assert at <= objective(temperature / 1.05, x_train, y_train) + 1e-6
    mean, variance = (torch.as_tensor(a) for a in sparse_gp.latent_moments(x_test, CPU))
    expected = mc_softmax(mean / temperature, variance / temperature**2, sparse_gp._points()).numpy()
    probs = sparse_gp.predict_proba(x_test, CPU)
    np.testing.assert_allclose(probs, expected, atol=1e-12)
    plain = mc_softmax(mean, variance, sparse_gp._points()).numpy()
    assert _nll(probs, y_test) < _nll(plain, y_test) - 0.02
    assert probs.max(axis=1).mean() > plain.max(axis=1).mean()


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
    with pytest.raises(InvalidArgumentError, match="min_temperature must be below 10, the largest"):
        GpClassifierCore(min_temperature=10.0)
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
    with pytest.raises(SerializationError, match=r"GP state format 99 is newer than this library supports \(3\); upgrade xfer"):
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


# ----------------------------------------------------------------------------- predictive maths


def test_probabilities_are_the_expected_softmax_of_the_latent_gaussian(exact_gp, digits5):
    """E[softmax(f / T)] with f ~ N(mean, c variance) per class, by an independent 100,000-sample
    average: the predictive variance enters the softmax (dropping it changes the answer)."""
    _, _, x_test, _ = digits5
    rows = np.r_[x_test[:4], x_test[:4] * 0.3 + 8.0]  # near the data, and where the variance is large
    core = GpClassifierCore.from_state(*exact_gp.get_state())
    core.temperature_, core.variance_scale_ = 0.7, 0.5  # any calibration: the same formula
    mean, variance = core.latent_moments(rows, CPU)
    temperature = core.temperature_
    z = np.random.default_rng(0).standard_normal((100_000, 1, 5))
    logits = (mean[None] + np.sqrt(0.5 * variance)[None] * z) / temperature
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected = (expected / expected.sum(-1, keepdims=True)).mean(axis=0)
    got = core.predict_proba(rows, CPU)
    np.testing.assert_allclose(got, expected, atol=0.03)  # 256 Sobol points vs 100,000 draws
    plug_in = np.exp(mean / temperature) / np.exp(mean / temperature).sum(-1, keepdims=True)
    assert np.abs(plug_in - expected).max() > 0.1  # the variance matters on these rows


def test_held_out_moments_match_refits_without_the_rows(exact_gp):
    """Closed-form leave-one-out and leave-pair-out latent moments = the GP conditioned on the
    other rows (numpy); the pair of a row is the next row of its class."""
    from xfer.repurposers._gp_core import dirichlet_targets

    model = exact_gp.model_
    x = torch.as_tensor(exact_gp.train_features_)
    labels = exact_gp.train_labels_
    targets, noise = dirichlet_targets(torch.as_tensor(labels), 5, exact_gp.alpha_epsilon, torch.float64)
    noise = (noise + exact_gp._additional_noise()).numpy()
    with torch.no_grad():
        kernel = model.covar_module(x, x).to_dense().numpy()
    constant = float(model.mean_module.constant)
    loo = [t.numpy() for t in exact_gp.leave_one_out_moments(CPU)]
    pair = [t.numpy() for t in exact_gp.leave_pair_out_moments(CPU)]
    for row in (0, 17, 39):
        same_class = np.flatnonzero(labels == labels[row])
        partner = same_class[(np.searchsorted(same_class, row) + 1) % len(same_class)]
        for (mean_of, variance_of), removed in ((loo, [row]), (pair, [row, partner])):
            keep = ~np.isin(np.arange(len(labels)), removed)
            for k in (0, 3):
                c = kernel[np.ix_(keep, keep)] + np.diag(noise[k, keep])
                cross = kernel[row, keep]
                mean = constant + cross @ np.linalg.solve(c, targets[k, keep].numpy() - constant)
                variance = kernel[row, row] - cross @ np.linalg.solve(c, cross)
                assert mean_of[row, k] == pytest.approx(mean, rel=1e-6, abs=1e-8)
                assert variance_of[row, k] == pytest.approx(variance, rel=1e-5, abs=1e-9)
    assert not np.allclose(loo[0], pair[0])


def test_calibration_extrapolates_leave_one_out_with_leave_pair_out_and_is_saved(exact_gp, digits5):
    """log T = log T_1 + (n - 2) / n (log T_1 - log T_2) (and log c alike), with (T_1, c_1) and
    (T_2, c_2) searched on leave-one-out and leave-pair-out predictions and n labels per class;
    saved; files written before calibration existed load with T = c = 1."""
    loo_t, loo_c = exact_gp._search_calibration(*exact_gp.leave_one_out_moments(CPU))
    pair_t, pair_c = exact_gp._search_calibration(*exact_gp.leave_pair_out_moments(CPU))
    n = 150 / 5
    assert np.log(exact_gp.temperature_) == pytest.approx(loo_t + (n - 2) / n * (loo_t - pair_t), rel=1e-9)
    assert np.log(exact_gp.variance_scale_) == pytest.approx(loo_c + (n - 2) / n * (loo_c - pair_c), rel=1e-9)
    assert (pair_t, pair_c) != (loo_t, loo_c)  # the extrapolation moves (T, c)
    _, _, x_test, _ = digits5
    config, arrays = exact_gp.get_state()
    assert (config["temperature"], config["variance_scale"]) == (exact_gp.temperature_, exact_gp.variance_scale_)
    loaded = GpClassifierCore.from_state(config, arrays)
    np.testing.assert_array_equal(loaded.predict_proba(x_test, CPU), exact_gp.predict_proba(x_test, CPU))
    version_1 = {**config, "format_version": 1}
    version_1.pop("temperature")
    version_1.pop("variance_scale")
    old = GpClassifierCore.from_state(version_1, arrays)  # files written before calibration
    assert (old.temperature_, old.variance_scale_) == (1.0, 1.0)


def test_calibration_search_finds_the_best_point_of_a_fine_grid(exact_gp):
    """The Brent search per variance scale (64 Sobol points, then the prediction's 256) and the
    joint refinement reach the objective's minimum over a fine grid of temperatures and variance
    scales (the scales between the search's own six too) evaluated with the 256 points."""
    from xfer.context import torch_num_threads
    from xfer.repurposers._gp_core import VARIANCE_SCALES, mc_softmax

    mean, variance = exact_gp.leave_one_out_moments(CPU)
    rows, labels = np.arange(len(exact_gp.train_labels_)), exact_gp.train_labels_

    def objective(temperature, scale):  # summed LOO NLL + log-normal priors of width 1
        p = mc_softmax(mean / temperature, scale * variance / temperature**2, exact_gp._points())
        nll = float(-np.log(p.numpy()[rows, labels]).sum())
        return nll + 0.5 * np.log(temperature) ** 2 + 0.5 * np.log(scale) ** 2

    with torch_num_threads(1):  # small softmaxes: one thread is fastest
        grid = min(objective(t, c) for t in np.logspace(-1, 1, 41) for c in (*VARIANCE_SCALES, *np.logspace(-2, 0, 21)))
        log_t, log_c = exact_gp._search_calibration(mean, variance)
        chosen = objective(np.exp(log_t), np.exp(log_c))
    assert chosen <= grid + 1e-3 * abs(grid), (chosen, grid)
    assert chosen < objective(1.0, 1.0)  # digits: the calibration does change the posterior


def test_many_classes_few_labels_are_not_under_confident():
    """20 classes x 3 labels (Gaussian clusters in 40 dimensions, 59% accuracy): the mean top
    probability on 2,000 test rows is within 0.05 of the accuracy (0.63; the calibration on
    leave-one-out alone gave 0.47)."""
    rng = np.random.RandomState(0)
    centres = rng.normal(size=(20, 40))

    def draw(per_class):
        labels = np.repeat(np.arange(20), per_class)
        return centres[labels] + 1.8 * rng.normal(size=(len(labels), 40)), labels

    (x_train, y_train), (x_test, y_test) = draw(3), draw(100)
    core = GpClassifierCore(random_state=0, apply_l2_norm=True).fit(x_train, y_train, 20, None, CPU)
    probabilities = core.predict_proba(x_test, CPU)
    accuracy = np.mean(probabilities.argmax(axis=1) == y_test)
    assert 0.4 < accuracy < 0.8
    assert abs(probabilities.max(axis=1).mean() - accuracy) < 0.05, (probabilities.max(axis=1).mean(), accuracy)


@pytest.mark.parametrize("exact_threshold", [2000, 50])
def test_calibrate_false_is_the_plain_posterior(digits5, exact_threshold):
    x_train, y_train, x_test, _ = digits5
    core = GpClassifierCore(
        random_state=0, calibrate=False, exact_threshold=exact_threshold, num_inducing=20, max_sparse_steps=5
    ).fit(x_train, y_train, 5, None, CPU)
    assert core.mode_ == ("exact" if exact_threshold > len(y_train) else "sparse")
    assert (core.temperature_, core.variance_scale_) == (1.0, 1.0)
    mean, variance = core.latent_moments(x_test[:5], CPU)
    from xfer.repurposers._gp_core import mc_softmax

    expected = mc_softmax(torch.as_tensor(mean), torch.as_tensor(variance), core._points()).numpy()
    np.testing.assert_allclose(core.predict_proba(x_test[:5], CPU), expected, atol=1e-12)


def test_uninformative_features_warn_degenerate():
    from xfer.exceptions import DegenerateFitWarning

    rng = np.random.RandomState(0)
    features, labels = rng.normal(size=(16, 30)), np.repeat([0, 1], 8)
    with pytest.warns(DegenerateFitWarning, match="GpClassifierCore: degenerate fit: its leave-one-out"):
        GpClassifierCore(random_state=0).fit(features, labels, 2, None, CPU)


def test_uncertainty_grows_away_from_the_data(exact_gp, digits5):
    _, _, x_test, _ = digits5
    near_p, near_information = exact_gp.predict_uncertainty(x_test[:20], CPU)
    far_p, far_information = exact_gp.predict_uncertainty(x_test[:20] + 30.0, CPU)
    np.testing.assert_allclose(near_p, exact_gp.predict_proba(x_test[:20], CPU), atol=1e-12)
    assert far_information.mean() > near_information.mean()
    assert far_p.max(axis=1).mean() < near_p.max(axis=1).mean()


def test_exact_training_objective_is_gpytorch_marginal_likelihood(exact_gp):
    """The written-out objective equals GPyTorch's ExactMarginalLogLikelihood, summed over classes."""
    import gpytorch

    from xfer.repurposers._gp_core import _gp_settings, dirichlet_targets

    model = exact_gp.model_
    x = torch.as_tensor(exact_gp.train_features_)
    targets, noise = dirichlet_targets(torch.as_tensor(exact_gp.train_labels_), 5, 0.01, torch.float64)
    ours = exact_gp._negative_log_marginal_likelihood(x, targets, noise)
    model.train()
    try:
        with torch.no_grad(), _gp_settings():
            mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
            theirs = -mll(model(x), model.train_targets).sum()
    finally:
        model.eval()
    assert float(ours) == pytest.approx(float(theirs), rel=1e-10)


@pytest.mark.slow
def test_gp_fits_and_predictions_do_not_import_sympy():
    """torch 2.13's ``torch.broadcast_shapes`` imports SymPy (~0.7 s) on its first call; GPyTorch's
    means, distributions and likelihoods call it. Neither path of the GP may (fresh process)."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
import torch
from xfer.repurposers._gp_core import GpClassifierCore
rng = np.random.RandomState(0)
x, y = rng.normal(size=(60, 6)), np.arange(60) % 3
x[:, :3] += 3 * np.eye(3)[y]
for threshold in (100, 20):  # exact, then sparse
    core = GpClassifierCore(exact_threshold=threshold, max_iterations=5, max_sparse_steps=5)
    core.fit(x, y, 3, None, torch.device("cpu"))
    core.predict_uncertainty(x, torch.device("cpu"))
print("sympy" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


def _wine_split(per_class: int = 5):
    """sklearn wine (13 unscaled columns: proline ~1000 carries the rows' norm), per_class rows of
    each class for training, the rest for testing."""
    from sklearn.datasets import load_wine

    features, labels = load_wine(return_X_y=True)
    rng = np.random.RandomState(0)
    train = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), per_class, replace=False) for k in range(3)]))
    test = np.setdiff1d(np.arange(len(labels)), train)
    return features[train], labels[train], features[test], labels[test]


def test_unscaled_tabular_columns_get_per_column_scaling_by_marginal_likelihood():
    """A layer whose norm sits in a few columns (wine: 1 effective column) gets a second
    pre-processing candidate, per-column z-scores without L2, and the fit keeps the candidate of
    higher marginal likelihood: here the column scaling, which the layer scaling loses to by far
    (the proline column dominates the kernel's distances)."""
    x_train, y_train, x_test, y_test = _wine_split()
    auto = GpClassifierCore(apply_l2_norm=True, random_state=0).fit(x_train, y_train, 3, None, CPU)
    layer = GpClassifierCore(apply_l2_norm=True, standardize="layer", random_state=0).fit(x_train, y_train, 3, None, CPU)
    column = GpClassifierCore(apply_l2_norm=False, standardize="column", random_state=0)
    column.fit(x_train, y_train, 3, None, CPU)
    assert auto.l2_layers_.tolist() == [False] and layer.l2_layers_.tolist() == [True]
    np.testing.assert_array_equal(auto.feature_scale_, column.feature_scale_)
    np.testing.assert_allclose(auto.predict_proba(x_test, CPU), column.predict_proba(x_test, CPU), rtol=1e-9)
    accuracy = {name: np.mean(core.predict_proba(x_test, CPU).argmax(1) == y_test) for name, core in
                [("auto", auto), ("layer", layer)]}  # fmt: skip
    assert accuracy["auto"] > 0.9 and accuracy["layer"] < 0.8, accuracy


def test_pre_processing_is_chosen_by_the_training_objective(monkeypatch):
    """The candidate kept is the one whose fit returns the lower objective (flip the objective's
    sign and the other candidate wins); with one candidate no objective is computed."""
    x_train, y_train, _, _ = _wine_split()
    original = GpClassifierCore._fit_exact
    scores = []

    def flipped(self, *args, **kwargs):
        value = original(self, *args, **kwargs)
        scores.append(value)
        return -value

    monkeypatch.setattr(GpClassifierCore, "_fit_exact", flipped)
    core = GpClassifierCore(apply_l2_norm=True, random_state=0, max_iterations=20).fit(x_train, y_train, 3, None, CPU)
    assert len(scores) == 2 and np.isfinite(scores).all() and scores[1] < scores[0]  # column scaling: lower
    assert core.l2_layers_.tolist() == [True]  # the flipped objective keeps the layer scaling
    scores.clear()
    GpClassifierCore(standardize="layer", random_state=0, max_iterations=5).fit(x_train, y_train, 3, None, CPU)
    assert len(scores) == 1 and np.isnan(scores[0])


def test_layers_spread_over_many_columns_have_one_candidate(exact_gp, digits5):
    """Pixels (16-17 effective columns per 32-pixel layer) and network features keep the plain
    pre-processing without a second fit: one scale per layer."""
    x_train = digits5[0]
    assert len(exact_gp._preprocessing_candidates(x_train)) == 1
    for columns in LAYERS:
        assert np.unique(exact_gp.feature_scale_[columns]).size == 1


def test_l2_layers_are_saved_and_older_states_load():
    x_train, y_train, x_test, _ = _wine_split()
    core = GpClassifierCore(apply_l2_norm=True, random_state=0, max_iterations=10).fit(x_train, y_train, 3, None, CPU)
    config, arrays = core.get_state()
    assert config["format_version"] == 3 and arrays["l2_layers"].tolist() == [0]
    loaded = GpClassifierCore.from_state(json.loads(json.dumps(config)), arrays)
    np.testing.assert_array_equal(loaded.predict_proba(x_test, CPU), core.predict_proba(x_test, CPU))
    older = {key: value for key, value in arrays.items() if key != "l2_layers"}
    version_2 = {**config, "format_version": 2, "options": {**config["options"], "standardize": "layer"}}
    assert GpClassifierCore.from_state(version_2, older).l2_layers_.tolist() == [True]  # apply_l2_norm
    with pytest.raises(SerializationError, match="lacks the array 'l2_layers'"):
        GpClassifierCore.from_state(config, older)
    with pytest.raises(SerializationError, match="one 0/1 flag per layer"):
        GpClassifierCore.from_state(config, {**arrays, "l2_layers": np.array([2])})


def test_mixed_layers_scale_only_the_layer_of_few_columns_per_column():
    """Layer 0: 4 tabular columns (the classes differ in two small-unit columns; a third in
    units 1,000 times larger is noise); layer 1: 60 spread columns of noise. The fit keeps the
    column candidate: layer 0 z-scored per column without L2, layer 1 L2-normalised with one
    scale, as without the rule; saved and loaded alike."""
    rng = np.random.RandomState(0)
    labels = np.repeat(np.arange(3), 12)
    tabular = np.c_[labels[:, None] + 0.3 * rng.randn(36, 2), 1000.0 * rng.rand(36, 1), 5.0 + rng.rand(36, 1)]
    features = np.c_[tabular, np.abs(rng.randn(36, 60))]
    layers = [np.arange(4), np.arange(4, 64)]
    core = GpClassifierCore(apply_l2_norm=True, random_state=0).fit(features, labels, 3, layers, CPU)
    assert core.l2_layers_.tolist() == [False, True]
    assert np.unique(core.feature_scale_[layers[1]]).size == 1  # one scale for the spread layer
    assert core.feature_scale_[2] > 100 * core.feature_scale_[0]  # the large column is scaled on its own
    config, arrays = core.get_state()
    loaded = GpClassifierCore.from_state(config, arrays)
    np.testing.assert_array_equal(loaded.predict_proba(features, CPU), core.predict_proba(features, CPU))
    assert np.mean(core.predict_proba(features, CPU).argmax(1) == labels) > 0.9
