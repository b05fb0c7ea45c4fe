"""Meta-model repurposers take a PyTorch source model unchanged."""

from __future__ import annotations

import numpy as np
import pytest

import xfer
from xfer.exceptions import InvalidArgumentError
from xfer.toy_models import train_torch_digits_cnn


@pytest.fixture(scope="module")
def torch_source():
    return train_torch_digits_cnn(classes=(0, 1, 2, 3, 4), num_epochs=5, seed=0)


@pytest.fixture(scope="module")
def split(target_digits):
    images, labels = target_digits
    rng = np.random.RandomState(0)
    train = np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:30] for k in range(5, 10)])
    test = np.setdiff1d(np.arange(len(labels)), train)
    names = np.array(["five", "six", "seven", "eight", "nine"])[labels - 5]
    return images[train], names[train], images[test], names[test]


@pytest.mark.parametrize("head", [xfer.LrRepurposer, xfer.GpRepurposer])
def test_heads_on_torch_features(torch_source, split, head):
    x_train, y_train, x_test, y_test = split
    repurposer = head(torch_source, ["fc1"], random_state=0).fit(x_train, y_train)
    proba = repurposer.predict_proba(x_test)
    assert set(repurposer.classes_) == {"five", "six", "seven", "eight", "nine"}
    np.testing.assert_array_equal(repurposer.predict(x_test), repurposer.classes_[proba.argmax(1)])
    assert repurposer.score(x_test, y_test) > 0.85


def test_save_and_load_with_a_torch_source(torch_source, split, tmp_path):
    x_train, y_train, x_test, _ = split
    repurposer = xfer.LrRepurposer(torch_source, ["fc1", "relu2"]).fit(x_train, y_train)
    repurposer.save(tmp_path / "lr")
    assert (tmp_path / "lr_source.safetensors").is_file()
    with pytest.raises(InvalidArgumentError, match=r"is a PyTorch network.*source_model=<your torch.nn.Module>"):
        xfer.load(tmp_path / "lr")
    loaded = xfer.load(tmp_path / "lr", source_model=torch_source)
    np.testing.assert_array_equal(loaded.predict_proba(x_test), repurposer.predict_proba(x_test))
