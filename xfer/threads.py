"""How many CPU threads xfer's work uses: one policy, one setting.

PyTorch runs its CPU operators on an OpenMP team of ``torch.get_num_threads()`` threads (by
default one per core) whose members wait for each other at the end of every parallel region,
spinning. When another process holds one of the cores, a team as large as the machine waits at
each of the thousands of regions of a forward pass for a member the scheduler has parked: on a
2-core machine beside one busy process, a torch forward of EfficientNet-Lite0 ran 4 times slower on
2 threads than on 1, and 10-40 times slower than MXNet beside a loaded test suite
(``python -m benchmarks.run --only threads``).

The policy, applied at the start of each torch computation of xfer (feature extraction of a torch
model, GP and BNN fit and predict):

1. **A setting wins.** ``xfer.set_num_threads(n)`` or the environment variable
   ``XFER_NUM_THREADS=n``: exactly ``n`` threads, whatever the machine's load.
2. **Your torch setting stands.** If ``torch.get_num_threads()`` differs from the count xfer
   saw the first time it looked (you called ``torch.set_num_threads`` since), xfer leaves it
   alone.
3. **Otherwise, the free cores.** ``min(torch's count, free cores)``, at least 1, where the free
   cores are the cores this process may run on (``os.sched_getaffinity``) less the threads of
   *other* processes that are running or ready to run at that moment (``/proc/loadavg``'s
   running count less this process's own running threads). The 1-minute load average is not
   used: it lags by a minute and counts this process's own past work. A caller may lower the
   count further for tiny work (the GP's exact path uses 1 thread below ~1e9 flops).

The count is restored when the computation ends. MXNet sizes its operator threads once, when its
engine starts (MXNet's own rule: ``OMP_NUM_THREADS``, ``MXNET_OMP_MAX_THREADS``, else half the
cores); with ``XFER_NUM_THREADS`` set before xfer imports MXNet, MXNet gets the same count
(``MXNET_OMP_MAX_THREADS``, unless you set that yourself).

.. warning::
   **Reproducibility.** Under the automatic policy (rule 3) two identical calls can run on
   different thread counts when other processes start or stop in between, and torch's parallel
   reductions then add in a different order: results (features, GP and BNN fits and predictions)
   can differ in the last bits (about 1e-8 relative in float32). A ``random_state`` alone does not
   make them bit-identical. For bit-reproducible results fix the count: ``XFER_NUM_THREADS=n`` in
   the environment or ``xfer.set_num_threads(n)`` (tests/test_threads.py,
   ``test_a_fixed_setting_repeats_results_bit_for_bit_whatever_the_load``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from xfer.exceptions import InvalidArgumentError, InvalidTypeError

ENVIRONMENT_VARIABLE = "XFER_NUM_THREADS"


_blas_controller: Any = None  # threadpoolctl.ThreadpoolController, made on first use


def one_blas_thread() -> contextlib.AbstractContextManager:
    """A context running BLAS/LAPACK on one thread, for eigendecompositions, reductions and solves.

    Multi-threaded OpenBLAS ran ``dsytrd`` (``D = 1280``) 7-12 times slower than on one thread
    once PyTorch was imported in the process (2.5-4.4 s against 0.35 s), and a ``1280 x 1280``
    ``numpy.linalg.eigh`` took 5-6 s on two threads against 1.1-1.3 s on one with other work on
    the machine. These steps are mostly matrix-vector work that gains little from threads; matrix
    products, which do, keep the caller's threads.

    Returns
    -------
    contextlib.AbstractContextManager
        ``threadpoolctl``'s limit, restored on exit.
    """
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


_setting: int | None = None  # set_num_threads; None: the environment variable, else automatic
_torch_first_seen: int | None = None  # torch's count the first time xfer looked


def _check_count(value: object, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(f"{source} must be a positive int or None, got {value!r}.")
    if value < 1:
        raise InvalidArgumentError(f"{source} must be at least 1, got {value}.")
    return value


def set_num_threads(num_threads: int | None) -> None:
    """Fix the threads of xfer's torch computations, or (``None``) go back to the automatic policy.

    Parameters
    ----------
    num_threads : int or None
        Threads for every torch computation of xfer from now on, whatever the machine's load;
        ``None``: the environment variable ``XFER_NUM_THREADS`` if set, else the automatic policy
        (see :mod:`xfer.threads`).

    Raises
    ------
    InvalidTypeError
        Not an int or None.
    InvalidArgumentError
        Less than 1.

    Notes
    -----
    The automatic policy may choose a different count for two identical calls (the machine's
    load changed), which changes the last bits of torch results; a fixed count here (or
    ``XFER_NUM_THREADS``) makes results bit-reproducible from one call, and one run, to the next.

    Examples
    --------
    >>> import xfer
    >>> xfer.set_num_threads(1)      # one thread, e.g. beside other jobs
    >>> xfer.get_num_threads()
    1
    >>> xfer.set_num_threads(None)   # automatic again
    """
    global _setting
    _setting = None if num_threads is None else _check_count(num_threads, "num_threads")


@contextlib.contextmanager
def num_threads_setting(num_threads: int | None) -> Iterator[None]:
    """:func:`set_num_threads` inside the block; the previous setting is restored after it.

    Parameters
    ----------
    num_threads : int or None
        As for :func:`set_num_threads`.

    Returns
    -------
    contextlib.AbstractContextManager
    """
    global _setting
    previous = _setting
    set_num_threads(num_threads)
    try:
        yield
    finally:
        _setting = previous


def get_num_threads() -> int | None:
    """The fixed thread count (:func:`set_num_threads`, else ``XFER_NUM_THREADS``).

    Returns
    -------
    int or None
        The fixed count, or ``None`` when the automatic policy is in force.

    Raises
    ------
    InvalidArgumentError
        ``XFER_NUM_THREADS`` is set to something that is not a positive integer.
    """
    if _setting is not None:
        return _setting
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise InvalidArgumentError(
            f"{ENVIRONMENT_VARIABLE}={value!r} is not a positive integer: set it to a thread count "
            "such as 1, or unset it for the automatic policy."
        )
    return int(value)


def usable_cores() -> int:
    """Cores this process may run on.

    Returns
    -------
    int
        ``len(os.sched_getaffinity(0))`` where available, else ``os.cpu_count()``; at least 1.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _own_running_threads() -> int:
    """Threads of this process that are running or runnable now (Linux; else 1)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    running = 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat", "rb") as handle:
                # The state follows the command name in parentheses (which may contain spaces).
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        running += state == b"R"
    return max(1, running)


def busy_cores_elsewhere() -> int:
    """Threads of other processes that are running or ready to run now.

    Returns
    -------
    int
        ``/proc/loadavg``'s count of runnable threads less this process's own; 0 where unknown.
    """
    try:
        with open("/proc/loadavg") as handle:
            running = int(handle.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0
    return max(0, running - _own_running_threads())


def free_cores() -> int:
    """Usable cores not taken by other processes at this moment.

    Returns
    -------
    int
        :func:`usable_cores` less :func:`busy_cores_elsewhere`, at least 1.
    """
    return max(1, usable_cores() - busy_cores_elsewhere())


def choose_torch_threads(preferred: int | None = None) -> int | None:
    """The torch thread count for the next computation under the policy; ``None``: leave torch's.

    Parameters
    ----------
    preferred : int or None, default=None
        The caller's own upper bound for this work (e.g. 1 for tiny problems).

    Returns
    -------
    int or None
        The count to use, or ``None`` to leave torch's as it is (torch not loaded yet, or the
        user set it).
    """
    global _torch_first_seen
    fixed = get_num_threads()
    if fixed is not None:
        return fixed
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    current = torch.get_num_threads()
    if _torch_first_seen is None:
        _torch_first_seen = current
    elif current != _torch_first_seen:  # the user's torch.set_num_threads stands
        return None
    count = min(current, free_cores())
    if preferred is not None:
        count = min(count, int(preferred))
    return max(1, count)


@contextlib.contextmanager
def torch_threads(preferred: int | None = None) -> Iterator[int]:
    """Run a torch computation on the policy's thread count, restored afterwards.

    Parameters
    ----------
    preferred : int or None, default=None
        The caller's own upper bound for this work (see :func:`choose_torch_threads`).

    Returns
    -------
    contextlib.AbstractContextManager of int
        Yields the thread count in force inside the block.
    """
    import torch

    chosen = choose_torch_threads(preferred)
    previous = torch.get_num_threads()
    if chosen is None or chosen == previous:
        yield previous
        return
    torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        torch.set_num_threads(previous)


__all__ = [
    "ENVIRONMENT_VARIABLE",
    "set_num_threads",
    "get_num_threads",
    "usable_cores",
    "free_cores",
    "busy_cores_elsewhere",
    "choose_torch_threads",
    "torch_threads",
]
