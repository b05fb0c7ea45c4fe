"""One convention for ``verbose``, and progress bars that log lines do not break.

``verbose`` (every repurposer, fine-tuner and ``get_layer_output``)
    ``0``/``False`` (the default): no progress bars. ``1``/``True`` or any larger int: tqdm
    progress bars on the long loops (feature extraction, training), written to stderr. Ints are
    accepted everywhere, as Xfer's ``BnnRepurposer(verbose=0)`` took them.

Log records
    xfer always logs through loggers named ``xfer.<module>``: INFO for one line per fit or epoch,
    DEBUG for finer steps. They show only when the application configures logging (for instance
    ``logging.basicConfig(level=logging.INFO)``), whatever ``verbose`` is; xfer never configures
    the root logger.

Bars and log lines together
    While an xfer bar is open, console log handlers (of the root logger and of ``xfer``, and
    Python's last-resort handler) write through ``tqdm.write``, so a log line appears above the
    bar instead of breaking it. In Jupyter, bars are widgets when ``ipywidgets`` is installed and
    plain text otherwise (no ``IProgress not found`` warning).
"""

from __future__ import annotations

import importlib.util
import logging
import numbers
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from xfer.exceptions import InvalidArgumentError

_XFER_LOGGER = "xfer"


def check_verbose(value: Any) -> int:
    """``verbose`` as an int level: ``False``/``0`` silent, ``True``/``1`` or more progress bars.

    Parameters
    ----------
    value : bool or int
        The user's ``verbose``.

    Returns
    -------
    int

    Raises
    ------
    InvalidArgumentError
        A negative number, or anything that is not a bool or an int.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral) and value >= 0:
        return int(value)
    raise InvalidArgumentError(
        f"verbose must be a bool or a non-negative int (0: silent, 1: progress bars), got {value!r}."
    )


class TqdmLoggingHandler(logging.StreamHandler):
    """A console log handler that writes through ``tqdm.write`` (above any open bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.std import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _is_console(handler: logging.Handler) -> bool:
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, TqdmLoggingHandler)
        and getattr(handler, "stream", None) in (sys.stdout, sys.stderr)
    )


def _tqdm_copy(handler: logging.StreamHandler) -> TqdmLoggingHandler:
    copy = TqdmLoggingHandler(handler.stream)
    copy.setLevel(handler.level)
    copy.setFormatter(handler.formatter)
    for log_filter in handler.filters:
        copy.addFilter(log_filter)
    return copy


_redirect: dict[str, Any] = {"depth": 0, "saved": None}


def _start_redirect() -> None:
    if _redirect["depth"] == 0:
        loggers = [logging.getLogger(), logging.getLogger(_XFER_LOGGER)]
        _redirect["saved"] = ([(logger, logger.handlers) for logger in loggers], logging.lastResort)
        for logger in loggers:
            logger.handlers = [_tqdm_copy(h) if _is_console(h) else h for h in logger.handlers]
        last_resort = logging.lastResort
        if last_resort is not None and _is_console(last_resort):
            logging.lastResort = _tqdm_copy(last_resort)
    _redirect["depth"] += 1


def _stop_redirect() -> None:
    _redirect["depth"] = max(0, _redirect["depth"] - 1)
    if _redirect["depth"] == 0 and _redirect["saved"] is not None:
        handlers, last_resort = _redirect["saved"]
        for logger, saved in handlers:
            logger.handlers = saved
        logging.lastResort = last_resort
        _redirect["saved"] = None


@contextmanager
def logging_through_tqdm() -> Iterator[None]:
    """Route console log output through ``tqdm.write`` until the block ends (nests)."""
    _start_redirect()
    try:
        yield
    finally:
        _stop_redirect()


def _tqdm_class() -> type:
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm  # a widget in Jupyter, text elsewhere
    else:
        from tqdm.std import tqdm  # tqdm.auto would warn "IProgress not found" in Jupyter
    return tqdm


def progress_bar(
    iterable: Any = None,
    *,
    verbose: Any = True,
    desc: str | None = None,
    total: int | None = None,
    unit: str = "it",
    leave: bool = True,
    initial: int = 0,
) -> Any:
    """A tqdm bar over ``iterable`` (or a manual one with ``total``) when ``verbose``.

    Parameters
    ----------
    iterable : iterable, optional
        What to iterate over; without it the bar is updated by hand (``bar.update(n)``).
    verbose : bool or int, default=True
        Without it, ``iterable`` itself (or None) is returned: no bar, no cost.
    desc, total, unit, leave, initial
        As for ``tqdm``; ``total`` defaults to ``len(iterable)`` when it has one.

    Returns
    -------
    tqdm, iterable or None
        The bar (close it, or iterate it to the end), ``iterable``, or None.
    """
    if not check_verbose(verbose):
        return iterable
    if total is None and iterable is not None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    bar = _tqdm_class()(
        iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, file=sys.stderr
    )
    _start_redirect()
    close = bar.close
    state = {"open": True}

    def close_and_restore() -> None:
        try:
            close()
        finally:
            if state["open"]:
                state["open"] = False
                _stop_redirect()

    bar.close = close_and_restore
    return bar


__all__ = ["TqdmLoggingHandler", "check_verbose", "logging_through_tqdm", "progress_bar"]
