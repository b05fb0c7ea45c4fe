"""Xfer's module path ``xfer.gp_repurposer``: another name of :mod:`xfer.repurposers.gp`."""

from xfer._xfer_paths import alias

alias(__name__, "xfer.repurposers.gp")
