"""Input adapters: arrays and DataIters become padded batches with optional labels."""

from __future__ import annotations

import numpy as np
import pytest

from xfer._mxnet import mx
from xfer.data import as_batches
from xfer.exceptions import InvalidArgumentError, InvalidTypeError


def test_array_batches_are_padded_and_carry_labels():
    data = np.arange(10 * 3, dtype=np.float64).reshape(10, 3)
    batches = as_batches(data, labels=np.arange(10), batch_size=4)
    assert (batches.sample_shape, batches.num_examples, len(batches)) == ((3,), 10, 3)
    seen = list(batches)
    assert [b.num_valid for b in seen] == [4, 4, 2]
    assert all(b.data.shape == (4, 3) and b.data.dtype == np.float32 for b in seen)
    np.testing.assert_array_equal(np.concatenate([b.data[: b.num_valid] for b in seen]), data)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in seen]), np.arange(10))
    assert list(batches)[0].num_valid == 4, "batches can be iterated again"


def test_dataiter_is_reset_and_padding_removed():
    data = np.random.default_rng(0).random((7, 2)).astype(np.float32)
    iterator = mx.io.NDArrayIter(data, np.arange(7, dtype=np.float32), batch_size=3, last_batch_handle="pad")
    next(iter(iterator))
    batches = as_batches(iterator)
    assert batches.has_labels and batches.batch_size == 3
    seen = list(batches)
    assert [b.num_valid for b in seen] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b.labels for b in seen]), np.arange(7))


def test_small_data_uses_one_batch_and_ndarray_is_accepted():
    batches = as_batches(mx.nd.ones((3, 2)))
    assert batches.batch_size == 3 and not batches.has_labels


def test_bad_inputs():
    with pytest.raises(InvalidTypeError, match="Cannot read data of type dict"):
        as_batches({"x": 1})
    with pytest.raises(InvalidArgumentError, match="The data is empty"):
        as_batches(np.zeros((0, 3)))
    with pytest.raises(InvalidArgumentError, match=r"Got 3 examples but labels of shape \(2,\)"):
        as_batches(np.zeros((3, 2)), labels=[0, 1])
    with pytest.raises(InvalidTypeError, match="must be numeric"):
        as_batches(np.array([["a"], ["b"]]))
    iterator = mx.io.NDArrayIter(np.zeros((2, 2), np.float32), batch_size=2)
    with pytest.raises(InvalidArgumentError, match="the iterator's own labels are used"):
        as_batches(iterator, labels=[0, 1])
    with pytest.raises(InvalidArgumentError, match="batch_size must be a positive integer, got -1"):
        as_batches(np.zeros((2, 2)), batch_size=-1)


def test_torch_tensor_dataset_and_loader():
    import torch

    data = torch.arange(10 * 2, dtype=torch.float64).reshape(10, 2)
    batches = as_batches(data, batch_size=4)
    assert batches.sample_shape == (2,) and batches.dtype == np.float32 and not batches.has_labels
    np.testing.assert_array_equal(np.concatenate([b.data[: b.num_valid] for b in batches]), data.numpy())
    token_ids = as_batches(torch.ones((3, 5), dtype=torch.long))
    assert next(iter(token_ids)).data.dtype == np.int64, "integer token ids keep their type"

    dataset = torch.utils.data.TensorDataset(data, torch.arange(10))
    batches = as_batches(dataset, batch_size=4)
    assert batches.has_labels and batches.num_examples == 10 and batches.sample_shape == (2,)
    seen = list(batches)
    assert [b.num_valid for b in seen] == [4, 4, 2] and seen[-1].data.shape == (4, 2)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in seen]), np.arange(10))

    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    batches = as_batches(loader)
    assert (batches.batch_size, batches.num_examples, batches.has_labels) == (3, 10, True)
    seen = list(batches)
    assert [b.num_valid for b in seen] == [3, 3, 3, 1] and seen[-1].data.shape == (3, 2), "last batch padded"
    np.testing.assert_array_equal(np.concatenate([b.labels for b in seen]), np.arange(10))
    unlabelled = as_batches(torch.utils.data.DataLoader(data, batch_size=4, drop_last=True))
    assert not unlabelled.has_labels and unlabelled.num_examples is None
    assert sum(b.num_valid for b in unlabelled) == 8

    with pytest.raises(InvalidArgumentError, match="Labels were passed together with a torch Dataset"):
        as_batches(dataset, labels=np.arange(10))
    with pytest.raises(InvalidArgumentError, match="Labels were passed together with a torch DataLoader"):
        as_batches(loader, labels=np.arange(10))
    with pytest.raises(InvalidArgumentError, match="The dataset is empty"):
        as_batches(torch.utils.data.TensorDataset(torch.zeros(0, 2)))


def test_texts_only_when_allowed():
    texts = ["a", "bb", "ccc", "dddd", "e"]
    batches = as_batches(texts, labels=[0, 1, 0, 1, 0], batch_size=2, allow_text=True)
    assert batches.is_text and batches.sample_shape == () and batches.num_examples == 5
    seen = list(batches)
    assert [b.data for b in seen] == [["a", "bb"], ["ccc", "dddd"], ["e"]], "texts are never padded"
    np.testing.assert_array_equal(np.concatenate([b.labels for b in seen]), [0, 1, 0, 1, 0])
    with pytest.raises(InvalidTypeError, match="Cannot read data of type list"):
        as_batches(texts)
    with pytest.raises(InvalidTypeError, match="item 1 is a int"):
        as_batches(["a", 3], allow_text=True)
    with pytest.raises(InvalidArgumentError, match=r"Got 5 examples but labels of shape \(2,\)"):
        as_batches(texts, labels=[0, 1], allow_text=True)
