"""Xfer's ``xfer.utils`` helpers that scripts use: context functions to and from strings."""

from __future__ import annotations

from typing import Any

from xfer._mxnet import mx
from xfer.exceptions import InvalidArgumentError

_CONTEXT_FUNCTIONS = {"cpu": mx.cpu, "gpu": mx.gpu}


def serialize_ctx_fn(context_function: Any) -> str:
    """``mx.cpu`` -> ``'cpu'``, ``mx.gpu`` -> ``'gpu'`` (how Xfer writes a context function).

    Parameters
    ----------
    context_function : callable
        ``mx.cpu`` or ``mx.gpu``.

    Returns
    -------
    str
        ``'cpu'`` or ``'gpu'``.

    Raises
    ------
    InvalidArgumentError
        Anything else (a ``ValueError``, as in Xfer).
    """
    for name, function in _CONTEXT_FUNCTIONS.items():
        if context_function is function:
            return name
    raise InvalidArgumentError(
        f"Unexpected context function {context_function!r}: only mx.cpu and mx.gpu have a name."
    )


def deserialize_ctx_fn(context_function: Any) -> Any:
    """``'cpu'`` -> ``mx.cpu``, ``'gpu'`` -> ``mx.gpu`` (how Xfer reads a context function).

    Parameters
    ----------
    context_function : str
        ``'cpu'`` or ``'gpu'``.

    Returns
    -------
    callable
        ``mx.cpu`` or ``mx.gpu``.

    Raises
    ------
    InvalidArgumentError
        Anything else (a ``ValueError``, as in Xfer).
    """
    if isinstance(context_function, str) and context_function in _CONTEXT_FUNCTIONS:
        return _CONTEXT_FUNCTIONS[context_function]
    raise InvalidArgumentError(
        f"Unexpected context function name {context_function!r}: expected 'cpu' or 'gpu'."
    )


__all__ = ["serialize_ctx_fn", "deserialize_ctx_fn"]
