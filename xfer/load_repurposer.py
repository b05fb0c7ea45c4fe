"""Xfer's module path ``xfer.load_repurposer``: another name of :mod:`xfer.serialization`."""

from xfer._xfer_paths import alias

alias(__name__, "xfer.serialization")
