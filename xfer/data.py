"""Input adapters: everything a user may pass as data becomes fixed-size batches of NumPy arrays.

Both backends and every repurposer read data through :func:`as_batches`, so an ``mx.io.DataIter``,
a NumPy array (with or without labels), an ``mx.nd.NDArray``, a ``torch.Tensor``, a torch
``Dataset`` or ``DataLoader`` behave the same everywhere. Lists of strings (for text models that
tokenise inside, such as :func:`xfer.zoo.minilm`) are batched as lists when the caller allows text.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from xfer import _validation
from xfer.exceptions import InvalidArgumentError, InvalidTypeError

_INPUT_REMEDY = "Remove or repair those inputs (a NaN pixel would be read as a finite feature)."

DEFAULT_BATCH_SIZE = 64


@dataclass
class Batch:
    """One batch: ``data`` always has the full batch size (padded); ``num_valid`` rows are real.

    For text (:attr:`Batches.is_text`) ``data`` is a list of ``num_valid`` strings, never padded.

    Parameters
    ----------
    data : ndarray or list of str
        ``batch_size`` examples (the last batch padded with zeros), or the texts.
    labels : ndarray or None
        The labels of the ``num_valid`` real examples, when the data has labels.
    num_valid : int
        How many of the rows are real examples.
    """

    data: np.ndarray | list
    labels: np.ndarray | None
    num_valid: int


class Batches:
    """A re-iterable stream of :class:`Batch` over user data (made by :func:`as_batches`).

    Parameters
    ----------
    source : object
        The user's data (array, DataIter, list of texts, torch Dataset or DataLoader).
    labels : ndarray or None
        Labels of array or text data.
    batch_size, sample_shape, num_examples, has_labels
        As the attributes below.
    dtype : numpy dtype or None, default=numpy.float32
        Type the batches are converted to (None: unchanged).
    kind : {"array", "dataiter", "text", "dataset", "loader"}, optional
        How to read ``source`` (default: array for NumPy arrays, else dataiter).

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
    is_text : bool
        Whether examples are strings (``sample_shape`` is then ``()``).
    """

    def __init__(self, source: Any, labels: np.ndarray | None, batch_size: int, sample_shape: tuple,
                 num_examples: int | None, has_labels: bool, dtype: Any = np.float32,
                 kind: str | None = None):
        self._source = source
        self._labels = labels
        self.batch_size = batch_size
        self.sample_shape = tuple(sample_shape)
        self.num_examples = num_examples
        self.has_labels = has_labels
        self.dtype = dtype
        if kind is None:
            kind = "array" if isinstance(source, np.ndarray) else "dataiter"
        self._kind = kind
        self.is_text = kind == "text"

    def __len__(self) -> int:
        if self.num_examples is None:
            raise TypeError("The number of batches of this data iterator is not known in advance.")
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if self._kind == "array":  # checked whole by as_batches
            yield from self._iter_array()
        elif self._kind == "text":
            yield from self._iter_text()
        else:
            batches = {"dataset": self._iter_dataset, "loader": self._iter_loader}.get(
                self._kind, self._iter_dataiter
            )()
            seen = 0
            for batch in batches:  # examples arrive batch by batch: checked as they come
                _validation.check_finite(
                    np.asarray(batch.data[: batch.num_valid]),
                    "The data",
                    _INPUT_REMEDY,
                    row_offset=seen,
                )
                seen += batch.num_valid
                yield batch

    def _pad(self, chunk: np.ndarray) -> np.ndarray:
        if len(chunk) < self.batch_size:  # pad so that one bound graph serves every batch
            pad = np.zeros((self.batch_size - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        return chunk if self.dtype is None else np.asarray(chunk, dtype=self.dtype)

    def _iter_text(self) -> Iterator[Batch]:
        texts, labels, size = self._source, self._labels, self.batch_size
        for start in range(0, len(texts), size):
            chunk = texts[start : start + size]
            yield Batch(chunk, None if labels is None else labels[start : start + len(chunk)], len(chunk))

    def _iter_dataset(self) -> Iterator[Batch]:
        dataset, size = self._source, self.batch_size
        for start in range(0, self.num_examples, size):
            items = [_split_item(dataset[i], self.has_labels) for i in range(start, min(start + size, self.num_examples))]
            data = np.stack([x for x, _ in items])
            labels = np.asarray([y for _, y in items]) if self.has_labels else None
            yield Batch(self._pad(data), labels, len(items))

    def _iter_loader(self) -> Iterator[Batch]:
        for item in self._source:
            data, labels = _split_item(item, self.has_labels)
            if data.ndim == 0 or len(data) > self.batch_size:
                raise InvalidArgumentError(
                    f"The DataLoader gave a batch of shape {data.shape}, larger than its first batch "
                    f"({self.batch_size}): use a DataLoader with a fixed batch_size."
                )
            yield Batch(self._pad(data), labels, len(data))

    def _iter_array(self) -> Iterator[Batch]:
        array, labels, size = self._source, self._labels, self.batch_size
        for start in range(0, len(array), size):
            chunk = array[start : start + size]
            num_valid = len(chunk)
            yield Batch(
                self._pad(chunk),
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


def data_descs(descs: Any) -> list:
    """An iterator's ``provide_data``/``provide_label`` as a list of ``mx.io.DataDesc``.

    MXNet iterators describe their arrays either with ``DataDesc`` objects (``NDArrayIter``) or
    with plain ``(name, shape)`` tuples (``ImageIter``, ``ImageRecordIter``, ``CSVIter``,
    ``PrefetchingIter``, many user iterators); both are accepted. ``None`` gives ``[]``.

    Parameters
    ----------
    descs : list of mx.io.DataDesc or (name, shape) tuples, or None

    Returns
    -------
    list of mx.io.DataDesc
    """
    from xfer._mxnet import mx

    result = []
    for desc in descs or []:
        if isinstance(desc, mx.io.DataDesc):
            result.append(desc)
        elif isinstance(desc, (tuple, list)) and len(desc) >= 2 and isinstance(desc[0], str):
            result.append(mx.io.DataDesc(desc[0], tuple(desc[1])))
        elif hasattr(desc, "name") and hasattr(desc, "shape"):
            result.append(mx.io.DataDesc(desc.name, tuple(desc.shape)))
        else:
            raise InvalidTypeError(
                f"A data iterator's provide_data/provide_label entry must be an mx.io.DataDesc or a "
                f"(name, shape) tuple, got {desc!r}."
            )
    return result


def is_data_iterator(data: Any) -> bool:
    """Whether ``data`` is an ``mx.io.DataIter`` (never imports MXNet to find out).

    Parameters
    ----------
    data : object
        What a user passed as data.

    Returns
    -------
    bool
    """
    if "mxnet" not in sys.modules:  # no DataIter can exist before mxnet is imported
        return False
    from xfer._mxnet import mx

    return isinstance(data, mx.io.DataIter)


def _torch() -> Any:
    """The torch module if it is already imported (a torch object cannot exist otherwise)."""
    return sys.modules.get("torch")


def _to_numpy(value: Any) -> np.ndarray:
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if hasattr(value, "asnumpy") and not isinstance(value, np.ndarray):  # mx.nd.NDArray
        return value.asnumpy()
    return np.asarray(value)


def _split_item(item: Any, has_labels: bool) -> tuple[np.ndarray, Any]:
    """``x`` or ``(x, y)`` (a dataset item or a collated batch) as (array, label array or None)."""
    if isinstance(item, (tuple, list)):
        if not item or len(item) > 2:
            raise InvalidArgumentError(
                f"A dataset item or batch must be x or (x, y), got a {type(item).__name__} of "
                f"{len(item)} elements."
            )
        data = _to_numpy(item[0])
        labels = _to_numpy(item[1]) if has_labels and len(item) == 2 else None
        return data, labels
    if isinstance(item, dict):
        raise InvalidTypeError(
            "Dataset items that are dicts are not supported: return x or (x, y) from __getitem__."
        )
    return _to_numpy(item), None


def _is_torch_dataset(data: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(data, torch.utils.data.Dataset)


def _is_torch_loader(data: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(data, torch.utils.data.DataLoader)


def dataset_part(dataset: Any, indices: Any) -> Any:
    """The examples ``indices`` of a map-style torch ``Dataset``, without reading them.

    A dataset with its own ``subset(indices)`` (:class:`xfer.files.ImageFolder`) gives that view;
    any other is wrapped in ``torch.utils.data.Subset``.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
    indices : array-like of int

    Returns
    -------
    torch.utils.data.Dataset
    """
    subset = getattr(dataset, "subset", None)
    if callable(subset):
        return subset(np.asarray(indices))
    import torch.utils.data

    return torch.utils.data.Subset(dataset, np.asarray(indices).tolist())


def is_torch_data(data: Any) -> bool:
    """Whether ``data`` is a torch ``Dataset`` or ``DataLoader`` (never imports torch to find out).

    Parameters
    ----------
    data : object
        What a user passed as data.

    Returns
    -------
    bool
    """
    return _is_torch_dataset(data) or _is_torch_loader(data)


def _check_labels(labels: Any, count: int) -> np.ndarray | None:
    if labels is None:
        return None
    labels = _to_numpy(labels)
    if labels.ndim != 1 or len(labels) != count:
        raise InvalidArgumentError(
            f"Got {count} examples but labels of shape {labels.shape}: pass one label per example."
        )
    return labels


def _text_batches(texts: list, labels: Any, batch_size: int | None) -> Batches:
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad:
        raise InvalidTypeError(
            f"A list of texts must hold only strings; item {bad[0]} is a {type(texts[bad[0]]).__name__}."
        )
    labels = _check_labels(labels, len(texts))
    size = min(int(batch_size or DEFAULT_BATCH_SIZE), len(texts))
    return Batches(list(texts), labels, size, (), len(texts), labels is not None, dtype=None, kind="text")


def _dataset_batches(dataset: Any, labels: Any, batch_size: int | None) -> Batches:
    if labels is not None:
        raise InvalidArgumentError(
            "Labels were passed together with a torch Dataset: the dataset's own (x, y) items are "
            "used. Return (x, y) from __getitem__, or pass the data as an array."
        )
    if not hasattr(dataset, "__len__"):
        raise InvalidTypeError(
            f"The torch dataset {type(dataset).__name__} has no length (an IterableDataset): wrap it "
            "in a DataLoader(dataset, batch_size=...)."
        )
    count = len(dataset)
    if count == 0:
        raise InvalidArgumentError("The dataset is empty: pass at least one example.")
    first = dataset[0]
    has_labels = isinstance(first, (tuple, list)) and len(first) == 2
    sample, _ = _split_item(first, has_labels)
    size = min(int(batch_size or DEFAULT_BATCH_SIZE), count)
    return Batches(dataset, None, size, sample.shape, count, has_labels, dtype=_dtype_for(sample), kind="dataset")


def _loader_batches(loader: Any, labels: Any) -> Batches:
    if labels is not None:
        raise InvalidArgumentError(
            "Labels were passed together with a torch DataLoader: the loader's own (x, y) batches "
            "are used. Put the labels in the dataset, or pass the data as an array."
        )
    first = next(iter(loader), None)
    if first is None:
        raise InvalidArgumentError("The DataLoader is empty: pass at least one example.")
    has_labels = isinstance(first, (tuple, list)) and len(first) == 2
    sample, _ = _split_item(first, has_labels)
    if sample.ndim == 0:
        raise InvalidArgumentError("The DataLoader must give batches with examples along the first axis.")
    num_examples = None
    sampler = getattr(loader, "batch_sampler", None)
    if getattr(sampler, "drop_last", True) is False and type(sampler).__name__ == "BatchSampler":
        try:
            num_examples = len(sampler.sampler)
        except TypeError:
            num_examples = None
    size = loader.batch_size or len(sample)
    return Batches(loader, None, size, sample.shape[1:], num_examples, has_labels, dtype=_dtype_for(sample), kind="loader")


def _dtype_for(sample: np.ndarray) -> Any:
    """float32 for floating data; integer data (token ids) keeps its type."""
    return sample.dtype if np.issubdtype(sample.dtype, np.integer) else np.float32


def as_batches(
    data: Any, labels: Any = None, batch_size: int | None = None, allow_text: bool = False
) -> Batches:
    """Wrap user data as :class:`Batches`.

    Parameters
    ----------
    data : numpy.ndarray, mx.nd.NDArray, torch.Tensor, mx.io.DataIter, torch Dataset or DataLoader
        Examples along the first axis, an MXNet data iterator (reset before reading; its padding
        is removed), a map-style torch ``Dataset`` whose items are ``x`` or ``(x, y)``, or a
        ``DataLoader`` giving ``x`` or ``(x, y)`` batches. With ``allow_text``, also a list of
        strings. Torch integer data (token ids) keeps its integer type; all other data becomes
        float32.
    labels : array-like, optional
        Labels of array or text ``data``. Iterators, datasets and loaders bring their own.
    batch_size : int, optional
        Rows per batch for array, text and Dataset data (default 64). Ignored for a ``DataIter``
        or ``DataLoader`` (their own size; a loader's shorter last batch is padded).
    allow_text : bool, default=False
        Accept a list of strings (for models that tokenise their own input).

    Returns
    -------
    Batches
        Iterate it (as often as needed) for :class:`Batch` objects.

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
    if is_data_iterator(data):
        if labels is not None:
            raise InvalidArgumentError(
                "Labels were passed together with an mx.io.DataIter: the iterator's own labels are "
                "used. Put the labels in the iterator, or pass the data as a NumPy array."
            )
        descs = data_descs(data.provide_data)
        if len(descs) != 1:
            raise InvalidArgumentError(
                f"The data iterator provides {len(descs)} inputs ({[d.name for d in descs]}); "
                "xfer models take one input."
            )
        shape = tuple(descs[0].shape)
        num_examples = getattr(data, "num_data", None)
        has_labels = bool(getattr(data, "provide_label", None))
        return Batches(data, None, shape[0], shape[1:], num_examples, has_labels)
    if _is_torch_loader(data):
        return _loader_batches(data, labels)
    if _is_torch_dataset(data):
        return _dataset_batches(data, labels, batch_size)
    if allow_text and isinstance(data, (list, tuple)) and data and isinstance(data[0], str):
        return _text_batches(list(data), labels, batch_size)
    dtype: Any = np.float32
    torch = _torch()
    if torch is not None and isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
        if np.issubdtype(data.dtype, np.integer):
            dtype = data.dtype
    if hasattr(data, "asnumpy") and not isinstance(data, np.ndarray):  # mx.nd.NDArray
        data = data.asnumpy()
    if not isinstance(data, np.ndarray):
        if isinstance(data, (list, tuple)) and data and isinstance(data[0], np.ndarray):
            shapes = {np.shape(item) for item in data}
            if len(shapes) > 1:
                raise InvalidArgumentError(
                    f"The data is a list of arrays of different shapes ({sorted(shapes)[:3]}): "
                    "every example must have the same shape (resize or pad them first)."
                )
            data = np.stack(data)
        else:
            raise InvalidTypeError(
                f"Cannot read data of type {type(data).__name__}: pass a NumPy array with examples "
                "along the first axis, an mx.io.DataIter, or a torch Tensor, Dataset or DataLoader"
                + (" (or a list of strings for a text model)." if allow_text else ".")
            )
    if data.ndim < 1 or len(data) == 0:
        raise InvalidArgumentError(f"The data is empty (shape {data.shape}): pass at least one example.")
    if not np.issubdtype(data.dtype, np.number) and data.dtype != np.bool_:
        raise InvalidTypeError(f"The data must be numeric, got dtype {data.dtype}.")
    _validation.check_finite(data, "The data", _INPUT_REMEDY)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(data):
            raise InvalidArgumentError(
                f"Got {len(data)} examples but labels of shape {labels.shape}: pass one label per example."
            )
    size = int(batch_size or DEFAULT_BATCH_SIZE)
    size = min(size, len(data))
    return Batches(data, labels, size, data.shape[1:], len(data), labels is not None, dtype=dtype)


__all__ = [
    "Batch",
    "Batches",
    "as_batches",
    "data_descs",
    "is_data_iterator",
    "is_torch_data",
    "dataset_part",
    "DEFAULT_BATCH_SIZE",
]
