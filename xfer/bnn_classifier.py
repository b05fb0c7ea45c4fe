"""Xfer 1.1.0's module path ``xfer.bnn_classifier``: its Gluon BNN classifier is not provided.

Xfer's :class:`~xfer.BnnRepurposer` trained an MXNet Gluon network with Xfer's own variational
inference code (``xfer.prob``) and returned a ``BnnClassifier`` holding the Gluon network, the
posterior and a feature normaliser. This package's ``BnnRepurposer`` trains a PyTorch network
instead: its ``target_model`` (what ``_train_model_from_features`` returns) is a
``xfer.repurposers._bnn_core.BnnClassifierCore``. The name is kept so that a script importing
it still imports; constructing it raises :class:`NotImplementedError`, and no object is ever an
instance of it. See "Migrating from Xfer 1.1.0" in the documentation.
"""

from __future__ import annotations

from typing import Any, NoReturn

_MESSAGE = (
    "xfer.bnn_classifier.BnnClassifier is Xfer 1.1.0's Gluon BNN model, which this package does "
    "not provide: BnnRepurposer trains a PyTorch BNN, and its target_model (what "
    "_train_model_from_features returns) is that model. See docs/migrating_from_xfer.md "
    "('target_model', Xfer's internal modules)."
)


class BnnClassifier:
    """Xfer 1.1.0's Gluon BNN classifier: not provided (constructing it raises).

    Parameters
    ----------
    *args, **kwargs
        Xfer's arguments (the Gluon network, posterior and normaliser); not used.

    Raises
    ------
    NotImplementedError
        Always, with the message saying what replaces it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _unsupported()


def _unsupported() -> NoReturn:
    raise NotImplementedError(_MESSAGE)


__all__ = ["BnnClassifier"]
