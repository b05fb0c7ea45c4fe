"""The one place that imports MXNet.

Every module does ``from xfer._mxnet import mx``. The NumPy alias MXNet 1.9.1 needs (``np.bool``)
and the NumPy < 2 check are applied at ``import xfer``, by :mod:`xfer._numpy_compat`, before this.

Importing MXNet also calls ``omp_set_num_threads(1)`` in the importing thread. PyTorch shares the
OpenMP runtime, so every torch CPU operation afterwards (GP, BNN, torch fine-tuning) would run on
one core. The thread count is put back right after the import: torch's own setting if torch was
imported first (a ``torch.set_num_threads`` call of the user's stands), otherwise OpenMP's
default (``OMP_NUM_THREADS``, or the cores this process may use). MXNet's operators run in its
engine's worker threads, which set their own counts, so this does not change MXNet's speed.
Thread policy and the ``XFER_NUM_THREADS`` setting: :mod:`xfer.threads`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

import xfer._numpy_compat  # noqa: F401  (NumPy < 2 and the np.bool alias, before mxnet loads)

# Silence the per-bind "Subgraph backend MKLDNN is activated" log line (users can override).
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
# MXNet sizes its operator threads once, when its engine starts: XFER_NUM_THREADS (xfer.threads)
# reaches it here unless the user set MXNet's own variable.
if os.environ.get("XFER_NUM_THREADS", "").strip().isdigit() and int(os.environ["XFER_NUM_THREADS"]) > 0:
    os.environ.setdefault("MXNET_OMP_MAX_THREADS", os.environ["XFER_NUM_THREADS"].strip())


def openmp_default_threads() -> int:
    """The thread count OpenMP starts with: ``OMP_NUM_THREADS`` if valid, else the usable cores."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def restore_openmp_threads(threads: int) -> bool:
    """Set the calling thread's OpenMP thread count (torch's too); ``False`` if it could not."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
        return True
    try:  # only a libgomp that MXNet already loaded: never load a second OpenMP runtime
        libgomp = ctypes.CDLL("libgomp.so.1", mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    libgomp.omp_set_num_threads(ctypes.c_int(threads))
    return True


_threads_before = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None

import mxnet as mx  # noqa: E402

# Also when the user imported MXNet first (with the alias): torch is not loaded then, so nobody
# chose a thread count yet and OpenMP's default is right.
restore_openmp_threads(_threads_before or openmp_default_threads())

#: Logger given to every ``mx.mod.Module`` xfer creates: MXNet's Module logs through the root
#: logger by default (and ``logging.info`` there configures the root logger as a side effect).
MODULE_LOGGER = logging.getLogger("xfer.mxnet")

__all__ = ["mx", "MODULE_LOGGER"]
