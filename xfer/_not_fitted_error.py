"""``xfer.exceptions.NotFittedError``, defined here so that only its first use imports scikit-learn.

Import it from :mod:`xfer.exceptions` (it reads ``xfer.exceptions.NotFittedError`` everywhere:
``__module__``, pickles, error messages).
"""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

from xfer.exceptions import XferError


class NotFittedError(XferError, _SklearnNotFittedError, TypeError):
    """A method that needs a fitted repurposer was called before ``fit``/``repurpose``.

    Catchable as ``ValueError`` and ``AttributeError`` (scikit-learn's ``NotFittedError``) and as
    ``TypeError``: Xfer 1.1.0 raised ``ValueError`` when a meta-model repurposer predicted before
    fitting and ``TypeError`` when a neural-network repurposer did.
    """


NotFittedError.__module__ = "xfer.exceptions"
