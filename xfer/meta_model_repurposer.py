"""Xfer's module path ``xfer.meta_model_repurposer``: another name of :mod:`xfer.repurposers.meta_model`."""

from xfer._xfer_paths import alias

alias(__name__, "xfer.repurposers.meta_model")
