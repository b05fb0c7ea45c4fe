"""Running xfer on several processes and machines.

:mod:`xfer.distributed.launch`
    Starts an MXNet ``dist_sync`` job: the scheduler, the parameter servers and the workers, on
    this machine or over ssh (``python -m xfer.distributed.launch -n 2 python train.py``).
:mod:`xfer.distributed.world`
    Which process this is in a distributed job (``torchrun``/``torch.distributed`` or an MXNet
    kvstore job), the part of the data that is its own, and the few collective operations the
    library needs (sum, gather, barrier) for both backends.

See ``docs/distributed.md`` ("When one machine is not enough").
"""

from __future__ import annotations

# xfer.distributed.launch is not imported here: ``python -m xfer.distributed.launch`` runs it as
# the main module, and an import by the package first would make it run twice.
from xfer.distributed.world import World, current_world, shard_indices

__all__ = ["World", "current_world", "shard_indices"]
