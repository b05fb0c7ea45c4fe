"""Xfer's module path ``xfer.lr_repurposer``: another name of :mod:`xfer.repurposers.lr`."""

from xfer._xfer_paths import alias

alias(__name__, "xfer.repurposers.lr")
