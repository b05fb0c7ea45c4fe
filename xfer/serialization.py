"""Saving and loading repurposers: strict-JSON manifest, registry, atomic writes.

A saved repurposer with path prefix ``P`` (``P = model_directory/model_name``) is:

``P.json``
    Strict-JSON manifest (no ``NaN``/``Infinity``): format name and version, the registry key of
    the class, the xfer version that wrote it, the constructor parameters (JSON-safe; the source
    model is never in it), the label classes with their dtype, the head's own configuration, and
    the SHA-256 of the array file.
``P.npz``
    Every fitted array, written with :func:`numpy.savez` and read back with
    ``allow_pickle=False``: nothing in a saved model can execute code.
``P_source-symbol.json``, ``P_source-0000.params``
    The source model (MXNet checkpoint), when it was saved with the repurposer.

Each file is written to a temporary file in the same directory and moved into place with
:func:`os.replace`; the manifest is written last, so a crash leaves no loadable half-model.

Loading looks the class up in a registry filled by :func:`register_repurposer`. The class is
*never* imported, ``eval``-ed or unpickled from a name found in a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from xfer.exceptions import InvalidTypeError, ModelFileNotFoundError, SerializationError

logger = logging.getLogger("xfer.serialization")

#: Version of the on-disk format written by this release. Readers accept every version in
#: :data:`SUPPORTED_FORMAT_VERSIONS`.
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
#: Value of the manifest's ``"format"`` key: tells an xfer manifest from any other JSON file.
FORMAT_NAME = "xfer-repurposer"

_REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def register_repurposer(cls: T | None = None, *, key: str | None = None) -> Any:
    """Class decorator: make a repurposer class loadable by :func:`load`.

    The registry key is the class attribute ``serialization_key``. When the class does not define
    one itself (an inherited key does not count), ``key`` is used, else
    ``"<module>.<qualname>"``; the key is then set on the class. The key is written into every
    saved manifest and is the only thing :func:`load` uses to find the class again.

    Parameters
    ----------
    cls : type, optional
        The class (when used as ``@register_repurposer`` without parentheses).
    key : str, optional
        Explicit registry key (when used as ``@register_repurposer(key="my_org.KnnHead")``).

    Returns
    -------
    type or callable
        The class unchanged (apart from ``serialization_key``), or a decorator.

    Raises
    ------
    SerializationError
        Another class is already registered under the same key.

    Examples
    --------
    >>> from xfer import MetaModelRepurposer
    >>> from xfer.serialization import register_repurposer
    >>> @register_repurposer(key="doc.MyHead")
    ... class MyHead(MetaModelRepurposer):
    ...     pass
    >>> MyHead.serialization_key
    'doc.MyHead'
    """

    def decorate(klass: T) -> T:
        if not isinstance(klass, type):
            raise InvalidTypeError(f"register_repurposer decorates classes, got {klass!r}.")
        own_key = klass.__dict__.get("serialization_key")
        chosen = key or own_key or f"{klass.__module__}.{klass.__qualname__}"
        if not isinstance(chosen, str) or not chosen:
            raise InvalidTypeError(f"serialization_key must be a non-empty string, got {chosen!r}.")
        existing = _REGISTRY.get(chosen)
        if existing is not None and existing is not klass:
            same_definition = (existing.__module__, existing.__qualname__) == (
                klass.__module__,
                klass.__qualname__,
            )
            if not same_definition:
                raise SerializationError(
                    f"The serialization key {chosen!r} is already used by "
                    f"{existing.__module__}.{existing.__qualname__}; give "
                    f"{klass.__module__}.{klass.__qualname__} its own key with "
                    "@register_repurposer(key='...')."
                )
            logger.debug("Re-registering %s (module reloaded).", chosen)
        klass.serialization_key = chosen  # type: ignore[attr-defined]
        _REGISTRY[chosen] = klass
        return klass

    if cls is not None:
        return decorate(cls)
    return decorate


def registered_repurposers() -> dict[str, type]:
    """A copy of the registry: ``{serialization_key: class}``."""
    return dict(_REGISTRY)


def _lookup(key: Any, manifest_path: Path) -> type:
    if not isinstance(key, str):
        raise SerializationError(f"{manifest_path}: 'class_key' must be a string, got {key!r}.")
    if key not in _REGISTRY:
        import xfer.repurposers  # noqa: F401  (``import xfer`` is lazy: register the built-in heads)
    if key not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise SerializationError(
            f"{manifest_path} was saved by the repurposer class {key!r}, which is not registered "
            f"in this session (registered: {known}). Import the module that defines it (and "
            "decorates it with @xfer.serialization.register_repurposer) before calling xfer.load."
        )
    return _REGISTRY[key]


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)``, then rename the file over ``path``.

    A crash or an exception never leaves a half-written ``path``: it either keeps its old content
    or gets the new one. The temporary file sits in the same folder (the rename stays atomic).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; saved models are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    atomic_write(path, write)


def to_strict_json(obj: Any) -> str:
    """``json.dumps`` that refuses ``NaN``/``Infinity`` and non-JSON types with a clear error."""
    try:
        return json.dumps(obj, allow_nan=False, indent=2, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise SerializationError(
            f"Cannot write the manifest as strict JSON: {error}. Parameters must be numbers, "
            "strings, booleans, None or lists/dicts of those (NaN and infinity are refused)."
        ) from error


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON, atomically."""
    atomic_write_bytes(path, to_strict_json(obj).encode("utf-8"))


def arrays_to_npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Serialise arrays to ``.npz`` bytes, refusing object arrays (they would need pickle)."""
    clean: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise SerializationError(
                f"Array {name!r} has dtype object, which cannot be saved without pickle; "
                "convert it to a numeric or fixed-width string array."
            )
        clean[name] = array
    buffer = io.BytesIO()
    np.savez(buffer, **clean)
    return buffer.getvalue()


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file with ``allow_pickle=False``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as error:
        raise SerializationError(
            f"The array file {path} is corrupt or truncated ({type(error).__name__}: {error}). "
            "Save the repurposer again."
        ) from error


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# JSON-safe values
# --------------------------------------------------------------------------------------------


def encode_classes(classes: np.ndarray) -> dict[str, Any]:
    """``classes_`` as ``{"dtype": ..., "values": [...]}`` so ints come back as ints, strings as strings."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "iu":
        return {"dtype": classes.dtype.str, "values": [int(v) for v in classes]}
    if classes.dtype.kind == "b":
        return {"dtype": "bool", "values": [bool(v) for v in classes]}
    if classes.dtype.kind == "f":
        if not np.all(np.isfinite(classes)):
            raise SerializationError("Label classes must be finite numbers to be saved.")
        return {"dtype": classes.dtype.str, "values": [float(v) for v in classes]}
    if classes.dtype.kind == "U":
        return {"dtype": "str", "values": [str(v) for v in classes]}
    if classes.dtype.kind == "O" and all(isinstance(v, str) for v in classes):
        return {"dtype": "object-str", "values": [str(v) for v in classes]}
    raise SerializationError(
        f"Cannot save label classes of dtype {classes.dtype} ({list(classes)[:5]}...): "
        "labels must be integers, floats, booleans or strings."
    )


def decode_classes(encoded: Any, manifest_path: Path) -> np.ndarray:
    if not isinstance(encoded, dict) or "dtype" not in encoded or "values" not in encoded:
        raise SerializationError(f"{manifest_path}: 'classes' must be {{'dtype', 'values'}}.")
    dtype, values = encoded["dtype"], encoded["values"]
    if not isinstance(values, list):
        raise SerializationError(f"{manifest_path}: 'classes.values' must be a list.")
    try:
        if dtype == "str":
            return np.asarray([str(v) for v in values])
        if dtype == "object-str":
            return np.asarray([str(v) for v in values], dtype=object)
        if dtype == "bool":
            return np.asarray(values, dtype=bool)
        numpy_dtype = np.dtype(dtype)
        if numpy_dtype.kind not in "iuf":
            raise TypeError(dtype)
        return np.asarray(values, dtype=numpy_dtype)
    except (TypeError, ValueError) as error:
        raise SerializationError(
            f"{manifest_path}: cannot read the label classes (dtype {dtype!r}): {error}."
        ) from error


def context_to_json(context: Any) -> Any:
    """A context function/value (``mx.cpu``, ``"gpu:1"``...) as a JSON device string (or list)."""
    from xfer.context import format_context, resolve_context

    if context is None:
        return None
    return format_context(resolve_context(context))


# --------------------------------------------------------------------------------------------
# Reading manifests and loading
# --------------------------------------------------------------------------------------------


def _strict_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a manifest: strict JSON, an xfer manifest, a supported format version.

    Raises
    ------
    ModelFileNotFoundError
        The file does not exist.
    SerializationError
        The file is not strict JSON, not an xfer manifest, or of an unknown format version.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFoundError(
            f"No saved repurposer at {path}: the manifest file is missing. Check model_name and "
            "model_directory (xfer.load(model_name, model_directory=...))."
        )
    try:
        text = path.read_text(encoding="utf-8")
        manifest = json.loads(text, parse_constant=_strict_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise SerializationError(
            f"{path} is not a valid xfer manifest: it is not strict JSON ({error}). The file is "
            "corrupt or truncated; save the repurposer again."
        ) from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise SerializationError(
            f"{path} is not an xfer repurposer manifest (its 'format' is not {FORMAT_NAME!r}); "
            "it was written by something else."
        )
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise SerializationError(
            f"{path} has format version {version!r}, but this xfer reads versions "
            f"{list(SUPPORTED_FORMAT_VERSIONS)}. Upgrade xfer to load it (it was written by "
            f"xfer {manifest.get('xfer_version', 'unknown')})."
        )
    for required in ("class_key", "params", "arrays_file", "arrays_sha256"):
        if required not in manifest:
            raise SerializationError(f"{path} lacks the required key {required!r}.")
    return manifest


def model_prefix(model_name: str | os.PathLike, model_directory: str | os.PathLike = "") -> Path:
    """``model_directory/model_name`` as a path prefix (Xfer's ``P``), with a clear type error."""
    if not isinstance(model_name, (str, os.PathLike)) or not str(model_name):
        raise InvalidTypeError(f"model_name must be a non-empty string, got {model_name!r}.")
    if not isinstance(model_directory, (str, os.PathLike)):
        raise InvalidTypeError(f"model_directory must be a string, got {model_directory!r}.")
    return Path(model_directory) / str(model_name)


def load(
    model_name: str | os.PathLike,
    model_directory: str | os.PathLike = "",
    source_model: Any = None,
) -> Any:
    """Load a repurposer saved with ``save_repurposer`` or ``save`` (Xfer's ``xfer.load``).

    Parameters
    ----------
    model_name : str
        Name (prefix) of the saved files; may include directories.
    model_directory : str, default=''
        Directory holding the files.
    source_model : mx.mod.Module, ModelHandler or similar, optional
        Source model to use; required when the repurposer was saved without it and you want to
        predict from raw inputs (predicting from features works without it).

    Returns
    -------
    Repurposer
        The loaded repurposer; it predicts exactly what the saved one did.

    Raises
    ------
    ModelFileNotFoundError
        A file of the saved model is missing.
    SerializationError
        A file is corrupt, truncated, of an unknown format version, or names an unregistered class.

    Examples
    --------
    >>> rep.save_repurposer("digits_lr", "models")          # doctest: +SKIP
    >>> rep2 = xfer.load("digits_lr", "models")              # doctest: +SKIP
    """
    prefix = model_prefix(model_name, model_directory)
    manifest_path = prefix.with_name(prefix.name + ".json")
    manifest = read_manifest(manifest_path)
    cls = _lookup(manifest["class_key"], manifest_path)
    arrays_file = manifest["arrays_file"]
    if not isinstance(arrays_file, str) or os.path.basename(arrays_file) != arrays_file:
        raise SerializationError(f"{manifest_path}: 'arrays_file' must be a plain file name.")
    arrays_path = manifest_path.parent / arrays_file
    if not arrays_path.is_file():
        raise ModelFileNotFoundError(
            f"The array file {arrays_path} of the saved repurposer {manifest_path} is missing; "
            "copy it next to the manifest or save the repurposer again."
        )
    if sha256_of(arrays_path) != manifest["arrays_sha256"]:
        raise SerializationError(
            f"The array file {arrays_path} does not match its manifest {manifest_path} (checksum "
            "differs): it is truncated, corrupt, or from another save. Save the repurposer again."
        )
    arrays = read_npz(arrays_path)
    from_manifest: Callable[..., Any] | None = getattr(cls, "_from_manifest", None)
    if from_manifest is None:
        raise SerializationError(f"The registered class {cls.__qualname__} cannot be loaded.")
    return from_manifest(manifest, arrays, prefix=prefix, source_model=source_model)


__all__ = [
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "register_repurposer",
    "registered_repurposers",
    "atomic_write_bytes",
    "atomic_write_json",
    "read_manifest",
    "load",
]
