"""Input adapters: everything a user may pass as data becomes fixed-size batches of NumPy arrays.

Both backends and every repurposer read data through :func:`as_batches`, so an ``mx.io.DataIter``,
a NumPy array (with or without labels) or an ``mx.nd.NDArray`` behave the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from xfer.exceptions import InvalidArgumentError, InvalidTypeError

DEFAULT_BATCH_SIZE = 64


@dataclass
class Batch:
    """One batch: ``data`` always has the full batch size (padded); ``num_valid`` rows are real."""

    data: np.ndarray
    labels: np.ndarray | None
    num_valid: int


class Batches:
    """A re-iterable stream of :class:`Batch` over user data.

    Attributes
    ----------
    sample_shape : tuple of int
        Shape of one example.
    batch_size : int
        Rows per batch (the last batch is padded up to it).
    num_examples : int or None
        Number of real examples when known in advance (arrays, ``NDArrayIter``).
    has_labels : bool
        Whether batches carry labels.
    """

    def __init__(self, source: Any, labels: np.ndarray | None, batch_size: int, sample_shape: tuple,
                 num_examples: int | None, has_labels: bool, dtype: Any = np.float32):
        self._source = source
        self._labels = labels
        self.batch_size = batch_size
        self.sample_shape = tuple(sample_shape)
        self.num_examples = num_examples
        self.has_labels = has_labels
        self.dtype = dtype

    def __len__(self) -> int:
        if self.num_examples is None:
            raise TypeError("The number of batches of this data iterator is not known in advance.")
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if isinstance(self._source, np.ndarray):
            yield from self._iter_array()
        else:
            yield from self._iter_dataiter()

    def _iter_array(self) -> Iterator[Batch]:
        array, labels, size = self._source, self._labels, self.batch_size
        for start in range(0, len(array), size):
            chunk = array[start : start + size]
            num_valid = len(chunk)
            if num_valid < size:  # pad so that one bound graph serves every batch
                pad = np.zeros((size - num_valid, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            yield Batch(
                np.asarray(chunk, dtype=self.dtype),
                None if labels is None else labels[start : start + num_valid],
                num_valid,
            )

    def _iter_dataiter(self) -> Iterator[Batch]:
        iterator = self._source
        iterator.reset()
        for batch in iterator:
            data = batch.data[0].asnumpy().astype(self.dtype, copy=False)
            num_valid = data.shape[0] - (batch.pad or 0)
            labels = None
            if self.has_labels and batch.label:
                labels = batch.label[0].asnumpy()[:num_valid]
            yield Batch(data, labels, num_valid)


def _is_dataiter(data: Any) -> bool:
    from xfer._mxnet import mx

    return isinstance(data, mx.io.DataIter)


def as_batches(data: Any, labels: Any = None, batch_size: int | None = None) -> Batches:
    """Wrap user data as :class:`Batches`.

    Parameters
    ----------
    data : numpy.ndarray, mx.nd.NDArray or mx.io.DataIter
        Examples along the first axis, or an MXNet data iterator (reset before reading; its
        padding is removed).
    labels : array-like, optional
        Labels of an array ``data``. For a ``DataIter`` the iterator's own labels are used.
    batch_size : int, optional
        Rows per batch for array data (default 64). Ignored for a ``DataIter`` (its own size).

    Raises
    ------
    InvalidTypeError
        ``data`` is not an array or a DataIter.
    InvalidArgumentError
        Empty data, labels of another length, a non-positive batch size, or labels passed
        together with a DataIter.
    """
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1
    ):
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if _is_dataiter(data):
        if labels is not None:
            raise InvalidArgumentError(
                "Labels were passed together with an mx.io.DataIter: the iterator's own labels are "
                "used. Put the labels in the iterator, or pass the data as a NumPy array."
            )
        descs = data.provide_data
        if len(descs) != 1:
            raise InvalidArgumentError(
                f"The data iterator provides {len(descs)} inputs ({[d.name for d in descs]}); "
                "xfer models take one input."
            )
        shape = tuple(descs[0].shape)
        num_examples = getattr(data, "num_data", None)
        has_labels = bool(getattr(data, "provide_label", None))
        return Batches(data, None, shape[0], shape[1:], num_examples, has_labels)
    if hasattr(data, "asnumpy") and not isinstance(data, np.ndarray):  # mx.nd.NDArray
        data = data.asnumpy()
    if not isinstance(data, np.ndarray):
        if isinstance(data, (list, tuple)) and data and isinstance(data[0], np.ndarray):
            data = np.stack(data)
        else:
            raise InvalidTypeError(
                f"Cannot read data of type {type(data).__name__}: pass a NumPy array with examples "
                "along the first axis, or an mx.io.DataIter."
            )
    if data.ndim < 1 or len(data) == 0:
        raise InvalidArgumentError(f"The data is empty (shape {data.shape}): pass at least one example.")
    if not np.issubdtype(data.dtype, np.number) and data.dtype != np.bool_:
        raise InvalidTypeError(f"The data must be numeric, got dtype {data.dtype}.")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(data):
            raise InvalidArgumentError(
                f"Got {len(data)} examples but labels of shape {labels.shape}: pass one label per example."
            )
    size = int(batch_size or DEFAULT_BATCH_SIZE)
    size = min(size, len(data))
    return Batches(data, labels, size, data.shape[1:], len(data), labels is not None)


__all__ = ["Batch", "Batches", "as_batches", "DEFAULT_BATCH_SIZE"]
