"""The Laplace core's maths against independent computations (autograd Hessian, brute-force
posterior, Monte Carlo predictive, evidence on a grid), its structures and its saved state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.special import softmax

from xfer.exceptions import InvalidArgumentError, NotFittedError, SerializationError
from xfer.repurposers._laplace_core import (
    LaplaceClassifierCore,
    lbfgs,
    mc_softmax_samples,
    probit_softmax,
    sobol_normal_points,
)
from xfer.testing import make_blob_features


def _data(n_per_class=15, n_classes=3, n_features=5, seed=0, noise=2.0):
    X, y = make_blob_features(n_per_class, n_classes, n_features, seed)
    return X + np.random.RandomState(seed).normal(0, noise, X.shape), y


@pytest.fixture(scope="module")
def fitted():
    X, y = _data()
    return LaplaceClassifierCore(apply_l2_norm=False, calibrate=False).fit(X, y, 3), X, y


def test_hessian_is_the_autograd_hessian():
    rng = np.random.RandomState(0)
    design, weights = rng.normal(size=(7, 4)), rng.normal(size=(4, 3))
    targets = np.eye(3)[rng.randint(0, 3, 7)]
    hessian = LaplaceClassifierCore()._full_curvature(design, softmax(design @ weights, axis=1))

    def loss(flat):
        logits = torch.tensor(design) @ flat.reshape(4, 3)
        return -(torch.tensor(targets) * torch.log_softmax(logits, 1)).sum()

    reference = torch.autograd.functional.hessian(loss, torch.tensor(weights).reshape(-1)).numpy()
    np.testing.assert_allclose(hessian, reference, atol=1e-12)


def test_full_posterior_matches_brute_force(fitted):
    """Logit covariance = J (H + lambda I)^-1 J^T with H from autograd in the original weights."""
    core, X, y = fitted
    design = core._design(X)
    n_params = design.shape[1] * 3
    weights = core.basis_ @ core.weights_  # MAP in the original (D + 1) x K weights

    def loss(flat):
        logits = torch.tensor(design) @ flat.reshape(-1, 3)
        return -(torch.tensor(np.eye(3)[y]) * torch.log_softmax(logits, 1)).sum()

    hessian = torch.autograd.functional.hessian(loss, torch.tensor(weights).reshape(-1)).numpy()
    covariance = np.linalg.inv(hessian + core.prior_precision_ * np.eye(n_params))
    test = np.random.RandomState(1).normal(0, 3, (4, X.shape[1]))
    test_design = core._design(test)
    jacobians = np.einsum("nd,kl->nkdl", test_design, np.eye(3)).reshape(4, 3, n_params)
    expected = jacobians @ covariance @ jacobians.transpose(0, 2, 1)
    mean, got = core.latent_moments(test)
    assert core.structure_ == "full"
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(mean, test_design @ weights, rtol=1e-9, atol=1e-9)


def test_map_is_the_penalised_maximum_likelihood(fitted):
    core, X, y = fitted
    design = core._design(X)
    weights = core.basis_ @ core.weights_
    gradient = design.T @ (softmax(design @ weights, axis=1) - np.eye(3)[y]) + core.map_precision * weights
    assert np.abs(gradient).max() / len(y) < 1e-5  # the optimality condition, per example


def test_prior_precision_maximises_the_evidence(fitted):
    core, X, y = fitted
    design = core._design(X)
    rotated = design @ core.basis_
    probabilities = softmax(rotated @ core.weights_, axis=1)
    eigenvalues = core._curvature_eigenvalues(rotated, None, probabilities)
    targets = np.eye(3)[y]
    grid = core.prior_precision_ * np.exp(np.linspace(-1, 1, 41))
    logits = rotated @ core.weights_
    evidence = [core._log_evidence(logits, targets, core.weights_, p, eigenvalues) for p in grid]
    assert int(np.argmax(evidence)) == 20  # the middle of the grid: the fitted value


def test_probit_matches_monte_carlo_on_one_logit():
    """Binary case: the probit of MacKay vs a 200,000-sample average (independent of the code)."""
    mean = np.array([[0.0, 1.5], [0.0, -0.7], [0.0, 3.0]])
    covariance = np.zeros((3, 2, 2))
    covariance[:, 1, 1] = [0.5, 2.0, 4.0]
    rng = np.random.default_rng(0)
    samples = mean[:, 1:] + np.sqrt(covariance[:, 1, 1])[:, None] * rng.standard_normal((3, 200_000))
    monte_carlo = (1.0 / (1.0 + np.exp(-samples))).mean(axis=1)
    probit = probit_softmax(mean, covariance)[:, 1]
    np.testing.assert_allclose(probit, monte_carlo, atol=0.02)


def test_probit_and_mc_predictives_agree(fitted):
    core, X, _ = fitted
    test = np.random.RandomState(2).normal(0, 2, (50, X.shape[1]))
    probit = core.predict_proba(test)
    core.predictive = "mc"
    try:
        mc = core.predict_proba(test)
    finally:
        core.predictive = "probit"
    assert np.abs(probit - mc).max() < 0.08
    assert np.mean(probit.argmax(1) == mc.argmax(1)) > 0.95


def test_mc_samples_follow_the_covariance():
    mean = np.array([[0.3, -0.2, 1.0]])
    root = np.array([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.6]])
    covariance = (root @ root.T)[None]
    points = sobol_normal_points(4096, 3, 0)
    logits = np.log(mc_softmax_samples(mean, covariance, points)[0])
    centred = logits - logits.mean(axis=1, keepdims=True)  # softmax drops the common shift
    projector = np.eye(3) - 1.0 / 3.0
    np.testing.assert_allclose(np.cov(centred.T), projector @ covariance[0] @ projector, atol=0.03)


@pytest.mark.parametrize("structure", ["kron", "diag"])
def test_cheaper_structures_are_close_to_full(fitted, structure):
    core, X, y = fitted
    other = LaplaceClassifierCore(
        hessian_structure=structure, apply_l2_norm=False, calibrate=False, prior_precision=core.prior_precision_
    ).fit(X, y, 3)
    test = np.random.RandomState(4).normal(0, 2, (40, X.shape[1]))
    assert other.structure_ == structure
    np.testing.assert_allclose(other.predict_proba(test), core.predict_proba(test), atol=0.15)


def test_few_rows_many_features_use_the_row_space():
    X, y = _data(n_per_class=4, n_classes=2, n_features=300, seed=3, noise=1.0)
    core = LaplaceClassifierCore().fit(X, y, 2)
    assert core.basis_.shape == (301, 8)
    far = core.predict_proba(np.random.RandomState(0).normal(0, 10, (5, 300)))
    assert np.all(far.max(axis=1) < core.predict_proba(X).max(axis=1).min())


def test_calibration_chooses_a_scale_on_training_data_only(fitted):
    _, X, y = fitted
    core = LaplaceClassifierCore(apply_l2_norm=False).fit(X, y, 3)
    assert 0.0 <= core.covariance_scale_ <= 10.0 and 0.25 <= core.temperature_ <= 4.0
    assert core.calibration_nll_ is not None and core.calibration_nll_ < math.log(3)


def test_lbfgs_solves_a_quadratic():
    rng = np.random.RandomState(0)
    root = rng.normal(size=(20, 20))
    hessian, target = root @ root.T + np.eye(20), rng.normal(size=20)
    solution, iterations = lbfgs(
        lambda x: (0.5 * (x - target) @ hessian @ (x - target), hessian @ (x - target)), np.zeros(20), 500, 1e-10
    )
    np.testing.assert_allclose(solution, target, atol=1e-8)
    assert iterations < 500


@pytest.mark.parametrize("structure", ["full", "kron", "diag"])
def test_state_round_trip_is_exact_and_json_safe(structure):
    X, y = _data()
    core = LaplaceClassifierCore(hessian_structure=structure).fit(X, y, 3, [np.arange(2), np.arange(2, 5)])
    config, arrays = core.get_state()
    loaded = LaplaceClassifierCore.from_state(json.loads(json.dumps(config, allow_nan=False)), arrays)
    np.testing.assert_array_equal(loaded.predict_proba(X), core.predict_proba(X))


def test_corrupt_state_and_bad_arguments():
    X, y = _data()
    core = LaplaceClassifierCore().fit(X, y, 3)
    config, arrays = core.get_state()
    with pytest.raises(SerializationError, match="Not a LaplaceClassifierCore"):
        LaplaceClassifierCore.from_state({**config, "class": "Other"}, arrays)
    with pytest.raises(SerializationError, match=r"Laplace state format 9 is newer than this library supports \(1\)"):
        LaplaceClassifierCore.from_state({**config, "format_version": 9}, arrays)
    with pytest.raises(SerializationError, match="'weights' has shape"):
        LaplaceClassifierCore.from_state(config, {**arrays, "weights": arrays["weights"][:1]})
    with pytest.raises(SerializationError, match="Corrupt or incompatible Laplace state"):
        LaplaceClassifierCore.from_state(config, {k: v for k, v in arrays.items() if k != "basis"})
    with pytest.raises(NotFittedError):
        LaplaceClassifierCore().predict_proba(X)
    with pytest.raises(InvalidArgumentError, match="labels must lie in 0..1"):
        LaplaceClassifierCore().fit(X, y, 2)
    with pytest.raises(InvalidArgumentError, match="fitted on 5"):
        core.predict_proba(X[:, :3])


def test_mutual_information_of_the_logit_samples(fitted):
    """predict_uncertainty: predict_proba, and H(E p) - E H(p) over the Sobol logit samples,
    recomputed here; larger far from the training rows."""
    from xfer.repurposers._uncertainty import entropy

    core, x, _ = fitted
    rows = np.r_[x[:5], x[:5] * 10.0]
    probabilities, information = core.predict_uncertainty(rows)
    np.testing.assert_array_equal(probabilities, core.predict_proba(rows))
    samples = core.predict_samples(rows)
    np.testing.assert_allclose(information, entropy(samples.mean(axis=1)) - entropy(samples).mean(axis=1))
    assert np.all(information >= 0) and information[5:].mean() > information[:5].mean()


def test_features_without_information_warn_degenerate():
    from xfer.exceptions import DegenerateFitWarning

    with pytest.warns(DegenerateFitWarning, match="LaplaceClassifierCore: degenerate fit: its cross-validated"):
        core = LaplaceClassifierCore().fit(np.ones((30, 4)), np.repeat([0, 1, 2], 10), 3)
    np.testing.assert_allclose(core.predict_proba(np.ones((2, 4))), 1 / 3)
