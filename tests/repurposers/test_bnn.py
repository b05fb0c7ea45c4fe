"""BnnRepurposer: the shared battery on the PyTorch core."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("xfer.repurposers._bnn_core")

from xfer import BnnRepurposer  # noqa: E402
from xfer.testing import RepurposerTestCase, make_blob_features  # noqa: E402


class TestBnnRepurposer(RepurposerTestCase):
    uses_torch_device = True
    min_train_accuracy = 0.85

    def create_repurposer(self, source_model=None, feature_layer_names=None, **kwargs):
        return BnnRepurposer(
            source_model,
            feature_layer_names,
            num_epochs=30,
            learning_rate=0.05,
            n_hidden=16,
            num_samples_mc_prediction=20,
            random_state=0,
            **kwargs,
        )


def test_start_annealing_must_be_before_last_epoch():
    X, y = make_blob_features()
    with pytest.raises(ValueError, match="start_annealing"):
        BnnRepurposer(None, None, num_epochs=5, start_annealing=5).fit(X, y)


def test_bnn_context_function_is_the_default_device():
    X, y = make_blob_features()
    repurposer = BnnRepurposer(
        None, None, bnn_context_function="gpu:0", num_epochs=2, random_state=0
    )
    import torch

    if torch.cuda.is_available():
        repurposer.fit(X, y)
        assert np.isfinite(repurposer.predict_proba(X)).all()
    else:
        from xfer.exceptions import DeviceUnavailableError

        with pytest.raises(DeviceUnavailableError):
            repurposer.fit(X, y)
        repurposer.fit(X, y, context="cpu")  # a per-call context overrides it


def test_calibrate_reaches_the_core_and_is_checked():
    """``BnnRepurposer(calibrate=...)`` is the core's option (default on: the means held at the
    MAP and the calibration chosen); a value that is not a bool is refused at fit."""
    from xfer.exceptions import InvalidTypeError

    X, y = make_blob_features()
    default = BnnRepurposer(None, None, num_epochs=5, random_state=0).fit(X, y)
    assert default.get_params()["calibrate"] is True
    assert default.target_model_.calibrate and default.target_model_.means_at_map_
    off = BnnRepurposer(None, None, num_epochs=5, random_state=0, calibrate=False).fit(X, y)
    assert not off.target_model_.calibrate and not off.target_model_.means_at_map_
    assert (off.target_model_.temperature_, off.target_model_.variance_scale_) == (1.0, 1.0)
    with pytest.raises(InvalidTypeError, match="calibrate must be True or False, got 1"):
        BnnRepurposer(None, None, num_epochs=5, calibrate=1).fit(X, y)
