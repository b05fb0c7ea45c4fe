"""The one set of argument checkers behind every ``fit``: integers, numbers in a range, positive numbers.

A value of the wrong type raises :class:`~xfer.exceptions.InvalidTypeError` (a ``TypeError``), a
value out of range :class:`~xfer.exceptions.InvalidArgumentError` (a ``ValueError``); both name
the argument and the value received.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from xfer.exceptions import InvalidArgumentError, InvalidTypeError


def check_int(
    name: str,
    value: Any,
    minimum: int = 1,
    *,
    allow_none: bool = False,
    maximum: int | None = None,
    why_maximum: str = "",
) -> None:
    """Check that ``value`` is an integer ``>= minimum`` (and ``<= maximum`` when given; or None
    when ``allow_none``). ``why_maximum`` ends the message of a value above ``maximum``.

    Raises
    ------
    InvalidTypeError
        Not an integer (``True``/``False`` and floats such as ``2.0`` are refused).
    InvalidArgumentError
        Below ``minimum`` or above ``maximum``.
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(
            f"{name} must be an integer{' or None' if allow_none else ''}, got {value!r} "
            f"({type(value).__name__})."
        )
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {value!r}.")
    if maximum is not None and value > maximum:
        raise InvalidArgumentError(f"{name} must be <= {maximum}, got {value!r}{why_maximum}.")


def check_number(
    name: str,
    value: Any,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float after checking it is a finite real number in the interval.

    The interval is ``[low, high]``; ``low_open``/``high_open`` exclude an end, and ``high=None``
    leaves it unbounded above.

    Raises
    ------
    InvalidTypeError
        Not a real number (booleans are refused).
    InvalidArgumentError
        NaN, infinite, or outside the interval.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(float(value)):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}.")
    number = float(value)
    too_low = number <= low if low_open else number < low
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        upper = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
        raise InvalidArgumentError(
            f"{name} must be in {'(' if low_open else '['}{low}, {upper}, got {value!r}."
        )
    return number


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float after checking it is a positive finite number.

    Raises
    ------
    InvalidTypeError
        Not a real number.
    InvalidArgumentError
        Zero, negative, NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(float(value)) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive finite number, got {value!r}.")
    return float(value)


__all__ = ["check_int", "check_number", "check_positive"]
