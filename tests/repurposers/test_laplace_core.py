"""The Laplace core's maths against independent computations (autograd Hessian, brute-force
posterior, Monte Carlo predictive, evidence on a grid), its structures and its saved state."""

from __future__ import annotations

import json
import math
import warnings

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
    penalty = np.full((len(weights), 1), core.map_precision)
    penalty[-1] = 1e-6  # the bias: nearly flat prior, as LrRepurposer's unpenalised intercept
    gradient = design.T @ (softmax(design @ weights, axis=1) - np.eye(3)[y]) + penalty * weights
    assert np.abs(gradient).max() / len(y) < 1e-5  # the optimality condition, per example


@pytest.mark.parametrize("n_classes", [2, 3])
def test_map_without_calibration_is_lr(n_classes):
    """Same features and penalty as LrRepurposer (unpenalised bias; for two classes, LR's binary
    model): the uncalibrated MAP's probabilities are logistic regression's."""
    import xfer

    rng = np.random.RandomState(3)
    y = np.repeat(np.arange(n_classes), 6)
    X = rng.normal(size=(len(y), 5)) * [1.0, 3.0, 0.5, 2.0, 1.0] + 0.8 * np.eye(n_classes, 5)[y] + 2.0
    lr = xfer.LrRepurposer(None, None, tol=1e-10).fit(X, y)
    core = LaplaceClassifierCore(apply_l2_norm=False, calibrate=False, prior_precision=1e9, tol=1e-10)
    core.fit(X, y, n_classes)
    test = rng.normal(size=(20, 5)) * 2.0 + 2.0
    np.testing.assert_allclose(core.predict_proba(test), lr.predict_proba(test), atol=1e-5)


def test_prior_precision_maximises_the_evidence(fitted):
    core, X, y = fitted
    design = core._design(X)
    rotated = design @ core.basis_
    probabilities = softmax(rotated @ core.weights_, axis=1)
    eigenvalues = core._curvature_eigenvalues(rotated, None, probabilities)
    targets = np.eye(3)[y]
    grid = core.prior_precision_ * np.exp(np.linspace(-1, 1, 41))
    logits = rotated @ core.weights_
    evidence = [core._log_evidence(logits, targets, core.weights_[:-1], p, eigenvalues) for p in grid]
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
    with pytest.raises(SerializationError, match=r"Laplace state format 9 is newer than this library supports \(2\)"):
        LaplaceClassifierCore.from_state({**config, "format_version": 9}, arrays)
    with pytest.raises(SerializationError, match="'weights' has shape"):
        LaplaceClassifierCore.from_state(config, {**arrays, "weights": arrays["weights"][:1]})
    with pytest.raises(SerializationError, match="Corrupt or incompatible Laplace state"):
        LaplaceClassifierCore.from_state(config, {k: v for k, v in arrays.items() if k != "basis"})
    with pytest.raises(SerializationError, match="'l2_layers' must hold one 0/1 flag per layer"):
        LaplaceClassifierCore.from_state(config, {**arrays, "l2_layers": np.array([1, 1])})
    with pytest.raises(SerializationError, match="lacks the array 'l2_layers'"):
        LaplaceClassifierCore.from_state(config, {k: v for k, v in arrays.items() if k != "l2_layers"})
    old = LaplaceClassifierCore.from_state(
        {**config, "format_version": 1}, {k: v for k, v in arrays.items() if k != "l2_layers"}
    )  # written before l2_layers: every layer was normalised
    np.testing.assert_array_equal(old.l2_layers_, [True])
    with pytest.raises(NotFittedError):
        LaplaceClassifierCore().predict_proba(X)
    with pytest.raises(InvalidArgumentError, match="labels must lie in 0..1"):
        LaplaceClassifierCore().fit(X, y, 2)
    with pytest.raises(InvalidArgumentError, match="fitted on 5"):
        core.predict_proba(X[:, :3])


def test_mutual_information_of_the_logit_samples(fitted):
    """predict_uncertainty at scale 1 with the MC predictive: predict_proba, and
    H(E p) - E H(p) over the Sobol logit samples, recomputed here; larger far from the training
    rows."""
    from xfer.repurposers._uncertainty import entropy

    fitted_core, x, y = fitted
    core = LaplaceClassifierCore(apply_l2_norm=False, calibrate=False, predictive="mc").fit(x, y, 3)
    rows = np.r_[x[:5], x[:5] * 10.0]
    probabilities, information = core.predict_uncertainty(rows)
    np.testing.assert_array_equal(probabilities, core.predict_proba(rows))
    samples = core.predict_samples(rows)
    np.testing.assert_allclose(information, entropy(samples.mean(axis=1)) - entropy(samples).mean(axis=1))
    assert np.all(information >= 0) and information[5:].mean() > information[:5].mean()


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0, 4.0])
def test_epistemic_part_is_the_posteriors_share_of_the_entropy(fitted, scale):
    """Any calibrated scale: the probabilities are the calibrated ones, and the epistemic part is
    H(p) times the share of the mutual information in the entropy of samples of the logits at
    scale max(scale, 1), recomputed here from latent_moments of a copy set to that scale."""
    import copy

    from xfer.repurposers._uncertainty import entropy

    core, x, _ = fitted
    core = copy.deepcopy(core)
    core.covariance_scale_, core.temperature_ = scale, 1.3
    rows = np.r_[x[:5], x[:5] * 10.0]
    probabilities, epistemic = core.predict_uncertainty(rows)
    np.testing.assert_array_equal(probabilities, core.predict_proba(rows))
    floored = copy.deepcopy(core)
    floored.covariance_scale_ = max(scale, 1.0)
    samples = mc_softmax_samples(*floored.latent_moments(rows), floored._points())
    total = entropy(samples.mean(axis=1))
    share = (total - entropy(samples).mean(axis=1)) / total
    np.testing.assert_allclose(epistemic, entropy(probabilities) * share, rtol=1e-10)
    assert np.all(epistemic > 0) and np.all(epistemic <= entropy(probabilities))


def test_features_without_information_warn_degenerate():
    from xfer.exceptions import DegenerateFitWarning

    with pytest.warns(DegenerateFitWarning, match="LaplaceClassifierCore: degenerate fit: its cross-validated"):
        core = LaplaceClassifierCore().fit(np.ones((30, 4)), np.repeat([0, 1, 2], 10), 3)
    np.testing.assert_allclose(core.predict_proba(np.ones((2, 4))), 1 / 3)


def test_l2_norm_skips_layers_whose_norm_few_columns_carry():
    """Unscaled tabular columns (one in large units) are not L2-normalised, an embedding-like layer
    is; the choice is fitted on the training rows and survives save and load."""
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1], 30)
    tabular = rng.normal(size=(60, 6)) + 1.5 * y[:, None]
    tabular[:, 0] = 1000.0 + 5.0 * rng.normal(size=60)  # dominates the norm, carries no class
    embedding = np.abs(rng.normal(size=(60, 40))) * rng.uniform(0.5, 2.0, size=(60, 1))  # norm ~ nuisance
    X = np.hstack([tabular, embedding])
    layers = [np.arange(6), np.arange(6, 46)]
    core = LaplaceClassifierCore().fit(X, y, 2, layers)
    np.testing.assert_array_equal(core.l2_layers_, [False, True])
    config, arrays = core.get_state()
    loaded = LaplaceClassifierCore.from_state(json.loads(json.dumps(config)), arrays)
    np.testing.assert_array_equal(loaded.predict_proba(X), core.predict_proba(X))
    # Alone, the tabular block keeps its information: as accurate as without L2 at all.
    alone = LaplaceClassifierCore().fit(tabular, y, 2)
    plain = LaplaceClassifierCore(apply_l2_norm=False).fit(tabular, y, 2)
    assert not alone.l2_layers_.any()
    np.testing.assert_array_equal(alone.predict_proba(tabular), plain.predict_proba(tabular))


def test_effective_columns():
    from xfer.repurposers._linear import effective_columns, l2_layers

    assert effective_columns(np.ones(8)) == pytest.approx(8.0)
    assert effective_columns(np.array([10000.0, 1.0, 1.0])) == pytest.approx(1.0004, abs=1e-3)
    assert effective_columns(np.zeros(3)) == 0.0
    np.testing.assert_array_equal(l2_layers(np.ones((2, 12)), [np.arange(2), np.arange(2, 12)]), [False, True])


def test_calibration_keeps_the_map_without_evidence():
    """One-standard-error rule: on well separated classes no calibration candidate beats the plain
    MAP by more than its standard error, so the head keeps the MAP's probabilities (scale 0, T 1);
    with overlapping classes and a confident MAP, the cross-validated NLL does move it."""
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(3), 10)
    separated = rng.normal(size=(30, 20)) + 6.0 * np.eye(3, 20)[y]
    core = LaplaceClassifierCore(apply_l2_norm=False).fit(separated, y, 3)
    assert (core.covariance_scale_, core.temperature_) == (0.0, 1.0)
    overlapping = rng.normal(size=(30, 20)) + 0.7 * np.eye(3, 20)[y]
    core = LaplaceClassifierCore(apply_l2_norm=False, map_precision=0.01).fit(overlapping, y, 3)
    assert core.covariance_scale_ > 0.0 or core.temperature_ > 1.0


def test_single_precision_products_reach_the_same_fit(monkeypatch):
    """Above _SINGLE_PRECISION_SIZE design entries (N > D) the Gram matrix and the MAP's products
    with the design run in float32: converged, the fit matches the float64 one."""
    import xfer.repurposers._laplace_core as core_module

    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(4), 150)
    X = np.abs(rng.normal(size=(600, 30))) + 0.5 * np.eye(4, 30)[y]
    options = {"hessian_structure": "kron", "calibration_rows": 100, "tol": 1e-9}
    double = LaplaceClassifierCore(**options).fit(X, y, 4)
    monkeypatch.setattr(core_module, "_SINGLE_PRECISION_SIZE", 0)
    single = LaplaceClassifierCore(**options).fit(X, y, 4)
    assert single.prior_precision_ == pytest.approx(double.prior_precision_, rel=1e-3)
    assert single.log_evidence_ == pytest.approx(double.log_evidence_, rel=1e-3)
    np.testing.assert_allclose(single.predict_proba(X), double.predict_proba(X), atol=1e-3)


def test_cavities_are_no_wider_than_the_prior():
    """The approximate leave-one-out never leaves a row's logits wider than the prior does."""
    rng = np.random.RandomState(1)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(120, 8)) + 3.0 * np.eye(3, 8)[y]
    core = LaplaceClassifierCore(hessian_structure="kron", calibrate=False).fit(X, y, 3)
    rotated = core._design(X) @ core.basis_
    probabilities = softmax(rotated @ core.weights_, axis=1)
    _, cavity = core._leave_one_out(rotated, probabilities, np.eye(3)[y])
    prior = np.sum(rotated**2, axis=1) / core.prior_precision_
    assert np.all(np.linalg.eigvalsh(cavity).max(axis=1) <= prior * (1 + 1e-9))


def test_map_runs_while_the_gram_matrix_is_decomposed(monkeypatch):
    """N > D: the MAP is fitted (in the feature coordinates, Cholesky-preconditioned) while the
    eigendecomposition of the Gram matrix runs on another thread, and reaches the same fit as
    the eigenbasis MAP of N <= D would: its optimality condition holds."""
    import threading

    import xfer.repurposers._laplace_core as core_module

    map_started = threading.Event()
    seen = {}
    original_eigh, original_map = np.linalg.eigh, LaplaceClassifierCore._fit_map

    def eigh(matrix):
        if matrix.shape == (6, 6):  # the Gram matrix (the others are the classes' K x K)
            seen["map_ran_meanwhile"] = map_started.wait(timeout=5.0)
            seen["thread"] = threading.get_ident()
        return original_eigh(matrix)

    def fit_map(self, *args, **kwargs):
        map_started.set()
        return original_map(self, *args, **kwargs)

    monkeypatch.setattr(core_module.np.linalg, "eigh", eigh)
    monkeypatch.setattr(LaplaceClassifierCore, "_fit_map", fit_map)
    X, y = _data(n_per_class=20, n_features=6)
    core = LaplaceClassifierCore(apply_l2_norm=False, calibrate=False, tol=1e-9).fit(X, y, 3)
    assert seen == {"map_ran_meanwhile": True, "thread": seen["thread"]}
    assert seen["thread"] != threading.get_ident()
    design = core._design(X)
    weights = core.basis_ @ core.weights_
    penalty = np.full((len(weights), 1), core.map_precision)
    penalty[-1] = 1e-6
    gradient = design.T @ (softmax(design @ weights, axis=1) - np.eye(3)[y]) + penalty * weights
    assert np.abs(gradient).max() / len(y) < 1e-7


@pytest.mark.parametrize("mode", ["layer", "column", "none"])
@pytest.mark.parametrize("n_rows", [12, 80])
def test_feature_scaling_is_the_shared_standardizer(mode, n_rows, monkeypatch):
    """Whatever the path (N > D takes the columns' deviations from the Gram matrix's diagonal,
    float32 above _SINGLE_PRECISION_SIZE), the scaling is every head's (``fit_standardizer``)."""
    import xfer.repurposers._laplace_core as core_module
    from xfer.repurposers._linear import fit_standardizer

    rng = np.random.RandomState(5)
    X = rng.normal(size=(n_rows, 20)) * np.linspace(0.1, 30.0, 20) + 4.0
    X[:, 3] = 2.5  # a constant column
    y = np.arange(n_rows) % 3
    layers = [np.arange(12), np.arange(12, 20)]
    _, expected = fit_standardizer(X, layers, mode)
    for size in (2**22, 0):
        monkeypatch.setattr(core_module, "_SINGLE_PRECISION_SIZE", size)
        core = LaplaceClassifierCore(standardize=mode, apply_l2_norm=False, calibrate=False)
        core.fit(X, y, 3, layers)
        np.testing.assert_allclose(core.feature_scale_, expected, rtol=1e-9 if size or n_rows < 20 else 1e-5)
        np.testing.assert_allclose(core.feature_mean_, X.mean(axis=0), rtol=1e-12)


def test_calibration_grid_on_two_threads_chooses_the_same(monkeypatch):
    """Large calibrations evaluate the grid's temperatures on two threads: same losses, same choice."""
    import xfer.repurposers._laplace_core as core_module

    y = np.repeat(np.arange(3), 10)
    X = np.random.default_rng(0).normal(size=(30, 20)) + 0.7 * np.eye(3, 20)[y]  # overlapping classes
    options = {"apply_l2_norm": False, "map_precision": 0.01}
    monkeypatch.setattr(core_module, "_THREADED_GRID_SIZE", 10**9)
    serial = LaplaceClassifierCore(**options).fit(X, y, 3)
    monkeypatch.setattr(core_module, "_THREADED_GRID_SIZE", 0)
    threaded = LaplaceClassifierCore(**options).fit(X, y, 3)
    assert serial.covariance_scale_ > 0.0 or serial.temperature_ > 1.0  # the grid decided something
    assert (threaded.covariance_scale_, threaded.temperature_) == (serial.covariance_scale_, serial.temperature_)
    assert threaded.calibration_nll_ == serial.calibration_nll_


@pytest.mark.parametrize("size", [2**22, 0])
def test_huge_feature_values_fit_as_their_rescaled_copy(size, monkeypatch):
    """Columns in huge units (squares past float32's range) standardise before any float32 product:
    the fit equals that of the same features in unit scale (N > D, float64 and float32 paths)."""
    import xfer.repurposers._laplace_core as core_module

    monkeypatch.setattr(core_module, "_SINGLE_PRECISION_SIZE", size)
    X, y = _data(n_per_class=20, n_features=6)
    options = {"apply_l2_norm": False, "calibrate": False}
    unit = LaplaceClassifierCore(**options).fit(X, y, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning reaches the user
        huge = LaplaceClassifierCore(**options).fit(X * 1e25, y, 3)
    assert np.all(np.isfinite(huge.basis_)) and np.all(np.isfinite(huge.weights_))
    np.testing.assert_allclose(huge.predict_proba(X * 1e25), unit.predict_proba(X), atol=1e-4)


@pytest.mark.parametrize("structure", ["full", "kron", "diag"])
def test_prior_precision_ignores_the_biases(structure):
    """The evidence chooses the feature weights' prior precision: a class absent from the labels
    (its nearly unpenalised bias goes to about -9) leaves it where it was (it fell 400-fold when
    the biases counted in |W|^2)."""
    X, y = _data(n_per_class=30, n_features=8)
    options = {"hessian_structure": structure, "calibrate": False, "apply_l2_norm": False}
    present = LaplaceClassifierCore(**options).fit(X, y, 3)
    absent = LaplaceClassifierCore(**options).fit(X, y, 4)
    assert absent.weights_[-1, 3] < -5.0
    assert absent.prior_precision_ == pytest.approx(present.prior_precision_, rel=1e-3)
