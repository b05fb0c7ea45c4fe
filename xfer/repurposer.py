"""Xfer's module path ``xfer.repurposer``: another name of :mod:`xfer.repurposers.base`."""

from xfer._xfer_paths import alias

alias(__name__, "xfer.repurposers.base")
