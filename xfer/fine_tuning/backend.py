"""The seam between the backend-neutral fine-tuning code and one framework: :class:`TrainingBackend`.

The fine-tuning repurposers (:mod:`xfer.repurposers.neural_network`) and the training loop
(:func:`xfer.fine_tuning.loop.train`) never touch a framework: every step that does goes through
the training backend registered for the source model's ModelHandler backend key, the way
:func:`xfer.model_handler.base.register_backend` registers ModelHandlers. A backend does four
things:

- check the options that are its business (the optimiser and its parameters, schedule objects)
  and turn :class:`~xfer.context.Device` lists into its own device objects;
- build the target network: an editable copy of the source's handler, cut at a layer, with a new
  classification head (:meth:`TrainingBackend.cut`, :meth:`TrainingBackend.add_head`);
- train it, one fit at a time, through a :class:`Trainer` (build the phase's network with its
  fixed and re-initialised parameters, set the learning rate of each parameter group, run an
  epoch, evaluate, copy and load parameters, the optimiser's state as arrays);
- save and load it (prediction reads the output layer with the handler's ``get_layer_output``).

Write a backend by subclassing both classes and decorating the backend with
:func:`register_training_backend`; ``tests/functional_backend.py`` is a complete one (a
ModelHandler and a training backend for networks written as lists of ``torch.nn.functional``
calls) that the ModelHandler protocol tests and the fine-tuning suite run beside MXNet and torch.

The two built-in backends are imported when a network of theirs is first fine-tuned (or files of
theirs first loaded), not with :mod:`xfer.fine_tuning`: a torch network's user never imports MXNet
(about 3 s of CPU), an MXNet network's user never imports torch.
"""

from __future__ import annotations

import contextlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from xfer.context import Device
from xfer.distributed.world import World
from xfer.exceptions import InvalidArgumentError, InvalidTypeError
from xfer.fine_tuning.run import LR_SCHEDULES, Phase, Settings, object_state

_BACKENDS: dict[str, TrainingBackend] = {}

#: The built-in training backends, imported on first need: handler ``backend`` key -> (module,
#: the backend's ``file_key``).
_BUILTIN_BACKENDS: dict[str, tuple[str, str | None]] = {
    "mxnet": ("xfer.fine_tuning.mxnet", None),
    "torch": ("xfer.fine_tuning.torch", "torch"),
}


def _known_keys() -> list[str]:
    """The keys of the registered backends and of the built-in ones, imported or not."""
    return sorted({*_BACKENDS, *_BUILTIN_BACKENDS})


class Trainer(ABC):
    """The training of one fit, phase after phase, driven by :func:`xfer.fine_tuning.loop.train`.

    Built from the backend's :attr:`TrainingBackend.trainer_class` with the target network (a
    :class:`~xfer.repurposers.TargetNetwork`), the settings and the data (training examples,
    integer labels, and the validation pair or None), which this base class stores; subclasses
    convert them to their framework's objects. The loop calls :meth:`start_phase` once per phase,
    then per epoch :meth:`set_learning_rate`, :meth:`seed`, :meth:`run_epoch` and
    :meth:`evaluate`, and :meth:`end_phase` to write the phase's result into the target network's
    handler. Used as a context manager around all phases.

    Parameters
    ----------
    network : TargetNetwork
        The target network; ``network.handler`` holds the parameters to start from.
    settings : Settings
        How to train (``contexts`` are the backend's devices).
    data : ndarray
        Training examples (float32).
    labels : ndarray
        Their class codes ``0..K-1``.
    validation : (ndarray, ndarray) or None
        Validation examples and class codes.
    """

    def __init__(
        self,
        network: Any,
        settings: Settings,
        data: np.ndarray,
        labels: np.ndarray,
        validation: tuple[np.ndarray, np.ndarray] | None,
    ):
        self.network = network
        self.handler = network.handler
        self.settings = settings
        self.data = data
        self.labels = labels
        self.validation = validation
        self.phase: Phase | None = None

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes checkpoints and shows the progress bar (rank 0 of
        ``settings.world``)."""
        return self.settings.world.is_main

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    @abstractmethod
    def start_phase(self, phase: Phase, first: bool, params: dict[str, np.ndarray] | None) -> None:
        """Build the phase's trainable network from the handler's parameters.

        Parameters
        ----------
        phase : Phase
            ``phase.fixed_parameters`` stay fixed; ``phase.random_parameters`` are re-initialised
            (from ``derived_seed(settings.seed, 0)``) when ``first``.
        first : bool
            Whether this is the first phase of the fit.
        params : dict of str to ndarray or None
            Arrays from :meth:`checkpoint_arrays` of an interrupted run, which replace the
            parameters.
        """

    @abstractmethod
    def start_optimizer(self) -> float:
        """Create the phase's optimiser over its trainable parameters.

        Returns
        -------
        float
            The base learning rate: the optimiser's, times ``phase.lr_factor``.
        """

    @abstractmethod
    def restore_optimizer(self, layout: dict, arrays: dict[str, np.ndarray]) -> None:
        """Restore the optimiser's state saved by :meth:`optimizer_state`.

        Parameters
        ----------
        layout : dict
            The JSON-safe part.
        arrays : dict of str to ndarray
            The arrays.
        """

    @abstractmethod
    def set_learning_rate(self, learning_rate: float) -> float:
        """Train the next epoch at ``learning_rate`` times each parameter's ``phase.lr_mults``.

        Parameters
        ----------
        learning_rate : float
            The scheduled base rate of the epoch.

        Returns
        -------
        float
            The base rate actually used (a backend's own scheduler object may set it).
        """

    @abstractmethod
    def seed(self, seed: int) -> None:
        """Seed the backend's random operators (dropout...) for the next epoch.

        Parameters
        ----------
        seed : int
        """

    @abstractmethod
    def run_epoch(self, order: np.ndarray, progress: Any) -> tuple[float, float]:
        """Train one epoch.

        Parameters
        ----------
        order : ndarray of int
            Example indices in training order, whole batches of ``settings.batch_size``; positions
            past the number of examples wrap around and are not counted.
        progress : tqdm bar or None
            Advanced by one per batch.

        Returns
        -------
        loss : float
            Mean cross-entropy over the real examples.
        accuracy : float
        """

    @abstractmethod
    def evaluate(self) -> tuple[float, float]:
        """Evaluate on the validation data, in inference mode.

        Returns
        -------
        loss : float
            Mean cross-entropy.
        accuracy : float
        """

    @abstractmethod
    def copy_params(self) -> Any:
        """A copy of the current parameters.

        Returns
        -------
        object
            The parameters in the backend's own objects.
        """

    @abstractmethod
    def load_params(self, params: Any) -> None:
        """Load parameters into the phase's network.

        Parameters
        ----------
        params : object
            Made by :meth:`copy_params` or :meth:`arrays_to_params`.
        """

    @abstractmethod
    def params_to_arrays(self, params: Any) -> dict[str, np.ndarray]:
        """Parameters as named arrays, for checkpoints.

        Parameters
        ----------
        params : object
            Made by :meth:`copy_params`.

        Returns
        -------
        dict of str to ndarray
        """

    @abstractmethod
    def arrays_to_params(self, arrays: dict[str, np.ndarray]) -> Any:
        """The inverse of :meth:`params_to_arrays`.

        Parameters
        ----------
        arrays : dict of str to ndarray

        Returns
        -------
        object
            Parameters :meth:`load_params` takes.
        """

    @abstractmethod
    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        """The current parameters as arrays, for checkpoints.

        Returns
        -------
        dict of str to ndarray
            With whatever else :meth:`start_phase` needs to continue exactly (per-device states).
        """

    @abstractmethod
    def optimizer_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The optimiser's state, without pickle.

        Returns
        -------
        layout : dict
            The JSON-safe part.
        arrays : dict of str to ndarray
        """

    @abstractmethod
    def end_phase(self) -> None:
        """Write the trained parameters into the target network's handler."""

    def barrier(self) -> None:
        """Wait for the other processes of a distributed run (after a checkpoint is written)."""
        self.settings.world.barrier()


class TrainingBackend(ABC):
    """How one framework builds, trains, predicts with, saves and loads fine-tuned networks.

    Subclasses set the class attributes and implement the abstract methods; the others have
    defaults that suit a backend without those features. One instance per backend is registered
    with :func:`register_training_backend`.
    """

    #: The ModelHandler ``backend`` key of the networks this backend trains.
    key: ClassVar[str]
    #: Written as ``"backend"`` in checkpoints and saved manifests, and checked when they are
    #: read (None: no key, the MXNet files of xfer 0.1).
    file_key: ClassVar[str | None]
    #: How the backend's networks read in messages (``"a PyTorch network"``).
    display_name: ClassVar[str]
    #: Layer types that make a network's output (never a layer to cut at, never under a new head).
    output_layer_types: ClassVar[frozenset[str]] = frozenset()
    #: Whether :meth:`load_network` needs the source model (the architecture is not in the files).
    needs_source_to_load: ClassVar[bool] = False
    #: What to pass as ``source_model=`` when it is needed, for messages.
    source_model_hint: ClassVar[str] = "the source network"
    #: Version of the checkpoint layout this backend writes and reads.
    checkpoint_version: ClassVar[int] = 1
    #: What :meth:`save_network` appends to the model's name for each file it writes; loading
    #: requires a manifest to list exactly these (empty: whatever it lists, at least one).
    network_file_endings: ClassVar[tuple[str, ...]] = ()
    #: Whether the output layer gives logits (softmax makes the probabilities) rather than
    #: probabilities.
    output_is_logits: ClassVar[bool] = False
    #: The :class:`Trainer` subclass that trains this backend's networks (one per fit).
    trainer_class: ClassVar[type[Trainer]]

    # ------------------------------------------------------------------ options and devices
    @abstractmethod
    def check_optimizer(self, name: str, params: dict[str, Any]) -> None:
        """Check an optimiser and its parameters.

        Parameters
        ----------
        name : str
            The optimiser's name (``'sgd'``, ``'adam'``...).
        params : dict
            Its parameters, MXNet spellings (``learning_rate``, ``momentum``, ``wd``...).

        Raises
        ------
        InvalidArgumentError
            An unknown optimiser, or parameters it does not take.
        """

    def check_lr_schedule(self, schedule: Any) -> None:
        """Check an ``lr_schedule`` that is not a name of ``LR_SCHEDULES`` (a scheduler object).

        Parameters
        ----------
        schedule : object

        Raises
        ------
        InvalidArgumentError
            The backend does not take it (the default: no scheduler objects).
        """
        raise InvalidArgumentError(
            f"lr_schedule must be None or one of {LR_SCHEDULES} for {self.display_name}, got "
            f"{schedule!r} (scheduler objects such as mx.lr_scheduler drive their own framework's "
            "optimisers only)."
        )

    def describe_schedule(self, schedule: Any) -> str:
        """A schedule object as text, for the fingerprint of a checkpoint.

        Parameters
        ----------
        schedule : object
            Accepted by :meth:`check_lr_schedule`.

        Returns
        -------
        str
        """
        return f"{type(schedule).__name__}:{object_state(schedule)}"

    @abstractmethod
    def contexts(self, devices: list[Device]) -> list:
        """The backend's device objects for ``devices``.

        Parameters
        ----------
        devices : list of Device

        Returns
        -------
        list
            The framework's devices (``mx.Context``, ``torch.device``...).

        Raises
        ------
        InvalidArgumentError
            A list the backend cannot train or predict on.
        DeviceUnavailableError
            A GPU that is not there.
        """

    def world(self, kvstore: str) -> World:
        """The processes a fit trains with.

        Parameters
        ----------
        kvstore : str
            The repurposer's ``kvstore`` (read by backends that distribute through one).

        Returns
        -------
        World
            A world of one for a backend without distributed training.
        """
        return World()

    @contextlib.contextmanager
    def seeded(self, seed: int) -> Iterator[None]:
        """Make the backend's random draws in the block (new layers' weights) follow a seed.

        Parameters
        ----------
        seed : int

        Yields
        ------
        None
            The backend's global random state is as it was after the block.
        """
        yield

    # ------------------------------------------------------------------ the target network
    @abstractmethod
    def editable_copy(self, source: Any, sample_shape: tuple | None) -> Any:
        """A copy of the source's handler to edit into the target network.

        Parameters
        ----------
        source : ModelHandler
            The source model's handler (never changed).
        sample_shape : tuple or None
            The shape of one training example.

        Returns
        -------
        ModelHandler
        """

    @abstractmethod
    def cut(self, handler: Any, layer_name: str) -> None:
        """Drop every layer above a layer: its output becomes the network's output.

        Parameters
        ----------
        handler : ModelHandler
            The copy being edited.
        layer_name : str
        """

    @abstractmethod
    def add_head(self, handler: Any, fc_name: str, output_name: str, num_classes: int) -> list[str]:
        """Add the classifier: a fully connected layer and what the backend needs on top.

        Parameters
        ----------
        handler : ModelHandler
            The copy being edited.
        fc_name : str
            The fully connected layer's name (or a free variant of it).
        output_name : str
            The name an output layer of its own takes (MXNet's ``SoftmaxOutput``).
        num_classes : int

        Returns
        -------
        list of str
            The new layers' names, the output layer last.
        """

    def finish_target(self, network: Any) -> None:
        """Make the edited target network independent of the source model (its own tensors).

        Parameters
        ----------
        network : TargetNetwork
        """
        return None

    @abstractmethod
    def parameter_names(self, handler: Any) -> list[str]:
        """Names of every parameter and auxiliary state of the network, new layers included.

        Parameters
        ----------
        handler : ModelHandler

        Returns
        -------
        list of str
        """

    def xfer_target_module(self, repurposer: Any, train_iterator: Any) -> Any:
        """Xfer's ``_create_target_module`` hook: a bound MXNet module.

        Parameters
        ----------
        repurposer : NeuralNetworkRepurposer
        train_iterator : mx.io.DataIter

        Returns
        -------
        mx.mod.Module

        Raises
        ------
        InvalidTypeError
            For backends other than MXNet.
        """
        raise InvalidTypeError(
            "_create_target_module is Xfer's hook for MXNet modules; a fine-tuner of "
            f"{self.display_name} builds its target with _create_target_network."
        )

    def network_from_xfer_module(
        self, repurposer: Any, data: np.ndarray, codes: np.ndarray, label_name: str
    ) -> Any:
        """The target network of a subclass overriding Xfer's ``_create_target_module``.

        Parameters
        ----------
        repurposer : NeuralNetworkRepurposer
        data : ndarray
            Training examples (the first batch binds the module).
        codes : ndarray
            Their class codes.
        label_name : str
            The label name the module's output must take.

        Returns
        -------
        TargetNetwork

        Raises
        ------
        InvalidTypeError
            For backends other than MXNet.
        """
        return self.xfer_target_module(repurposer, data)

    def assigned_network(self, model: Any, handler: Any) -> tuple[str, int, tuple | None]:
        """Read a trained network assigned to ``target_model`` (Xfer's scripts assign modules).

        Parameters
        ----------
        model : object
            The assigned model.
        handler : ModelHandler
            Its handler (built from ``model``).

        Returns
        -------
        output_layer : str
            The layer whose output gives the class probabilities.
        n_classes : int
        sample_shape : tuple or None
            Shape of one input example, when the model knows it.

        Raises
        ------
        InvalidTypeError
            For backends whose trained networks cannot be assigned.
        """
        raise InvalidTypeError(
            f"target_model can be assigned a trained MXNet mx.mod.Module only; {self.display_name} "
            "cannot be assigned (its saved form needs the edits that fit records): fit the "
            "repurposer instead."
        )

    # ------------------------------------------------------------------ the trained network
    @abstractmethod
    def target_model(self, handler: Any, output_layer: str, devices: list[Device]) -> Any:
        """The trained network as the framework's own model object (``target_model``).

        Parameters
        ----------
        handler : ModelHandler
        output_layer : str
        devices : list of Device
            The repurposer's default devices.

        Returns
        -------
        object
        """

    @abstractmethod
    def save_network(self, handler: Any, prefix: Path) -> list[str]:
        """Write the trained network beside a path prefix (one atomic save).

        Parameters
        ----------
        handler : ModelHandler
        prefix : Path
            The repurposer's path prefix.

        Returns
        -------
        list of str
            The names of the files written (in ``prefix.parent``).
        """

    def network_state(self, handler: Any, new_layers: list[str]) -> dict[str, Any]:
        """What :meth:`load_network` needs besides the files, for the manifest.

        Parameters
        ----------
        handler : ModelHandler
        new_layers : list of str

        Returns
        -------
        dict
            JSON-safe.
        """
        return {}

    @abstractmethod
    def load_network(
        self, repurposer: Any, prefix: Path, config: dict[str, Any]
    ) -> tuple[Any, list[str] | None]:
        """Read back the trained network written by :meth:`save_network`.

        Parameters
        ----------
        repurposer : NeuralNetworkRepurposer
            Being loaded (its parameters, classes and ``sample_shape_`` are set).
        prefix : Path
        config : dict
            The fitted state of the manifest (with :meth:`network_state`'s entries).

        Returns
        -------
        handler : ModelHandler
        new_layers : list of str or None
            When the files record them.
        """


def register_training_backend(cls: type[TrainingBackend]) -> type[TrainingBackend]:
    """Class decorator: fine-tune networks whose ModelHandler ``backend`` is ``cls.key`` with ``cls``.

    Parameters
    ----------
    cls : type
        A :class:`TrainingBackend` subclass.

    Returns
    -------
    type
        ``cls`` itself.

    Raises
    ------
    InvalidArgumentError
        Another class is registered under the same key or file key.
    """
    if not (isinstance(cls, type) and issubclass(cls, TrainingBackend)):
        raise InvalidTypeError(
            f"register_training_backend takes a TrainingBackend subclass, got {cls!r}."
        )
    for key, (module, file_key) in _BUILTIN_BACKENDS.items():
        if (key == cls.key or file_key == cls.file_key) and cls.__module__ != module:
            importlib.import_module(module)  # registers the built-in one: the check below names it
    for key, registered in _BACKENDS.items():
        same_class = type(registered).__qualname__ == cls.__qualname__  # a reloaded module
        if (key == cls.key or registered.file_key == cls.file_key) and not same_class:
            raise InvalidArgumentError(
                f"{type(registered).__qualname__} is already registered for {key!r} models "
                f"(file key {registered.file_key!r}); {cls.__qualname__} cannot take the key "
                f"{cls.key!r} (file key {cls.file_key!r})."
            )
    _BACKENDS[cls.key] = cls()
    return cls


def training_backend(handler: Any) -> TrainingBackend:
    """The training backend of a ModelHandler, by its ``backend`` key.

    Parameters
    ----------
    handler : ModelHandler

    Returns
    -------
    TrainingBackend

    Raises
    ------
    InvalidTypeError
        No training backend is registered for that key.
    """
    key = getattr(handler, "backend", None)
    if key not in _BACKENDS and key in _BUILTIN_BACKENDS:
        importlib.import_module(_BUILTIN_BACKENDS[key][0])  # registers it
    if key in _BACKENDS:
        return _BACKENDS[key]
    raise InvalidTypeError(
        f"Cannot fine-tune a {type(handler).__name__} (backend {key!r}): no training backend is "
        f"registered for it (registered: {_known_keys()}). Register one with "
        "xfer.fine_tuning.register_training_backend."
    )


def training_backend_for_files(file_key: Any) -> TrainingBackend:
    """The training backend that wrote files marked ``file_key`` (their ``"backend"`` entry).

    Raises
    ------
    SerializationError
        No registered backend writes that key.
    """
    for backend in _BACKENDS.values():
        if backend.file_key == file_key:
            return backend
    for module, builtin_file_key in _BUILTIN_BACKENDS.values():
        if builtin_file_key == file_key and module not in _imported_builtins():
            importlib.import_module(module)  # registers it
            return training_backend_for_files(file_key)
    from xfer.exceptions import SerializationError

    written = {b.file_key or b.key for b in _BACKENDS.values()}
    written |= {file_key or key for key, (_, file_key) in _BUILTIN_BACKENDS.items()}
    raise SerializationError(
        f"The files were written by a training backend {file_key!r} that is not registered "
        f"(registered: {sorted(written)})."
    )


def _imported_builtins() -> set[str]:
    """The modules of the built-in backends already registered."""
    return {type(backend).__module__ for backend in _BACKENDS.values()}


__all__ = [
    "Trainer",
    "TrainingBackend",
    "register_training_backend",
    "training_backend",
    "training_backend_for_files",
]
