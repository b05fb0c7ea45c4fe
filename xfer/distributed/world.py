"""Which process this is in a distributed job, its part of the data, and collective operations.

A :class:`World` is the set of processes that train (or extract features) together: the ranks of
``torch.distributed`` (``torchrun``), the workers of an MXNet kvstore job started by
:mod:`xfer.distributed.launch` (``DMLC_ROLE=worker``), or this one process. It offers the few
collective operations the library needs, the same for both backends: a sum of numbers over the
processes, a gather of small byte strings, and a barrier.

MXNet allows one distributed kvstore per process (creating a second one hangs), so
:func:`mxnet_kvstore` creates it once and every user in the process shares it: the fine-tuning
loop pushes gradients through it, and :class:`World` sums through keys of its own.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from xfer.exceptions import InvalidArgumentError

_KVSTORE: dict[str, Any] = {}


def mxnet_kvstore(kind: str = "dist_sync") -> Any:
    """This process's distributed MXNet kvstore (created on first use, then shared).

    Raises
    ------
    InvalidArgumentError
        A kvstore of another kind already exists in this process, or the process was not started
        as an MXNet worker (no ``DMLC_ROLE=worker``).
    """
    if "kvstore" in _KVSTORE:
        existing = _KVSTORE["kvstore"]
        if existing.type != kind:
            raise InvalidArgumentError(
                f"This process already uses a {existing.type!r} kvstore; MXNet allows one "
                f"distributed kvstore per process, so {kind!r} cannot be created as well."
            )
        return existing
    if os.environ.get("DMLC_ROLE") != "worker":
        raise InvalidArgumentError(
            f"kvstore={kind!r} needs a process started as an MXNet worker (DMLC_ROLE=worker): "
            "start the job with python -m xfer.distributed.launch -n <workers> python <script>."
        )
    from xfer._mxnet import mx

    _KVSTORE["kvstore"] = mx.kv.create(kind)
    return _KVSTORE["kvstore"]


def is_mxnet_worker() -> bool:
    """Whether this process is a worker of an MXNet distributed job."""
    return os.environ.get("DMLC_ROLE") == "worker"


def _torch_distributed() -> Any:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = torch.distributed
    return dist if dist.is_available() and dist.is_initialized() else None


@dataclass(frozen=True)
class World:
    """The processes of a job and this one's place among them.

    Attributes
    ----------
    rank : int
        This process's index, ``0 <= rank < size``.
    size : int
        Number of processes.
    backend : {"local", "torch", "mxnet"}
        What connects them: nothing (one process), ``torch.distributed``, or an MXNet
        distributed kvstore.
    """

    rank: int = 0
    size: int = 1
    backend: str = "local"

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (which writes checkpoints and shows progress)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process has reached this point."""
        if self.backend == "torch":
            _torch_distributed().barrier()
        elif self.backend == "mxnet":
            mxnet_kvstore()._barrier()

    def sum(self, values: Any) -> np.ndarray:
        """The element-wise sum of ``values`` (a float vector of the same length everywhere).

        Under torch it is computed in float64; through an MXNet kvstore in float32 (its servers
        add float32), which is exact for whole numbers up to 2**24.

        Parameters
        ----------
        values : array-like of float
            This process's vector.

        Returns
        -------
        ndarray of float64
            The sum over all processes.
        """
        values = np.asarray(values, dtype=np.float64).ravel()
        if self.backend == "torch":
            import torch

            dist = _torch_distributed()
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            tensor = torch.as_tensor(values, device=device).clone()
            dist.all_reduce(tensor)
            return tensor.cpu().numpy()
        if self.backend == "mxnet":
            return _mxnet_sum(values)
        return values.copy()

    def counts(self, count: int) -> np.ndarray:
        """Every process's ``count``, in rank order (an int array of ``size`` entries).

        Parameters
        ----------
        count : int
            This process's number (below 2**24 through MXNet).

        Returns
        -------
        ndarray
        """
        values = np.zeros(self.size)
        values[self.rank] = count
        return self.sum(values).round().astype(np.int64)

    def gather_bytes(self, data: bytes) -> list[bytes]:
        """Every process's ``data``, in rank order.

        Parameters
        ----------
        data : bytes
            This process's bytes.

        Returns
        -------
        list of bytes
            One entry per rank.
        """
        if self.size == 1:
            return [bytes(data)]
        if self.backend == "torch":
            gathered: list[Any] = [None] * self.size
            _torch_distributed().all_gather_object(gathered, bytes(data))
            return [bytes(item) for item in gathered]
        lengths = self.counts(len(data))
        table = np.zeros((self.size, int(lengths.max())))
        table[self.rank, : len(data)] = np.frombuffer(data, dtype=np.uint8)
        table = self.sum(table.ravel()).reshape(self.size, -1)  # whole numbers: exact
        return [table[r, : lengths[r]].astype(np.uint8).tobytes() for r in range(self.size)]


_SUM_KEYS: set[str] = set()


def _mxnet_sum(values: np.ndarray) -> np.ndarray:
    """Sum over the workers through the shared kvstore (its servers add what workers push, in
    float32)."""
    from xfer._mxnet import mx

    kvstore = mxnet_kvstore()
    key = f"xfer.world.sum.{len(values)}"
    if key not in _SUM_KEYS:  # a collective call: every worker initialises the same keys in order
        kvstore.init(key, mx.nd.zeros(len(values), dtype=np.float32))
        _SUM_KEYS.add(key)
    kvstore.push(key, mx.nd.array(values, dtype=np.float32))
    out = mx.nd.zeros(len(values), dtype=np.float32)
    kvstore.pull(key, out=out)
    return out.asnumpy().astype(np.float64)


def torch_world() -> World:
    """The ranks of ``torch.distributed`` when it is initialised, else a world of one.

    Returns
    -------
    World
    """
    dist = _torch_distributed()
    if dist is None:
        return World()
    return World(dist.get_rank(), dist.get_world_size(), "torch")


def mxnet_world(kind: str = "dist_sync") -> World:
    """The workers of the MXNet job this process was started in, through its ``kind`` kvstore.

    Parameters
    ----------
    kind : str, default="dist_sync"
        The distributed kvstore type.

    Returns
    -------
    World

    Raises
    ------
    InvalidArgumentError
        The process was not started as an MXNet worker (see :func:`mxnet_kvstore`).
    """
    kvstore = mxnet_kvstore(kind)
    return World(int(kvstore.rank), int(kvstore.num_workers), "mxnet")


def current_world() -> World:
    """The job this process belongs to: ``torch.distributed`` if initialised, else the MXNet
    kvstore job it was started in (``DMLC_ROLE=worker``), else a world of one.

    Returns
    -------
    World
    """
    if _torch_distributed() is not None:
        return torch_world()
    if is_mxnet_worker():
        existing = _KVSTORE.get("kvstore")
        return mxnet_world(existing.type if existing is not None else "dist_sync")
    return World()


def shard_indices(num_examples: int, rank: int, size: int) -> np.ndarray:
    """The examples of ``rank`` out of ``size``: ``rank, rank + size, rank + 2 * size...``.

    Every example belongs to exactly one rank, and each rank's part is spread over the whole data
    (data sorted by class still gives every rank every class).

    Parameters
    ----------
    num_examples : int
        Size of the data.
    rank : int
        This process, ``0..size-1``.
    size : int
        Number of processes.

    Returns
    -------
    ndarray of int64
        The positions of this rank's examples.

    Raises
    ------
    InvalidArgumentError
        ``rank`` outside ``0..size-1``, or fewer examples than processes.
    """
    if not 0 <= rank < size:
        raise InvalidArgumentError(f"rank must be in 0..{size - 1}, got {rank}.")
    if num_examples < size:
        raise InvalidArgumentError(
            f"{num_examples} examples cannot be shared by {size} processes: every process needs "
            "at least one."
        )
    return np.arange(rank, num_examples, size)


__all__ = [
    "World",
    "current_world",
    "torch_world",
    "mxnet_world",
    "shard_indices",
    "mxnet_kvstore",
    "is_mxnet_worker",
]
