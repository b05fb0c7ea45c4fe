"""Contract details of the Repurposer base that every head shares."""

from __future__ import annotations

from sklearn.base import clone

import xfer


def test_clone_and_get_params_with_an_mxnet_module_source(digits_source_model):
    """An mx.mod.Module has a get_params of its own (weights): scikit-learn must not call it."""
    for repurposer in [
        xfer.LrRepurposer(digits_source_model, ["fc1"], c=0.5),
        xfer.NeuralNetworkFineTuneRepurposer(digits_source_model, "relu2", 5, num_epochs=2),
    ]:
        params = repurposer.get_params(deep=True)
        assert params["source_model"] is digits_source_model
        copy = clone(repurposer)
        assert type(copy) is type(repurposer)
        assert copy.source_model is digits_source_model, "the source model is shared, not copied"
        assert copy.get_params(deep=False) == repurposer.get_params(deep=False)
