"""Xfer's module path ``xfer.svm_repurposer``: another name of :mod:`xfer.repurposers.svm`."""

from xfer._xfer_paths import alias

alias(__name__, "xfer.repurposers.svm")
