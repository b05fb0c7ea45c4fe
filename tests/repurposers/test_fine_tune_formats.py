"""Saved fine-tuners and training checkpoints written by xfer 0.1 keep loading and resuming.

The files in ``fixtures/fine_tune_v1`` were written by the fine-tuners as they were before the
training loop became one backend-neutral core (commit 5a4570e; ``make_fixtures.py`` there is the
script that wrote them). A saved model must predict what it predicted then; an interrupted fit
must resume from its checkpoint to the parameters the uninterrupted fit reached then.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

import xfer
from xfer.repurposers import NeuralNetworkFineTuneRepurposer

FIXTURES = Path(__file__).parent / "fixtures" / "fine_tune_v1"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


made = _fixture_module()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("backend", ["mxnet", "torch"])
def test_saved_fine_tuner_loads_and_predicts_as_when_saved(backend):
    source = made.sources()[backend]() if backend == "torch" else None
    loaded = xfer.load(FIXTURES / f"ft_{backend}", source_model=source)
    assert type(loaded) is NeuralNetworkFineTuneRepurposer
    np.testing.assert_array_equal(loaded.classes_, [0, 1, 2])
    assert loaded.history_.phase == ["head", "full", "full"]
    with np.load(FIXTURES / f"ft_{backend}_expected.npz", allow_pickle=False) as expected:
        np.testing.assert_allclose(
            loaded.predict_proba(expected["X"]), expected["proba"], rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("backend", ["mxnet", "torch"])
def test_checkpoint_resumes_to_the_uninterrupted_fit(backend, tmp_path):
    directory = tmp_path / "checkpoint"
    shutil.copytree(FIXTURES / f"checkpoint_{backend}", directory)
    X, y, _ = made.data()
    resumed = NeuralNetworkFineTuneRepurposer(
        made.sources()[backend](),
        made.TRANSFER_LAYER,
        3,
        checkpoint_dir=str(directory),
        **made.CHECKPOINT_OPTIONS,
    ).fit(X, y, resume=True)
    assert resumed.history_.epoch == [1, 2, 3]
    assert resumed.history_.phase == ["head", "full", "full"]
    params = made.target_params(resumed)
    with np.load(FIXTURES / f"checkpoint_{backend}_expected.npz", allow_pickle=False) as expected:
        assert sorted(expected.files) == sorted(params)
        for name in expected.files:
            np.testing.assert_allclose(params[name], expected[name], rtol=1e-6, atol=1e-7, err_msg=name)
