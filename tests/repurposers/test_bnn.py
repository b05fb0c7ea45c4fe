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
