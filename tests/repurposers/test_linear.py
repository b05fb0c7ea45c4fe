"""The one feature standardiser shared by the LR, SVM, GP and BNN heads (``_linear.fit_standardizer``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from xfer.exceptions import InvalidArgumentError
from xfer.repurposers import _linear


def _features() -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.RandomState(0)
    features = np.c_[
        rng.normal(0, 1, (40, 3)),
        rng.normal(2, 1e-5, (40, 1)),  # near-constant
        np.full((40, 1), 7.0),  # constant
        rng.normal(5, 3, (40, 2)),
    ]
    return features, [np.arange(5), np.arange(5, 7)]


def test_column_mode_is_standard_scaler_with_a_floor():
    features, layers = _features()
    mean, scale = _linear.fit_standardizer(features, layers, "column")
    reference = StandardScaler().fit(features)
    np.testing.assert_allclose(mean, reference.mean_, rtol=1e-12)
    ordinary = [0, 1, 2, 5, 6]
    np.testing.assert_allclose(scale[ordinary], reference.scale_[ordinary], rtol=1e-12)
    rms = np.sqrt(np.mean(features[:, :5].std(0) ** 2))
    assert scale[3] == pytest.approx(_linear.SCALE_FLOOR * rms)  # floored, not 1e-5
    assert scale[4] == pytest.approx(rms)  # constant column: its block's typical scale


def test_none_mode_and_constant_block():
    features, layers = _features()
    mean, scale = _linear.fit_standardizer(features, layers, "none")
    assert not mean.any() and (scale == 1).all()
    mean, scale = _linear.fit_standardizer(np.ones((5, 2)), None, "layer")
    np.testing.assert_array_equal(mean, [1.0, 1.0])
    np.testing.assert_array_equal(scale, [1.0, 1.0])


def test_unknown_mode_is_refused():
    with pytest.raises(InvalidArgumentError, match=r"standardize must be one of \['layer', 'column', 'none'\], got 'z'"):
        _linear.fit_standardizer(np.ones((3, 2)), None, "z")


def test_gp_and_bnn_cores_use_the_shared_standardiser():
    from xfer.repurposers._bnn_core import BnnClassifierCore
    from xfer.repurposers._gp_core import GpClassifierCore

    features, layers = _features()
    labels = np.arange(40) % 2
    cpu = torch.device("cpu")
    # standardize="layer": the default "auto" may prefer per-column scores for layers of few columns.
    gp = GpClassifierCore(max_iterations=2, standardize="layer").fit(features, labels, 2, layers, cpu)
    expected = _linear.fit_standardizer(features, layers, "layer")
    np.testing.assert_array_equal(gp.feature_mean_, expected[0])
    np.testing.assert_array_equal(gp.feature_scale_, expected[1])
    bnn = BnnClassifierCore(num_epochs=2, random_state=0, apply_l2_norm=False, standardize="column")
    bnn.fit(features, labels, 2, cpu)
    expected = _linear.fit_standardizer(features, None, "column")
    np.testing.assert_array_equal(bnn.feature_mean_, expected[0])
    np.testing.assert_array_equal(bnn.feature_scale_, expected[1])
    # The core's default first L2-normalises the rows of the layers whose norm is spread over
    # enough columns (one block: no layers given), then scales each layer as LrRepurposer does.
    wide = np.c_[features, np.abs(np.random.RandomState(1).normal(0, 3, size=(40, 100)))]
    for data, normalised_layers in ((features, [False]), (wide, [True])):
        bnn = BnnClassifierCore(num_epochs=2, random_state=0).fit(data, labels, 2, cpu)
        np.testing.assert_array_equal(bnn.l2_layers_, normalised_layers)
        normalised = _linear.l2_normalize_layers(data, [np.arange(data.shape[1])], bnn.l2_layers_)
        expected = _linear.fit_standardizer(normalised, None, "layer")
        np.testing.assert_array_equal(bnn.feature_mean_, expected[0])
        np.testing.assert_array_equal(bnn.feature_scale_, expected[1])
