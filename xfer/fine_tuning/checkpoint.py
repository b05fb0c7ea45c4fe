"""Training checkpoints of the fine-tuners, the same files for every backend.

``checkpoint.json`` (strict JSON, written last: the commit point) holds where the run stands
(phase, epochs done, history, early-stopping counters), the JSON-safe part of the optimiser's
state, a fingerprint of the data and settings and the names and SHA-256 of the array files
``params-P-E.npz``, ``optimizer-P-E.npz`` and ``best-P-E.npz`` (phase P, epochs done E), read back
with ``allow_pickle=False``. A backend supplies the arrays; nothing here is backend-specific.
"""

from __future__ import annotations

import json
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
    directory.mkdir(parents=True, exist_ok=True)
    tag = f"{progress.phase_index}-{progress.epochs_done:04d}"
    files: dict[str, str] = {}
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
    # The manifest is the commit point: until it is replaced, the previous checkpoint stands.
    serialization.atomic_write_json(directory / CHECKPOINT_MANIFEST, manifest)
    keep = set(files.values())
    for path in directory.glob("*.npz"):
        if path.name not in keep and path.name.split("-")[0] in CHECKPOINT_KINDS:
            path.unlink(missing_ok=True)


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
    if not manifest_path.is_file():
        raise ModelFileNotFoundError(
            f"No checkpoint to resume from in {directory} ({CHECKPOINT_MANIFEST} is missing). "
            "Fit once with checkpoint_dir set, or call fit without resume=True."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise SerializationError(
            f"{manifest_path} is not valid JSON ({error}): the checkpoint is corrupt."
        ) from error
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != CHECKPOINT_FORMAT
        or (backend.file_key is not None and manifest.get("backend") != backend.file_key)
    ):
        of_backend = "" if backend.file_key is None else f" of {backend.display_name}"
        raise SerializationError(f"{manifest_path} is not an xfer training checkpoint{of_backend}.")
    if manifest.get("format_version") != backend.checkpoint_version:
        raise SerializationError(
            f"{manifest_path} has checkpoint format version {manifest.get('format_version')!r}; "
            f"this xfer reads version {backend.checkpoint_version}."
        )
    if manifest.get("fingerprint") != fingerprint:
        raise InvalidArgumentError(
            f"The checkpoint in {directory} was written by a fit with other data or settings; "
            "resume with the same data and parameters, or use another checkpoint_dir."
        )
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for kind, entry in manifest["files"].items():
        path = directory / os.path.basename(entry["name"])
        if not path.is_file():
            raise ModelFileNotFoundError(f"The checkpoint file {path} is missing.")
        if serialization.sha256_of(path) != entry["sha256"]:
            raise SerializationError(f"The checkpoint file {path} is corrupt (checksum differs).")
        arrays[kind] = serialization.read_npz(path)
    return Progress(
        phase_index=int(manifest["phase_index"]),
        epochs_done=int(manifest["epochs_done"]),
        history=History.from_dict(manifest["history"]),
        best_metric=manifest["best_metric"],
        best_epoch=manifest["best_epoch"],
        wait=int(manifest["wait"]),
        params=arrays["params"],
        best_params=best_from_arrays(arrays["best"]) if "best" in arrays else None,
        optimizer_layout=manifest["optimizer"],
        optimizer_arrays=arrays.get("optimizer", {}),
    )


def checkpoint_seed(directory: Path) -> int | None:
    """The seed recorded in the checkpoint of ``directory`` (None when there is none)."""
    try:
        manifest = json.loads((directory / CHECKPOINT_MANIFEST).read_text(encoding="utf-8"))
        return int(manifest["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_MANIFEST",
    "write_checkpoint",
    "read_checkpoint",
    "checkpoint_seed",
]
