"""Xfer's module path ``xfer.bnn_repurposer``: another name of :mod:`xfer.repurposers.bnn`."""

from xfer._xfer_paths import alias

alias(__name__, "xfer.repurposers.bnn")
