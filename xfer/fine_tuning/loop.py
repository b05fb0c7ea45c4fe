"""The fine-tuning loop, one for every backend: phases, schedules, early stopping, checkpoints,
history and resumption.

:func:`train` runs a target network through its :class:`~xfer.fine_tuning.run.Phase` list.
Everything that touches a framework goes through the :class:`~xfer.fine_tuning.backend.Trainer`
of the network's training backend; everything else is here: where a run starts (fresh, or from
the checkpoint of an interrupted run), the learning rate and random seed of each epoch, the
shuffling order, timing, the history, the log line and progress bar, early stopping and the
restoring of the best epoch, and when checkpoints are written.

Reproducibility is built on *stateless* randomness: the shuffling order and the backend's seed
of each epoch are derived from ``(seed, phase, epoch)``, and the schedules are functions of the
epoch. A resumed run therefore needs only the parameters, the optimiser's state and the epoch
reached to continue exactly where the interrupted run stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from xfer.distributed.world import World
from xfer.exceptions import InvalidArgumentError, SerializationError, XferError
from xfer.fine_tuning.backend import Trainer, TrainingBackend
from xfer.fine_tuning.checkpoint import read_checkpoint, write_checkpoint
from xfer.fine_tuning.history import History
from xfer.fine_tuning.run import Phase, Progress, Settings, derived_seed, epoch_order, scheduled_lr

logger = logging.getLogger("xfer.fine_tuning")


def train(
    backend: TrainingBackend,
    network: Any,
    phases: list[Phase],
    data: np.ndarray,
    labels: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
    settings: Settings,
    epoch_end: Callable[[int], None] | None = None,
) -> History:
    """Train ``network`` (a :class:`~xfer.repurposers.TargetNetwork`) through ``phases``.

    The handler's parameters are the start; at the end of each phase the handler holds the
    phase's result (the best epoch's parameters under early stopping). ``labels`` are integer
    codes ``0..K-1``. ``epoch_end(global_epoch)`` is called after each epoch's checkpoint (tests
    use it to simulate an interruption).

    Returns
    -------
    History
    """
    trainer = backend.trainer_class(network, settings, data, labels, validation)
    progress = _initial_progress(settings, backend, trainer)
    patience = settings.early_stopping_patience
    num_examples, batch_size = len(data), settings.batch_size
    world = settings.world
    # Every process of a distributed fit runs as many batches as the one with most examples.
    sizes = world.counts(num_examples)
    steps = -(-int(sizes.max()) // batch_size)
    val_sizes = world.counts(0 if validation is None else len(validation[0]))
    total_epochs = sum(p.num_epochs for p in phases)
    bar = None
    if settings.verbose and trainer.is_main_process:
        bar = _progress_bar(total_epochs, steps, len(progress.history))
    global_epoch = len(progress.history)
    try:
        with trainer:
            for phase_index, phase, resuming_here in _phases_to_run(phases, progress):
                with _checkpoint_fits(settings, resuming_here):
                    trainer.start_phase(
                        phase,
                        first=phase_index == 0,
                        params=progress.params if resuming_here else None,
                    )
                progress.params = None
                if resuming_here and progress.epochs_done >= phase.num_epochs:
                    # Interrupted at a phase boundary: finish the phase as the run would have.
                    _restore_best(progress, patience, trainer)
                    trainer.end_phase()
                    continue
                base_lr = trainer.start_optimizer()
                if resuming_here:
                    with _checkpoint_fits(settings, True):
                        trainer.restore_optimizer(
                            progress.optimizer_layout or {}, progress.optimizer_arrays or {}
                        )
                for epoch in range(progress.epochs_done, phase.num_epochs):
                    if bar is not None:
                        bar.set_description(
                            f"Epoch {global_epoch + 1}/{total_epochs} ({phase.name})"
                        )
                    lr = trainer.set_learning_rate(
                        scheduled_lr(settings.lr_schedule, base_lr, epoch, phase.num_epochs)
                    )
                    trainer.seed(derived_seed(settings.seed, 2, phase_index, epoch))
                    order = epoch_order(
                        settings.seed, phase_index, epoch, num_examples, batch_size,
                        rank=world.rank if world.size > 1 else None, length=steps * batch_size,
                    )  # fmt: skip
                    started = time.perf_counter()
                    loss, accuracy = _overall(world, trainer.run_epoch(order, bar), sizes)
                    seconds = time.perf_counter() - started
                    val_loss, val_accuracy = (
                        _overall(world, trainer.evaluate(), val_sizes)
                        if validation is not None
                        else (None, None)
                    )
                    global_epoch += 1
                    stopped = _record_epoch(
                        progress,
                        phase,
                        epoch,
                        global_epoch,
                        loss=loss,
                        accuracy=accuracy,
                        val_loss=val_loss,
                        val_accuracy=val_accuracy,
                        learning_rate=lr,
                        seconds=seconds,
                        patience=patience,
                        copy_params=trainer.copy_params,
                        bar=bar,
                    )
                    if settings.checkpoint_dir is not None:
                        if trainer.is_main_process:
                            _write_checkpoint(progress, settings, backend, trainer)
                        trainer.barrier()
                    if epoch_end is not None:
                        epoch_end(global_epoch)
                    if stopped:
                        logger.info(
                            "Early stopping after epoch %d; best epoch %d.",
                            global_epoch,
                            progress.best_epoch,
                        )
                        progress.history.stopped_early = True
                        break
                _restore_best(progress, patience, trainer)
                trainer.end_phase()
    finally:
        if bar is not None:
            bar.close()
    return progress.history


@contextlib.contextmanager
def _checkpoint_fits(settings: Settings, resuming: bool) -> Iterator[None]:
    """Report a checkpoint whose arrays do not fit the network as a damaged checkpoint (its
    checksums held, so the manifest was edited or written for another network)."""
    if not resuming:
        yield
        return
    try:
        yield
    except XferError:
        raise
    except Exception as error:
        raise SerializationError(
            f"The checkpoint in {settings.checkpoint_dir} does not fit the network being trained "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); fit "
            "again without resume=True."
        ) from error


def _overall(world: World, means: tuple[float, float], sizes: np.ndarray) -> tuple[float, float]:
    """Mean loss and accuracy over every process's examples, from each process's means."""
    if world.size == 1:
        return means
    weight = float(sizes[world.rank])
    totals = world.sum([means[0] * weight, means[1] * weight])
    return float(totals[0] / sizes.sum()), float(totals[1] / sizes.sum())


def _initial_progress(settings: Settings, backend: TrainingBackend, trainer: Trainer) -> Progress:
    """A fresh run's progress, or with ``settings.resume`` its checkpoint's."""
    if not settings.resume:
        return Progress()
    if settings.checkpoint_dir is None:
        raise InvalidArgumentError(
            "resume=True needs checkpoint_dir: the directory of the checkpoint."
        )
    progress = read_checkpoint(
        settings.checkpoint_dir, settings.fingerprint, backend, trainer.arrays_to_params
    )
    logger.info("Resuming from phase %d, epoch %d.", progress.phase_index, progress.epochs_done)
    return progress


def _phases_to_run(phases: list[Phase], progress: Progress):
    """``(phase_index, phase, resuming_here)`` for each phase not finished yet.

    ``resuming_here`` is true for the phase whose checkpointed parameters (``progress.params``)
    the trainer must load; a later phase starts afresh (:meth:`Progress.start_phase`).
    """
    for phase_index, phase in enumerate(phases):
        if phase_index < progress.phase_index:
            continue
        resuming_here = progress.params is not None and phase_index == progress.phase_index
        if phase_index > progress.phase_index:
            progress.start_phase(phase_index)
        yield phase_index, phase, resuming_here


def _progress_bar(total_epochs: int, batches_per_epoch: int, epochs_done: int) -> Any:
    """A tqdm bar counting the batches of the whole run (log lines print above it)."""
    from xfer._progress import progress_bar as xfer_progress_bar

    return xfer_progress_bar(
        total=total_epochs * batches_per_epoch,
        desc="Training",
        unit="batch",
        initial=epochs_done * batches_per_epoch,
    )


def _record_epoch(
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
    logger.info(
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


def _restore_best(progress: Progress, patience: int | None, trainer: Trainer) -> None:
    """End of a phase under early stopping: load the best epoch's parameters, record which."""
    if patience is not None and progress.best_params is not None:
        trainer.load_params(progress.best_params)
        progress.history.best_epoch = progress.best_epoch


def _write_checkpoint(
    progress: Progress, settings: Settings, backend: TrainingBackend, trainer: Trainer
) -> None:
    layout, optimizer_arrays = trainer.optimizer_state()
    arrays = {"params": trainer.checkpoint_arrays(), "optimizer": optimizer_arrays}
    if progress.best_params is not None:
        arrays["best"] = trainer.params_to_arrays(progress.best_params)
    write_checkpoint(settings.checkpoint_dir, progress, settings, arrays, layout, backend)


__all__ = ["train"]
