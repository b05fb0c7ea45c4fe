"""Known answers, invariances and bounds of the transferability scores."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.covariance import LedoitWolf

from xfer.exceptions import InvalidArgumentError, InvalidTypeError
from xfer.transferability import feature_scores, h_score, leep, logme, nce
from xfer.transferability import scores as scores_module


def reference_logme(features, labels, centre=True, tol=1e-12, max_iter=100_000):
    """LogME written plainly from the paper: one class at a time, explicit d x d matrices."""
    features = np.asarray(features, dtype=np.float64)
    if centre:
        features = features - features.mean(0)
    n, d = features.shape
    gram = features.T @ features
    evidences = []
    for k in np.unique(labels):
        y = (labels == k).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            a_matrix = alpha * np.eye(d) + beta * gram
            a_inverse = np.linalg.inv(a_matrix)
            m = beta * a_inverse @ features.T @ y
            gamma = d - alpha * np.trace(a_inverse)
            new_alpha = gamma / (m @ m)
            new_beta = (n - gamma) / np.sum((features @ m - y) ** 2)
            done = abs(new_alpha - alpha) < tol * alpha and abs(new_beta - beta) < tol * beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        a_matrix = alpha * np.eye(d) + beta * gram
        m = beta * np.linalg.solve(a_matrix, features.T @ y)
        evidence = (
            d / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - beta / 2 * np.sum((features @ m - y) ** 2)
            - alpha / 2 * m @ m
            - 0.5 * np.linalg.slogdet(a_matrix)[1]
            - n / 2 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def layered_task(seed=0, n_per_class=40, n_classes=4):
    """Labels and three 'layers' whose class signal decreases: strong, weak, none."""
    rng = np.random.RandomState(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    centres = rng.normal(size=(n_classes, 12))
    noise = lambda: rng.normal(size=(labels.size, 12))  # noqa: E731
    layers = {
        "strong": 3.0 * centres[labels] + noise(),
        "weak": 0.6 * centres[labels] + noise(),
        "none": noise(),
    }
    return layers, labels


# --------------------------------------------------------------------------- LogME


def three_class_task(shape, seed, signal=1.0, offset=0.0):
    """Gaussian features of shape ``(n, d)`` moved by ``signal`` along their class's axis and by
    ``offset`` along every axis, with their labels (3 classes)."""
    rng = np.random.RandomState(seed)
    n, d = shape
    labels = rng.randint(0, 3, size=n)
    return rng.normal(size=(n, d)) + signal * np.eye(3, d)[labels] + offset, labels


@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("shape", [(150, 8), (60, 20)])
def test_logme_matches_the_papers_fixed_point_iterations(centre, shape):
    # every class carries signal, so MacKay's iterations converge inside the parameter space
    features, labels = three_class_task(shape, seed=1, signal=1.5, offset=2.0)
    assert logme(features, labels, centre=centre) == pytest.approx(
        reference_logme(features, labels, centre=centre), rel=1e-8
    )


def test_logme_matches_the_fixed_point_with_many_features():
    # d = 70 > 2: the Householder reflectors of the tridiagonal reduction are all applied
    rng = np.random.RandomState(7)
    n, d = 400, 70
    labels = rng.randint(0, 4, size=n)
    features = rng.normal(size=(n, d)) + 1.2 * np.eye(4, d)[labels] @ rng.normal(size=(d, d))
    assert logme(features, labels) == pytest.approx(reference_logme(features, labels), rel=1e-8)
    assert logme(features.astype(np.float32), labels) == pytest.approx(
        reference_logme(features.astype(np.float32), labels), rel=1e-8
    )


@pytest.mark.parametrize("rank", [None, 5])
def test_eigen_projections_equal_a_full_eigendecomposition(rank, monkeypatch):
    rng = np.random.RandomState(8)
    factor = rng.normal(size=(40, rank or 40))
    matrix = factor @ factor.T  # rank-deficient when rank is given
    right = rng.normal(size=(40, 3))
    expected_values, vectors = np.linalg.eigh(matrix)
    expected = vectors.T @ right
    original = matrix.copy()
    values, projections = scores_module._eigen_projections(matrix, right)
    np.testing.assert_array_equal(matrix, original)  # the input is left alone
    np.testing.assert_allclose(values, expected_values, atol=1e-12 * expected_values.max())
    # eigenvectors have arbitrary signs (and bases within repeated eigenvalues): compare the
    # squared projections of distinct eigenvalues, and the norm of the rest
    distinct = values > 1e-8 * values.max()
    np.testing.assert_allclose(projections[distinct] ** 2, expected[distinct] ** 2, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose((projections**2).sum(0), (right**2).sum(0), rtol=1e-12)

    def failing(*args, **kwargs):
        raise np.linalg.LinAlgError("stemr did not converge")

    monkeypatch.setattr(scores_module.scipy.linalg, "eigh_tridiagonal", failing)
    fallback_values, fallback = scores_module._eigen_projections(matrix, right)
    np.testing.assert_array_equal(matrix, original)
    np.testing.assert_allclose(fallback_values, values, atol=1e-12 * values.max())
    np.testing.assert_allclose(fallback[distinct] ** 2, projections[distinct] ** 2, rtol=1e-8, atol=1e-10)


def directly_maximised_evidence(features, labels, centre=True):
    """The evidence of each class maximised over (log alpha, log beta) by Nelder-Mead from a few
    starts, with explicit N x N covariance matrices; averaged over classes, per example."""
    from scipy.optimize import minimize

    features = np.asarray(features, dtype=np.float64)
    if centre:
        features = features - features.mean(0)
    n = len(features)
    kernel = features @ features.T
    maxima = []
    for k in np.unique(labels):
        y = (labels == k).astype(float)

        def negative_evidence(log_params, y=y):
            alpha, beta = np.exp(np.clip(log_params, -50, 50))
            covariance = np.eye(n) / beta + kernel / alpha
            return (
                n / 2 * np.log(2 * np.pi)
                + 0.5 * np.linalg.slogdet(covariance)[1]
                + 0.5 * y @ np.linalg.solve(covariance, y)
            )

        options = {"xatol": 1e-8, "fatol": 1e-11, "maxiter": 3000}
        best = min(
            minimize(negative_evidence, start, method="Nelder-Mead", options=options).fun
            for start in [(0.0, 0.0), (8.0, 1.0), (-4.0, 6.0)]
        )
        maxima.append(-best / n)
    return float(np.mean(maxima))


def test_logme_finds_the_maximum_where_the_fixed_point_does_not_converge():
    # Two classes have almost no signal: the paper's iterations send alpha to infinity or
    # oscillate, and their result depends on when they are stopped.
    features, labels = three_class_task((40, 8), seed=1, signal=0.8)
    assert logme(features, labels) == pytest.approx(
        directly_maximised_evidence(features, labels), abs=1e-6
    )


def test_logme_with_fewer_examples_than_features():
    # With N < D every labelling can be fitted exactly; the evidence tends to a finite limit as
    # the noise vanishes, y ~ N(0, F F^T / alpha) maximised over alpha (a closed form), which
    # LogME cannot fall below; the maximum may lie there or inside.
    rng = np.random.RandomState(2)
    n, d = 12, 30
    labels = np.repeat([0, 1, 2], 4)
    features = rng.normal(size=(n, d))
    features[:, 0] += 3.0 * (labels == 0)  # class 0 is separable along one column
    kernel = features @ features.T
    limits = []
    for k in range(3):
        y = (labels == k).astype(float)
        alpha = n / (y @ np.linalg.solve(kernel, y))
        limits.append((-n / 2 * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(kernel / alpha)[1]
                       - n / 2) / n)  # fmt: skip
    score = logme(features, labels, centre=False)
    assert score >= np.mean(limits) - 1e-9
    assert score == pytest.approx(
        directly_maximised_evidence(features, labels, centre=False), abs=1e-6
    )


def test_logme_ranks_layers_by_class_signal():
    layers, labels = layered_task()
    scores = {name: logme(features, labels) for name, features in layers.items()}
    assert scores["strong"] > scores["weak"] > scores["none"]


def test_logme_invariances():
    rng = np.random.RandomState(3)
    layers, labels = layered_task(seed=3)
    features = layers["weak"]
    score = logme(features, labels)
    permuted = np.array([2, 0, 3, 1])[labels]  # rename the classes
    assert logme(features, permuted) == pytest.approx(score, rel=1e-9)
    assert logme(features, np.array(["a", "b", "c", "d"])[labels]) == pytest.approx(score, rel=1e-9)
    rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert logme(features @ rotation * 7.5, labels) == pytest.approx(score, rel=1e-7)
    order = rng.permutation(len(labels))  # the order of the examples does not matter
    assert logme(features[order], labels[order]) == pytest.approx(score, rel=1e-9)
    # centring makes a shift of the features irrelevant
    assert logme(features + 100.0, labels) == pytest.approx(score, rel=1e-7)


def test_logme_is_deterministic_and_reads_float32():
    layers, labels = layered_task()
    features = layers["weak"]
    assert logme(features, labels) == logme(features, labels)
    assert logme(features.astype(np.float32), labels) == pytest.approx(
        logme(features.astype(np.float32).astype(np.float64), labels), rel=1e-12
    )


def test_logme_errors():
    features = np.ones((6, 3))
    labels = np.array([0, 0, 0, 1, 1, 1])
    with pytest.raises(InvalidArgumentError, match="constant"):
        logme(features, labels)
    with pytest.raises(InvalidArgumentError, match="at least 2 classes"):
        logme(np.eye(6, 3), np.zeros(6))
    with pytest.raises(InvalidArgumentError, match="features has 6, labels has 5"):
        logme(np.eye(6, 3), labels[:5])
    with pytest.raises(InvalidArgumentError, match="2-D"):
        logme(np.ones(6), labels)
    with pytest.raises(InvalidArgumentError, match="NaN"):
        logme(np.full((6, 3), np.nan), labels)
    with pytest.raises(InvalidArgumentError, match="continuous"):
        logme(np.eye(6, 3), np.linspace(0, 1, 6))
    with pytest.raises(InvalidArgumentError, match="features holds strings"):
        logme([["a", "b"]] * 6, labels)
    with pytest.raises(InvalidTypeError, match="mixing|mixture|kinds|mix"):
        logme(np.eye(6, 3), [0, 0, 0, "b", "b", "b"])
    with pytest.raises(InvalidArgumentError, match="at least 2 examples"):
        logme(np.eye(1, 3), [0])


# --------------------------------------------------------------------------- H-score


def reference_h_score(features, labels, regularised):
    features = np.asarray(features, dtype=np.float64)
    centred = features - features.mean(0)
    class_means = np.zeros_like(centred)
    for k in np.unique(labels):
        class_means[labels == k] = centred[labels == k].mean(0)
    between = class_means.T @ class_means / len(labels)
    if not regularised:
        return float(np.trace(np.linalg.pinv(centred.T @ centred / len(labels)) @ between))
    estimator = LedoitWolf().fit(features)
    amount = estimator.shrinkage_
    return float(np.trace(np.linalg.inv(estimator.covariance_) @ ((1 - amount) * between)))


@pytest.mark.parametrize("shape", [(200, 10), (30, 50)])
def test_h_score_matches_the_formula(shape):
    features, labels = three_class_task(shape, seed=4)
    assert h_score(features, labels) == pytest.approx(
        reference_h_score(features, labels, True), rel=1e-8
    )
    assert h_score(features, labels, shrinkage=None) == pytest.approx(
        reference_h_score(features, labels, False), rel=1e-6
    )


def test_h_score_bounds_invariances_and_ranking():
    layers, labels = layered_task(seed=5)
    scores = {name: h_score(features, labels) for name, features in layers.items()}
    assert scores["strong"] > scores["weak"] > scores["none"]
    for features in layers.values():
        for shrinkage in ("ledoit-wolf", None, 0.3):
            assert 0 <= h_score(features, labels, shrinkage=shrinkage) <= 3 + 1e-9  # K - 1
    features = layers["weak"]
    score = h_score(features, labels)
    rotation, _ = np.linalg.qr(np.random.RandomState(5).normal(size=(12, 12)))
    assert h_score(3.0 * features @ rotation - 4.0, labels) == pytest.approx(score, rel=1e-8)
    assert h_score(features, np.array([3, 1, 0, 2])[labels]) == pytest.approx(score, rel=1e-12)
    # features that determine the class exactly reach the maximum of the plain score
    exact = np.eye(4)[labels]
    assert h_score(exact, labels, shrinkage=None) == pytest.approx(3.0, rel=1e-9)


def test_h_score_errors():
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(InvalidArgumentError, match="shrinkage must be"):
        h_score(np.eye(4, 2), labels, shrinkage=1.5)
    with pytest.raises(InvalidArgumentError, match="constant"):
        h_score(np.ones((4, 2)), labels)


@pytest.mark.parametrize("shape", [(120, 9), (15, 40)])
def test_feature_scores_share_the_work_and_equal_the_single_scores(shape):
    features, labels = three_class_task(shape, seed=9)
    both = feature_scores(features, labels)
    assert list(both) == ["logme", "h_score"]
    assert both["logme"] == pytest.approx(logme(features, labels), rel=1e-12)
    assert both["h_score"] == pytest.approx(h_score(features, labels), rel=1e-12)
    assert feature_scores(features, labels, ["h_score"]) == {"h_score": both["h_score"]}
    assert feature_scores(features, labels, "logme") == {"logme": both["logme"]}
    with pytest.raises(InvalidArgumentError, match="Unknown feature score 'leep'"):
        feature_scores(features, labels, ["leep"])
    with pytest.raises(InvalidArgumentError, match="constant"):
        feature_scores(np.ones((6, 2)), [0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize("shape", [(120, 9), (15, 40)])
@pytest.mark.parametrize("order", [("logme", "h_score"), ("h_score", "logme")])
def test_feature_scores_reduce_the_gram_matrix_once_for_both(shape, order, monkeypatch):
    """Asked for both scores (either order), the H-score reads LogME's eigen-projections: one
    tridiagonal reduction and no Cholesky factorisation, the values unchanged."""
    features, labels = three_class_task(shape, seed=11)
    calls = {"eigen": 0, "cholesky": 0}
    eigen, cholesky = scores_module._eigen_projections, scores_module._cholesky_solve

    def counted(name, function):
        def run(*args):
            calls[name] += 1
            return function(*args)

        return run

    monkeypatch.setattr(scores_module, "_eigen_projections", counted("eigen", eigen))
    monkeypatch.setattr(scores_module, "_cholesky_solve", counted("cholesky", cholesky))
    both = feature_scores(features, labels, order)
    assert list(both) == list(order)
    assert calls == {"eigen": 1, "cholesky": 0}
    assert both["h_score"] == pytest.approx(reference_h_score(features, labels, True), rel=1e-8)
    calls.update(eigen=0, cholesky=0)
    alone = h_score(features, labels)  # alone: one Cholesky solve, cheaper than the reduction
    assert calls == {"eigen": 0, "cholesky": 1}
    assert both["h_score"] == pytest.approx(alone, rel=1e-10)
    assert both["logme"] == pytest.approx(logme(features, labels), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_leave_the_callers_features_unchanged(dtype):
    # the centring works in place on float64 copies it made itself, never on the caller's array
    features, labels = three_class_task((50, 6), seed=12, offset=5.0)
    features = features.astype(dtype)
    copy = features.copy()
    feature_scores(features, labels)
    logme(features, labels)
    h_score(features, labels, shrinkage=None)
    np.testing.assert_array_equal(features, copy)


# --------------------------------------------------------------------------- LEEP and NCE


def entropy_of(labels):
    p = np.bincount(labels) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def soft_nce(probabilities, labels):
    """-H(Y|Z) of the soft joint that LEEP builds."""
    joint = np.zeros((labels.max() + 1, probabilities.shape[1]))
    np.add.at(joint, labels, probabilities)
    joint /= len(labels)
    conditional = joint / joint.sum(0)
    mask = joint > 0
    return float(np.sum(joint[mask] * np.log(conditional[mask])))


@pytest.mark.parametrize("seed", range(5))
def test_leep_bounds(seed):
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, 4, size=80)
    probabilities = softmax(rng.normal(size=(80, 7)) * 3 + 2 * np.eye(4, 7)[labels], axis=1)
    score = leep(probabilities, labels)
    # Jensen: LEEP >= -H_soft(Y|Z) >= -H(Y); and a log-likelihood is <= 0
    assert -entropy_of(labels) - 1e-12 <= soft_nce(probabilities, labels) <= score + 1e-12
    assert score <= 0
    # Nguyen et al.'s Theorem: LEEP >= NCE + mean log theta(x)_z at the predicted source label z
    source = probabilities.argmax(1)
    bound = nce(source, labels) + np.mean(np.log(probabilities[np.arange(80), source]))
    assert score >= bound - 1e-12


def reference_leep(probabilities, labels):
    """LEEP written plainly from Nguyen et al. (2020), Eqs. 1-3: loops over examples."""
    classes = sorted(set(labels))
    n, z = probabilities.shape
    joint = np.zeros((len(classes), z))
    for row, label in zip(probabilities, labels):
        joint[classes.index(label)] += row / n
    conditional = joint / joint.sum(0)
    total = 0.0
    for row, label in zip(probabilities, labels):
        total += np.log(sum(conditional[classes.index(label), j] * row[j] for j in range(z)))
    return total / n


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_leep_matches_the_papers_formula(dtype):
    rng = np.random.RandomState(10)
    labels = rng.choice(["a", "b", "c"], size=60)
    probabilities = softmax(rng.normal(size=(60, 11)) * 2, axis=1).astype(dtype)
    expected = reference_leep(probabilities.astype(np.float64), list(labels))
    assert leep(probabilities, labels) == pytest.approx(expected, rel=1e-6 if dtype == np.float32 else 1e-12)


def test_leep_known_answers_and_invariances():
    labels = np.array([0, 0, 1, 1, 2, 2])
    one_hot = np.eye(3)[[2, 2, 0, 0, 1, 1]]  # the source class determines the target class
    assert leep(one_hot, labels) == pytest.approx(0.0, abs=1e-12)
    uniform = np.full((6, 5), 0.2)
    assert leep(uniform, labels) == pytest.approx(np.log(1 / 3))
    rng = np.random.RandomState(0)
    probabilities = softmax(rng.normal(size=(6, 5)), axis=1)
    score = leep(probabilities, labels)
    assert leep(probabilities[:, ::-1], labels) == pytest.approx(score, rel=1e-12)
    assert leep(probabilities, np.array(["c", "c", "a", "a", "b", "b"])) == pytest.approx(score)
    # hand computation for two examples, two source classes
    theta = np.array([[0.75, 0.25], [0.25, 0.75]])
    # joint P(y, z) = theta / 2 per row; P(y|z) = theta; expected = 0.75^2 + 0.25^2 = 0.625
    assert leep(theta, [0, 1]) == pytest.approx(np.log(0.625))


def test_leep_errors():
    with pytest.raises(InvalidArgumentError, match="softmax"):
        leep(np.array([[2.0, -1.0], [0.5, 0.5]]), [0, 1])


def test_nce_known_answers_bounds_and_invariances():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    assert nce(labels * 10 + 3, labels) == pytest.approx(0.0, abs=1e-12)
    assert nce(np.zeros(8), labels) == pytest.approx(-entropy_of(labels))
    rng = np.random.RandomState(1)
    source = rng.randint(0, 5, size=8)
    score = nce(source, labels)
    assert -entropy_of(labels) - 1e-12 <= score <= 0
    assert nce(np.array(list("vwxyz"))[source], np.array([9, 4, 1])[labels]) == pytest.approx(score)
    probabilities = np.eye(5)[source] * 0.6 + 0.1
    assert nce(probabilities, labels) == pytest.approx(score)
    # known value: Z splits Y = {0, 0, 1, 1} into {0, 1} and {0, 1}: H(Y|Z) = log 2
    assert nce([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(-np.log(2))


def test_nce_errors():
    with pytest.raises(InvalidArgumentError, match="source_labels has 4, labels has 3"):
        nce([0, 1, 2, 3], [0, 1, 1])
    with pytest.raises(InvalidTypeError, match="source_labels"):
        nce(3, [0, 1])
