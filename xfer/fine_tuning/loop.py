"""The backend-neutral parts of the fine-tuning loop: where a run starts (fresh or from its
checkpoint), which phases are left, and the bookkeeping at the end of each epoch (history, log
line, progress bar, early stopping and the restoring of the best epoch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from xfer.exceptions import InvalidArgumentError
from xfer.fine_tuning.run import Phase, Progress, Settings


def initial_progress(
    settings: Settings, read: Callable[[Path, str], Progress], log: logging.Logger
) -> Progress:
    """A fresh run's progress, or with ``settings.resume`` the checkpoint's (``read`` reads it)."""
    if not settings.resume:
        return Progress()
    if settings.checkpoint_dir is None:
        raise InvalidArgumentError(
            "resume=True needs checkpoint_dir: the directory of the checkpoint."
        )
    progress = read(settings.checkpoint_dir, settings.fingerprint)
    log.info("Resuming from phase %d, epoch %d.", progress.phase_index, progress.epochs_done)
    return progress


def phases_to_run(phases: list[Phase], progress: Progress) -> Iterator[tuple[int, Phase, bool]]:
    """``(phase_index, phase, resuming_here)`` for each phase not finished yet.

    ``resuming_here`` is true for the phase whose checkpointed parameters (``progress.params``)
    the loop must load; a later phase starts afresh (:meth:`Progress.start_phase`).
    """
    for phase_index, phase in enumerate(phases):
        if phase_index < progress.phase_index:
            continue
        resuming_here = progress.params is not None and phase_index == progress.phase_index
        if phase_index > progress.phase_index:
            progress.start_phase(phase_index)
        yield phase_index, phase, resuming_here


def progress_bar(total_epochs: int, batches_per_epoch: int, epochs_done: int) -> Any:
    """A tqdm bar counting the batches of the whole run (log lines print above it)."""
    from xfer._progress import progress_bar as xfer_progress_bar

    return xfer_progress_bar(
        total=total_epochs * batches_per_epoch,
        desc="Training",
        unit="batch",
        initial=epochs_done * batches_per_epoch,
    )


def record_epoch(
    progress: Progress,
    phase: Phase,
    epoch: int,
    global_epoch: int,
    *,
    loss: float,
    accuracy: float,
    val_loss: float | None,
    val_accuracy: float | None,
    learning_rate: float,
    seconds: float,
    patience: int | None,
    copy_params: Callable[[], Any],
    bar: Any,
    log: logging.Logger,
) -> bool:
    """Book an epoch that has run: history, log line, progress bar, epochs done, early stopping.

    ``epoch`` is 0-based in ``phase``; ``global_epoch`` counts from 1 over all phases.
    ``copy_params()`` copies the current parameters when they are the best so far. Returns whether
    early stopping ends the phase.
    """
    progress.history.append(
        epoch=global_epoch,
        phase=phase.name,
        loss=loss,
        accuracy=accuracy,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        learning_rate=learning_rate,
        seconds=seconds,
    )
    log.info(
        "Epoch %d (%s): loss %.4f, accuracy %.4f%s",
        global_epoch,
        phase.name,
        loss,
        accuracy,
        "" if val_loss is None else f", val_loss {val_loss:.4f}, val_accuracy {val_accuracy:.4f}",
    )
    if bar is not None:
        shown = (
            ("loss", loss),
            ("acc", accuracy),
            ("val_loss", val_loss),
            ("val_acc", val_accuracy),
        )
        bar.set_postfix({k: round(v, 4) for k, v in shown if v is not None})
    progress.epochs_done = epoch + 1
    if patience is None:
        return False
    metric = val_loss if val_loss is not None and math.isfinite(val_loss) else math.inf
    if progress.best_metric is None or metric < progress.best_metric:
        progress.best_metric, progress.best_epoch, progress.wait = metric, global_epoch, 0
        progress.best_params = copy_params()
    else:
        progress.wait += 1
    if progress.wait < patience:
        return False
    # Jump to the end of the phase so that a resumed run does not train on.
    progress.epochs_done = phase.num_epochs
    return True


def restore_best(progress: Progress, patience: int | None, load: Callable[[Any], None]) -> None:
    """End of a phase under early stopping: ``load`` the best epoch's parameters, record which."""
    if patience is not None and progress.best_params is not None:
        load(progress.best_params)
        progress.history.best_epoch = progress.best_epoch


def stop_early(progress: Progress, global_epoch: int, log: logging.Logger) -> None:
    """Note in the history that early stopping ended the phase (after its checkpoint)."""
    log.info("Early stopping after epoch %d; best epoch %d.", global_epoch, progress.best_epoch)
    progress.history.stopped_early = True



__all__ = [
    "initial_progress",
    "phases_to_run",
    "progress_bar",
    "record_epoch",
    "restore_best",
    "stop_early",
]
