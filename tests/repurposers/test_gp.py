"""GpRepurposer: the shared battery on the GPyTorch core."""

from __future__ import annotations

import pytest

pytest.importorskip("xfer.repurposers._gp_core")

from xfer import GpRepurposer  # noqa: E402
from xfer.testing import RepurposerTestCase  # noqa: E402


class TestGpRepurposer(RepurposerTestCase):
    uses_torch_device = True

    def create_repurposer(self, source_model=None, feature_layer_names=None, **kwargs):
        return GpRepurposer(
            source_model, feature_layer_names, max_function_evaluations=20, random_state=0, **kwargs
        )


def test_xfer_attribute():
    assert GpRepurposer.NUM_INDUCING_SPARSE_GP == 100
