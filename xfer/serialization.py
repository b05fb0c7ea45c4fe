"""Saving and loading repurposers: strict-JSON manifest, registry, crash-safe saves.

A saved repurposer with path prefix ``P`` (``P = model_directory/model_name``) is:

``P.json``
    Strict-JSON manifest (no ``NaN``/``Infinity``): format name and version, the registry key of
    the class, the xfer version that wrote it, the constructor parameters (JSON-safe; the source
    model is never in it), the label classes with their dtype, the head's own configuration, the
    SHA-256 of every other file of the model, and (format 2) the SHA-256 of the manifest itself.
``P.npz``
    Every fitted array, written with :func:`numpy.savez` and read back with
    ``allow_pickle=False``: nothing in a saved model can execute code.
``P_source-symbol.json``, ``P_source-0000.params``
    The source model (MXNet checkpoint), when it was saved with the repurposer.
``P-symbol.json``, ``P-0000.params``
    A fine-tuner's own network.

These are the names Xfer 1.1.0 used. All files of one save go into place together
(:func:`saving`): an interrupted save, an overwrite included, leaves either the complete old
model or the complete new one under the name, whatever the moment, and :func:`load` checks the
checksums and the saved state before it returns a model.

Loading looks the class up in a registry filled by :func:`register_repurposer`. The class is
*never* imported, ``eval``-ed or unpickled from a name found in a file.

Format versions: 1 (xfer 0.1.0) and 2 (adds ``manifest_sha256``) are read; 2 is written.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from xfer.exceptions import (
    InvalidArgumentError,
    InvalidTypeError,
    ModelFileNotFoundError,
    ModelSaveError,
    SerializationError,
    XferError,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: saves are not locked against each other
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("xfer.serialization")

#: Version of the on-disk format written by this release. Readers accept every version in
#: :data:`SUPPORTED_FORMAT_VERSIONS`.
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)
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
    """A copy of the registry: ``{serialization_key: class}``.

    Returns
    -------
    dict of str to type
    """
    return dict(_REGISTRY)


def _lookup(key: Any, manifest_path: Path) -> type:
    if not isinstance(key, str):
        raise SerializationError(f"{manifest_path}: 'class_key' must be a string, got {key!r}.")
    if key not in _REGISTRY:  # ``xfer.repurposers`` is lazy: import the built-in head saved as key
        from xfer.repurposers import register_builtin

        register_builtin(key)
    if key not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise SerializationError(
            f"{manifest_path} was saved by the repurposer class {key!r}, which is not registered "
            f"in this session (registered: {known}). Import the module that defines it (and "
            "decorates it with @xfer.serialization.register_repurposer) before calling xfer.load."
        )
    return _REGISTRY[key]


# --------------------------------------------------------------------------------------------
# Crash-safe saves: every file of one save goes into place together, or none does
# --------------------------------------------------------------------------------------------

#: Suffix of the temporary files of a save in progress (``.NAME.RANDOM.xfer-tmp``).
TEMP_SUFFIX = ".xfer-tmp"
#: The record of a save being committed in a directory (see :func:`saving`).
PENDING_RECORD = ".xfer-pending.json"
_PENDING_FORMAT = "xfer-pending-save"
#: Endings of the files xfer writes; a temporary file of the earlier ``.NAME.XXXXXXXX.tmp``
#: scheme is removed only when ``NAME`` has one of them.
_XFER_FILE_ENDINGS = (".json", ".npz", ".params", ".safetensors")
_LEGACY_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")

#: Called with a short description after each filesystem step of a save (tests kill the
#: process from it to show that a kill at any step leaves one whole model). None in normal use.
_step_hook: Callable[[str], None] | None = None


def _step(description: str) -> None:
    if _step_hook is not None:
        _step_hook(description)


def _directory_key(directory: Path) -> str:
    return os.path.normcase(os.path.abspath(directory))


#: Saves and reads in progress in this context, by directory: nested calls join them (and never
#: wait for a lock their own caller holds).
_ACTIVE_SAVES: ContextVar[dict[str, SaveTransaction] | None] = ContextVar(
    "xfer_active_saves", default=None
)
_ACTIVE_READS: ContextVar[dict[str, SavedFiles] | None] = ContextVar(
    "xfer_active_reads", default=None
)


def _active_saves() -> dict[str, SaveTransaction]:
    return _ACTIVE_SAVES.get() or {}


def _active_reads() -> dict[str, SavedFiles]:
    return _ACTIVE_READS.get() or {}


@contextmanager
def _directory_lock(directory: Path, exclusive: bool) -> Iterator[None]:
    """``flock`` on the directory itself: saves exclude each other and readers; readers share.

    The lock dies with its process (SIGKILL included), so a killed save never blocks the next.
    Where locks are unavailable (no ``fcntl``, an unreadable directory) this does nothing.
    """
    if fcntl is None:
        yield
        return
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:  # pragma: no cover - file systems without flock
            pass
        yield
    finally:
        os.close(descriptor)


def _fsync_directory(directory: Path) -> None:
    """Make renames in ``directory`` durable (a power cut after this keeps them)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(descriptor)
    except OSError:  # pragma: no cover - file systems that refuse fsync on directories
        pass
    finally:
        os.close(descriptor)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _save_error(error: OSError, directory: Path) -> ModelSaveError:
    reason = error.strerror or str(error)
    where = error.filename or directory
    hints = {
        errno.EACCES: "the folder is not writable by this user: choose another folder or fix its "
        "permissions",
        errno.EPERM: "the folder is not writable by this user: choose another folder or fix its "
        "permissions",
        errno.EROFS: "the file system is read-only: save somewhere writable",
        errno.ENOSPC: "the disk is full: free some space and save again",
        errno.ENOTDIR: "a part of the path is a file, not a folder: choose a path whose folders "
        "are folders",
        errno.EEXIST: "a part of the path is a file, not a folder: choose a path whose folders "
        "are folders",
        errno.EISDIR: "a folder stands where a file of the model goes: give a path prefix for "
        "the files (e.g. 'models/my_model'), not a folder",
        errno.ENAMETOOLONG: "the name is too long for the file system: use a shorter model name",
    }
    hint = hints.get(error.errno or -1, "check the path and that the folder is writable")
    return ModelSaveError(
        error.errno or errno.EIO,
        f"Cannot save to {directory}: {reason} ({where}); {hint}. Nothing was changed: a model "
        "saved there before is still whole.",
        str(where),
    )


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError as error:  # a file where a folder must be
        raise _save_error(
            OSError(errno.ENOTDIR, "a file stands where a folder is needed", str(directory)),
            directory,
        ) from error
    except OSError as error:
        raise _save_error(error, directory) from error
    if not directory.is_dir():
        raise _save_error(
            OSError(errno.ENOTDIR, "a file stands where a folder is needed", str(directory)),
            directory,
        )


class SaveTransaction:
    """The files of one save in one directory; they go into place together (see :func:`saving`).

    Use :func:`atomic_write` (or :func:`saving`'s ``stage``) to add files; :meth:`sha256` gives
    the checksum of a file written in this save before it is in place.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self._staged: dict[str, tuple[str, str]] = {}  # final name -> (temporary name, sha256)

    @property
    def names(self) -> list[str]:
        """The names of the files written so far, in order."""
        return list(self._staged)

    def sha256(self, name: str) -> str | None:
        """The SHA-256 of the file ``name`` written in this save (None if it was not)."""
        staged = self._staged.get(name)
        return None if staged is None else staged[1]

    def stage(self, name: str, write: Callable[[str], None]) -> None:
        """Write the future content of ``name`` with ``write(temporary_path)``; it goes into
        place when the save commits."""
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise InvalidArgumentError(f"Cannot save a file named {name!r}: not a plain file name.")
        final = self.directory / name
        if final.is_dir():
            raise _save_error(
                OSError(errno.EISDIR, "a folder has the name of a file of the model", str(final)),
                self.directory,
            )
        previous = self._staged.pop(name, None)
        if previous is not None:
            _remove_quietly(self.directory / previous[0])
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=self.directory
        )
        os.close(descriptor)
        try:
            _step(f"created the temporary file of {name}")
            write(temporary)
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes 0600
            digest = sha256_of_file(Path(temporary))
        except BaseException:
            _remove_quietly(Path(temporary))
            raise
        self._staged[name] = (os.path.basename(temporary), digest)
        _step(f"wrote the temporary file of {name}")

    def commit(self) -> None:
        """Record the staged files, move them into place in order, then drop the record."""
        if not self._staged:
            return
        record = {
            "format": _PENDING_FORMAT,
            "files": [
                {"name": name, "temporary": temporary, "sha256": digest}
                for name, (temporary, digest) in self._staged.items()
            ],
        }
        _write_record(self.directory, record)
        self._staged.clear()  # from here on the files belong to the record
        _roll_forward(self.directory, record["files"])

    def discard(self) -> None:
        """Remove the temporary files of a save that failed before its record was written."""
        for temporary, _ in self._staged.values():
            _remove_quietly(self.directory / temporary)
        self._staged.clear()


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _write_record(directory: Path, record: dict[str, Any]) -> None:
    data = json.dumps(record, indent=1).encode("utf-8")
    descriptor, temporary = tempfile.mkstemp(
        prefix=PENDING_RECORD + ".", suffix=TEMP_SUFFIX, dir=directory
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _step("wrote the temporary pending record")
        os.replace(temporary, directory / PENDING_RECORD)
    except BaseException:
        _remove_quietly(Path(temporary))
        raise
    _fsync_directory(directory)
    _step("put the pending record in place")


def _roll_forward(directory: Path, entries: list[dict[str, str]]) -> None:
    """Move every recorded temporary file over its name (those already moved are skipped)."""
    for entry in entries:
        temporary = directory / entry["temporary"]
        if temporary.is_file():
            os.replace(temporary, directory / entry["name"])
            _step(f"moved {entry['name']} into place")
    _fsync_directory(directory)
    (directory / PENDING_RECORD).unlink(missing_ok=True)
    _fsync_directory(directory)
    _step("removed the pending record")


def _read_record(directory: Path) -> list[dict[str, str]] | None:
    """The files of the pending record of ``directory`` (None when there is none), checked."""
    path = directory / PENDING_RECORD
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise SerializationError(
            f"Cannot read {path}, the record of an interrupted save ({error}); fix its "
            "permissions, or save the model again."
        ) from error
    problem = f"{path}, the record of an interrupted save, is damaged"
    record = loads_strict_json(data, str(path))
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(record, dict) or record.get("format") != _PENDING_FORMAT or not isinstance(
        files, list
    ):
        raise SerializationError(f"{problem}: remove it and save the model again.")
    for entry in files:
        if not (
            isinstance(entry, dict)
            and all(isinstance(entry.get(key), str) for key in ("name", "temporary", "sha256"))
            and os.path.basename(entry["name"]) == entry["name"]
            and entry["temporary"].startswith(f".{entry['name']}.")
            and entry["temporary"].endswith(TEMP_SUFFIX)
            and os.path.basename(entry["temporary"]) == entry["temporary"]
        ):
            raise SerializationError(f"{problem} (entry {entry!r}): remove it and save again.")
    return files


def _recover(directory: Path) -> None:
    """Finish the save a killed process left recorded, then remove stray temporary files."""
    entries = _read_record(directory)
    if entries is not None:
        # A recorded temporary file was complete before the record was written; one whose
        # content differs was tampered with and is left out.
        checked = [
            entry
            for entry in entries
            if not (directory / entry["temporary"]).is_file()
            or sha256_of_file(directory / entry["temporary"]) == entry["sha256"]
        ]
        logger.info("Finishing an interrupted save in %s.", directory)
        _roll_forward(directory, checked)
    for path in directory.iterdir():
        name = path.name
        legacy = _LEGACY_TEMP.match(name)
        if (name.startswith(".") and name.endswith(TEMP_SUFFIX)) or (
            legacy is not None and legacy.group("name").endswith(_XFER_FILE_ENDINGS)
        ):
            if path.is_file():
                _remove_quietly(path)
                _step(f"removed the stray temporary file {name}")


@contextmanager
def saving(directory: str | os.PathLike) -> Iterator[SaveTransaction]:
    """Group every :func:`atomic_write` into ``directory`` inside the block into one save.

    Either every file written in the block goes into place, or (an exception, a crash, a kill
    at any moment) none does, and what was saved there before stays whole. How: each file is
    written to a temporary file and flushed to disk; at the end a *pending record* naming them
    and their checksums is written atomically (the commit point), the files are renamed over
    their names in the order written (manifests last), and the record is removed. A reader
    (:func:`reading`) resolves names through a record it finds, so it sees the complete old set
    or the complete new set, never a mix; the next save in the directory finishes a recorded
    save a killed process left, and removes stray temporary files. Saves into one directory
    hold an exclusive ``flock`` on it (readers a shared one), so concurrent saves leave one
    whole model. Nested blocks for the same directory join the outer one.

    Parameters
    ----------
    directory : str or path-like
        Where the files of the save go (created).

    Yields
    ------
    SaveTransaction
        The save; :func:`atomic_write` calls inside the block join it.

    Raises
    ------
    ModelSaveError
        The directory cannot be created or written (a file in the way, permissions, a full
        disk): nothing was changed.
    """
    directory = Path(directory)
    key = _directory_key(directory)
    active = _active_saves()
    if key in active:
        yield active[key]
        return
    _make_directory(directory)
    transaction = SaveTransaction(directory)
    with _directory_lock(directory, exclusive=True):
        token = _ACTIVE_SAVES.set({**active, key: transaction})
        try:
            try:
                _recover(directory)
                yield transaction
                transaction.commit()
            except BaseException:
                transaction.discard()
                raise
        except XferError:
            raise
        except OSError as error:
            raise _save_error(error, directory) from error
        finally:
            _ACTIVE_SAVES.reset(token)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)``; the file goes into place as ``path`` with the save.

    Inside a :func:`saving` block for ``path``'s directory the file joins that save (it goes
    into place with the others when the block ends); otherwise it is a save of its own. A crash
    or an exception never leaves a half-written ``path``: it keeps its old content or gets the
    new one.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    write : callable
        ``write(temporary_path)`` writes the content to the temporary file it is given.
    """
    path = Path(path)
    with saving(path.parent) as transaction:
        transaction.stage(path.name, write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`).

    Parameters
    ----------
    path : str or path-like
        The file to write.
    data : bytes
        Its content.
    """

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
    """Write ``obj`` as strict JSON (no ``NaN``/``Infinity``), atomically.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    obj : object
        JSON-safe data (dicts, lists, strings, finite numbers, booleans, None).

    Raises
    ------
    SerializationError
        ``obj`` cannot be written as strict JSON.
    """
    atomic_write_bytes(path, to_strict_json(obj).encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Reading saved files
# --------------------------------------------------------------------------------------------


class SavedFiles:
    """A consistent view of the saved files of one directory (see :func:`reading`).

    Names resolve through the pending record of an interrupted save, when there is one: a
    recorded file not yet moved into place is read from its temporary file.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        entries = _read_record(directory) if directory.is_dir() else None
        self._pending = {entry["name"]: entry["temporary"] for entry in entries or []}

    def path(self, name: str) -> Path:
        """The file that holds the content of ``name``."""
        temporary = self._pending.get(name)
        if temporary is not None and (self.directory / temporary).is_file():
            return self.directory / temporary
        return self.directory / name


@contextmanager
def reading(directory: str | os.PathLike) -> Iterator[SavedFiles]:
    """A consistent view of ``directory`` for loading: no save there runs meanwhile (a shared
    lock), and the files of a save a killed process left recorded are read as that save wrote
    them. Nested blocks for the same directory (or inside a save there) reuse the view.

    Parameters
    ----------
    directory : str or path-like
        The folder of the saved files.

    Yields
    ------
    SavedFiles
        ``view.path(name)`` is the file that holds ``name``'s content.
    """
    directory = Path(directory)
    key = _directory_key(directory)
    reads = _active_reads()
    if key in reads:
        yield reads[key]
        return
    locked = key not in _active_saves() and directory.is_dir()
    lock = _directory_lock(directory, exclusive=False) if locked else nullcontext()
    with lock:
        view = SavedFiles(directory)
        token = _ACTIVE_READS.set({**reads, key: view})
        try:
            yield view
        finally:
            _ACTIVE_READS.reset(token)


def resolve(path: str | os.PathLike) -> Path:
    """The file holding ``path``'s saved content (through an interrupted save's record)."""
    path = Path(path)
    view = _active_reads().get(_directory_key(path.parent))
    if view is None:
        view = SavedFiles(path.parent)
    return view.path(path.name)


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


def read_npz(source: Path | bytes, what: str | None = None) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file (a path or its bytes) with ``allow_pickle=False``.

    An archive whose entries would inflate far beyond its own size (xfer stores arrays
    uncompressed) is refused before anything is inflated.
    """
    what = what or (f"The array file {source}" if isinstance(source, Path) else "The array file")
    data = source if isinstance(source, bytes) else resolve(source).read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            inflated = sum(entry.file_size for entry in archive.infolist())
        if inflated > 4 * len(data) + (1 << 20):
            raise ValueError(
                f"its entries inflate to {inflated} bytes from {len(data)}, far beyond the "
                "uncompressed arrays xfer writes"
            )
        handle = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(handle, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with handle as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, RuntimeError) as error:
        raise SerializationError(
            f"{what} is corrupt or truncated ({type(error).__name__}: {error}). "
            "Save the repurposer again."
        ) from error


def sha256_of_file(path: Path) -> str:
    """The SHA-256 of the bytes of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of the saved file ``path``.

    During a save into its directory (:func:`saving`), a file written in that save gives the
    checksum of its new content, which is not in place yet; otherwise the file holding
    ``path``'s content is read (through an interrupted save's record, see :func:`resolve`).
    """
    path = Path(path)
    transaction = _active_saves().get(_directory_key(path.parent))
    if transaction is not None:
        staged = transaction.sha256(path.name)
        if staged is not None:
            return staged
    return sha256_of_file(resolve(path))


def verify_file(path: str | os.PathLike, expected_sha256: Any, what: str, remedy: str) -> Path:
    """Check that the saved file ``path`` exists and has the checksum ``expected_sha256``.

    Returns the file holding its content (see :func:`resolve`). ``what`` names the file in
    messages ("The array file"), ``remedy`` says what to do ("Save the repurposer again.").

    Raises
    ------
    ModelFileNotFoundError
        The file is missing.
    SerializationError
        The file differs from what was saved with it (corrupt, truncated, from another save).
    """
    path = Path(path)
    resolved = resolve(path)
    if not resolved.is_file():
        raise ModelFileNotFoundError(f"{what} {path} is missing. {remedy}")
    if not isinstance(expected_sha256, str) or sha256_of_file(resolved) != expected_sha256:
        raise SerializationError(
            f"{what} {path} does not match its manifest (checksum differs): it is truncated, "
            f"corrupt, or from another save. {remedy}"
        )
    return resolved


# --------------------------------------------------------------------------------------------
# Strict JSON
# --------------------------------------------------------------------------------------------

#: Deepest nesting of lists and objects accepted in a file xfer reads (manifests are shallow).
MAX_JSON_DEPTH = 64
#: Largest JSON file xfer reads (a manifest is kilobytes; this stops a hostile file early).
MAX_JSON_BYTES = 256 * 1024 * 1024


def _strict_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def _json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether lists/objects nest deeper than ``limit`` (brackets inside strings ignored)."""
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return True
        elif token in "]}":
            depth -= 1
    return False


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def loads_strict_json(data: bytes | str, source: str) -> Any:
    """Parse strict JSON (no ``NaN``/``Infinity``, no repeated keys, nesting up to
    :data:`MAX_JSON_DEPTH`); ``source`` names the file in messages.

    Raises
    ------
    SerializationError
        The text is not such JSON.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        if _json_depth_exceeds(text, MAX_JSON_DEPTH):
            raise ValueError(f"lists or objects nest deeper than {MAX_JSON_DEPTH} levels")
        return json.loads(text, parse_constant=_strict_constant, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise SerializationError(
            f"{source} is not strict JSON ({error}). The file is corrupt, truncated or "
            "was not written by xfer; save the model again."
        ) from error


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    """Read the strict-JSON file ``path`` (through :func:`resolve`), ``what`` naming it.

    Raises
    ------
    ModelFileNotFoundError
        The file is missing.
    SerializationError
        It is unreadable, too large, or not strict JSON.
    """
    path = Path(path)
    resolved = resolve(path)
    if not resolved.is_file():
        raise ModelFileNotFoundError(f"{what} {path} is missing.")
    try:
        size = resolved.stat().st_size
        if size > MAX_JSON_BYTES:
            raise SerializationError(
                f"{what} {path} is {size} bytes, larger than any file xfer writes "
                f"({MAX_JSON_BYTES}); it is not an xfer file."
            )
        data = resolved.read_bytes()
    except OSError as error:
        raise SerializationError(f"Cannot read {what} {path}: {error}.") from error
    return loads_strict_json(data, f"{what} {path}")


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


def decode_classes(encoded: Any, manifest_path: Path, check: bool = False) -> np.ndarray:
    """The label classes written by :func:`encode_classes`.

    With ``check``, they must also be what ``fit`` makes: at least two, distinct and sorted.
    """
    classes = _decode_classes(encoded, manifest_path)
    if check:
        if classes.ndim != 1 or len(classes) < 2:
            raise SerializationError(
                f"{manifest_path}: a fitted classifier has at least 2 label classes, the file "
                f"lists {len(classes)}."
            )
        if not np.array_equal(np.unique(classes), classes):
            raise SerializationError(
                f"{manifest_path}: the label classes are not distinct and sorted as fit leaves "
                "them: the file was edited or is corrupt."
            )
    return classes


def _decode_classes(encoded: Any, manifest_path: Path) -> np.ndarray:
    if not isinstance(encoded, dict) or "dtype" not in encoded or "values" not in encoded:
        raise SerializationError(f"{manifest_path}: 'classes' must be {{'dtype', 'values'}}.")
    dtype, values = encoded["dtype"], encoded["values"]
    if not isinstance(values, list):
        raise SerializationError(f"{manifest_path}: 'classes.values' must be a list.")
    try:
        if dtype in ("str", "object-str"):
            if not all(isinstance(v, str) for v in values):
                raise TypeError("string classes must be JSON strings")
            return np.asarray(values, dtype=object if dtype == "object-str" else None)
        if dtype == "bool":
            if not all(isinstance(v, bool) for v in values):
                raise TypeError("boolean classes must be true or false")
            return np.asarray(values, dtype=bool)
        if not isinstance(dtype, str):
            raise TypeError(dtype)
        numpy_dtype = np.dtype(dtype)
        if numpy_dtype.kind not in "iuf":
            raise TypeError(dtype)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise TypeError("numeric classes must be JSON numbers")
        if numpy_dtype.kind in "iu" and not all(isinstance(v, int) for v in values):
            raise TypeError("integer classes must be JSON integers")
        decoded = np.asarray(values, dtype=numpy_dtype)
        if numpy_dtype.kind in "iu" and decoded.tolist() != values:
            raise ValueError(f"a class does not fit dtype {dtype}")
        return decoded
    except (TypeError, ValueError, OverflowError) as error:
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
# Manifests and loading
# --------------------------------------------------------------------------------------------

#: Manifest keys every format version has, with the JSON types they must have.
_MANIFEST_KEYS: dict[str, tuple[type, ...]] = {
    "class_key": (str,),
    "params": (dict,),
    "arrays_file": (str,),
    "arrays_sha256": (str,),
}
#: Constructor arguments that are never saved in ``params`` (they come from elsewhere).
RESERVED_PARAMS = ("source_model",)


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """The SHA-256 of a manifest's canonical strict JSON, its own ``manifest_sha256`` left out."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(to_strict_json(body).encode("utf-8")).hexdigest()


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write a repurposer manifest (atomically, in the current save) with its own checksum."""
    manifest = {**manifest, "manifest_sha256": manifest_digest(manifest)}
    atomic_write_json(path, manifest)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a manifest: strict JSON, an xfer manifest, a supported format version,
    its own checksum (format 2), and the type of every key a loader reads.

    Parameters
    ----------
    path : str or path-like
        The ``.json`` manifest.

    Returns
    -------
    dict
        The manifest.

    Raises
    ------
    ModelFileNotFoundError
        The file does not exist.
    SerializationError
        The file is not strict JSON, not an xfer manifest, of an unknown format version,
        altered since it was written, or holds keys of the wrong type.
    """
    path = Path(path)
    if not resolve(path).is_file():
        if resolve(path).is_dir():
            raise SerializationError(
                f"{path} is a folder, not a saved repurposer's manifest: pass the name the model "
                "was saved under (xfer.load(model_name, model_directory=...))."
            )
        raise ModelFileNotFoundError(
            f"No saved repurposer at {path}: the manifest file is missing. Check model_name and "
            "model_directory (xfer.load(model_name, model_directory=...))."
        )
    manifest = read_json_file(path, "The manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise SerializationError(
            f"{path} is not an xfer repurposer manifest (its 'format' is not {FORMAT_NAME!r}); "
            "it was written by something else."
        )
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in SUPPORTED_FORMAT_VERSIONS:
        raise SerializationError(
            f"{path} has format version {version!r}, but this xfer reads versions "
            f"{list(SUPPORTED_FORMAT_VERSIONS)}. Upgrade xfer to load it (it was written by "
            f"xfer {manifest.get('xfer_version', 'unknown')})."
        )
    if version >= 2:
        recorded = manifest.get("manifest_sha256")
        if not isinstance(recorded, str) or recorded != manifest_digest(manifest):
            raise SerializationError(
                f"The manifest {path} was altered after it was written (its checksum "
                "manifest_sha256 differs): it is corrupt or was edited. Save the repurposer again."
            )
    for required, types in _MANIFEST_KEYS.items():
        if required not in manifest:
            raise SerializationError(f"{path} lacks the required key {required!r}.")
        if not isinstance(manifest[required], types):
            raise SerializationError(
                f"{path}: {required!r} must be a JSON {types[0].__name__.replace('dict', 'object')}"
                f", got {manifest[required]!r:.80}."
            )
    reserved = sorted(set(manifest["params"]) & set(RESERVED_PARAMS))
    if reserved:
        raise SerializationError(
            f"{path}: 'params' holds {reserved}, which is never saved there (the source model "
            "is a file of its own, or passed as xfer.load(..., source_model=...)). The manifest "
            "was edited or written by something else."
        )
    fitted = manifest.get("fitted", False)
    if not isinstance(fitted, bool):
        raise SerializationError(f"{path}: 'fitted' must be true or false, got {fitted!r:.80}.")
    if fitted and not isinstance(manifest.get("state", {}), dict):
        raise SerializationError(f"{path}: 'state' must be a JSON object.")
    source = manifest.get("source_model")
    if source is not None and not isinstance(source, dict):
        raise SerializationError(f"{path}: 'source_model' must be an object or null.")
    return manifest


def _written_by_xfer_1_1_0(path: Path) -> bool:
    """Whether ``path`` is a repurposer file of Amazon's Xfer 1.1.0 (read by :mod:`xfer.xfer1`)."""
    try:
        if not path.is_file():  # a regular file (a device such as /dev/zero is never read)
            return False
        if path.stat().st_size > MAX_JSON_BYTES:
            return False  # read_manifest refuses it without reading it
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False  # read_manifest reports what is wrong with it
    return isinstance(content, dict) and "format" not in content and "repurposer_class" in content


def model_prefix(model_name: str | os.PathLike, model_directory: str | os.PathLike = "") -> Path:
    """``model_directory/model_name`` as a path prefix (Xfer's ``P``), with a clear type error."""
    if not isinstance(model_name, (str, os.PathLike)) or not str(model_name):
        raise InvalidTypeError(f"model_name must be a non-empty string, got {model_name!r}.")
    if not isinstance(model_directory, (str, os.PathLike)):
        raise InvalidTypeError(f"model_directory must be a string, got {model_directory!r}.")
    if "\x00" in str(model_name) or "\x00" in str(model_directory):
        raise InvalidArgumentError("model_name and model_directory must not contain NUL bytes.")
    return Path(model_directory) / str(model_name)


def save_prefix(path: str | os.PathLike) -> Path:
    """The path prefix a model is saved under, refusing one that names a folder.

    Raises
    ------
    InvalidTypeError
        ``path`` is not a string or path.
    ModelSaveError
        ``path`` is an existing folder (or ends with a separator): the files of a model are
        ``PREFIX.json``, ``PREFIX.npz``..., so the prefix must name a file to be.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise InvalidTypeError(f"The save path must be a non-empty string or path, got {path!r}.")
    text = os.fspath(path)
    if isinstance(text, bytes):
        raise InvalidTypeError(f"The save path must be a string or path, got bytes {path!r}.")
    if "\x00" in text:
        raise InvalidArgumentError("The save path must not contain NUL bytes.")
    prefix = Path(text)
    if text.endswith(("/", os.sep)) or prefix.name in ("", ".", "..") or prefix.is_dir():
        raise _save_error(
            OSError(errno.EISDIR, "the path names a folder", text), prefix
        )
    return prefix


def load(
    model_name: str | os.PathLike,
    model_directory: str | os.PathLike = "",
    source_model: Any = None,
) -> Any:
    """Load a repurposer saved with ``save_repurposer`` or ``save`` (Xfer's ``xfer.load``).

    The whole saved model is checked before it is returned: the manifest (strict JSON, its own
    checksum, the type of every key), the checksum of every file saved with it, and the saved
    state against itself (label classes, array shapes, a trial prediction of the head).

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
        The loaded repurposer; it predicts exactly what the saved one did. Files saved by Amazon's
        Xfer 1.1.0 are read too (see :mod:`xfer.xfer1`), except a BNN, whose pickled posterior
        needs :func:`xfer.xfer1.convert_xfer1` with ``allow_pickle=True``.

    Raises
    ------
    ModelFileNotFoundError
        A file of the saved model is missing.
    SerializationError
        A file is corrupt, truncated, from another save, of an unknown format version, names an
        unregistered class, or holds a state that does not fit together.

    Examples
    --------
    >>> rep.save_repurposer("digits_lr", "models")          # doctest: +SKIP
    >>> rep2 = xfer.load("digits_lr", "models")              # doctest: +SKIP
    """
    prefix = model_prefix(model_name, model_directory)
    manifest_path = prefix.with_name(prefix.name + ".json")
    if _written_by_xfer_1_1_0(manifest_path):
        from xfer.xfer1 import load_xfer1

        return load_xfer1(model_name, model_directory, source_model)
    with reading(prefix.parent):
        manifest = read_manifest(manifest_path)
        cls = _lookup(manifest["class_key"], manifest_path)
        # The arrays are always P.npz: a manifest copied under another name cannot pick up the
        # arrays of the model it came from (the checksum tells them apart).
        arrays_path = prefix.with_name(prefix.name + ".npz")
        verify_file(
            arrays_path,
            manifest["arrays_sha256"],
            "The array file",
            f"It belongs with {manifest_path}; save the repurposer again.",
        )
        arrays = read_npz(resolve(arrays_path).read_bytes(), f"The array file {arrays_path}")
        from_manifest: Callable[..., Any] | None = getattr(cls, "_from_manifest", None)
        if from_manifest is None:
            raise SerializationError(f"The registered class {cls.__qualname__} cannot be loaded.")
        return from_manifest(manifest, arrays, prefix=prefix, source_model=source_model)


__all__ = [
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "register_repurposer",
    "registered_repurposers",
    "saving",
    "reading",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "read_manifest",
    "load",
]
