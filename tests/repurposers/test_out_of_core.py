"""Heads trained on features on disk (a FeatureStore) give the in-memory result, a piece at a time.

Stated tolerances: logistic regression's probabilities within 1e-8 of the in-memory fit (the same
L-BFGS on the same objective; only summation order differs), the sparse GP and the BNN within 1e-6
(the same minibatches drawn from the files; in practice bit-identical).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xfer.exceptions import InvalidArgumentError, InvalidTypeError
from xfer.feature_store import FeatureStore, write_features
from xfer.repurposers import BnnRepurposer, GpRepurposer, LrRepurposer, SvmRepurposer
from xfer.repurposers._out_of_core import column_moments


def _features(n: int, width: int = 12, classes: int = 3, seed: int = 0):
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, classes, n)
    centres = rng.normal(0, 1.5, (classes, width))
    features = np.maximum(centres[labels] + rng.normal(0, 1, (n, width)), 0).astype(np.float32)
    return features, np.array(["ant", "bee", "cat", "dog"])[labels]


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    """2,100 rows (above the exact GP's 2,000: its sparse path), in shards of 500, two layers."""
    features, labels = _features(2_200)
    directory = tmp_path_factory.mktemp("store")
    store = write_features(directory, features[:2_100], labels[:2_100], layer_names=["a", "b"],
                           layer_widths=[5, 7], shard_size=500)
    return store, features[:2_100], labels[:2_100], features[2_100:]


class _ReadCounter:
    """Records the largest number of rows a head reads from the store at once."""

    def __init__(self, monkeypatch):
        self.largest = 0
        rows, take = FeatureStore.rows, FeatureStore.take

        def counted_rows(store, start, stop):
            self.largest = max(self.largest, stop - start)
            return rows(store, start, stop)

        def counted_take(store, indices):
            self.largest = max(self.largest, len(np.asarray(indices).ravel()))
            return take(store, indices)

        monkeypatch.setattr(FeatureStore, "rows", counted_rows)
        monkeypatch.setattr(FeatureStore, "take", counted_take)


def test_moments_match_numpy(on_disk):
    store, features, _, _ = on_disk
    mean, std = column_moments(store)
    np.testing.assert_allclose(mean, features.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, features.astype(np.float64).std(axis=0), rtol=1e-12)


@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_regression_on_disk_equals_in_memory(on_disk, classes, monkeypatch, tmp_path):
    store, features, labels, test = on_disk
    if classes == 2:  # the binomial model scikit-learn fits for two classes
        keep = labels != "cat"
        store = write_features(tmp_path / "two", features[keep], labels[keep], shard_size=300)
        features, labels = features[keep], labels[keep]
    store = FeatureStore(store.directory, chunk_mb=0.01)  # 109 rows of 12 float64 values at a time
    counter = _ReadCounter(monkeypatch)
    in_memory = LrRepurposer(None, None).fit_features(features, labels, store.feature_indices_per_layer)
    streamed = LrRepurposer(None, None).fit(store)
    assert counter.largest == store.chunk_rows() == 109
    np.testing.assert_allclose(streamed.predict_proba(test), in_memory.predict_proba(test), atol=1e-8)
    assert streamed.n_iter_ == in_memory.n_iter_
    np.testing.assert_array_equal(streamed.classes_, in_memory.classes_)
    np.testing.assert_allclose(streamed.predict_proba(store), in_memory.predict_proba(features), atol=1e-8)
    np.testing.assert_array_equal(streamed.predict(store), in_memory.predict(features))


def test_bnn_on_disk_with_a_bounded_minibatch_equals_in_memory(on_disk, monkeypatch):
    """Where the minibatch bound makes each epoch part of a pass, the store gives the in-memory fit
    (the same minibatches drawn from the files), reading at most one chunk at a time."""
    from xfer.repurposers._bnn_core import BnnClassifierCore

    store, features, _, test = on_disk
    store = FeatureStore(store.directory, chunk_mb=0.05)  # 546 rows of 12 float64 values at a time
    labels = np.unique(store.labels, return_inverse=True)[1].astype(np.int64)
    options = {"num_epochs": 3, "random_state": 0, "min_steps": 0, "max_batch_size": 40, "num_layers": 0}
    cpu = torch.device("cpu")
    in_memory = BnnClassifierCore(**options).fit(features, labels, 3, cpu, store.feature_indices_per_layer)
    counter = _ReadCounter(monkeypatch)
    streamed = BnnClassifierCore(**options).fit(store, labels, 3, cpu, store.feature_indices_per_layer)
    assert streamed.effective_batch_size_ == in_memory.effective_batch_size_ == 40
    assert 0 < counter.largest <= store.chunk_rows() == 546
    np.testing.assert_allclose(streamed.predict_proba(test, cpu), in_memory.predict_proba(test, cpu), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["gp", "bnn"])
def test_minibatch_heads_on_disk_equal_in_memory(on_disk, head, monkeypatch):
    store, features, labels, test = on_disk

    def make():
        if head == "gp":
            return GpRepurposer(None, None, max_function_evaluations=2, random_state=0)
        return BnnRepurposer(None, None, num_epochs=4, random_state=0)

    in_memory = make().fit_features(features, labels, store.feature_indices_per_layer)
    counter = _ReadCounter(monkeypatch)
    streamed = make().fit(store)
    # Bounded by the store's chunk for the scaling pass and by the head's minibatch otherwise.
    assert 0 < counter.largest <= max(store.chunk_rows(), 1024)
    np.testing.assert_allclose(streamed.predict_proba(test), in_memory.predict_proba(test), atol=1e-6)
    if head == "gp":
        assert streamed.target_model_.mode_ == "sparse"


def test_heads_refuse_what_does_not_fit(on_disk, tmp_path, digits_source_model):
    store, features, labels, _ = on_disk
    with pytest.raises(InvalidTypeError, match="SvmRepurposer cannot train on a FeatureStore .* store.to_array"):
        SvmRepurposer(None, None).fit(store)
    with pytest.raises(InvalidArgumentError, match=r"holds layers \['a', 'b'\], but this repurposer reads \['fc1'\]"):
        LrRepurposer(digits_source_model, ["fc1"]).fit(store)
    unlabelled = write_features(tmp_path / "u", features[:50], shard_size=20)
    with pytest.raises(InvalidArgumentError, match="the FeatureStore has none .* pass y"):
        LrRepurposer(None, None).fit(unlabelled)
    fitted = LrRepurposer(None, None).fit(unlabelled, labels[:50])  # y given with the store
    assert fitted.predict(unlabelled).shape == (50,)
    with pytest.raises(InvalidArgumentError, match="layer_widths .* add up to the 12 columns"):
        write_features(tmp_path / "w", features, layer_names=["a", "b"], layer_widths=[5, 5])
