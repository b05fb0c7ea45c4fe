"""The backend-neutral ModelHandler: one name, dispatching on the type of the model it is given."""

from __future__ import annotations

import logging
import shutil
from typing import Any, ClassVar

from xfer.exceptions import InvalidTypeError, MissingDependencyError, closest_names_hint

logger = logging.getLogger("xfer.model_handler")

_BACKENDS: list[type] = []


def render_digraph(digraph: Any, filename: Any) -> None:
    """Write a ``graphviz.Digraph`` to ``filename`` (its ``format``) with graphviz's ``dot``.

    Raises
    ------
    MissingDependencyError
        The ``dot`` program is not installed.
    """
    if shutil.which("dot") is None:
        raise MissingDependencyError(
            "Rendering the graph to a file needs graphviz's `dot` program: install it with "
            "`sudo apt-get install graphviz` (Debian/Ubuntu) or `conda install graphviz`."
        )
    path = digraph.render(filename=str(filename), cleanup=True)
    logger.info("Graph written to %s", path)


def register_backend(cls: type) -> type:
    """Class decorator: make ``ModelHandler(model)`` build ``cls`` when ``cls.accepts(model)``."""
    _BACKENDS.append(cls)
    return cls


class ModelHandler:
    """Inspect, edit and read features from a pretrained network.

    ``ModelHandler(model, ...)`` returns the handler of the model's backend: an
    :class:`~xfer.model_handler.mxnet.MXNetModelHandler` for an ``mx.mod.Module``, a
    ``(symbol, arg_params, aux_params)`` triple, a ``(prefix, epoch)`` checkpoint or a hybridised
    Gluon block. Every backend exposes the same methods (see the MXNet handler's documentation).

    Examples
    --------
    >>> mh = ModelHandler(module)                      # doctest: +SKIP
    >>> mh.layer_names[:3]                             # doctest: +SKIP
    ['conv1', 'bn1', 'relu1']
    """

    backend: ClassVar[str] = ""

    def __new__(cls, model: Any = None, *args: Any, **kwargs: Any):
        if cls is ModelHandler:
            if isinstance(model, ModelHandler):
                cls = type(model)
            else:
                for backend in _BACKENDS:
                    if backend.accepts(model):
                        cls = backend
                        break
                else:
                    raise InvalidTypeError(
                        f"Cannot build a ModelHandler from {type(model).__module__}."
                        f"{type(model).__qualname__}: pass a torch.nn.Module, an mx.mod.Module, a (symbol, "
                        "arg_params, aux_params) tuple, a (checkpoint_prefix, epoch) tuple, a "
                        "hybridised Gluon HybridBlock, or a ModelHandler."
                    )
        return super().__new__(cls)

    @classmethod
    def accepts(cls, model: Any) -> bool:  # pragma: no cover - overridden by backends
        """Whether this backend reads ``model`` (the registry asks each backend in turn).

        Parameters
        ----------
        model : object
            What the user passed to ``ModelHandler(...)``.

        Returns
        -------
        bool
        """
        return False

    # Freezing is bookkeeping on layer names, the same for every backend; each backend's
    # get_module turns the frozen set into fixed parameters and frozen BatchNorm statistics.
    def freeze(self, layer_names: list[str]) -> None:
        """Freeze layers: their parameters stay fixed in modules built by ``get_module``, and
        frozen BatchNorm layers use their stored statistics, which are never updated.

        Parameters
        ----------
        layer_names : list of str
            Layers of the model.

        Raises
        ------
        LayerNotFoundError
            A name that is not a layer of the model.
        """
        self._frozen |= set(self._check_layer_names(layer_names))

    def unfreeze(self, layer_names: list[str] | None = None) -> None:
        """Unfreeze the given layers, or all layers when ``layer_names`` is None.

        Parameters
        ----------
        layer_names : list of str, optional
            Layers to unfreeze (default: all).

        Raises
        ------
        LayerNotFoundError
            A name that is not a layer of the model.
        """
        if layer_names is None:
            self._frozen.clear()
        else:
            self._frozen -= set(self._check_layer_names(layer_names))

    # Xfer ignores names that are not in the model (a layer dropped earlier, a parameter of
    # another model) with a logged warning; both backends do the same through these two helpers.
    def _prune_parameters(self, parameter_names: Any, argument: str, known: set[str]) -> list[str]:
        """The names among ``parameter_names`` that are in ``known``; the others are logged."""
        if parameter_names is None:
            return []
        if isinstance(parameter_names, str) or not isinstance(parameter_names, (list, tuple, set)):
            raise InvalidTypeError(
                f"{argument} must be a list of parameter names, got {parameter_names!r}."
            )
        missing = [name for name in parameter_names if name not in known]
        if missing:
            logger.warning("Could not find layer parameters: %s", ", ".join(map(str, missing)))
        return [name for name in parameter_names if name in known]

    def _present_layers(self, layer_names: Any) -> list[str]:
        """``layer_names`` that are layers of the model; the others are logged and skipped."""
        if isinstance(layer_names, str) or not isinstance(layer_names, (list, tuple)):
            self._check_layer_names(layer_names)  # raises the type error with its hint
        known = set(self.layer_names)
        absent = [name for name in layer_names if name not in known]
        if absent:
            logger.warning(
                "Layers %s are not in the model, so they have no parameters.%s",
                absent,
                closest_names_hint(str(absent[0]), self.layer_names),
            )
        return [name for name in layer_names if name in known]

    @property
    def frozen_layers(self) -> list[str]:
        """The frozen layers, in layer order."""
        return [name for name in self.layer_names if name in self._frozen]

    @classmethod
    def load_checkpoint(cls, prefix: Any, epoch: int = 0, *, model: Any = None, **kwargs: Any) -> ModelHandler:
        """Load a handler written by ``save_checkpoint``, picking the backend from the files.

        MXNet: ``<prefix>-symbol.json`` and ``<prefix>-<epoch:04d>.params``. PyTorch:
        ``<prefix>.safetensors``, loaded into ``model`` (the architecture: weights files cannot
        hold code, so the network's class must come from you).

        Parameters
        ----------
        prefix : str or path-like
            The prefix given to ``save_checkpoint``.
        epoch : int, default=0
            MXNet: the epoch number of the parameter file.
        model : torch.nn.Module, optional
            PyTorch: the architecture to load the weights into.
        **kwargs
            Passed to the backend's ``load_checkpoint``.

        Returns
        -------
        ModelHandler
            The backend's handler (``MXNetModelHandler`` or ``TorchModelHandler``).
        """
        import os

        backends = {backend.backend: backend for backend in _BACKENDS}
        if model is not None or os.path.exists(f"{os.fspath(prefix)}.safetensors"):
            return backends["torch"].load_checkpoint(prefix, model=model, **kwargs)
        return backends["mxnet"].load_checkpoint(prefix, epoch, **kwargs)


__all__ = ["ModelHandler", "register_backend"]
