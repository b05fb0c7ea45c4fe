"""Xfer's module path ``xfer.neural_network_random_freeze_repurposer``: another name of :mod:`xfer.repurposers.fine_tune`."""

from xfer._xfer_paths import alias

alias(__name__, "xfer.repurposers.fine_tune")
