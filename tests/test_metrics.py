"""xfer.metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from xfer import metrics

PROBA = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]])
CODES = np.array([0, 1, 0, 1])
NAMES = np.array(["cat", "dog", "emu"])


def test_accuracy_codes_and_classes():
    assert metrics.accuracy(CODES, PROBA) == 0.5  # row 3 ties -> argmax picks class 0
    assert metrics.accuracy(NAMES[CODES], PROBA, classes=NAMES) == 0.5


def test_negative_log_likelihood():
    expected = -np.mean(np.log([0.9, 0.7, 0.3, 0.5]))
    assert metrics.negative_log_likelihood(CODES, PROBA) == pytest.approx(expected)
    assert np.isfinite(metrics.negative_log_likelihood([2], [[1.0, 0.0, 0.0]]))


def test_brier_score():
    one_hot = np.eye(3)[CODES]
    expected = np.mean(np.sum((PROBA - one_hot) ** 2, axis=1))
    assert metrics.brier_score(CODES, PROBA) == pytest.approx(expected)
    assert metrics.brier_score([0], [[1.0, 0.0, 0.0]]) == 0.0


def test_ece_and_reliability_diagram():
    diagram = metrics.reliability_diagram(CODES, PROBA, n_bins=2)
    np.testing.assert_array_equal(diagram.bin_count, [2, 2])  # 0.4, 0.5 | 0.9, 0.7
    np.testing.assert_allclose(diagram.bin_confidence, [0.45, 0.8])
    np.testing.assert_allclose(diagram.bin_accuracy, [0.0, 1.0])
    ece = metrics.expected_calibration_error(CODES, PROBA, n_bins=2)
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.2)


def test_perfectly_calibrated_has_small_ece():
    rng = np.random.RandomState(0)
    confidence = rng.uniform(0.5, 1.0, 20000)
    correct = rng.uniform(size=confidence.size) < confidence
    proba = np.column_stack([confidence, 1 - confidence])
    labels = np.where(correct, 0, 1)
    assert metrics.expected_calibration_error(labels, proba) < 0.02


def test_bad_inputs():
    with pytest.raises(ValueError, match="not in classes"):
        metrics.accuracy(["cat", "yak"], PROBA[:2], classes=NAMES)
    with pytest.raises(ValueError, match="pass classes="):
        metrics.accuracy(["cat", "dog"], PROBA[:2])
    with pytest.raises(ValueError, match="0..2"):
        metrics.accuracy([0, 3], PROBA[:2])
    with pytest.raises(ValueError, match="2 labels but 4"):
        metrics.brier_score([0, 1], PROBA)
    with pytest.raises(ValueError, match="n_bins"):
        metrics.expected_calibration_error(CODES, PROBA, n_bins=0)


def test_plot_reliability_diagram():
    import matplotlib

    matplotlib.use("Agg")
    ax = metrics.plot_reliability_diagram(CODES, PROBA, n_bins=5)
    assert "ECE" in ax.get_title()
