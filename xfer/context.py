"""One resolver from what users write for a device to what each backend needs.

Accepted everywhere a ``context`` is taken: ``"cpu"``, ``"cpu:1"``, ``"gpu"``, ``"gpu:0"``,
``"cuda:0"``, an ``mx.Context``, a ``torch.device``, a context *function* such as ``mx.cpu`` (Xfer's
``context_function``), or a list of any of these for data parallelism.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from xfer.exceptions import DeviceUnavailableError, InvalidArgumentError, InvalidTypeError

_DEVICE_PATTERN = re.compile(r"^\s*(cpu|gpu|cuda)\s*(?::\s*(\d+))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Device:
    """A backend-neutral device.

    Parameters
    ----------
    kind : {"cpu", "gpu"}
        The kind of device.
    index : int, default=0
        Its number (``gpu:1`` is ``Device("gpu", 1)``).
    """

    kind: str
    index: int = 0

    def __str__(self) -> str:
        return f"{self.kind}:{self.index}"


class _DefaultCpu:
    """The default ``context_function`` of repurposers: Xfer's ``mx.cpu``, without importing MXNet.

    ``xfer.context.cpu(device_id)`` is ``Device("cpu", device_id)``. Once MXNet is imported,
    ``get_params()`` reports it as ``mx.cpu`` (see :func:`xfer_context_function`), the way Xfer
    did, and it compares equal to ``mx.cpu`` (scikit-learn checks that ``get_params()`` gives back
    each constructor default); a torch user's process never loads MXNet for it.
    """

    __name__ = __qualname__ = "cpu"

    def __call__(self, device_id: int = 0) -> Device:
        """The device ``cpu:device_id``, as ``mx.cpu(device_id)`` names it."""
        return Device("cpu", int(device_id))

    def __eq__(self, other: object) -> bool:
        mxnet = sys.modules.get("mxnet")
        return other is self or (mxnet is not None and other is getattr(mxnet, "cpu", None))

    def __hash__(self) -> int:
        return hash("xfer.context.cpu")

    def __repr__(self) -> str:
        return "xfer.context.cpu"

    def __reduce__(self) -> str:  # copies (copy.deepcopy, clone) are this one object
        return "cpu"


#: The default ``context_function`` of repurposers: Xfer's ``mx.cpu`` without importing MXNet
#: (``cpu(device_id)`` is ``Device("cpu", device_id)``).
cpu = _DefaultCpu()


def xfer_context_function(context_function: Any) -> Any:
    """``context_function`` as Xfer reported it: ``mx.cpu`` for the default :func:`cpu`.

    Only where MXNet is already imported (every Xfer user's process): elsewhere :func:`cpu` is
    returned as it is, so that reading a torch user's parameters (``get_params``, ``clone``,
    saving) never imports MXNet (about 3 s).

    Parameters
    ----------
    context_function : callable, str, device or list
        A repurposer's ``context_function``.

    Returns
    -------
    object
        ``mx.cpu`` for :func:`cpu` once MXNet is imported, else ``context_function`` itself.
    """
    if context_function is cpu and "mxnet" in sys.modules:
        from xfer._mxnet import mx

        return mx.cpu
    return context_function


def gpu_available() -> bool:
    """Whether torch or MXNet sees a usable CUDA GPU (each backend is asked only if installed).

    Returns
    -------
    bool
    """
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        from xfer._mxnet import mx

        return bool(mx.runtime.Features().is_enabled("CUDA")) and mx.context.num_gpus() > 0
    except Exception:  # pragma: no cover - defensive: a broken MXNet build has no GPU
        return False


def _parse_one(context: Any) -> Device:
    if isinstance(context, Device):
        return context
    if isinstance(context, str):
        match = _DEVICE_PATTERN.match(context)
        if match is None:
            raise InvalidArgumentError(
                f"Unknown context {context!r}: use 'cpu', 'cpu:N', 'gpu', 'gpu:N' or 'cuda:N'."
            )
        kind = "cpu" if match.group(1).lower() == "cpu" else "gpu"
        return Device(kind, int(match.group(2) or 0))
    type_name = f"{type(context).__module__}.{type(context).__qualname__}"
    if type_name == "torch.device":
        kind = {"cpu": "cpu", "cuda": "gpu"}.get(context.type)
        if kind is None:
            raise InvalidArgumentError(
                f"torch.device of type {context.type!r} is not supported: use 'cpu' or 'cuda'."
            )
        return Device(kind, context.index or 0)
    if hasattr(context, "device_type") and hasattr(context, "device_id"):  # mx.Context
        kind = "gpu" if context.device_type == "gpu" else "cpu"
        return Device(kind, int(context.device_id))
    if callable(context):  # Xfer's context_function, e.g. mx.cpu or mx.gpu
        return _parse_one(context())
    raise InvalidTypeError(
        f"Cannot use {context!r} (type {type_name}) as a context: pass 'cpu', 'gpu:0', an "
        "mx.Context, a torch.device, or a list of them."
    )


def resolve_context(context: Any = None, default: Any = None) -> list[Device]:
    """Turn a user's ``context`` into a non-empty list of :class:`Device`.

    Parameters
    ----------
    context : str, mx.Context, torch.device, callable, list of these, or None
        What the user asked for in this call. ``None`` falls back to ``default``.
    default : same types as ``context``, default=None
        The constructor's context; ``None`` means ``"cpu"``.

    Returns
    -------
    list of Device

    Raises
    ------
    InvalidArgumentError
        An unknown device string, an empty list or a repeated device.
    InvalidTypeError
        Something that is not a device description.

    Examples
    --------
    >>> resolve_context("gpu:1")
    [Device(kind='gpu', index=1)]
    >>> resolve_context(None, default=["cpu:0", "cpu:1"])
    [Device(kind='cpu', index=0), Device(kind='cpu', index=1)]
    """
    if context is None:
        context = "cpu" if default is None else default
    items = list(context) if isinstance(context, (list, tuple)) else [context]
    if not items:
        raise InvalidArgumentError("The context list is empty: give at least one device.")
    devices = [_parse_one(item) for item in items]
    if len(set(devices)) != len(devices):
        raise InvalidArgumentError(f"The context list repeats a device: {[str(d) for d in devices]}.")
    return devices


def devices_from_function(context_function: Any, num_devices: int = 1) -> list[Device]:
    """Xfer's ``(context_function, num_devices)`` pair as a device list (``mx.gpu, 2`` -> gpu:0, gpu:1).

    Parameters
    ----------
    context_function : callable, str, mx.Context or torch.device
        Xfer's ``mx.cpu``/``mx.gpu`` (called with 0, 1, ...), or any device :func:`resolve_context`
        reads.
    num_devices : int, default=1
        How many devices of that kind.

    Returns
    -------
    list of Device

    Raises
    ------
    InvalidArgumentError
        ``num_devices`` is not a positive integer, or the device is not understood.
    """
    if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 1:
        raise InvalidArgumentError(f"num_devices must be a positive integer, got {num_devices!r}.")
    if callable(context_function) and not hasattr(context_function, "device_type"):
        return resolve_context([context_function(i) for i in range(num_devices)])
    devices = resolve_context(context_function)
    if num_devices != 1 and len(devices) == 1:
        devices = [Device(devices[0].kind, i) for i in range(num_devices)]
    return devices


def format_context(devices: Sequence[Device]) -> str | list[str]:
    """A JSON-safe form of a device list (``"cpu:0"`` or ``["gpu:0", "gpu:1"]``).

    Parameters
    ----------
    devices : sequence of Device

    Returns
    -------
    str or list of str
        One name for one device, else a list.
    """
    names = [str(d) for d in devices]
    return names[0] if len(names) == 1 else names


def to_mxnet(context: Any = None, default: Any = None) -> list:
    """Resolve ``context`` to a list of ``mx.Context``, checking that GPUs exist.

    Parameters
    ----------
    context : str, mx.Context, torch.device, Device or list, optional
        What the user asked for (see :func:`resolve_context`).
    default : optional
        Used when ``context`` is None (default ``"cpu"``).

    Returns
    -------
    list of mx.Context

    Raises
    ------
    DeviceUnavailableError
        A GPU was asked for and this MXNet build has no CUDA support or too few GPUs.
    """
    from xfer._mxnet import mx

    devices = resolve_context(context, default)
    gpu_indices = [d.index for d in devices if d.kind == "gpu"]
    if gpu_indices:
        if not mx.runtime.Features().is_enabled("CUDA"):
            raise DeviceUnavailableError(
                f"A GPU context ({', '.join(str(d) for d in devices if d.kind == 'gpu')}) was asked "
                f"for, but this MXNet build (mxnet {mx.__version__}) is CPU-only. Install the "
                "CUDA build that matches your driver (for example `pip install mxnet-cu112==1.9.1`), "
                "or use context='cpu'."
            )
        available = mx.context.num_gpus()
        if max(gpu_indices) >= available:
            raise DeviceUnavailableError(
                f"GPU {max(gpu_indices)} was asked for but MXNet sees {available} GPU(s)."
            )
    return [mx.gpu(d.index) if d.kind == "gpu" else mx.cpu(d.index) for d in devices]


@contextlib.contextmanager
def torch_num_threads(num_threads: int | None) -> Iterator[None]:
    """Run a torch computation under xfer's thread policy (:mod:`xfer.threads`), restored after.

    Small problems (a GP on 150 points) run faster on one thread: OpenMP's start-up and
    hand-off cost more than the work, and much more when another process holds a core.

    Parameters
    ----------
    num_threads : int or None
        The caller's upper bound for this work (``None``: none); the policy may choose fewer
        (the cores other processes leave free), a fixed setting or a user's own
        ``torch.set_num_threads`` wins. The previous count is restored after the block.

    Yields
    ------
    None
    """
    from xfer.threads import torch_threads

    with torch_threads(num_threads):
        yield


def to_torch(context: Any = None, default: Any = None):
    """Resolve ``context`` to one ``torch.device``, checking that CUDA is there.

    Torch heads run on one device; a list with more than one device is refused here (use the
    fine-tuners' distributed training for several GPUs).

    Parameters
    ----------
    context : str, mx.Context, torch.device, Device or list of one, optional
        What the user asked for (see :func:`resolve_context`).
    default : optional
        Used when ``context`` is None (default ``"cpu"``).

    Returns
    -------
    torch.device

    Raises
    ------
    DeviceUnavailableError
        CUDA was asked for and torch has no CUDA build, no driver or too few GPUs.
    InvalidArgumentError
        More than one device was given.
    """
    import torch

    devices = resolve_context(context, default)
    if len(devices) > 1:
        raise InvalidArgumentError(
            f"This computation runs on one device, but {len(devices)} were given "
            f"({[str(d) for d in devices]}): pass a single context such as 'gpu:0'."
        )
    device = devices[0]
    if device.kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise DeviceUnavailableError(
            f"Context {device} asks for a CUDA GPU, but torch {torch.__version__} ({build}) "
            "sees no usable GPU. Install a CUDA build of torch on a machine with an NVIDIA GPU, "
            "or use context='cpu'."
        )
    if device.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"GPU {device.index} was asked for but torch sees {torch.cuda.device_count()} GPU(s)."
        )
    return torch.device("cuda", device.index)


__all__ = [
    "Device",
    "cpu",
    "xfer_context_function",
    "gpu_available",
    "resolve_context",
    "devices_from_function",
    "format_context",
    "to_mxnet",
    "to_torch",
    "torch_num_threads",
]
