"""The fine-tuning engine behind :class:`~xfer.repurposers.NeuralNetworkRepurposer` and its subclasses.

Backend-neutral: :mod:`~xfer.fine_tuning.history` (the per-epoch :class:`History`),
:mod:`~xfer.fine_tuning.run` (phases, settings, where a run stands, seeds and schedules),
:mod:`~xfer.fine_tuning.loop` (the bookkeeping of each epoch) and
:mod:`~xfer.fine_tuning.checkpoint` (checkpoint files). One module per backend does the
backend's own work: :mod:`~xfer.fine_tuning.mxnet` and :mod:`~xfer.fine_tuning.torch`.
"""

from xfer.fine_tuning.history import History

__all__ = ["History"]
