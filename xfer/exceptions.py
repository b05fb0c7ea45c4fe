"""Exceptions raised by xfer.

Every exception subclasses :class:`XferError` and the built-in type a user would naturally catch
(``ValueError``, ``TypeError``, ``FileNotFoundError``...), so ``except ValueError`` keeps working in
scripts written for Amazon's Xfer.

:class:`NotFittedError` also subclasses scikit-learn's ``NotFittedError``; it is defined on first
use (``xfer.exceptions.NotFittedError``, ``from xfer.exceptions import NotFittedError``), so
importing this module does not import scikit-learn (about 1.3 s of CPU in every process that only
extracts features or handles a model, e.g. each feature-extraction worker process).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from xfer._lazy import lazy_attributes


class XferError(Exception):
    """Base class of every exception raised by xfer."""


class ModelError(XferError, ValueError):
    """A graph edit that cannot be done on this model (Xfer's ``ModelError``)."""


class ModelArchitectureError(ModelError):
    """The model's architecture does not allow the requested operation (branches, multiple outputs)."""


class LayerNotFoundError(XferError, ValueError):
    """A layer name that is not in the model."""


class InvalidArgumentError(XferError, ValueError):
    """An argument with the right type but a wrong value (shape, range, choice)."""


class InvalidTypeError(XferError, TypeError):
    """An argument of the wrong type."""


class DeviceUnavailableError(XferError, RuntimeError):
    """A device (GPU) was asked for that this machine or this build of the backend does not have."""


class SerializationError(XferError, ValueError):
    """A saved model file is corrupt, truncated, of an unknown format, or does not match its model."""


class ModelFileNotFoundError(XferError, FileNotFoundError):
    """A file of a saved model is missing."""


class DataFileError(XferError, ValueError):
    """A data file that cannot be read or is mislabelled; the message names the file and why.

    Parameters
    ----------
    message : str
        The whole message (file, what is wrong, how to fix it).
    path : str, default=""
        The file (or ``"table.csv line N"``).
    reason : str, default=""
        What is wrong with it.

    Attributes
    ----------
    path : str
        As given.
    reason : str
        As given.
    """

    def __init__(self, message: str, path: str = "", reason: str = ""):
        super().__init__(message)
        self.path = path
        self.reason = reason


class DataFileNotFoundError(XferError, FileNotFoundError):
    """A data file or folder that does not exist."""


class ModelSaveError(XferError, OSError):
    """A model cannot be saved where it was asked to be (a file where a folder must be, a folder
    where a file goes, no permission, a full disk); nothing was changed there. ``errno`` is set."""


class MissingDependencyError(XferError, ImportError):
    """An optional package is not installed; the message names the install command."""


def closest_names_hint(name: str, candidates: Iterable[str], limit: int = 5) -> str:
    """Return ``" Did you mean: a, b?"`` for the candidates closest to ``name`` (or ``""``)."""
    candidates = list(candidates)
    close = difflib.get_close_matches(str(name), candidates, n=limit, cutoff=0.5)
    if not close:
        close = [c for c in candidates if str(name).lower() in c.lower()][:limit]
    return f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""


def layer_not_found(name: str, layer_names: Iterable[str]) -> LayerNotFoundError:
    """Build the error for an unknown layer, listing the closest existing layer names."""
    layer_names = list(layer_names)
    hint = closest_names_hint(name, layer_names)
    shown = ", ".join(layer_names[:20]) + (", ..." if len(layer_names) > 20 else "")
    return LayerNotFoundError(
        f"Layer {name!r} is not in the model.{hint} The model's layers are: {shown} "
        "(see ModelHandler.layer_names)."
    )


__all__ = [
    "XferError",
    "ModelError",
    "ModelArchitectureError",
    "LayerNotFoundError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "NotFittedError",
    "DeviceUnavailableError",
    "SerializationError",
    "ModelFileNotFoundError",
    "DataFileError",
    "DataFileNotFoundError",
    "ModelSaveError",
    "MissingDependencyError",
]


class ProbabilityEstimatesDisabledError(XferError, ValueError):
    """``predict_proba`` on an SVM repurposer fitted without ``enable_probability_estimates=True``."""


__all__ += ["ProbabilityEstimatesDisabledError"]


class XferWarning(UserWarning):
    """Base class of every warning issued by xfer."""


class DegenerateFitWarning(XferWarning):
    """A head whose fit learned (almost) nothing: its held-out predictions on the training data are
    no better than the class frequencies (for instance a GP whose kernel explains everything as
    noise). Its probabilities are then close to uniform whatever the input."""


__all__ += ["XferWarning", "DegenerateFitWarning"]

if TYPE_CHECKING:  # what static tools see; at run time the class is defined on first use
    from xfer._not_fitted_error import NotFittedError

__getattr__, __dir__ = lazy_attributes(__name__, {"NotFittedError": "xfer._not_fitted_error"})
