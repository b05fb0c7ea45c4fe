"""Xfer's module path ``xfer.model_handler.model_handler``: another name of :mod:`xfer.model_handler.base`."""

from xfer._xfer_paths import alias

alias(__name__, "xfer.model_handler.base")
