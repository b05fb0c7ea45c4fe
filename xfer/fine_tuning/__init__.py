"""The fine-tuning engine behind :class:`~xfer.repurposers.NeuralNetworkRepurposer` and its subclasses.

One training loop for every backend, and one plug-in per backend:

- :mod:`~xfer.fine_tuning.loop`: :func:`~xfer.fine_tuning.loop.train`, the loop (phases,
  schedules, early stopping, checkpoints, history, resumption);
- :mod:`~xfer.fine_tuning.run`: its vocabulary (:class:`~xfer.fine_tuning.run.Phase`,
  :class:`~xfer.fine_tuning.run.Settings`, where a run stands, seeds and schedules);
- :mod:`~xfer.fine_tuning.history`: the per-epoch :class:`History` of a fit;
- :mod:`~xfer.fine_tuning.checkpoint`: the checkpoint files;
- :mod:`~xfer.fine_tuning.backend`: the seam, :class:`TrainingBackend` and :class:`Trainer`, and
  the registry (:func:`register_training_backend`, keyed by the ModelHandler's ``backend``);
- :mod:`~xfer.fine_tuning.mxnet` and :mod:`~xfer.fine_tuning.torch`: the built-in backends,
  each imported (and registered) when a network of its framework is first fine-tuned or its
  files first loaded, so a torch user never imports MXNet. Nothing else imports a framework.
"""

from xfer._lazy import lazy_attributes
from xfer.fine_tuning.backend import (
    Trainer,
    TrainingBackend,
    register_training_backend,
    training_backend,
)
from xfer.fine_tuning.history import History

__all__ = [
    "History",
    "Trainer",
    "TrainingBackend",
    "register_training_backend",
    "training_backend",
]

__getattr__, __dir__ = lazy_attributes(
    __name__, {}, ("backend", "checkpoint", "history", "loop", "mxnet", "run", "torch")
)
