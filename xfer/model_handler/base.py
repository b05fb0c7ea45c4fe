"""The backend-neutral ModelHandler: the protocol every backend implements, and one name,
:class:`ModelHandler`, dispatching on the type of the model it is given.

A backend is a subclass of :class:`ModelHandler` that implements :class:`ModelHandlerProtocol`
and is registered with :func:`register_backend`; ``ModelHandler(model)`` then builds it for the
models its ``accepts`` recognises. The fine-tuners train it once a training backend is registered
for its ``backend`` key (:func:`xfer.fine_tuning.register_training_backend`).
"""

from __future__ import annotations

import importlib
import logging
import shutil
import sys
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from xfer.exceptions import (
    InvalidArgumentError,
    InvalidTypeError,
    MissingDependencyError,
    ModelFileNotFoundError,
    closest_names_hint,
)

logger = logging.getLogger("xfer.model_handler")

_BACKENDS: list[type] = []
#: The built-in backends' modules, imported on first need, cheapest first: the next one is
#: imported only when every backend so far declined the model or checkpoint, so a torch model
#: never loads MXNet (the torch backend's module imports torch only when it has to).
_BUILTIN_BACKENDS = ("xfer.model_handler.torch", "xfer.model_handler.mxnet")


def _each_backend() -> Iterator[type]:
    """Every backend: the registered ones, then each built-in one not yet imported, imported when
    the caller asks for it (a loop that stops at the first backend that fits imports no more)."""
    tried: set[type] = set()
    while True:
        for backend in list(_BACKENDS):
            if backend not in tried:
                tried.add(backend)
                yield backend
        pending = [name for name in _BUILTIN_BACKENDS if name not in sys.modules]
        if not pending:
            return
        importlib.import_module(pending[0])


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


@runtime_checkable
class ModelHandlerProtocol(Protocol):
    """What every ModelHandler backend provides (Xfer's ModelHandler API, for any framework).

    Layers are named by strings, unique in the network, in graph order; parameters are named by
    strings too (the backend's own naming: ``conv1_weight`` in MXNet, ``conv1.weight`` in torch).
    ``context`` arguments take anything :func:`xfer.context.resolve_context` accepts, including
    lists of :class:`xfer.context.Device`. Errors come from :mod:`xfer.exceptions`.
    ``tests/model_handler/test_protocol.py`` runs the behaviour behind these signatures on
    every backend.
    """

    #: The backend's key (``"mxnet"``, ``"torch"``): training backends are registered under it.
    backend: ClassVar[str]
    #: Parameter values by name (trainable parameters).
    arg_params: dict[str, Any]
    #: Auxiliary states by name (BatchNorm statistics).
    aux_params: dict[str, Any]
    #: Name of the network's input (``"data"`` in MXNet; None where inputs have no name).
    data_name: str | None
    #: Shape of one input example, when known (set by ``get_layer_output``).
    input_shape: tuple | None
    #: The default devices (the backend's own objects).
    devices: list

    @classmethod
    def accepts(cls, model: Any) -> bool:
        """Whether ``ModelHandler(model)`` should build this backend for ``model``.

        Parameters
        ----------
        model : object
            What the user passed to ``ModelHandler``.

        Returns
        -------
        bool
        """
        ...

    @property
    def layer_names(self) -> list[str]:
        """Layer names in graph order."""
        ...

    @property
    def layer_type_dict(self) -> OrderedDict:
        """Layer name to layer type name, in graph order."""
        ...

    @property
    def frozen_layers(self) -> list[str]:
        """The frozen layers, in layer order."""
        ...

    def get_layer_type(self, layer_name: str) -> str:
        """The type name of a layer.

        Parameters
        ----------
        layer_name : str

        Returns
        -------
        str

        Raises
        ------
        LayerNotFoundError
            Not a layer of the model (the message lists the closest names).
        """
        ...

    def get_layer_names_matching_type(self, layer_type: Any) -> list[str]:
        """The layers of a type, in layer order.

        Parameters
        ----------
        layer_type : str or LayerType
            A type name or :class:`~xfer.model_handler.consts.LayerType` (case-insensitive).

        Returns
        -------
        list of str
        """
        ...

    def get_layer_parameters(self, layer_names: list[str]) -> list[str]:
        """Exactly the parameter and auxiliary state names of some layers.

        Parameters
        ----------
        layer_names : list of str

        Returns
        -------
        list of str
            ``['conv1']`` never gives ``conv10``'s parameters.
        """
        ...

    def drop_layer_top(self, num_layers_to_drop: int = 1) -> None:
        """Remove layers from the output end.

        Parameters
        ----------
        num_layers_to_drop : int, default=1
        """
        ...

    def drop_layer_bottom(self, num_layers_to_drop: int = 1) -> None:
        """Remove layers from the input end.

        Parameters
        ----------
        num_layers_to_drop : int, default=1
        """
        ...

    def add_layer_top(self, layer_list: list) -> None:
        """Append layers at the output end.

        Parameters
        ----------
        layer_list : list
            The backend's layer objects (MXNet symbols, ``(name, torch.nn.Module)`` pairs...).
        """
        ...

    def add_layer_bottom(self, layer_list: list) -> None:
        """Prepend layers at the input end.

        Parameters
        ----------
        layer_list : list
            The backend's layer objects.
        """
        ...

    def update_sym(self, new_model: Any, /) -> None:
        """Replace the network, keeping the parameters it still has.

        Parameters
        ----------
        new_model : object
            The backend's network (an MXNet symbol, a torch module...).
        """
        ...

    def get_layer_output(
        self,
        data_iterator: Any,
        layer_names: list[str],
        context: Any = None,
        batch_size: int | None = None,
        verbose: bool = False,
        pooling: str | None = None,
    ) -> tuple[OrderedDict, np.ndarray | None]:
        """The outputs of some layers on some data.

        Parameters
        ----------
        data_iterator : object
            Any data :func:`xfer.data.as_batches` reads (arrays, ``mx.io.DataIter``, torch
            datasets and loaders...).
        layer_names : list of str
        context : optional
            Device(s) for this call (anything :func:`xfer.context.resolve_context` takes).
        batch_size : int, optional
        verbose : bool, default=False
            A progress bar.
        pooling : {None, 'avg'}, default=None
            ``'avg'`` averages each feature map over its spatial axes before flattening
            (``N x C x H x W -> N x C``), batch by batch; see :data:`POOLING_MODES`.

        Returns
        -------
        features : OrderedDict of str to ndarray
            Each layer's outputs flattened to ``N x features`` float32, in the order asked.
        labels : ndarray or None
            The data's labels when it has them.
        """
        ...

    def get_module(
        self,
        iterator: Any,
        fixed_layer_parameters: list[str] | None = None,
        random_layer_parameters: list[str] | None = None,
        *,
        fixed_layers: list[str] | None = None,
        random_layers: list[str] | None = None,
        context: Any = None,
    ) -> Any:
        """A trainable copy of the network with fixed and re-initialised parameters.

        Parameters
        ----------
        iterator : object
            Data describing the input shapes (MXNet needs it; others may ignore it).
        fixed_layer_parameters, random_layer_parameters : list of str, optional
            Parameters kept fixed / re-initialised (Xfer's spelling).
        fixed_layers, random_layers : list of str, optional
            The same by layer name.
        context : optional
            Device(s) of the copy.

        Returns
        -------
        object
            The framework's trainable network (a bound ``mx.mod.Module``, a ``torch.nn.Module``...).
        """
        ...

    def freeze(self, layer_names: list[str]) -> None:
        """Keep these layers' parameters fixed in networks built by ``get_module``.

        Parameters
        ----------
        layer_names : list of str
        """
        ...

    def unfreeze(self, layer_names: list[str] | None = None) -> None:
        """Unfreeze some layers, or all.

        Parameters
        ----------
        layer_names : list of str, optional
            None unfreezes every layer.
        """
        ...

    def save_checkpoint(self, prefix: str) -> None:
        """Write the network's files at a path prefix (atomically).

        Parameters
        ----------
        prefix : str
        """
        ...

    @classmethod
    def load_checkpoint(cls, prefix: Any, **kwargs: Any) -> Any:
        """Read a handler written by ``save_checkpoint``.

        Parameters
        ----------
        prefix : str or path-like
        **kwargs
            The backend's options (an MXNet epoch, the torch architecture...).

        Returns
        -------
        ModelHandler
        """
        ...

    def visualize_net(self, filename: str | None = None, format: str = "pdf") -> Any:
        """A drawing of the network.

        Parameters
        ----------
        filename : str, optional
            Also render it to this file (needs graphviz's ``dot``).
        format : str, default='pdf'

        Returns
        -------
        graphviz.Digraph
        """
        ...


#: Values of ``get_layer_output(..., pooling=)``: ``None`` flattens every output as it is;
#: ``"avg"`` first averages a channels-first feature map over its spatial axes (every axis after
#: the channel axis: ``N x C x H x W -> N x C``), the features transferability scores read.
POOLING_MODES = (None, "avg")


def check_pooling(pooling: Any) -> str | None:
    """Return ``pooling`` if it is one of :data:`POOLING_MODES`, else raise a clear error.

    Parameters
    ----------
    pooling : object

    Returns
    -------
    str or None

    Raises
    ------
    InvalidArgumentError
        Anything else.
    """
    if pooling not in POOLING_MODES:
        raise InvalidArgumentError(
            f"pooling must be one of {list(POOLING_MODES)}, got {pooling!r}: None flattens layer "
            "outputs as they are, 'avg' averages feature maps over their spatial axes."
        )
    return pooling


def pool_spatial(value: Any, pooling: str | None) -> Any:
    """Average an ``N x C x ...`` array or tensor over the axes after ``C`` (``pooling="avg"``).

    Outputs with two axes or fewer (dense layers) come back unchanged.

    Parameters
    ----------
    value : numpy.ndarray or torch.Tensor
    pooling : {None, 'avg'}

    Returns
    -------
    numpy.ndarray or torch.Tensor
    """
    if pooling == "avg" and value.ndim > 2:
        axes = tuple(range(2, value.ndim))
        return value.mean(axes) if hasattr(value, "dim") else value.mean(axis=axes)
    return value


def register_backend(cls: type) -> type:
    """Class decorator: make ``ModelHandler(model)`` build ``cls`` when ``cls.accepts(model)``.

    Parameters
    ----------
    cls : type
        A :class:`ModelHandler` subclass implementing :class:`ModelHandlerProtocol`, with a
        ``backend`` key.

    Returns
    -------
    type
        ``cls`` itself.
    """
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
                for backend in _each_backend():
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
    def checkpoint_files(cls, prefix: Any, epoch: int = 0) -> list[str]:
        """The files ``save_checkpoint(prefix)`` of this backend writes (for messages).

        Parameters
        ----------
        prefix : str or path-like
        epoch : int, default=0
            The epoch of backends that number their files (MXNet).

        Returns
        -------
        list of str
        """
        return []

    @classmethod
    def open_checkpoint(
        cls, prefix: Any, epoch: int = 0, model: Any = None, **kwargs: Any
    ) -> ModelHandler | None:
        """How :meth:`ModelHandler.load_checkpoint` picks the backend: load ``prefix`` if its
        files (or ``model``) are this backend's.

        Parameters
        ----------
        prefix : str or path-like
        epoch : int, default=0
        model : object, optional
            The architecture, for backends whose files do not hold it.
        **kwargs
            Passed to ``load_checkpoint``.

        Returns
        -------
        ModelHandler or None
            None when the files are another backend's.
        """
        return None

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

        Raises
        ------
        ModelFileNotFoundError
            No backend's checkpoint is at ``prefix``.
        """
        for backend in _each_backend():
            handler = backend.open_checkpoint(prefix, epoch, model, **kwargs)
            if handler is not None:
                return handler
        # MXNet's files first, then torch's, then those of backends registered by users: the
        # message reads the same whatever was registered or imported first.
        builtin_order = ("xfer.model_handler.mxnet", "xfer.model_handler.torch")
        in_order = sorted(
            _BACKENDS,
            key=lambda b: builtin_order.index(b.__module__) if b.__module__ in builtin_order else 2,
        )
        expected = [repr(f) for backend in in_order for f in backend.checkpoint_files(prefix, epoch)]
        raise ModelFileNotFoundError(
            f"No model checkpoint at {str(prefix)!r}: {expected[0]} does not exist, nor "
            f"{', '.join(expected[1:])}. Check the path prefix given to save_checkpoint."
        )


__all__ = [
    "ModelHandler",
    "ModelHandlerProtocol",
    "POOLING_MODES",
    "check_pooling",
    "pool_spatial",
    "register_backend",
]
