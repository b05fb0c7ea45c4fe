"""Features of data larger than memory: sharded feature files, written and read in pieces.

:func:`extract_features` runs :meth:`ModelHandler.get_layer_output
<xfer.model_handler.MXNetModelHandler.get_layer_output>` over a dataset one shard of rows at a
time and writes each shard as its own files, so neither the inputs nor the feature matrix need to
fit in memory. It is

- **resumable**: a shard counts only once its files are complete (each is written to a temporary
  file and renamed, its JSON marker last); run the same call again after a crash or a kill and it
  extracts only the shards that are missing;
- **parallel**: ``num_processes`` local processes (this one and ``num_processes - 1`` started
  ones, each with ``threads_per_process`` threads) take the shards one at a time, whoever is free
  first, so a process that starts later or runs slower takes fewer; the ranks of a distributed
  job (``torchrun`` or :mod:`xfer.distributed.launch`) split the shards the same way between
  them: every process of the job calls the same function and takes every ``world_size``-th
  shard, then they wait for each other.

:class:`FeatureStore` reads the result: its length, labels and layer layout, chunks of rows in
order (:meth:`FeatureStore.chunks`, bounded by ``chunk_mb``) and rows by index
(:meth:`FeatureStore.take`), through memory maps whose pages are released after each read. The
meta-model heads train on a store directly (``LrRepurposer(None, None).fit(store)``; see
``docs/distributed.md``).

Files (a directory; no pickle anywhere)::

    manifest.json              what the store holds: layers, rows, shard size, data and model
    shard-00000.npy            float32 features of rows 0..shard_size-1 (memory-mappable .npy)
    shard-00000-labels.npy     their labels (numbers or fixed-width strings), if the data has any
    shard-00000.json           rows, widths, sizes and SHA-256 of the two files: written last

Examples
--------
>>> from xfer.feature_store import extract_features, FeatureStore
>>> store = extract_features(model, images, ["global_pool"], "features/",
...                          num_processes=2)                      # doctest: +SKIP
>>> len(store), store.num_features                                 # doctest: +SKIP
(20000, 1280)
>>> for features, labels in store.chunks(): ...                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import logging
import mmap
import multiprocessing
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import numpy as np

from xfer.exceptions import (
    DataFileNotFoundError,
    InvalidArgumentError,
    InvalidTypeError,
    SerializationError,
)
from xfer.serialization import atomic_write, atomic_write_json
from xfer.threads import usable_cores

logger = logging.getLogger("xfer.feature_store")

FORMAT = "xfer.feature_store"
FORMAT_VERSION = 1
#: Rows per shard when ``shard_size`` is not given.
DEFAULT_SHARD_SIZE = 4096
#: Memory (MB) that :class:`FeatureStore` reads at a time when ``chunk_mb`` is not given.
DEFAULT_CHUNK_MB = 64
#: Environment variables that set the threads of a worker process's numerical libraries.
THREAD_VARIABLES = (
    "XFER_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MXNET_CPU_WORKER_NTHREADS",
)


# ------------------------------------------------------------------------------ the data
class _Rows:
    """Row ranges of the user's data, readable by a worker process without the whole of it."""

    def __init__(self, data: Any, labels: Any):
        from xfer.data import _is_torch_dataset, _is_torch_loader, is_data_iterator

        if is_data_iterator(data) or _is_torch_loader(data):
            raise InvalidTypeError(
                f"extract_features reads the data by rows and cannot read a "
                f"{type(data).__name__}, which only streams: pass a NumPy array (np.load(..., "
                "mmap_mode='r') for one larger than memory), a torch Dataset (a DataLoader's "
                ".dataset; xfer.files.ImageFolder for image folders) or a list of texts."
            )
        self.memmap: tuple | None = None
        if _is_torch_dataset(data):
            if labels is not None:
                raise InvalidArgumentError(
                    "Labels were passed together with a torch Dataset: its own (x, y) items are "
                    "used."
                )
            self.kind = "dataset"
            self.count = len(data)
        elif isinstance(data, (list, tuple)) and data and all(isinstance(t, str) for t in data):
            self.kind = "texts"
            data = list(data)
            self.count = len(data)
        else:
            if hasattr(data, "asnumpy") and not isinstance(data, np.ndarray):
                data = data.asnumpy()
            torch = sys.modules.get("torch")
            if torch is not None and isinstance(data, torch.Tensor):
                data = data.detach().cpu().numpy()
            if not isinstance(data, np.ndarray):
                raise InvalidTypeError(
                    f"Cannot read data of type {type(data).__name__}: pass a NumPy array (or "
                    "memory map), a torch Dataset, or a list of texts."
                )
            if data.ndim < 1:
                raise InvalidArgumentError(f"The data must have examples along the first axis, got shape {data.shape}.")
            self.kind = "array"
            self.count = len(data)
            self.memmap = _memmap_location(data)
        if self.count == 0:
            raise InvalidArgumentError("The data is empty: pass at least one example.")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim != 1 or len(labels) != self.count:
                raise InvalidArgumentError(
                    f"Got {self.count} examples but labels of shape {labels.shape}: pass one label "
                    "per example."
                )
            labels = _plain_labels(labels)
        self.data = data
        self.labels = labels

    def rows(self, start: int, stop: int) -> tuple[Any, np.ndarray | None]:
        labels = None if self.labels is None else self.labels[start:stop]
        if self.kind == "dataset":
            from xfer.data import dataset_part

            return dataset_part(self.data, np.arange(start, stop)), labels
        return self.data[start:stop], labels

    def describe(self) -> dict[str, Any]:
        """What identifies the data cheaply (kind, count, shape and a digest of a few rows)."""
        digest = hashlib.sha256()
        description: dict[str, Any] = {"kind": self.kind, "num_examples": self.count}
        if self.kind == "array":
            description["sample_shape"] = list(self.data.shape[1:])
            description["dtype"] = self.data.dtype.str
            for index in sorted({0, self.count // 2, self.count - 1}):
                digest.update(np.ascontiguousarray(self.data[index]).tobytes())
        elif self.kind == "texts":
            for text in self.data:
                digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        else:
            description["type"] = f"{type(self.data).__module__}.{type(self.data).__qualname__}"
            paths = getattr(self.data, "paths", None)
            if isinstance(paths, list):  # ImageFolder: the file list is the identity
                for path in paths:
                    digest.update(str(path).encode() + b"\0")
        if self.labels is not None:
            digest.update(str(self.labels.dtype).encode())
            digest.update(np.ascontiguousarray(self.labels).tobytes())
        description["digest"] = digest.hexdigest()
        return description

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.memmap is not None:  # a worker maps the file again instead of receiving a copy
            state["data"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.memmap is not None:
            filename, offset, dtype, shape = self.memmap
            self.data = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape))


def _memmap_location(array: np.ndarray) -> tuple | None:
    """``(file, offset, dtype, shape)`` of a C-contiguous memory-mapped array (None otherwise)."""
    base = array
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    if base is None or getattr(base, "filename", None) is None or not array.flags.c_contiguous:
        return None
    mapping = getattr(base, "_mmap", None)
    if mapping is None:
        return None
    mapped_start = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    file_start = base.offset - base.offset % mmap.ALLOCATIONGRANULARITY
    offset = file_start + (array.ctypes.data - mapped_start)
    return (str(base.filename), int(offset), array.dtype.str, list(array.shape))


def _plain_labels(labels: np.ndarray) -> np.ndarray:
    if labels.dtype.kind in "biuf" or labels.dtype.kind == "U":
        return labels
    if labels.dtype.kind in "OS":
        try:
            as_text = labels.astype(str)
        except (TypeError, ValueError) as error:
            raise InvalidTypeError(f"Labels must be numbers or strings, got {labels.dtype}.") from error
        if labels.dtype.kind == "O" and not all(isinstance(v, str) for v in labels.tolist()):
            numeric = np.asarray(labels.tolist())
            if numeric.dtype.kind in "biuf":
                return numeric
            raise InvalidTypeError("Labels must be all numbers or all strings.")
        return as_text
    raise InvalidTypeError(f"Labels must be numbers or strings, got dtype {labels.dtype}.")


# ------------------------------------------------------------------------------ the model
def _model_payload(handler: Any) -> tuple[str, Any]:
    """What a worker process needs to rebuild ``handler`` (no files written)."""
    if getattr(handler, "backend", "") == "torch":
        return "torch", handler.model
    arg = {name: value.asnumpy() for name, value in handler.arg_params.items()}
    aux = {name: value.asnumpy() for name, value in handler.aux_params.items()}
    return "mxnet", (handler.symbol.tojson(), arg, aux, handler.data_name)


def _handler_from_payload(backend: str, payload: Any) -> Any:
    from xfer.model_handler import ModelHandler

    if backend == "torch":
        return ModelHandler(payload)
    from xfer._mxnet import mx

    symbol_json, arg, aux, data_name = payload
    symbol = mx.sym.load_json(symbol_json)
    arg_params = {name: mx.nd.array(value, dtype=value.dtype) for name, value in arg.items()}
    aux_params = {name: mx.nd.array(value, dtype=value.dtype) for name, value in aux.items()}
    return ModelHandler((symbol, arg_params, aux_params), data_name=data_name)


def _model_digest(backend: str, payload: Any) -> str:
    digest = hashlib.sha256(backend.encode())
    if backend == "torch":
        digest.update(type(payload).__qualname__.encode())
        for name, tensor in payload.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    else:
        symbol_json, arg, aux, data_name = payload
        digest.update(symbol_json.encode())
        for name in sorted(arg) + sorted(aux):
            value = arg.get(name, aux.get(name))
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------ writing
@dataclass
class _Plan:
    directory: str
    layer_names: list[str]
    shard_size: int
    num_shards: int
    context: Any
    batch_size: int | None
    verbose: bool

    def shard_rows(self, shard: int, count: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, count)


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def _is_complete(directory: Path, shard: int) -> bool:
    return (directory / f"{_shard_name(shard)}.json").is_file()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _write_shard(directory: Path, shard: int, rows: tuple[int, int], features: list[np.ndarray],
                 labels: np.ndarray | None) -> None:
    name = _shard_name(shard)
    for leftover in glob.glob(str(directory / f".{name}*.tmp")):  # from a killed earlier attempt
        os.unlink(leftover)
    matrix = features[0] if len(features) == 1 else np.concatenate(features, axis=1)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    record: dict[str, Any] = {
        "rows": [int(rows[0]), int(rows[1])],
        "num_features": int(matrix.shape[1]),
        "layer_widths": [int(f.shape[1]) for f in features],
        "files": {},
    }
    outputs = {"features": (f"{name}.npy", _npy_bytes(matrix))}
    if labels is not None:
        outputs["labels"] = (f"{name}-labels.npy", _npy_bytes(_plain_labels(np.asarray(labels))))
    for kind, (file_name, data) in outputs.items():
        atomic_write(directory / file_name, lambda tmp, data=data: Path(tmp).write_bytes(data))
        record["files"][kind] = {
            "name": file_name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    atomic_write_json(directory / f"{name}.json", record)  # the shard exists from here on


def _extract_shard(handler: Any, rows: _Rows, plan: _Plan, shard: int) -> None:
    """Extract one shard and write its files."""
    start, stop = plan.shard_rows(shard, rows.count)
    data, labels = rows.rows(start, stop)
    outputs, data_labels = handler.get_layer_output(
        data, plan.layer_names, context=plan.context, batch_size=plan.batch_size,
        verbose=plan.verbose,
    )
    if labels is None:
        labels = data_labels
    features = [np.asarray(outputs[name]).reshape(stop - start, -1) for name in plan.layer_names]
    if features[0].shape[0] != stop - start:
        raise InvalidArgumentError(
            f"Rows {start}..{stop - 1} gave {features[0].shape[0]} feature rows: the data must "
            "give one example per index."
        )
    _write_shard(Path(plan.directory), shard, (start, stop), features, labels)
    logger.info("Wrote %s (rows %d..%d).", _shard_name(shard), start, stop - 1)


def _extract_shards(handler: Any, rows: _Rows, plan: _Plan, shards: Sequence[int]) -> int:
    """Extract the given shards that are not complete yet; returns how many were extracted."""
    directory = Path(plan.directory)
    done = 0
    for shard in shards:
        if not _is_complete(directory, shard):
            _extract_shard(handler, rows, plan, shard)
            done += 1
    return done


class _SharedShards:
    """The shards of one call, handed out one at a time to whichever local process asks first.

    A counter in shared memory (no files, no pickle): a process that finishes early takes the
    next shard, so processes that start later or run slower get fewer shards and all finish
    together.
    """

    def __init__(self, shards: list[int], context: Any):
        self.shards = list(shards)
        self.next = context.Value("q", 0)

    def take(self) -> int | None:
        """The next shard nobody has taken, or None when all are taken."""
        with self.next.get_lock():
            position = self.next.value
            if position >= len(self.shards):
                return None
            self.next.value = position + 1
        return self.shards[position]

    def extract(self, handler: Any, rows: _Rows, plan: _Plan, between: Any = None) -> int:
        """Take and extract shards until none is left; ``between()`` runs after each."""
        done = 0
        while (shard := self.take()) is not None:
            _extract_shard(handler, rows, plan, shard)
            done += 1
            if between is not None:
                between()
        return done


_IMPORTABLE = (
    "Worker processes import your main module and rebuild the model and the data by name: a "
    "script that calls extract_features(num_processes > 1) must do so under "
    "`if __name__ == \"__main__\":`, and the classes of a torch model or Dataset (and the "
    "functions they hold) must be defined at the top level of an importable module."
)


def _worker_main(connection: Any, shards: _SharedShards, errors: Any) -> None:
    """A local worker process: receive the model and the data, take shards until none is left.

    It starts with nothing heavy to unpickle (its imports run while the parent already extracts);
    the thread counts came with its environment (``THREAD_VARIABLES``), set before it imported
    anything.
    """
    try:
        try:
            payload, rows, plan = ForkingPickler.loads(connection.recv_bytes())
        except Exception as error:
            raise RuntimeError(
                f"It could not rebuild the model and the data it was sent ({type(error).__name__}: "
                f"{error}). {_IMPORTABLE}"
            ) from error
        connection.close()
        handler = _handler_from_payload(*payload)
        shards.extract(handler, rows, plan)
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises
        errors.put(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        raise SystemExit(1) from None


def _send(connection: Any, job: bytes) -> None:
    """Send a worker its job (in a thread: the send waits until the worker has started)."""
    try:
        connection.send_bytes(job)
    except (OSError, EOFError):  # the worker died first; its exit code tells the parent
        pass
    finally:
        connection.close()


@contextlib.contextmanager
def _worker_environment(threads: int) -> Iterator[None]:
    """The thread variables of started workers (a spawned process inherits the environment)."""
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    try:
        for name in THREAD_VARIABLES:
            os.environ[name] = str(threads)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _own_threads(handler: Any, threads: int | None) -> Iterator[None]:
    """This process's threads while it extracts with the workers.

    A torch model runs on ``threads`` (xfer's fixed setting, restored after). MXNet sizes its
    operator threads once, when its engine starts, so an MXNet model keeps this process's count
    (``XFER_NUM_THREADS`` or ``OMP_NUM_THREADS`` set before importing xfer choose it).
    """
    if threads is None or getattr(handler, "backend", "") != "torch":
        yield
        return
    from xfer.threads import num_threads_setting

    with num_threads_setting(threads):
        yield


def _worker_failure(processes: list, errors: Any) -> RuntimeError | None:
    """The error of the first worker that failed, if any."""
    failed = [p for p in processes if p.exitcode not in (None, 0)]
    if not failed:
        return None
    try:
        return RuntimeError(f"A feature-extraction process failed: {errors.get(timeout=5)}")
    except queue.Empty:
        return RuntimeError(
            f"A feature-extraction process exited with code {failed[0].exitcode} before it "
            f"started extracting. {_IMPORTABLE}"
        )


def _run_local_processes(handler: Any, payload: tuple, rows: _Rows, plan: _Plan, shards: list[int],
                         num_processes: int, threads: int) -> None:
    """Extract ``shards`` in this process and ``num_processes - 1`` started ones together.

    The workers are started first, with nothing to unpickle but a connection and the shared
    shard counter, so their imports run in parallel while this process, whose model is ready,
    extracts; each worker receives the model and the data from a sending thread, then takes
    shards until none is left (:class:`_SharedShards`).
    """
    try:  # once, here: what cannot be sent fails before any process starts
        job = ForkingPickler.dumps((payload, rows, plan))
    except Exception as error:
        raise InvalidTypeError(
            f"The model or the data cannot be sent to other processes ({type(error).__name__}: "
            f"{error}). {_IMPORTABLE} Or extract with num_processes=1."
        ) from error
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    shared = _SharedShards(shards, context)
    processes, senders = [], []
    try:
        with _worker_environment(threads):
            for _ in range(min(num_processes - 1, len(shards) - 1)):
                receiving, sending = context.Pipe(duplex=False)
                process = context.Process(target=_worker_main, args=(receiving, shared, errors), daemon=True)
                process.start()
                receiving.close()
                processes.append(process)
                senders.append(threading.Thread(target=_send, args=(sending, job), daemon=True))
        for sender in senders:
            sender.start()

        def check_workers() -> None:
            error = _worker_failure(processes, errors)
            if error is not None:
                raise error

        with _own_threads(handler, threads):
            shared.extract(handler, rows, plan, between=check_workers)
        directory = Path(plan.directory)
        while any(p.is_alive() for p in processes):
            check_workers()
            if all(_is_complete(directory, s) for s in shards):
                break  # the workers still alive hold no shard (still starting, or done)
            time.sleep(0.05)
        check_workers()
    finally:
        for process in processes:  # on failure or interruption, no worker outlives the call
            if process.is_alive():
                process.kill()
            process.join()
        for sender in senders:
            sender.join(timeout=5)


def _check_positive(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}.")


def extract_features(
    source: Any,
    data: Any,
    layer_names: list[str],
    directory: str | os.PathLike,
    *,
    labels: Any = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    context: Any = None,
    batch_size: int | None = None,
    num_processes: int = 1,
    threads_per_process: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    wait_timeout: float = 3600.0,
    verbose: bool = False,
) -> FeatureStore:
    """Extract the outputs of ``layer_names`` for every example into a sharded store on disk.

    Parameters
    ----------
    source : model or ModelHandler
        The source network (anything :class:`~xfer.model_handler.ModelHandler` takes).
    data : ndarray, memory map, torch Dataset or list of str
        The inputs, read ``shard_size`` rows at a time: a NumPy array (``np.load(path,
        mmap_mode="r")`` for one larger than memory), a map-style torch ``Dataset`` such as
        :class:`xfer.files.ImageFolder` (items ``x`` or ``(x, y)``), or texts for a text model.
    layer_names : list of str
        Layers to read; their outputs are concatenated per row, in this order.
    directory : str or path-like
        Where the store goes. An existing store of the same data, model and layers is completed
        (only missing shards are extracted); one of other data is refused.
    labels : array-like, optional
        Labels of array or text ``data`` (a Dataset brings its own).
    shard_size : int, default=4096
        Rows per shard (the unit of work, of resumption and of files). With several processes,
        give each many shards (say 20 or more): while the last shard is extracted the other
        processes have nothing left to take.
    context : optional
        Device of the extraction (see :mod:`xfer.context`).
    batch_size : int, optional
        Batch size of the forward passes.
    num_processes : int, default=1
        Local processes that extract in parallel: this process and ``num_processes - 1``
        started with ``spawn`` (a script that calls this must do so under
        ``if __name__ == "__main__":``). This process begins at once; each started one imports
        its libraries and rebuilds the model meanwhile (a few seconds of CPU), then joins. Each
        takes the next shard nobody has taken whenever it is free, so the work stays balanced.
        The features do not depend on which process extracted a shard (tested on one thread per
        process).
    threads_per_process : int, optional
        Threads of each process's numerical libraries (default: the usable cores divided by
        ``num_processes``). A started process gets them through its environment
        (``XFER_NUM_THREADS``, ``OMP_NUM_THREADS``, ``MXNET_CPU_WORKER_NTHREADS``...) before it
        imports anything. This process runs a torch model on them too (restored after); MXNet
        fixes its thread count when its engine starts, so an MXNet model runs here on the count
        this process started with (set ``XFER_NUM_THREADS`` before importing xfer to choose it).
    rank, world_size : int, optional
        This process's place in a distributed job whose processes all call this function on the
        same data (default: from ``torch.distributed`` or the MXNet kvstore job; else one). Each
        takes every ``world_size``-th shard, then waits until all shards are written.
    wait_timeout : float, default=3600
        Seconds to wait for the other ranks' shards when there is no backend barrier.
    verbose : bool, default=False
        Progress bars.

    Returns
    -------
    FeatureStore
        The complete store.

    Raises
    ------
    InvalidTypeError
        Data that cannot be read by rows (a DataIter or DataLoader).
    InvalidArgumentError
        Bad sizes or counts, or a directory holding a store of other data, model or layers.
    LayerNotFoundError
        An unknown layer.
    TimeoutError
        Other ranks did not finish their shards within ``wait_timeout``.
    """
    from xfer.model_handler import ModelHandler

    _check_positive("shard_size", shard_size, allow_none=False)
    _check_positive("num_processes", num_processes, allow_none=False)
    _check_positive("threads_per_process", threads_per_process)
    handler = source if isinstance(source, ModelHandler) else ModelHandler(source)
    if not isinstance(layer_names, list) or not layer_names:
        raise InvalidTypeError(f"layer_names must be a non-empty list of layer names, got {layer_names!r}.")
    layer_names = handler._check_layer_names(layer_names)
    rows = _Rows(data, labels)
    if rank is None and world_size is None:
        from xfer.distributed import current_world

        world = current_world()
        rank, world_size = world.rank, world.size
    elif rank is None or world_size is None:
        raise InvalidArgumentError("Give both rank and world_size, or neither.")
    else:
        world = None
    _check_positive("world_size", world_size, allow_none=False)
    if not 0 <= rank < world_size:
        raise InvalidArgumentError(f"rank must be in 0..{world_size - 1}, got {rank}.")

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    num_shards = -(-rows.count // shard_size)
    payload = _model_payload(handler)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "num_examples": rows.count,
        "shard_size": int(shard_size),
        "num_shards": num_shards,
        "layer_names": list(layer_names),
        "data": rows.describe(),
        "model": _model_digest(*payload),
    }
    _claim_directory(directory, manifest)
    plan = _Plan(str(directory), list(layer_names), int(shard_size), num_shards, context, batch_size,
                 bool(verbose))
    mine = [s for s in range(num_shards) if s % world_size == rank]  # this rank's shards
    todo = [s for s in mine if not _is_complete(directory, s)]
    if len(todo) < len(mine):
        logger.info("Resuming: %d of this process's shards are already written.", len(mine) - len(todo))
    if num_processes == 1 or len(todo) <= 1:
        with _own_threads(handler, threads_per_process):
            _extract_shards(handler, rows, plan, todo)
    else:
        threads = threads_per_process or max(1, usable_cores() // num_processes)
        _run_local_processes(handler, payload, rows, plan, todo, num_processes, threads)
    if world_size > 1:
        if world is not None and world.backend != "local":
            world.barrier()
        _wait_for_shards(directory, num_shards, wait_timeout)
    store = FeatureStore(directory)
    return store


def write_features(
    directory: str | os.PathLike,
    features: Any,
    labels: Any = None,
    *,
    layer_names: list[str] | None = None,
    layer_widths: list[int] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> FeatureStore:
    """Write features you already have (an array or a memory map) as a store, shard by shard.

    Parameters
    ----------
    directory : str or path-like
        A new or empty directory (or one holding the same store, which is completed).
    features : ndarray of shape (n_samples, n_features)
        Read ``shard_size`` rows at a time (a memory map is never loaded whole).
    labels : array-like of shape (n_samples,), optional
        Numbers or strings.
    layer_names : list of str, optional
        What the columns are (default ``["features"]``).
    layer_widths : list of int, optional
        Columns of each layer, in order (default: all columns in one layer).
    shard_size : int, default=4096
        Rows per shard.

    Returns
    -------
    FeatureStore

    Raises
    ------
    InvalidArgumentError
        Features that are not 2-D, labels of another length, widths that do not add up, or a
        directory holding something else.
    """
    _check_positive("shard_size", shard_size, allow_none=False)
    rows = _Rows(features, labels)
    if rows.kind != "array" or rows.data.ndim != 2:
        raise InvalidArgumentError("features must be a 2-D array (n_samples x n_features).")
    width = rows.data.shape[1]
    layer_names = list(layer_names or ["features"])
    layer_widths = list(layer_widths or [width])
    if sum(layer_widths) != width or len(layer_widths) != len(layer_names):
        raise InvalidArgumentError(
            f"layer_widths {layer_widths} must give one width per layer name {layer_names} and add "
            f"up to the {width} columns."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    num_shards = -(-rows.count // shard_size)
    _claim_directory(directory, {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "num_examples": rows.count,
        "shard_size": int(shard_size),
        "num_shards": num_shards,
        "layer_names": layer_names,
        "data": rows.describe(),
        "model": None,
    })  # fmt: skip
    bounds = np.cumsum([0] + layer_widths)
    for shard in range(num_shards):
        if _is_complete(directory, shard):
            continue
        start, stop = shard * shard_size, min((shard + 1) * shard_size, rows.count)
        block, block_labels = rows.rows(start, stop)
        block = np.asarray(block, dtype=np.float32)
        parts = [block[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        _write_shard(directory, shard, (start, stop), parts, block_labels)
    return FeatureStore(directory)


def _claim_directory(directory: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, or check that the one there describes the same extraction."""
    path = directory / "manifest.json"
    if path.is_file():
        existing = _read_json(path)
        comparable, wanted = existing, manifest
        if comparable != wanted:
            differences = sorted(k for k in set(comparable) | set(wanted) if comparable.get(k) != wanted.get(k))
            raise InvalidArgumentError(
                f"{directory} holds a feature store of other {', '.join(differences)}: extract into "
                "a new directory, or delete this one first."
            )
        return
    leftovers = [p.name for p in directory.iterdir() if not p.name.startswith(".")]
    if leftovers:
        raise InvalidArgumentError(
            f"{directory} is not empty and holds no feature store ({leftovers[:3]}): extract into "
            "a new or empty directory."
        )
    atomic_write_json(path, manifest)


def _wait_for_shards(directory: Path, num_shards: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        missing = [s for s in range(num_shards) if not _is_complete(directory, s)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(missing)} shards of {directory} were not written within {timeout:g} s "
                f"(first: {_shard_name(missing[0])}): did every rank run extract_features?"
            )
        time.sleep(0.5)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SerializationError(f"{path} is not a readable JSON file: {error}.") from error
    if not isinstance(value, dict):
        raise SerializationError(f"{path} does not hold a JSON object.")
    return value


# ------------------------------------------------------------------------------ reading
class FeatureStore:
    """A complete sharded feature store written by :func:`extract_features`, read in pieces.

    Parameters
    ----------
    directory : str or path-like
        The store's directory.
    chunk_mb : float, default=64
        Memory that one read works on: :meth:`chunks` gives at most this many MB of float64
        rows at a time, and the heads that train on a store bound their passes by it.
    verify : bool, default=False
        Check every shard's SHA-256 (reads all files once).

    Attributes
    ----------
    directory : Path
    layer_names : list of str
    num_features : int
    feature_indices_per_layer : list of ndarray
        Columns of each layer, in the order of ``layer_names``.
    shard_rows : list of (int, int)
        Row range ``[start, stop)`` of each shard.

    Raises
    ------
    DataFileNotFoundError
        No store in ``directory``.
    SerializationError
        A store of another format, shards missing (an interrupted extraction: run it again to
        finish), or a shard whose files are truncated, do not match or fail the checksum.
    """

    def __init__(self, directory: str | os.PathLike, *, chunk_mb: float = DEFAULT_CHUNK_MB,
                 verify: bool = False):
        self.directory = Path(directory)
        if not isinstance(chunk_mb, (int, float)) or isinstance(chunk_mb, bool) or not chunk_mb > 0:
            raise InvalidArgumentError(f"chunk_mb must be a positive number, got {chunk_mb!r}.")
        self.chunk_mb = float(chunk_mb)
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise DataFileNotFoundError(
                f"No feature store in {self.directory} (no manifest.json): write one with "
                "xfer.feature_store.extract_features."
            )
        manifest = _read_json(path)
        if manifest.get("format") != FORMAT:
            raise SerializationError(f"{path} is not an xfer feature store manifest.")
        if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
            raise SerializationError(
                f"{path} has format version {manifest.get('format_version')}; this xfer reads up to "
                f"{FORMAT_VERSION}: upgrade xfer."
            )
        self.manifest = manifest
        self.layer_names = list(manifest["layer_names"])
        self._num_examples = int(manifest["num_examples"])
        num_shards = int(manifest["num_shards"])
        missing = [s for s in range(num_shards) if not _is_complete(self.directory, s)]
        if missing:
            raise SerializationError(
                f"The feature store in {self.directory} is incomplete: {len(missing)} of "
                f"{num_shards} shards are missing (first: {_shard_name(missing[0])}). Run "
                "extract_features again with the same arguments to finish it."
            )
        self._records = [_read_json(self.directory / f"{_shard_name(s)}.json") for s in range(num_shards)]
        widths = {tuple(r["layer_widths"]) for r in self._records}
        if len(widths) != 1:
            raise SerializationError(f"The shards of {self.directory} have different feature widths.")
        layer_widths = list(next(iter(widths)))
        self.num_features = int(sum(layer_widths))
        starts = np.cumsum([0] + layer_widths)
        self.feature_indices_per_layer = [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])]
        self.shard_rows = [tuple(int(v) for v in r["rows"]) for r in self._records]
        expected = [(s * int(manifest["shard_size"]), min((s + 1) * int(manifest["shard_size"]), self._num_examples))
                    for s in range(num_shards)]
        if self.shard_rows != expected:
            raise SerializationError(f"The shards of {self.directory} do not cover its rows in order.")
        self.has_labels = all("labels" in r["files"] for r in self._records)
        for record in self._records:
            for entry in record["files"].values():
                file = self.directory / entry["name"]
                if not file.is_file() or file.stat().st_size != int(entry["bytes"]):
                    raise SerializationError(
                        f"{file} is missing or truncated ({file.stat().st_size if file.is_file() else 0} "
                        f"of {entry['bytes']} bytes): delete {file.name} and "
                        f"{file.name.split('.')[0].replace('-labels', '')}.json and run "
                        "extract_features again."
                    )
                if verify and _file_sha256(file) != entry["sha256"]:
                    raise SerializationError(f"{file} fails its SHA-256 check: it changed after it was written.")
        self._starts = np.asarray([r[0] for r in self.shard_rows] + [self._num_examples])
        self._maps: dict[int, np.memmap] = {}
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return self._num_examples

    @property
    def num_examples(self) -> int:
        """Number of rows."""
        return self._num_examples

    @property
    def num_shards(self) -> int:
        """Number of shard files."""
        return len(self.shard_rows)

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.directory)!r}: {self._num_examples} rows x {self.num_features} "
                f"features of {self.layer_names}, {self.num_shards} shards)")

    @property
    def labels(self) -> np.ndarray | None:
        """Every row's label (one small array), or None when the data had none."""
        if not self.has_labels:
            return None
        if self._labels is None:
            parts = [np.load(self.directory / r["files"]["labels"]["name"], allow_pickle=False)
                     for r in self._records]
            self._labels = np.concatenate(parts)
        return self._labels

    def chunk_rows(self, bytes_per_value: int = 8) -> int:
        """Rows that fit in ``chunk_mb`` at ``bytes_per_value`` bytes per feature (at least 1).

        Parameters
        ----------
        bytes_per_value : int, default=8
            Size of one feature in the caller's working copy (8 for float64).

        Returns
        -------
        int
        """
        return max(1, int(self.chunk_mb * 2**20) // (self.num_features * bytes_per_value))

    def _map(self, shard: int) -> np.memmap:
        array = self._maps.get(shard)
        if array is None:
            array = np.load(self.directory / self._records[shard]["files"]["features"]["name"],
                            mmap_mode="r", allow_pickle=False)
            expected = (self.shard_rows[shard][1] - self.shard_rows[shard][0], self.num_features)
            if array.shape != expected or array.dtype != np.float32:
                raise SerializationError(
                    f"{_shard_name(shard)}.npy holds {array.dtype} {array.shape}, expected float32 {expected}."
                )
            self._maps[shard] = array
        return array

    def _release(self, shards: Any) -> None:
        """Drop the mapped pages of ``shards`` from this process's memory (the OS keeps them cached)."""
        for shard in shards:
            array = self._maps.get(shard)
            mapping = getattr(array, "_mmap", None)
            if mapping is not None and hasattr(mapping, "madvise"):
                mapping.madvise(mmap.MADV_DONTNEED)

    def chunks(self, rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """``(features, labels)`` for consecutive rows in order, ``rows`` at a time.

        Parameters
        ----------
        rows : int, optional
            Rows per chunk (default: :meth:`chunk_rows`, what fits in ``chunk_mb`` as float64).

        Yields
        ------
        features : ndarray of float32, shape (rows, num_features)
            A copy (the memory maps are released after each chunk).
        labels : ndarray or None
        """
        _check_positive("rows", rows)
        size = rows or self.chunk_rows()
        labels = self.labels
        for start in range(0, self._num_examples, size):
            stop = min(start + size, self._num_examples)
            yield self.rows(start, stop), None if labels is None else labels[start:stop]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start..stop-1`` as a float32 array.

        Parameters
        ----------
        start, stop : int
            The half-open range of rows.

        Returns
        -------
        ndarray of float32, shape (stop - start, num_features)

        Raises
        ------
        InvalidArgumentError
            A range outside the store.
        """
        if not 0 <= start <= stop <= self._num_examples:
            raise InvalidArgumentError(f"Rows {start}..{stop} are outside 0..{self._num_examples}.")
        out = np.empty((stop - start, self.num_features), dtype=np.float32)
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        touched = []
        position = start
        shard = max(first, 0)
        while position < stop:
            begin, end = self.shard_rows[shard]
            take = min(stop, end) - position
            out[position - start : position - start + take] = self._map(shard)[position - begin : position - begin + take]
            touched.append(shard)
            position += take
            shard += 1
        self._release(touched)
        return out

    def take(self, indices: Any) -> np.ndarray:
        """The rows at ``indices`` (any order, repeats allowed) as a float32 array.

        Parameters
        ----------
        indices : array-like of int
            Row positions.

        Returns
        -------
        ndarray of float32, shape (len(indices), num_features)

        Raises
        ------
        InvalidArgumentError
            An index outside the store.
        """
        indices = np.asarray(indices, dtype=np.int64).ravel()
        if indices.size and (indices.min() < 0 or indices.max() >= self._num_examples):
            raise InvalidArgumentError(f"Row indices must lie in 0..{self._num_examples - 1}.")
        out = np.empty((len(indices), self.num_features), dtype=np.float32)
        shards = np.searchsorted(self._starts, indices, side="right") - 1
        touched = np.unique(shards)
        for shard in touched:
            where = np.flatnonzero(shards == shard)
            local = indices[where] - self._starts[shard]
            order = np.argsort(local, kind="stable")  # read each shard front to back
            out[where[order]] = self._map(int(shard))[local[order]]
        self._release(touched.tolist())
        return out

    def to_array(self) -> tuple[np.ndarray, np.ndarray | None]:
        """All features as one float32 array (when they fit in memory), with the labels.

        Returns
        -------
        features : ndarray of float32, shape (num_examples, num_features)
        labels : ndarray or None
        """
        return self.rows(0, self._num_examples), self.labels


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_feature_store(value: Any) -> bool:
    """Whether ``value`` is a :class:`FeatureStore`.

    Parameters
    ----------
    value : object

    Returns
    -------
    bool
    """
    return isinstance(value, FeatureStore)


__all__ = [
    "extract_features",
    "write_features",
    "FeatureStore",
    "DEFAULT_SHARD_SIZE",
    "DEFAULT_CHUNK_MB",
    "is_feature_store",
]
