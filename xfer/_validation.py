"""The one input gate: every public entry point checks what it is given here, in one pass.

Each check raises an :mod:`xfer.exceptions` error that subclasses the built-in a user would
catch, names the argument, says what was wrong and what to do. The checks are vectorised (a
``min``/``max`` per chunk of rows for finiteness, a set of Python types for label lists), so
they cost little next to feature extraction. Where scikit-learn's estimator checks expect a
phrase in a message ("Unknown label type", "is expecting N features"), the message holds it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from xfer.exceptions import InvalidArgumentError, InvalidTypeError

#: Largest magnitude accepted in inputs and features: beyond float32's range a value turns into
#: infinity in every float32 computation (the networks, the GP and BNN heads).
MAX_MAGNITUDE = float(np.finfo(np.float32).max)

#: Elements per chunk of the finiteness scan (bounds its memory, keeps it vectorised).
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def _position(index: tuple) -> str:
    return str(tuple(int(i) for i in index)) if len(index) > 1 else str(int(index[0]))


def _describe_bad_values(array: np.ndarray, offset: int) -> tuple[str, str]:
    """What is wrong in ``array`` (a chunk starting at row ``offset``): (kind, details)."""
    with np.errstate(invalid="ignore", over="ignore"):
        nan = np.isnan(array)
        infinite = np.isinf(array)
        large = ~nan & ~infinite & (np.abs(array) > MAX_MAGNITUDE)
    parts = []
    first = None
    for mask, label in ((nan, "NaN"), (infinite, "infinity"), (large, "too large")):
        count = int(np.count_nonzero(mask))
        if count:
            where = np.unravel_index(int(np.argmax(mask.ravel())), mask.shape)
            where = (where[0] + offset, *where[1:])
            parts.append(f"{count} {label} value{'s' if count > 1 else ''} (first at {_position(where)})")
            first = first or label
    return first or "NaN", ", ".join(parts)


def refuse_masked(value: Any, name: str) -> None:
    """Refuse a NumPy masked array with masked entries: its masks would be dropped silently
    (``np.asarray`` keeps the values under the mask), so missing values would be used as data.

    Raises
    ------
    InvalidArgumentError
        ``value`` is a masked array with at least one masked entry.
    """
    if np.ma.isMaskedArray(value) and np.ma.getmaskarray(value).any():
        count = int(np.ma.getmaskarray(value).sum())
        raise InvalidArgumentError(
            f"{name} is a masked array with {count} masked (missing) entries, which xfer does not "
            f"read: fill them ({name}.filled(value)) or drop those rows first."
        )


def check_finite(array: np.ndarray, name: str, remedy: str, row_offset: int = 0) -> None:
    """Refuse NaN, infinity and magnitudes beyond float32's range in a numeric array (and
    masked entries, see :func:`refuse_masked`).

    Integer and boolean arrays pass at once. Floating arrays are scanned in chunks of rows with
    ``min``/``max`` (NaN propagates through them), so a clean array costs two reductions.

    Raises
    ------
    InvalidArgumentError
        Naming ``name``, the count and first position of each kind of bad value, and ``remedy``.
    """
    refuse_masked(array, name)
    if array.dtype.kind not in "fc" or array.size == 0:
        return
    if array.ndim == 0:
        array = array.reshape(1)
    if array.dtype.kind == "c":
        raise InvalidArgumentError(
            f"{name} holds complex numbers: Complex data not supported. Pass real numbers."
        )
    rows = max(1, _CHUNK_ELEMENTS // max(1, array.size // max(1, len(array))))
    for start in range(0, len(array), rows):
        chunk = array[start : start + rows]
        with np.errstate(invalid="ignore"):
            high, low = chunk.max(), chunk.min()
        if high <= MAX_MAGNITUDE and low >= -MAX_MAGNITUDE:  # False for NaN
            continue
        kind, details = _describe_bad_values(chunk, row_offset + start)
        what = {"NaN": "NaN", "infinity": "infinity", "too large": "values too large"}[kind]
        raise InvalidArgumentError(
            f"{name} contains {what} ({details}); xfer accepts only finite values below "
            f"{MAX_MAGNITUDE:.3g} in magnitude (NaN and inf are refused). {remedy}"
        )


def _torch_module() -> Any:
    return sys.modules.get("torch")


def _plain_array(value: Any) -> Any:
    """A torch tensor or MXNet NDArray as NumPy; anything else unchanged."""
    torch = _torch_module()
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if hasattr(value, "asnumpy") and not isinstance(value, np.ndarray):
        return value.asnumpy()
    return value


def _refuse_non_arrays(value: Any, name: str, expected: str) -> None:
    if value is None:
        raise InvalidTypeError(f"{name} is None: pass {expected}.")
    sparse = sys.modules.get("scipy.sparse")
    if sparse is not None and sparse.issparse(value):
        raise InvalidTypeError(
            f"{name} is a sparse matrix, which xfer does not take: convert it with "
            f"{name}.toarray()."
        )
    if isinstance(value, (str, bytes, dict, set, frozenset)) or isinstance(value, Iterator):
        kind = "a generator or iterator" if isinstance(value, Iterator) else type(value).__name__
        raise InvalidTypeError(
            f"{name} is {kind}, not array-like: pass {expected}"
            + (" (materialise a generator with list(...) first)." if isinstance(value, Iterator) else ".")
        )


# --------------------------------------------------------------------------------------------
# Feature matrices
# --------------------------------------------------------------------------------------------


def check_features(
    X: Any,
    name: str = "X",
    *,
    expected_features: int | None = None,
    estimator_name: str = "the model",
) -> np.ndarray:
    """``X`` as a finite float array ``(n_samples, n_features)``, or a clear error.

    Parameters
    ----------
    X : array-like
        Feature rows (lists, NumPy arrays, torch tensors, DataFrames).
    name : str
        The argument's name in messages.
    expected_features : int, optional
        The number of columns the fitted model takes.
    estimator_name : str
        The class name in the column-count message.

    Raises
    ------
    InvalidTypeError
        ``X`` is None, a string, a dict, a generator, sparse, or holds objects that are not
        numbers.
    InvalidArgumentError
        Not 2-D, empty, ragged, strings, complex, non-finite, or of another width than the model
        was fitted on.
    """
    expected = "an array of shape (n_samples, n_features)"
    _refuse_non_arrays(X, name, expected)
    refuse_masked(X, name)
    X = _plain_array(X)
    try:
        array = np.asarray(X)
    except (ValueError, TypeError) as error:
        raise InvalidArgumentError(
            f"{name} cannot be read as {expected} ({error}); rows of unequal length are refused."
        ) from error
    if array.dtype.kind == "O":
        try:
            array = array.astype(np.float64)
        except TypeError as error:
            raise InvalidTypeError(
                f"{name} holds values that are not numbers: {error}. Pass numbers only."
            ) from error
        except ValueError as error:
            raise InvalidArgumentError(
                f"{name} holds values that are not numbers: {error}. Pass numbers only."
            ) from error
    if array.dtype.kind in "USV":
        raise InvalidArgumentError(
            f"{name} holds strings (dtype {array.dtype}), not numbers: pass numeric features "
            "(encode text with a text model first)."
        )
    if array.dtype.kind in "mM":
        raise InvalidTypeError(f"{name} holds dates or times (dtype {array.dtype}), not numbers.")
    if array.dtype.kind == "c":
        raise InvalidArgumentError(
            f"{name} holds complex numbers: Complex data not supported. Pass real numbers."
        )
    if array.ndim != 2:
        hint = {
            0: f"{name} is a single value",
            1: f"{name} is 1-D (shape {array.shape}): Expected 2D array, got 1D array instead. "
            f"Reshape your data with {name}.reshape(-1, 1) for one feature or {name}.reshape(1, -1) "
            "for one sample",
        }.get(
            array.ndim,
            f"{name} is {array.ndim}-D (shape {array.shape}): flatten each sample with "
            f"{name}.reshape(len({name}), -1), or give the raw inputs to a repurposer that has a "
            "source model",
        )
        raise InvalidArgumentError(f"{hint}; features must be 2-D (n_samples, n_features).")
    if array.shape[0] == 0:
        raise InvalidArgumentError(
            f"{name} is empty: Found array with 0 sample(s) (shape={array.shape}) while a "
            "minimum of 1 is required. Pass at least one sample."
        )
    if array.shape[1] == 0:
        raise InvalidArgumentError(
            f"{name} has no columns: Found array with 0 feature(s) (shape={array.shape}) while "
            "a minimum of 1 is required."
        )
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    if expected_features is not None and array.shape[1] != expected_features:
        raise InvalidArgumentError(
            f"{name} has {array.shape[1]} features, but {estimator_name} is expecting "
            f"{expected_features} features as input (the width of its training features). Pass "
            f"rows of {expected_features} columns, extracted as for training."
        )
    check_finite(array, name, "Remove or impute them first.")
    return array


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------

_LABEL_KINDS = {
    bool: "boolean",
    np.bool_: "boolean",
    str: "string",
    np.str_: "string",
}


def _kind_of_type(kind: type) -> str:
    if kind in _LABEL_KINDS:
        return _LABEL_KINDS[kind]
    if issubclass(kind, (bool, np.bool_)):
        return "boolean"
    if issubclass(kind, (str, np.str_)):
        return "string"
    if issubclass(kind, (int, np.integer, float, np.floating)):
        return "number"
    if kind is type(None):
        return "None"
    return kind.__name__


def _kind_of_dtype(dtype: np.dtype) -> str:
    return {"b": "boolean", "U": "string", "i": "number", "u": "number", "f": "number"}.get(
        dtype.kind, str(dtype)
    )


def label_kind(values: np.ndarray) -> str:
    """``"number"``, ``"string"`` or ``"boolean"``: the kind of a label array (checked ones)."""
    if values.dtype.kind == "O":
        kinds = {_kind_of_type(type(v)) for v in values}
        return kinds.pop() if len(kinds) == 1 else "mixed"
    return _kind_of_dtype(values.dtype)


def _check_label_objects(flat: np.ndarray, name: str) -> None:
    """Refuse None, unsupported types and mixed kinds among Python label objects."""
    kinds: dict[str, int] = {}
    for position, kind in enumerate(map(type, flat)):
        kinds.setdefault(_kind_of_type(kind), position)
    if "None" in kinds:
        raise InvalidArgumentError(
            f"{name}[{kinds['None']}] is None: every sample needs a label (drop unlabelled "
            "samples first)."
        )
    unsupported = [k for k in kinds if k not in ("number", "string", "boolean")]
    if unsupported:
        raise InvalidTypeError(
            f"{name} holds labels of type {unsupported[0]} (at position {kinds[unsupported[0]]}): "
            "labels must be numbers, strings or booleans"
            + (" (decode bytes to str first)." if "bytes" in unsupported else ".")
        )
    if len(kinds) > 1:
        examples = [f"{flat[i]!r} at position {i}" for i in list(kinds.values())[:2]]
        raise InvalidTypeError(
            f"{name} mixes labels of different kinds ({' and '.join(list(kinds)[:2])}: "
            f"{', '.join(examples)}). Use one type for all labels, e.g. all strings "
            f"([str(v) for v in {name}]) or all integers; xfer gives labels back as given, and "
            "a mixture would come back converted."
        )


def check_labels(
    y: Any,
    name: str = "y",
    *,
    n_samples: int | None = None,
    x_name: str = "X",
    allow_continuous: bool = False,
) -> np.ndarray:
    """``y`` as a 1-D array of labels of one kind, as given, or a clear error.

    Labels may be numbers, strings or booleans, but not a mixture: ``[1, "a"]`` is refused
    (NumPy would turn the ints into strings, and they would come back as strings).

    Raises
    ------
    InvalidTypeError
        ``y`` is a generator, dict, string or sparse; labels mixing kinds; labels of an
        unsupported type (bytes, objects).
    InvalidArgumentError
        ``y`` is None ("requires y"), empty, 2-D with several columns, of another length than
        ``X``, holds None, NaN or infinity, or is continuous (float labels that are not whole
        numbers, unless ``allow_continuous``).
    """
    if y is None:
        raise InvalidArgumentError(
            f"This classifier requires y to be passed, but the target y is None: pass the labels "
            f"as {name}, one per sample of {x_name}."
        )
    _refuse_non_arrays(y, name, f"one label per sample of {x_name} (a list or 1-D array)")
    refuse_masked(y, name)
    y = _plain_array(y)
    if isinstance(y, (list, tuple)) or (isinstance(y, np.ndarray) and y.dtype.kind == "O"):
        try:
            objects = np.asarray(y, dtype=object)
        except (ValueError, TypeError) as error:
            raise InvalidArgumentError(
                f"{name} cannot be read as a 1-D array of labels ({error})."
            ) from error
        _check_label_objects(objects.ravel(), name)
        array = np.asarray(objects.tolist()) if objects.size else np.asarray(y)
    else:
        try:
            array = np.asarray(y)
        except (ValueError, TypeError) as error:
            raise InvalidArgumentError(
                f"{name} cannot be read as a 1-D array of labels ({error})."
            ) from error
    if array.ndim == 2 and array.shape[1] == 1:
        from sklearn.utils.validation import column_or_1d

        array = column_or_1d(array, warn=True)
    if array.ndim != 1:
        raise InvalidArgumentError(
            f"{name} must be 1-D (one label per sample), got shape {array.shape}"
            + ("; y should be a 1d array (several label columns are not supported)." if array.ndim > 1 else ".")
        )
    if len(array) == 0:
        raise InvalidArgumentError(f"{name} is empty: pass one label per sample of {x_name}.")
    if n_samples is not None and len(array) != n_samples:
        raise InvalidArgumentError(
            f"{x_name} and {name} have inconsistent numbers of samples: {x_name} has {n_samples}, "
            f"{name} has {len(array)}. Pass exactly one label per sample."
        )
    kind = array.dtype.kind
    if kind == "S":
        raise InvalidTypeError(
            f"{name} holds bytes labels (dtype {array.dtype}): decode them to str first."
        )
    if kind not in "biufUO":
        raise InvalidTypeError(
            f"{name} has dtype {array.dtype}: Unknown label type. Labels must be numbers, "
            "strings or booleans."
        )
    if kind == "f":
        if not np.all(np.isfinite(array)):
            bad = int(np.argmax(~np.isfinite(array)))
            raise InvalidArgumentError(
                f"{name} contains NaN or infinity (first at position {bad}): every sample needs a "
                "real label (drop unlabelled samples first)."
            )
        if not allow_continuous and not np.all(array == np.round(array)):
            raise InvalidArgumentError(
                f"Unknown label type: continuous. {name} holds fractional numbers (e.g. "
                f"{array[array != np.round(array)][0]!r}): a classifier needs class labels; "
                "regression targets are not supported."
            )
    return array


def check_labels_like(y: np.ndarray, classes: np.ndarray, name: str = "y") -> None:
    """Refuse labels of another kind than the fitted ``classes`` (strings vs numbers...)."""
    given, known = label_kind(y), label_kind(classes)
    if given != known:
        raise InvalidTypeError(
            f"{name} holds {given} labels, but the model was fitted on {known} labels "
            f"(classes_ = {list(classes[:5])}{'...' if len(classes) > 5 else ''}): pass labels "
            "of the same type as in fit."
        )


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray | None:
    """``sample_weight`` as finite non-negative floats, one per sample, or None."""
    if sample_weight is None:
        return None
    _refuse_non_arrays(sample_weight, "sample_weight", "one non-negative weight per sample")
    try:
        weights = np.asarray(_plain_array(sample_weight), dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidTypeError(f"sample_weight must be numbers ({error}).") from error
    if weights.ndim != 1 or len(weights) != n_samples:
        raise InvalidArgumentError(
            f"sample_weight has shape {weights.shape}, but there are {n_samples} samples: pass "
            "one weight per sample."
        )
    check_finite(weights, "sample_weight", "Pass finite weights.")
    if np.any(weights < 0):
        raise InvalidArgumentError("sample_weight holds negative weights: weights must be >= 0.")
    return weights


def check_probabilities(probabilities: Any, n_rows: int, n_classes: int, who: str) -> np.ndarray:
    """A head's output: ``(n_rows, n_classes)`` finite probabilities, or an error (never NaN)."""
    array = np.asarray(probabilities, dtype=np.float64)
    if array.shape != (n_rows, n_classes):
        raise InvalidArgumentError(
            f"{who} returned probabilities of shape {array.shape}, expected ({n_rows}, "
            f"{n_classes}) (one column per class of classes_): the head is inconsistent."
        )
    if not np.all(np.isfinite(array)):
        raise InvalidArgumentError(
            f"{who} produced NaN or infinite probabilities for "
            f"{int(np.count_nonzero(~np.isfinite(array).all(axis=1)))} row(s): the features are "
            "outside the range the head can compute with; check their scaling."
        )
    return array


__all__ = [
    "MAX_MAGNITUDE",
    "check_features",
    "check_finite",
    "check_labels",
    "check_labels_like",
    "check_probabilities",
    "check_sample_weight",
    "label_kind",
]
