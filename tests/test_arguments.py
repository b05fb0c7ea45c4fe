"""The one set of argument checkers (:mod:`xfer._arguments`) used by every fit."""

from __future__ import annotations

import numpy as np
import pytest

from xfer._arguments import check_int, check_number, check_positive
from xfer.exceptions import InvalidArgumentError, InvalidTypeError


def test_check_int():
    check_int("n", 1)
    check_int("n", np.int64(3), minimum=2)
    check_int("n", None, allow_none=True)
    with pytest.raises(InvalidArgumentError, match=r"^n must be >= 1, got 0\.$"):
        check_int("n", 0)
    with pytest.raises(InvalidTypeError, match=r"^n must be an integer, got 2\.0 \(float\)\.$"):
        check_int("n", 2.0)
    with pytest.raises(InvalidTypeError, match="n must be an integer, got True"):
        check_int("n", True)
    with pytest.raises(InvalidTypeError, match="must be an integer or None, got 'a'"):
        check_int("n", "a", allow_none=True)


def test_check_number():
    assert check_number("x", 1, 0.0) == 1.0 and isinstance(check_number("x", 1, 0.0), float)
    assert check_number("x", np.float32(0.5), 0.0, 1.0, low_open=True, high_open=True) == 0.5
    with pytest.raises(InvalidArgumentError, match=r"x must be in \(0\.0, 1\.0\), got 1\.0"):
        check_number("x", 1.0, 0.0, 1.0, low_open=True, high_open=True)
    with pytest.raises(InvalidArgumentError, match=r"x must be in \[0\.0, inf\), got -1"):
        check_number("x", -1, 0.0)
    with pytest.raises(InvalidArgumentError, match="x must be a finite number, got nan"):
        check_number("x", float("nan"), 0.0)
    with pytest.raises(InvalidTypeError, match=r"x must be a number, got '1' \(str\)"):
        check_number("x", "1", 0.0)


def test_check_positive():
    assert check_positive("c", 2) == 2.0
    for bad in (0, -1.0, float("inf")):
        with pytest.raises(InvalidArgumentError, match="c must be a positive finite number"):
            check_positive("c", bad)
    with pytest.raises(InvalidTypeError, match="c must be a number"):
        check_positive("c", None)
