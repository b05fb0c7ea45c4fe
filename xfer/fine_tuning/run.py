"""The vocabulary of a fine-tuning run, the same for every backend.

:class:`Phase` (which parameters train, at which rate), :class:`Settings` (how to train),
:class:`Progress` (where a run stands: enough to continue it exactly), the stateless randomness
(seeds derived from ``(seed, phase, epoch)``, the shuffling order of each epoch) and the
per-epoch learning-rate schedules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xfer.distributed.world import World
from xfer.exceptions import InvalidArgumentError
from xfer.fine_tuning.history import History

#: Names accepted for ``lr_schedule`` (the MXNet backend also takes an ``mx.lr_scheduler.LRScheduler``).
LR_SCHEDULES = ("constant", "step", "cosine")


@dataclass
class Phase:
    """One stage of training: which parameters are trainable and at which rate.

    Attributes
    ----------
    name : str
        ``"head"`` or ``"full"`` (shown in the history).
    num_epochs : int
    fixed_parameters : list of str
        Parameters kept bit-identical (BatchNorm layers whose parameters are all fixed use their
        stored statistics and never update them).
    random_parameters : list of str
        Parameters re-initialised before the first phase (ignored in later phases).
    lr_factor : float
        Multiplies the base learning rate in this phase.
    lr_mults : dict of str to float
        Per-parameter learning-rate multipliers (written as ``__lr_mult__`` on the graph, which
        MXNet's optimisers read, on every kvstore including distributed ones).
    """

    name: str
    num_epochs: int
    fixed_parameters: list[str]
    random_parameters: list[str] = field(default_factory=list)
    lr_factor: float = 1.0
    lr_mults: dict[str, float] = field(default_factory=dict)


#: MXNet's kvstore types (MXNet itself takes any other name as 'local', silently).
KVSTORE_TYPES = (
    "local",
    "device",
    "nccl",
    "dist_sync",
    "dist_async",
    "dist_device_sync",
    "dist_sync_device",
    "dist_async_device",
    "horovod",
    "byteps",
    "local_allreduce_cpu",
    "local_allreduce_device",
    "local_update_cpu",
)


@dataclass
class Settings:
    """How to train (validated by the repurposer).

    ``contexts`` are the backend's device objects (from ``TrainingBackend.contexts``);
    ``kvstore`` is read by the MXNet backend only. ``world`` is the distributed job the fit
    trains in (every process passes its own part of the data; ``batch_size`` is per process).
    """

    batch_size: int
    optimizer: str
    optimizer_params: dict[str, Any]
    contexts: list
    seed: int
    lr_schedule: Any = None
    early_stopping_patience: int | None = None
    kvstore: str = "device"
    checkpoint_dir: Path | None = None
    resume: bool = False
    fingerprint: str = ""
    verbose: bool = False
    world: World = field(default_factory=World)


# --------------------------------------------------------------------------------------------
# Randomness and learning-rate schedules (stateless)
# --------------------------------------------------------------------------------------------


def derived_seed(seed: int, *parts: int) -> int:
    return int(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *parts]).generate_state(1)[0] & 0x7FFFFFFF
    )


def epoch_order(
    seed: int,
    phase: int,
    epoch: int,
    num_examples: int,
    batch_size: int,
    *,
    rank: int | None = None,
    length: int | None = None,
) -> np.ndarray:
    """Shuffled example indices of one epoch, padded to whole batches by wrapping around.

    In a distributed fit, ``rank`` makes each process's order its own and ``length`` (a multiple
    of ``batch_size``) gives every process the same number of batches.
    """
    parts = (1, phase, epoch) if rank is None else (1, phase, epoch, rank)
    order = np.random.default_rng(derived_seed(seed, *parts)).permutation(num_examples)
    if length is None:
        length = num_examples + (-num_examples) % batch_size
    if length > num_examples:
        order = np.resize(order, length)  # repeats the order from its start
    return order


def scheduled_lr(schedule: Any, base_lr: float, epoch: int, num_epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based) of a phase of ``num_epochs``.

    ``schedule`` is a name of :data:`LR_SCHEDULES` or None; a backend's scheduler object is not
    a per-epoch schedule and gives ``base_lr`` (the backend's optimiser applies it per update).
    """
    if schedule is None or not isinstance(schedule, str) or schedule == "constant":
        return base_lr
    if schedule == "step":  # x0.1 at half and at three quarters of the phase
        drops = (
            sum(epoch >= math.ceil(num_epochs * f) for f in (0.5, 0.75)) if num_epochs > 1 else 0
        )
        return base_lr * 0.1**drops
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(num_epochs, 1)))
    raise InvalidArgumentError(f"Unknown lr_schedule {schedule!r}: use one of {LR_SCHEDULES}.")


def object_state(value: Any) -> dict[str, Any]:
    """The plain attributes of an object (numbers, strings, lists of numbers): a scheduler's
    state, for checkpoints and fingerprints."""
    return {
        k: v
        for k, v in vars(value).items()
        if isinstance(v, (bool, int, float, str))
        or (isinstance(v, list) and all(isinstance(i, (int, float)) for i in v))
    }


# --------------------------------------------------------------------------------------------
# Where a run stands
# --------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a run stands: enough to continue it exactly.

    ``best_params`` is the loop's own copy of the best parameters so far (in its backend's
    objects); ``params`` holds the parameter arrays of the checkpoint resumed from, until the loop
    has loaded them.
    """

    phase_index: int = 0
    epochs_done: int = 0  # in the current phase
    history: History = field(default_factory=History)
    best_metric: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    best_params: Any = None
    params: dict[str, np.ndarray] | None = None
    optimizer_layout: dict | None = None
    optimizer_arrays: dict[str, np.ndarray] | None = None

    def start_phase(self, phase_index: int) -> None:
        """Move on to a later phase: its epoch count and early-stopping state start afresh."""
        self.phase_index = phase_index
        self.epochs_done, self.wait = 0, 0
        self.best_metric, self.best_epoch, self.best_params = None, None, None


__all__ = [
    "LR_SCHEDULES",
    "Phase",
    "Settings",
    "object_state",
    "Progress",
    "derived_seed",
    "epoch_order",
    "scheduled_lr",
]
