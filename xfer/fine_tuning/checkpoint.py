"""Training checkpoints of the fine-tuners, the same files for every backend.

``checkpoint.json`` (strict JSON, written last) holds where the run stands
(phase, epochs done, history, early-stopping counters), the JSON-safe part of the optimiser's
state, a fingerprint of the data and settings and the names and SHA-256 of the array files
``params-P-E.npz``, ``optimizer-P-E.npz`` and ``best-P-E.npz`` (phase P, epochs done E), read back
with ``allow_pickle=False``. The files of one checkpoint go into place together
(:func:`xfer.serialization.saving`): a fit killed at any moment leaves the previous checkpoint or
the new one. A resume checks the whole manifest (keys, types, checksums) before using it. A
backend supplies the arrays; nothing here is backend-specific.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xfer import serialization
from xfer.exceptions import InvalidArgumentError, ModelFileNotFoundError, SerializationError
from xfer.fine_tuning.history import History, finite_or_none
from xfer.fine_tuning.run import Progress, Settings

if TYPE_CHECKING:
    from xfer.fine_tuning.backend import TrainingBackend

CHECKPOINT_FORMAT = "xfer-training-checkpoint"
CHECKPOINT_MANIFEST = "checkpoint.json"

#: The array files of a checkpoint, each ``KIND-P-E.npz`` (phase P, epochs done E).
CHECKPOINT_KINDS = ("params", "optimizer", "best")


def write_checkpoint(
    directory: Path,
    progress: Progress,
    settings: Settings,
    arrays: dict[str, dict[str, np.ndarray]],
    optimizer_layout: dict,
    backend: TrainingBackend,
) -> None:
    """Write ``arrays`` (kind -> arrays, kinds from :data:`CHECKPOINT_KINDS`), then the manifest.

    ``optimizer_layout`` is the JSON-safe part of the optimiser's state; the manifest records the
    backend's ``checkpoint_version`` and its ``file_key`` (under ``"backend"``, when not None).
    """
    tag = f"{progress.phase_index}-{progress.epochs_done:04d}"
    files: dict[str, str] = {}
    # One save: the array files and the manifest go into place together, so a kill at any
    # moment leaves the previous checkpoint or this one (serialization.saving).
    with serialization.saving(directory):
        for kind, kind_arrays in arrays.items():
            name = f"{kind}-{tag}.npz"
            serialization.atomic_write_bytes(
                directory / name, serialization.arrays_to_npz_bytes(kind_arrays)
            )
            files[kind] = name
        manifest: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "format_version": backend.checkpoint_version,
        }
        if backend.file_key is not None:
            manifest["backend"] = backend.file_key
        manifest.update(
            {
                "fingerprint": settings.fingerprint,
                "seed": settings.seed,
                "phase_index": progress.phase_index,
                "epochs_done": progress.epochs_done,
                "history": progress.history.to_dict(),
                "best_metric": finite_or_none(progress.best_metric),
                "best_epoch": progress.best_epoch,
                "wait": progress.wait,
                "optimizer": optimizer_layout,
                "files": {
                    kind: {"name": name, "sha256": serialization.sha256_of(directory / name)}
                    for kind, name in files.items()
                },
            }
        )
        serialization.atomic_write_json(directory / CHECKPOINT_MANIFEST, manifest)
    keep = set(files.values())
    for path in directory.glob("*.npz"):
        if path.name not in keep and path.name.split("-")[0] in CHECKPOINT_KINDS:
            path.unlink(missing_ok=True)


#: The manifest's keys a resume reads, with the JSON types each must have.
_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "fingerprint": (str,),
    "seed": (int,),
    "phase_index": (int,),
    "epochs_done": (int,),
    "history": (dict,),
    "best_metric": (int, float, type(None)),
    "best_epoch": (int, type(None)),
    "wait": (int,),
    "optimizer": (dict,),
    "files": (dict,),
}


def _check_manifest(manifest: dict[str, Any], manifest_path: Path) -> None:
    """The keys and types a resume relies on (a KeyError or TypeError later would be raw)."""
    for key, types in _MANIFEST_TYPES.items():
        if key not in manifest:
            raise SerializationError(
                f"{manifest_path} lacks the key {key!r}: the checkpoint is damaged or was not "
                "written by xfer. Fit again without resume=True."
            )
        value = manifest[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise SerializationError(
                f"{manifest_path}: {key!r} has the wrong kind of value ({value!r:.60}); the "
                "checkpoint is damaged. Fit again without resume=True."
            )
    for key in ("phase_index", "epochs_done", "wait"):
        if manifest[key] < 0:
            raise SerializationError(f"{manifest_path}: {key!r} is negative.")
    files = manifest["files"]
    if "params" not in files or not set(files) <= set(CHECKPOINT_KINDS):
        raise SerializationError(
            f"{manifest_path} lists the array files {sorted(files)}; a checkpoint has 'params' "
            f"and may have {list(CHECKPOINT_KINDS[1:])}."
        )
    for kind, entry in files.items():
        name = entry.get("name") if isinstance(entry, dict) else None
        if (
            not isinstance(name, str)
            or os.path.basename(name) != name
            or not isinstance(entry.get("sha256"), str)
        ):
            raise SerializationError(
                f"{manifest_path}: the entry of the {kind!r} file must be "
                "{'name': plain file name, 'sha256': checksum}."
            )


def read_checkpoint(
    directory: Path,
    fingerprint: str,
    backend: TrainingBackend,
    best_from_arrays: Callable[[dict[str, np.ndarray]], Any],
) -> Progress:
    """Where the checkpoint of ``directory`` stands, after checking its format, the version and
    file key of ``backend`` (a file key of None is not checked), ``fingerprint`` and checksums.

    ``best_from_arrays`` turns the best parameters' arrays into the backend's own objects; the
    parameters themselves stay arrays (``Progress.params``).
    """
    manifest_path = directory / CHECKPOINT_MANIFEST
    with serialization.reading(directory):
        if not serialization.resolve(manifest_path).is_file():
            raise ModelFileNotFoundError(
                f"No checkpoint to resume from in {directory} ({CHECKPOINT_MANIFEST} is missing). "
                "Fit once with checkpoint_dir set, or call fit without resume=True."
            )
        manifest = serialization.read_json_file(manifest_path, "The checkpoint manifest")
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != CHECKPOINT_FORMAT
            or (backend.file_key is not None and manifest.get("backend") != backend.file_key)
        ):
            of_backend = "" if backend.file_key is None else f" of {backend.display_name}"
            raise SerializationError(
                f"{manifest_path} is not an xfer training checkpoint{of_backend}."
            )
        if manifest.get("format_version") != backend.checkpoint_version:
            raise SerializationError(
                f"{manifest_path} has checkpoint format version "
                f"{manifest.get('format_version')!r}; this xfer reads version "
                f"{backend.checkpoint_version}."
            )
        _check_manifest(manifest, manifest_path)
        if manifest["fingerprint"] != fingerprint:
            raise InvalidArgumentError(
                f"The checkpoint in {directory} was written by a fit with other data or settings; "
                "resume with the same data and parameters, or use another checkpoint_dir."
            )
        arrays: dict[str, dict[str, np.ndarray]] = {}
        for kind, entry in manifest["files"].items():
            path = serialization.verify_file(
                directory / entry["name"],
                entry["sha256"],
                "The checkpoint file",
                "The checkpoint is damaged: fit again without resume=True.",
            )
            arrays[kind] = serialization.read_npz(path.read_bytes(), f"The checkpoint file {path}")
    try:
        history = History.from_dict(manifest["history"])
        best = best_from_arrays(arrays["best"]) if "best" in arrays else None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise SerializationError(
            f"{manifest_path}: the checkpoint's history or best parameters cannot be read "
            f"({type(error).__name__}: {error}); fit again without resume=True."
        ) from error
    return Progress(
        phase_index=manifest["phase_index"],
        epochs_done=manifest["epochs_done"],
        history=history,
        best_metric=manifest["best_metric"],
        best_epoch=manifest["best_epoch"],
        wait=manifest["wait"],
        params=arrays["params"],
        best_params=best,
        optimizer_layout=manifest["optimizer"],
        optimizer_arrays=arrays.get("optimizer", {}),
    )


def checkpoint_seed(directory: Path) -> int | None:
    """The seed recorded in the checkpoint of ``directory`` (None when there is none)."""
    try:
        with serialization.reading(directory):
            manifest = serialization.read_json_file(
                directory / CHECKPOINT_MANIFEST, "The checkpoint manifest"
            )
        return int(manifest["seed"])
    except (OSError, ValueError, KeyError, TypeError):  # read_checkpoint reports what is wrong
        return None


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_MANIFEST",
    "write_checkpoint",
    "read_checkpoint",
    "checkpoint_seed",
]
