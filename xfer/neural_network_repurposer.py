"""Xfer's module path ``xfer.neural_network_repurposer``: another name of :mod:`xfer.repurposers.neural_network`."""

from xfer._xfer_paths import alias

alias(__name__, "xfer.repurposers.neural_network")
