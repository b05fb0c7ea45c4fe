"""Fine-tuning repurposers: cut the source network, add a new head, train the result.

:class:`NeuralNetworkRepurposer` is the base of the fine-tuning family (Xfer's class of the same
name). It owns the shared contract (``fit``/``repurpose``, ``predict``/``predict_proba``, labels in
the user's values, ``context`` per call, saving) and the training options users ask for:
validation, early stopping that restores the best epoch, learning-rate schedules, a separate
learning-rate multiplier for transferred layers, two-phase freeze-then-unfreeze, frozen BatchNorm
statistics, seeding, checkpoint/resume, data parallelism and a per-epoch :class:`History`.

It is backend-neutral: the training loop is :func:`xfer.fine_tuning.loop.train`, and every step
that touches a framework goes through the training backend registered for the source model's
ModelHandler (:mod:`xfer.fine_tuning.backend`; MXNet and PyTorch are built in).

Writing your own
----------------
Subclass :class:`NeuralNetworkRepurposer`, decorate it with
:func:`xfer.serialization.register_repurposer`, and implement
``_create_target_network(handler, output_name, num_classes)``: edit ``handler`` (a copy of the
source model's :class:`~xfer.model_handler.ModelHandler`) into the target network (the training
backend's ``cut`` and ``add_head`` do the usual edits) and return a :class:`TargetNetwork` saying
which layers are new, fixed or re-initialised. Xfer's hook ``_create_target_module(train_iterator)``
(returning a bound ``mx.mod.Module``) still works for MXNet sources when overridden instead.

Saved files (``P = model_directory/model_name``): ``P.json`` (manifest), ``P.npz``, and the target
network in its backend's files: ``P-symbol.json`` and ``P-0000.params`` for MXNet (loadable with
``mx.mod.Module.load(P, 0)``). The source model is not saved by default (as in Xfer): the target
network is the model.

PyTorch sources
---------------
A ``torch.nn.Module`` source takes the same parameters and gives the same ``history_``; the
:mod:`~xfer.fine_tuning.torch` backend trains it on one device per call (``context=``),
or under ``torch.distributed`` with DistributedDataParallel (``docs/distributed.md``).
``optimizer`` is one of ``'sgd'``, ``'nag'``, ``'adam'``, ``'adamw'``, ``'rmsprop'``,
``'adagrad'`` with MXNet-style ``optimizer_params`` (``learning_rate``, ``momentum``, ``wd``,
``beta1``...), mapped to ``torch.optim``; ``lr_schedule`` is a name. The new head is
``Flatten`` + ``Linear`` giving logits (``target_model`` is that ``torch.nn.Module``;
``predict_proba`` is their softmax). Saved files: ``P.json``, ``P.npz``, ``P-target.safetensors``
and ``P-target.json`` (weights and layer list). The architecture is code and is not saved: the
manifest records the edits, and ``xfer.load(P, source_model=<a fresh source module>)`` re-applies
them to the given network and loads the saved weights; without ``source_model`` it raises
:class:`~xfer.exceptions.InvalidArgumentError`.
"""

from __future__ import annotations

import contextvars
import hashlib
import inspect
import json
import logging
import numbers
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xfer import _validation, serialization
from xfer._arguments import check_int, check_number
from xfer._progress import check_verbose
from xfer.context import Device, cpu
from xfer.data import (
    _is_torch_dataset,
    as_batches,
    data_descs,
    dataset_part,
    is_data_iterator,
    is_torch_data,
)
from xfer.distributed.world import World, shard_indices
from xfer.exceptions import (
    InvalidArgumentError,
    InvalidTypeError,
    NotFittedError,
    SerializationError,
    layer_not_found,
)
from xfer.fine_tuning import checkpoint
from xfer.fine_tuning.backend import (
    TrainingBackend,
    training_backend,
    training_backend_for_files,
)
from xfer.fine_tuning.history import History
from xfer.fine_tuning.loop import train
from xfer.fine_tuning.run import KVSTORE_TYPES, LR_SCHEDULES, Phase, Settings, derived_seed
from xfer.repurposers.base import Repurposer

logger = logging.getLogger("xfer.repurposers.neural_network")

#: The most classes a fine-tuned network's output layer may have (ImageNet-21k has 21,841): a
#: larger count is a mistake, and would exhaust memory before training starts.
MAX_TARGET_CLASSES = 2**24


def _check_target_class_count(count: Any) -> None:
    check_int(
        "target_class_count",
        count,
        minimum=2,
        maximum=MAX_TARGET_CLASSES,
        why_maximum=" (one output per class; None takes the count from the labels)",
    )


#: Xfer's default optimiser parameters.
DEFAULT_OPTIMIZER_PARAMS = {"learning_rate": 0.001}

#: While xfer.load runs: the prefix loaded from and the name the files were saved under.
_LOADING_PREFIX: contextvars.ContextVar[tuple[Path, str] | None] = contextvars.ContextVar(
    "xfer_nn_loading", default=None
)


@dataclass
class TargetNetwork:
    """The target network built from the source model, before training.

    Attributes
    ----------
    handler : ModelHandler
        The target network; parameters of transferred layers are set, new layers may have none
        yet (MXNet initialises them when training starts).
    output_layer : str
        Name of the layer whose output the classifier reads (MXNet: the ``SoftmaxOutput``, whose
        label is ``output_layer + "_label"``; PyTorch: the new ``Linear`` giving logits).
    new_layers : list of str
        Layers added on top of the transferred ones (always trained at the full rate).
    fixed_parameters : list of str
        Parameters kept fixed in every phase (exact names, from ``get_layer_parameters``).
    random_parameters : list of str
        Transferred parameters re-initialised before training (trained like new layers).
    """

    handler: Any
    output_layer: str
    new_layers: list[str] = field(default_factory=list)
    fixed_parameters: list[str] = field(default_factory=list)
    random_parameters: list[str] = field(default_factory=list)

    @property
    def label_name(self) -> str:
        return f"{self.output_layer}_label"


def _is_torch_tensor(data: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(data, torch.Tensor)


def _output_name(label_name: str | None) -> str:
    """The output layer's name an iterator's label asks for (``softmax_label`` -> ``softmax``)."""
    if label_name and label_name.endswith("_label"):
        return label_name[: -len("_label")]
    return "softmax"


class NeuralNetworkRepurposer(Repurposer):
    """Base class of repurposers that train a target network transferred from the source network.

    Parameters
    ----------
    source_model : mx.mod.Module, torch.nn.Module, ModelHandler or (symbol, arg_params, aux_params)
        The pretrained network (see "PyTorch sources" in the module documentation).
    context_function : callable, str, mx.Context or list, default=mx.cpu
        Default device(s) (Xfer's ``context_function``); ``context=`` on each call overrides it.
        A list of devices trains data-parallel through MXNet's kvstore. The default is
        :func:`xfer.context.cpu` (``mx.cpu`` without importing MXNet).
    num_devices : int, default=1
        Number of devices of the kind ``context_function`` makes.
    batch_size : int, default=64
        Examples per training step (honoured for arrays *and* data iterators) and per
        prediction batch.
    num_epochs : int, default=5
        Epochs of training (of the second phase when ``head_epochs`` is set).
    optimizer : str, default='sgd'
        Name of an MXNet optimiser (``'sgd'``, ``'adam'``, ``'nag'``...).
    optimizer_params : dict, optional
        Its parameters; default ``{'learning_rate': 0.001}`` (Xfer's).
    validation_fraction : float in (0, 1), optional
        Hold out this stratified fraction of the training data to validate on after each epoch
        (or pass ``validation_data`` to :meth:`fit`).
    early_stopping_patience : int, optional
        Stop a phase after this many epochs without a lower validation loss, and restore the
        weights of the best epoch. Needs validation data.
    lr_schedule : {'constant', 'step', 'cosine'} or mx.lr_scheduler.LRScheduler, optional
        Per-epoch schedule of each phase: ``'step'`` multiplies the rate by 0.1 at half and
        three quarters of the epochs, ``'cosine'`` anneals it to 0. An MXNet scheduler object is
        applied per update (and is not saved with the model).
    transferred_lr_mult : float, default=1.0
        Learning-rate multiplier of the transferred layers relative to the new ones (0.1 trains
        the transferred layers ten times slower). 0 freezes them.
    head_epochs : int, optional
        Two-phase training: first train only the new layers (transferred ones frozen, their
        BatchNorm statistics fixed) for ``head_epochs`` epochs, then rebuild the optimiser and
        train every trainable layer for ``num_epochs`` epochs at ``unfreeze_lr_factor`` times the
        learning rate.
    unfreeze_lr_factor : float, default=0.1
        Multiplies the learning rate in the second phase.
    freeze_batchnorm : bool, default=False
        Keep every transferred BatchNorm layer frozen in all phases (stored statistics used and
        never updated; gamma and beta fixed): the usual choice for small target sets.
    kvstore : str, default='device'
        MXNet kvstore for several devices; ``'dist_sync'`` trains across machines (see the README).
    checkpoint_dir : str or path, optional
        Write a checkpoint there at each epoch end; ``fit(..., resume=True)`` continues an
        interrupted fit from it and reaches the same weights as an uninterrupted run.
    random_state : int, optional
        Seed of initialisation, shuffling, the validation split and MXNet's random operators:
        with it, training on CPU is reproducible bit for bit.
    verbose : bool or int, default=False
        ``1``/``True``: progress bars; ``0``/``False``: none. Log records go to the ``xfer``
        loggers whatever the value (see "Progress bars and logs" in :mod:`xfer`).

    Attributes
    ----------
    classes_ : ndarray
        Label values, in the order of ``predict_proba``'s columns.
    history_ : History
        Per-epoch loss, accuracy, validation loss and accuracy, learning rate and time;
        ``plot_history()`` draws it.
    target_model : mx.mod.Module or torch.nn.Module
        The trained target network (Xfer's attribute), unbound with its parameters set.
    new_layers_ : list of str
        The layers added on top of the transferred ones (set by ``fit``).

    Notes
    -----
    Subclasses list their own constructor parameters and pass the rest on, as
    ``def __init__(self, source_model, their_params..., *args, **options)`` calling
    ``super().__init__(source_model, *args, **options)``; their published signature (what
    ``inspect.signature``, scikit-learn's ``get_params`` and the documentation see) is theirs
    followed by these.
    """

    _save_source_model_default = False

    def __init__(
        self,
        source_model: Any,
        context_function: Any = cpu,
        num_devices: int = 1,
        batch_size: int = 64,
        num_epochs: int = 5,
        optimizer: str = "sgd",
        optimizer_params: dict | None = None,
        *,
        validation_fraction: float | None = None,
        early_stopping_patience: int | None = None,
        lr_schedule: Any = None,
        transferred_lr_mult: float = 1.0,
        head_epochs: int | None = None,
        unfreeze_lr_factor: float = 0.1,
        freeze_batchnorm: bool = False,
        kvstore: str = "device",
        checkpoint_dir: str | None = None,
        random_state: int | None = None,
        verbose: bool = False,
    ):
        super().__init__(source_model, context_function=context_function, num_devices=num_devices)
        self.batch_size = batch_size
        self.num_epochs = num_epochs
        self.optimizer = optimizer
        self.optimizer_params = optimizer_params
        self.validation_fraction = validation_fraction
        self.early_stopping_patience = early_stopping_patience
        self.lr_schedule = lr_schedule
        self.transferred_lr_mult = transferred_lr_mult
        self.head_epochs = head_epochs
        self.unfreeze_lr_factor = unfreeze_lr_factor
        self.freeze_batchnorm = freeze_batchnorm
        self.kvstore = kvstore
        self.checkpoint_dir = checkpoint_dir
        self.random_state = random_state
        self.verbose = verbose

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Publish ``own parameters + the base's`` as the signature of a subclass whose
        ``__init__`` passes the base's on as ``*args, **options`` (see Notes)."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        params = list(inspect.signature(init).parameters.values())
        kinds = {p.kind for p in params}
        if not {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} <= kinds:
            return
        own = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        names = {p.name for p in own}
        parent = inspect.signature(super(cls, cls).__init__).parameters.values()
        init.__signature__ = inspect.Signature(own + [p for p in parent if p.name not in names])

    # ---------------------------------------------------------------- hooks
    def _create_target_network(
        self, handler: Any, output_name: str, num_classes: int
    ) -> TargetNetwork:
        """Edit ``handler`` (a copy of the source model's) into the target network. Subclasses
        implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _create_target_network (or Xfer's "
            "_create_target_module)."
        )

    def _create_target_module(self, train_iterator: Any) -> Any:
        """Xfer's hook: the bound, initialised target ``mx.mod.Module`` for ``train_iterator``."""
        return self._training_backend().xfer_target_module(self, train_iterator)

    def _class_count_for_hook(self) -> int:
        if hasattr(self, "classes_"):
            return len(self.classes_)
        count = getattr(self, "target_class_count", None)
        if count is None:
            raise InvalidArgumentError("target_class_count is needed to build the target module.")
        return int(count)

    def _training_backend(self) -> TrainingBackend:
        """The training backend of the source model (registered for its ModelHandler)."""
        return training_backend(self._get_model_handler())

    # ---------------------------------------------------------------- validation
    def _validate_before_repurpose(self) -> None:
        """Xfer's hook, called once at the start of ``fit``/``repurpose``: the source model must
        be a network (a ``TypeError`` with Xfer's words otherwise). Subclasses add their checks."""
        problem = "is None" if self.source_model is None else None
        if problem is None:
            try:
                self._get_model_handler()
            except InvalidTypeError:
                problem = f"is a {type(self.source_model).__qualname__}"
        if problem is not None:
            raise InvalidTypeError(
                "Cannot repurpose because source_model is not an `mxnet.mod.Module` object (or "
                f"another network a ModelHandler takes): it {problem}. Construct "
                f"{type(self).__name__} with source_model=<the pretrained network>."
            )

    def _validate_params(self) -> None:
        check_int("batch_size", self.batch_size)
        check_int("num_epochs", self.num_epochs)
        check_int("head_epochs", self.head_epochs, allow_none=True)
        check_int("early_stopping_patience", self.early_stopping_patience, allow_none=True)
        if not isinstance(self.optimizer, str):
            raise InvalidTypeError(
                f"optimizer must be the name of an optimiser (e.g. 'sgd', 'adam'), got "
                f"{type(self.optimizer).__name__}; pass its settings in optimizer_params."
            )
        if self.source_model is None:  # a TypeError, as in Xfer
            raise InvalidTypeError(
                f"{type(self).__name__} needs a source model to fit: construct it with "
                "source_model=..."
            )
        backend = self._training_backend()
        params = self._optimizer_params()
        if not isinstance(params, dict):
            raise InvalidTypeError(f"optimizer_params must be a dict, got {type(params).__name__}.")
        if "learning_rate" in params:
            check_number("optimizer_params['learning_rate']", params["learning_rate"], 0.0)
        for reserved in ("rescale_grad", "lr_scheduler", "param_idx2name", "sym"):
            if reserved in params:
                raise InvalidArgumentError(
                    f"optimizer_params must not set {reserved!r}: the repurposer sets it "
                    "(use lr_schedule= for schedules)."
                )
        backend.check_optimizer(self.optimizer, params)
        if self.validation_fraction is not None:
            check_number(
                "validation_fraction", self.validation_fraction, 0.0, 1.0,
                low_open=True, high_open=True,
            )  # fmt: skip
        if self.lr_schedule is not None and not (
            isinstance(self.lr_schedule, str) and self.lr_schedule in LR_SCHEDULES
        ):
            backend.check_lr_schedule(self.lr_schedule)
        check_number("transferred_lr_mult", self.transferred_lr_mult, 0.0)
        check_number("unfreeze_lr_factor", self.unfreeze_lr_factor, 0.0, low_open=True)
        if not isinstance(self.freeze_batchnorm, bool):
            raise InvalidTypeError(
                f"freeze_batchnorm must be True or False, got {self.freeze_batchnorm!r}."
            )
        if not isinstance(self.kvstore, str) or not self.kvstore:
            raise InvalidTypeError(
                f"kvstore must be a kvstore type name such as 'device', got {self.kvstore!r}."
            )
        if self.kvstore not in KVSTORE_TYPES:
            raise InvalidArgumentError(
                f"kvstore={self.kvstore!r} is not a kvstore type; use one of "
                f"{', '.join(KVSTORE_TYPES[:6])} (MXNet would silently train with 'local')."
            )
        if self.checkpoint_dir is not None and not isinstance(
            self.checkpoint_dir, (str, os.PathLike)
        ):
            raise InvalidTypeError(
                f"checkpoint_dir must be a path, got {type(self.checkpoint_dir).__name__}."
            )
        if self.checkpoint_dir is not None and (
            not os.fspath(self.checkpoint_dir)
            or (Path(self.checkpoint_dir).exists() and not Path(self.checkpoint_dir).is_dir())
        ):
            raise InvalidArgumentError(
                f"checkpoint_dir={os.fspath(self.checkpoint_dir)!r} is not a folder (a file is "
                "there, or it is empty): give the folder the checkpoints go to."
            )
        if self.random_state is not None and not isinstance(
            self.random_state, np.random.RandomState
        ):
            if isinstance(self.random_state, bool) or not isinstance(
                self.random_state, numbers.Integral
            ):
                raise InvalidTypeError(
                    f"random_state must be an int or None, got {self.random_state!r}."
                )

    def _optimizer_params(self) -> dict:
        if self.optimizer_params is None:
            return dict(DEFAULT_OPTIMIZER_PARAMS)
        return (
            dict(self.optimizer_params)
            if isinstance(self.optimizer_params, dict)
            else self.optimizer_params
        )

    # ---------------------------------------------------------------- data
    def _read_data(
        self, X: Any, y: Any, what: str, world: World | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """``X`` (array or DataIter) as a float32 array with its labels (and the iterator's label
        name), checked by the input gate (:mod:`xfer._validation`).

        In a distributed fit (``world`` of several processes) only this process's part of an
        array or a torch ``Dataset`` is read (:func:`~xfer.distributed.world.shard_indices`); an
        ``mx.io.DataIter`` or a ``DataLoader`` is taken to be this process's part already.
        """
        label_name = None
        x_name, y_name = ("X", "y") if what != "validation_data" else ("X_val", "y_val")
        torch_data = is_torch_data(X)
        if world is not None and world.size > 1 and _is_torch_dataset(X):
            X = dataset_part(X, shard_indices(len(X), world.rank, world.size))
        if is_data_iterator(X) or torch_data:
            if y is not None:
                raise InvalidArgumentError(
                    f"{what}: labels were passed together with an "
                    f"{'torch Dataset/DataLoader' if torch_data else 'mx.io.DataIter'}; its own "
                    "labels are used. Put the labels in it, or pass arrays."
                )
            if not torch_data and X.provide_label:
                label_name = data_descs(X.provide_label)[0].name  # DataDesc or (name, shape)
            batches = as_batches(X)  # checks every batch for NaN and infinity
            data_chunks, label_chunks = [], []
            for batch in batches:
                data_chunks.append(batch.data[: batch.num_valid])
                if batch.labels is not None:
                    label_chunks.append(batch.labels)
            if not data_chunks:
                raise InvalidArgumentError(f"{what}: the data iterator is empty.")
            data = np.concatenate(data_chunks)
            labels = np.concatenate(label_chunks) if batches.has_labels and label_chunks else None
        else:
            if hasattr(X, "asnumpy") and not isinstance(X, np.ndarray):
                X = X.asnumpy()
            if _is_torch_tensor(X):
                X = X.detach().cpu().numpy()
            if not isinstance(X, np.ndarray):
                if isinstance(X, (list, tuple)):
                    try:
                        X = np.asarray(X)
                    except ValueError as error:
                        raise InvalidArgumentError(
                            f"{what}: {x_name} cannot be read as an array of examples ({error})."
                        ) from error
                else:
                    raise InvalidTypeError(
                        f"{what}: cannot read data of type {type(X).__name__}; pass a NumPy array "
                        "with examples along the first axis, or an mx.io.DataIter."
                    )
            if X.ndim < 2 or len(X) == 0:
                raise InvalidArgumentError(
                    f"{what}: expected a non-empty array of examples (N x ...), got shape {X.shape}."
                )
            if not np.issubdtype(X.dtype, np.number) or X.dtype.kind == "c":
                raise InvalidTypeError(f"{what}: the data must be real numbers, got dtype {X.dtype}.")
            labels = None if y is None else _validation.check_labels(
                y, y_name, n_samples=len(X), x_name=x_name
            )
            if world is not None and world.size > 1:  # read only this process's rows
                rows = shard_indices(len(X), world.rank, world.size)
                X = X[rows]
                labels = None if labels is None else labels[rows]
            _validation.check_finite(X, f"{what}: {x_name}", "Remove or repair those examples.")
            data = X.astype(np.float32, copy=False)
        if labels is not None and len(labels) != len(data):
            raise InvalidArgumentError(
                f"{what}: the data iterator gave {len(data)} examples but {len(labels)} labels."
            )
        return data, labels, label_name

    def _encode_known(self, labels: np.ndarray, what: str) -> np.ndarray:
        labels = np.asarray(labels).ravel()
        _validation.check_labels_like(labels, self.classes_, "y_val" if what == "validation_data" else "y")
        if (
            self.classes_.dtype.kind in "iuf"
            and labels.dtype.kind == "f"
            and self.classes_.dtype.kind in "iu"
        ):
            labels = (
                labels.astype(self.classes_.dtype) if np.all(labels == np.round(labels)) else labels
            )
        positions = np.searchsorted(self.classes_, labels)
        positions = np.clip(positions, 0, len(self.classes_) - 1)
        unknown = self.classes_[positions] != labels
        if np.any(unknown):
            raise InvalidArgumentError(
                f"{what} has labels not in the training labels: {sorted(set(np.asarray(labels)[unknown].tolist()))[:5]}."
            )
        return positions.astype(np.int64)

    @staticmethod
    def _iterator_labels_as_user_values(labels: np.ndarray) -> np.ndarray:
        """MXNet iterators hold labels as floats: give whole numbers back as ints."""
        if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
            return labels.astype(np.int64)
        return labels

    # ---------------------------------------------------------------- fit
    def repurpose(
        self, train_iterator: Any, context: Any = None, **fit_options: Any
    ) -> NeuralNetworkRepurposer:
        """Train the target network on ``train_iterator`` (Xfer spelling of :meth:`fit`).

        Parameters
        ----------
        train_iterator : mx.io.DataIter, ndarray or torch Dataset/DataLoader
            Training inputs with their labels.
        context : str, mx.Context or list, optional
            Device(s) for this fit.
        **fit_options
            ``validation_data``, ``resume``: as for :meth:`fit`.

        Returns
        -------
        self
        """
        return self.fit(train_iterator, context=context, **fit_options)

    def fit(
        self,
        X: Any,
        y: Any = None,
        context: Any = None,
        *,
        validation_data: Any = None,
        resume: bool = False,
    ) -> NeuralNetworkRepurposer:
        """Build the target network from the source model and train it.

        Parameters
        ----------
        X : ndarray of shape (n_samples, ...) or mx.io.DataIter
            Inputs of the source network (an iterator supplies its labels; it is read once).
        y : array-like of shape (n_samples,), optional
            Labels of any values (ints, strings); required for array ``X``.
        context : str, mx.Context or list, optional
            Device(s) for this fit; a list trains data-parallel (``['cpu:0', 'cpu:1']``,
            ``['gpu:0', 'gpu:1']``).
        validation_data : (X_val, y_val) or mx.io.DataIter, optional
            Data to validate on after each epoch (instead of ``validation_fraction``).
        resume : bool, default=False
            Continue the interrupted fit whose checkpoint is in ``checkpoint_dir``; needs the same
            data and parameters.

        Returns
        -------
        self

        Raises
        ------
        InvalidArgumentError, InvalidTypeError
            A bad parameter or bad data; the message says which and what to do.
        LayerNotFoundError
            A layer name that is not in the source model.
        DeviceUnavailableError
            A GPU asked for on a machine without one.
        """
        self._validate_before_repurpose()  # Xfer's hook for a subclass's checks, once per fit
        self._validate_params()
        devices = self._resolve_devices(context)
        self._require_available(devices)
        contexts = self._training_backend().contexts(devices)
        if not isinstance(resume, bool):
            raise InvalidTypeError(f"resume must be True or False, got {resume!r}.")
        if resume and self.checkpoint_dir is None:
            raise InvalidArgumentError(
                "resume=True needs checkpoint_dir, where the checkpoint of the interrupted fit is."
            )
        if self.validation_fraction is not None and validation_data is not None:
            raise InvalidArgumentError("Give validation_fraction or validation_data, not both.")
        if self.batch_size < len(contexts):
            raise InvalidArgumentError(
                f"batch_size={self.batch_size} cannot be split over {len(contexts)} devices: use a "
                "larger batch_size or fewer devices."
            )

        world = self._training_backend().world(self.kvstore)
        data, labels, iterator_label_name = self._read_data(X, y, "fit", world)
        if labels is None:
            raise InvalidArgumentError(
                "fit requires y: pass labels, or an mx.io.DataIter that provides labels."
            )
        if iterator_label_name is not None:
            labels = self._iterator_labels_as_user_values(labels)
        for attribute in ("classes_", "target_handler_", "history_"):
            self.__dict__.pop(attribute, None)
        if world.size > 1:  # the classes of every process's part, in every process
            parts = world.gather_bytes(json.dumps(np.unique(labels).tolist()).encode())
            every_class = np.unique(np.concatenate([np.asarray(json.loads(p)) for p in parts]))
            codes = self._encode_labels(np.concatenate([every_class, labels]))[len(every_class) :]
        else:
            codes = self._encode_labels(labels)
        codes = self._declared_class_indices(labels, codes)
        try:
            return self._fit_encoded(
                data, codes, iterator_label_name, validation_data, devices, contexts, resume, world
            )
        except BaseException:
            self.__dict__.pop("classes_", None)  # a failed fit leaves the repurposer unfitted
            raise

    def _declared_class_indices(self, labels: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Xfer's reading of ``target_class_count`` larger than the labels seen: the labels are
        class indices ``0..target_class_count-1`` (some not in this training set), the network
        gets ``target_class_count`` outputs and ``classes_`` is all of them."""
        declared = getattr(self, "target_class_count", None)
        if declared is None or isinstance(declared, bool) or not isinstance(declared, numbers.Integral):
            return codes
        _check_target_class_count(declared)
        if int(declared) <= len(self.classes_):
            return codes  # equal: nothing to do; fewer: _fit_encoded says what is wrong
        classes = self.classes_
        if classes.dtype.kind not in "iu" or classes.min() < 0 or classes.max() >= int(declared):
            raise InvalidArgumentError(
                f"target_class_count={declared} but the training labels have {len(classes)} "
                f"classes ({list(classes)[:10]}). A larger target_class_count means the labels "
                f"are class indices 0..{int(declared) - 1}; these labels are not. Pass "
                f"target_class_count={len(classes)}, or None to take it from the labels."
            )
        self.classes_ = np.arange(int(declared), dtype=classes.dtype)
        return np.asarray(labels).astype(np.int64)

    def _seed(self, resume: bool, world: World) -> int:
        """The fit's seed (every process of a distributed run takes rank 0's)."""
        seed = self._draw_seed(resume)
        if world.size > 1:
            seed = int(world.gather_bytes(str(seed).encode())[0])
        return seed

    def _draw_seed(self, resume: bool) -> int:
        if isinstance(self.random_state, numbers.Integral):
            return int(self.random_state) & 0x7FFFFFFF
        if resume:
            seed = checkpoint.checkpoint_seed(Path(self.checkpoint_dir))
            if seed is not None:
                return seed
        source = (
            self.random_state if isinstance(self.random_state, np.random.RandomState) else np.random
        )
        return int(source.randint(0, 2**31 - 1))

    def _fit_encoded(
        self,
        data: np.ndarray,
        codes: np.ndarray,
        iterator_label_name: str | None,
        validation_data: Any,
        devices: list[Device],
        contexts: list,
        resume: bool,
        world: World,
    ) -> NeuralNetworkRepurposer:
        num_classes = len(self.classes_)
        declared = getattr(self, "target_class_count", None)
        if declared is not None:
            _check_target_class_count(declared)
            if int(declared) != num_classes:
                raise InvalidArgumentError(
                    f"target_class_count={declared} but the training labels have {num_classes} "
                    f"classes ({list(self.classes_)[:10]}). Pass target_class_count={num_classes}, "
                    "or None to take it from the labels."
                )
        if (
            self.early_stopping_patience is not None
            and self.validation_fraction is None
            and validation_data is None
        ):
            raise InvalidArgumentError(
                "early_stopping_patience needs validation data: set validation_fraction or pass "
                "validation_data to fit."
            )
        seed = self._seed(resume, world)
        validation = None
        if validation_data is not None:
            validation = self._validation_arrays(validation_data, data.shape[1:], world)
        elif self.validation_fraction is not None:
            data, codes, validation = self._split(data, codes, seed, world)
        sizes = world.counts(len(data))

        backend = self._training_backend()
        # New layers are initialised from the seed (the backend's global state is left alone).
        with backend.seeded(derived_seed(seed, 4)), self._using_devices(devices):
            network = self._build_network(iterator_label_name, num_classes, data, codes)
        settings = Settings(
            batch_size=int(min(self.batch_size, max(int(sizes.max()), len(contexts)))),
            optimizer=self.optimizer.lower(),
            optimizer_params=self._optimizer_params(),
            contexts=contexts,
            seed=seed,
            lr_schedule=self.lr_schedule,
            early_stopping_patience=self.early_stopping_patience,
            kvstore=self.kvstore,
            checkpoint_dir=None if self.checkpoint_dir is None else Path(self.checkpoint_dir),
            resume=resume,
            fingerprint=self._fingerprint(data, codes, validation, len(contexts), world),
            verbose=check_verbose(self.verbose),
            world=world,
        )
        self.history_ = train(
            backend,
            network,
            self._phases(network),
            data,
            codes,
            validation,
            settings,
            epoch_end=getattr(self, "_epoch_end_hook", None),
        )
        self.target_handler_ = network.handler
        self.output_layer_ = network.output_layer
        self.new_layers_ = list(network.new_layers)
        self.n_training_examples_ = int(sizes.sum())  # every process's
        self.sample_shape_ = tuple(int(s) for s in data.shape[1:])
        return self

    def _validation_arrays(
        self, validation_data: Any, sample_shape: tuple, world: World
    ) -> tuple[np.ndarray, np.ndarray]:
        """``validation_data`` (``(X_val, y_val)`` or a DataIter) as examples and label codes
        (this process's part of them in a distributed fit)."""
        if is_data_iterator(validation_data):
            val_x, val_y, _ = self._read_data(validation_data, None, "validation_data", world)
            if val_y is None:
                raise InvalidArgumentError("validation_data: the iterator provides no labels.")
            val_y = self._iterator_labels_as_user_values(val_y)
        elif isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
            val_x, val_y, _ = self._read_data(
                validation_data[0], validation_data[1], "validation_data", world
            )
            if val_y is None:
                raise InvalidArgumentError("validation_data must be (X_val, y_val) with labels.")
        else:
            raise InvalidTypeError(
                "validation_data must be a tuple (X_val, y_val) or an mx.io.DataIter with labels."
            )
        if val_x.shape[1:] != sample_shape:
            raise InvalidArgumentError(
                f"validation_data examples have shape {val_x.shape[1:]}, training examples "
                f"{sample_shape}."
            )
        return val_x, self._encode_known(val_y, "validation_data").astype(np.float32)

    def _split(self, data, codes, seed, world):
        """Hold out ``validation_fraction`` of this process's examples (stratified, seeded)."""
        from sklearn.model_selection import train_test_split

        indices = np.arange(len(data))
        try:
            train_idx, val_idx = train_test_split(
                indices, test_size=self.validation_fraction, random_state=seed, stratify=codes
            )
        except ValueError:  # a class too small to stratify: plain random split
            train_idx, val_idx = train_test_split(
                indices, test_size=self.validation_fraction, random_state=seed
            )
        train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
        counts = np.bincount(codes[train_idx], minlength=len(self.classes_))
        if world.size > 1:  # a class may be missing from one process's part, not from all
            counts = world.sum(counts)
        if np.any(counts == 0):
            raise InvalidArgumentError(
                "validation_fraction leaves a class without training examples: use a smaller "
                "fraction or pass validation_data."
            )
        return data[train_idx], codes[train_idx], (data[val_idx], codes[val_idx].astype(np.float32))

    def _fingerprint(self, data, codes, validation, num_contexts, world) -> str:
        digest = hashlib.sha256()
        for array in (data, codes) + (tuple(validation) if validation is not None else ()):
            array = np.ascontiguousarray(array)
            digest.update(str((array.shape, array.dtype.str)).encode())
            digest.update(array.tobytes())
        ignored = (
            "source_model",
            "verbose",
            "checkpoint_dir",
            "random_state",
            "context_function",
            "num_devices",
        )
        backend = self._training_backend()
        params = {}
        for name, value in self.get_params(deep=False).items():
            if name in ignored:
                continue
            if name == "lr_schedule" and value is not None and not isinstance(value, str):
                params[name] = backend.describe_schedule(value)
            else:
                params[name] = self._json_param(name, value)
        digest.update(json.dumps(params, sort_keys=True, default=str).encode())
        digest.update(str(num_contexts).encode())
        # A checkpoint of one backend never resumes a fit of another.
        digest.update((backend.file_key or "").encode())
        if world.size > 1:  # every process's data, in rank order: the same in every process
            return hashlib.sha256(b"".join(world.gather_bytes(digest.digest()))).hexdigest()
        return digest.hexdigest()

    def _build_network(
        self, iterator_label_name: str | None, num_classes: int, data: np.ndarray, codes: np.ndarray
    ) -> TargetNetwork:
        overridden = (
            type(self)._create_target_module is not NeuralNetworkRepurposer._create_target_module
        )
        if overridden:  # an Xfer-style subclass: take the module it builds
            return self._training_backend().network_from_xfer_module(
                self, data, codes, iterator_label_name or "softmax_label"
            )
        return self._target_network(
            None,
            num_classes,
            preferred=_output_name(iterator_label_name),
            sample_shape=data.shape[1:],
        )

    def _target_network(
        self,
        label_name: str | None,
        num_classes: int,
        preferred: str | None = None,
        sample_shape: tuple | None = None,
    ) -> TargetNetwork:
        source = self._get_model_handler()
        backend = training_backend(source)
        handler = backend.editable_copy(source, sample_shape)  # the source is never edited
        network = self._create_target_network(
            handler, preferred or _output_name(label_name), num_classes
        )
        if not isinstance(network, TargetNetwork):
            raise InvalidTypeError("_create_target_network must return a TargetNetwork.")
        backend.finish_target(network)
        return network

    def _phases(self, network: TargetNetwork) -> list[Phase]:
        handler = network.handler
        new_layers = set(network.new_layers)
        all_parameters = training_backend(handler).parameter_names(handler)
        new_parameters = set(
            handler.get_layer_parameters([n for n in handler.layer_names if n in new_layers])
        )
        random = set(network.random_parameters)
        fixed = set(network.fixed_parameters)
        if self.freeze_batchnorm:
            batchnorm = [
                n for n in handler.get_layer_names_matching_type("BatchNorm") if n not in new_layers
            ]
            fixed |= set(handler.get_layer_parameters(batchnorm))
        transferred = [p for p in all_parameters if p not in new_parameters and p not in random]
        mult = float(self.transferred_lr_mult)
        if mult == 0.0:
            fixed |= set(transferred)
        lr_mults = {p: mult for p in transferred if p not in fixed}
        full = Phase(
            name="full",
            num_epochs=int(self.num_epochs),
            fixed_parameters=sorted(fixed),
            random_parameters=sorted(random),
            lr_mults=lr_mults,
        )
        if self.head_epochs is None:
            return [full]
        head = Phase(
            name="head",
            num_epochs=int(self.head_epochs),
            fixed_parameters=sorted(fixed | set(transferred)),
            random_parameters=sorted(random),
        )
        full.lr_factor = float(self.unfreeze_lr_factor)
        return [head, full]

    # ---------------------------------------------------------------- predict
    def predict_proba(self, X: Any, context: Any = None) -> np.ndarray:
        """Class probabilities ``[N, n_classes]`` in the order of ``classes_``.

        Parameters
        ----------
        X : ndarray or mx.io.DataIter
            Inputs; labels are not needed (an iterator's labels are ignored).
        context : optional
            Device(s) for this call; a loaded model runs where it is asked to.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        self._validate_before_predict()
        devices = self._resolve_devices(context)
        self._require_available(devices)
        if not is_data_iterator(X):
            X, _, _ = self._read_data(X, None, "predict")
            if getattr(self, "sample_shape_", None) not in (None, X.shape[1:]):
                raise InvalidArgumentError(
                    f"X has examples of shape {X.shape[1:]}, but {type(self).__name__} was "
                    f"trained on examples of shape {self.sample_shape_}."
                )
        handler = self.target_handler_
        backend = training_backend(handler)
        backend.contexts(devices)  # devices the backend cannot run on are refused here
        outputs, _ = handler.get_layer_output(
            X,
            [self.output_layer_],
            context=devices,
            batch_size=int(self.batch_size),
            verbose=check_verbose(self.verbose),
        )
        values = np.asarray(outputs[self.output_layer_], dtype=np.float64)
        if backend.output_is_logits:
            values = np.exp(values - values.max(axis=1, keepdims=True))
            values /= values.sum(axis=1, keepdims=True)
        return values

    # ---------------------------------------------------------------- Xfer attribute, history
    @property
    def target_model(self) -> Any:
        """The trained target network: an unbound ``mx.mod.Module`` with its parameters set, or,
        for a PyTorch source, the ``torch.nn.Module`` (it returns logits; softmax gives
        ``predict_proba``). None before fitting, as in Xfer.

        An ``mx.mod.Module`` with initialised parameters whose network ends in a softmax layer
        can be assigned (Xfer's scripts assign ``mx.mod.Module.load(...)``): the repurposer then
        predicts with it, and saves it. Its classes are ``0..K-1`` (Xfer's fine-tuners predicted
        class indices), K read from the module's output shape (bound module) or from the
        ``FullyConnected``/``Convolution`` layer under the softmax. Assigning ``None`` makes the
        repurposer unfitted; anything else raises
        :class:`~xfer.exceptions.InvalidTypeError` (a ``TypeError``). A network fine-tuned from a
        PyTorch source cannot be assigned (its saved form needs the edits ``fit`` records).
        """
        if not self.__sklearn_is_fitted__():
            return None
        handler = self.target_handler_
        return training_backend(handler).target_model(
            handler, self.output_layer_, self._default_devices()
        )

    @target_model.setter
    def target_model(self, model: Any) -> None:
        if model is None:
            self._unfit()
            return
        from xfer.model_handler import ModelHandler

        try:
            handler = ModelHandler(
                model, context_function=self.context_function, num_devices=self.num_devices
            )
        except (TypeError, ValueError) as error:
            raise InvalidTypeError(
                f"{type(self).__name__}.target_model must be a trained `mxnet.mod.Module` object "
                "(e.g. mx.mod.Module.load(prefix, epoch)), or None to unfit it; got "
                f"{type(model).__module__}.{type(model).__qualname__}."
            ) from error
        output, n_classes, sample_shape = training_backend(handler).assigned_network(model, handler)
        self._install_network(handler, output, n_classes, sample_shape)

    def _install_network(
        self, handler: Any, output: str, n_classes: int, sample_shape: Any
    ) -> None:
        """The fitted state of a network given whole, not trained by ``fit``: an assigned
        ``target_model`` or a network converted from an Xfer 1.1.0 file."""
        self._unfit()
        self.classes_ = np.arange(n_classes)  # Xfer's fine-tuners predicted class indices
        self.target_handler_ = handler
        self.output_layer_ = output
        self.new_layers_ = []
        self.sample_shape_ = sample_shape
        self.n_training_examples_ = 0
        self.history_ = History()

    def _validate_before_predict(self) -> None:
        """Xfer's check before predicting: the repurposer must hold a target network."""
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                "Cannot predict because target_model is not an `mxnet.mod.Module` object: this "
                f"{type(self).__name__} is not fitted yet. Call fit(X, y) or "
                "repurpose(train_iterator) first, or assign a trained module to target_model."
            )

    def plot_history(self, ax: Any = None) -> Any:
        """Plot the training curves of the last fit (see :meth:`History.plot`).

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Where to draw (default: a new figure).

        Returns
        -------
        matplotlib.axes.Axes or array of them
            What :meth:`History.plot` returns.
        """
        self._check_fitted()
        return self.history_.plot(ax)

    # ---------------------------------------------------------------- saving
    @staticmethod
    def _json_param(name: str, value: Any) -> Any:
        if name == "lr_schedule" and value is not None and not isinstance(value, str):
            warnings.warn(
                "lr_schedule is a scheduler object, which is not saved (it only matters for "
                "training); the loaded repurposer has lr_schedule=None.",
                stacklevel=6,
            )
            return None
        if name == "checkpoint_dir" and isinstance(value, os.PathLike):
            return os.fspath(value)
        return Repurposer._json_param(name, value)

    def _save_to_prefix(self, prefix: Path, save_source_model: bool | None) -> None:
        if self.__sklearn_is_fitted__():
            prefix.parent.mkdir(parents=True, exist_ok=True)
            names = training_backend(self.target_handler_).save_network(
                self.target_handler_, prefix
            )
            self._target_files = {
                name: serialization.sha256_of(prefix.parent / name) for name in names
            }
        try:
            super()._save_to_prefix(prefix, save_source_model)
        finally:
            self.__dict__.pop("_target_files", None)

    def _get_fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        handler = self.target_handler_
        state = {
            "output_layer": self.output_layer_,
            "sample_shape": None if self.sample_shape_ is None else list(self.sample_shape_),
            "n_training_examples": self.n_training_examples_,
            "history": self.history_.to_dict(),
            "target_files": dict(self._target_files),
            "data_name": handler.data_name,
        }
        backend = training_backend(handler)
        if backend.file_key is not None:
            state["backend"] = backend.file_key
        state.update(backend.network_state(handler, getattr(self, "new_layers_", [])))
        return state, {}

    @classmethod
    def _from_manifest(
        cls,
        manifest: dict[str, Any],
        arrays: dict[str, np.ndarray],
        prefix: Path,
        source_model: Any = None,
    ) -> Repurposer:
        state = manifest.get("state") if isinstance(manifest.get("state"), dict) else {}
        if manifest.get("fitted") and source_model is None and not manifest.get("source_model"):
            backend = training_backend_for_files(state.get("backend"))
            if backend.needs_source_to_load:
                raise InvalidArgumentError(
                    f"{prefix}.json holds a network fine-tuned from {backend.display_name}. Its "
                    "weights are saved, but its architecture is code, which xfer never stores or "
                    "unpickles: pass the source network, freshly built, to xfer.load(..., "
                    f"source_model=<{backend.source_model_hint}>); the edits recorded in the "
                    "manifest are re-applied to it and the saved weights loaded."
                )
        arrays_file = manifest.get("arrays_file")
        saved_name = (
            arrays_file[: -len(".npz")]
            if isinstance(arrays_file, str) and arrays_file.endswith(".npz")
            else Path(prefix).name
        )
        token = _LOADING_PREFIX.set((Path(prefix), saved_name))
        try:
            return super()._from_manifest(manifest, arrays, prefix, source_model=source_model)
        finally:
            _LOADING_PREFIX.reset(token)

    def _set_fitted_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        loading = _LOADING_PREFIX.get()
        if loading is None:
            raise SerializationError(
                "The target network can only be read while loading (xfer.load)."
            )
        prefix, saved_name = loading
        backend = training_backend_for_files(config.get("backend"))
        files = config["target_files"]
        if not isinstance(files, dict):
            raise SerializationError(f"{prefix}.json: 'target_files' must be an object.")
        # Each file is found by its role (what follows the name it was saved under, so a model
        # renamed as a whole loads) and bound to this model by its checksum.
        endings = {
            str(name)[len(saved_name) :]: digest
            for name, digest in files.items()
            if str(name).startswith(saved_name)
        }
        expected = set(getattr(backend, "network_file_endings", ()) or endings)
        if len(endings) != len(files) or not endings or set(endings) != expected or any(
            os.sep in ending or "/" in ending for ending in endings
        ):
            raise SerializationError(
                f"{prefix}.json lists the network files {sorted(map(str, files))}, not those of a "
                f"network saved as {saved_name} (the manifest was edited or is corrupt)."
            )
        for ending, digest in endings.items():
            serialization.verify_file(
                prefix.with_name(prefix.name + ending),
                digest,
                "The fine-tuned network file",
                f"It belongs with {prefix}.json; save the repurposer again.",
            )
        shape = config["sample_shape"]  # None: an assigned, unbound module never saw data
        self.sample_shape_ = None if shape is None else tuple(int(s) for s in shape)
        self.target_handler_, new_layers = backend.load_network(self, prefix, config)
        if new_layers is not None:
            self.new_layers_ = new_layers
        self.output_layer_ = str(config["output_layer"])
        self.n_training_examples_ = int(config["n_training_examples"])
        self.history_ = History.from_dict(config["history"])


def _check_layer_list(name: str, value: Any, handler: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidTypeError(
            f"{name} must be a list of layer names, got {value!r}"
            + (f"; for one layer write [{value!r}]." if isinstance(value, str) else ".")
        )
    known = handler.layer_names
    for layer in value:
        if not isinstance(layer, str):
            raise InvalidTypeError(f"{name} must hold layer names (strings), got {layer!r}.")
        if layer not in known:
            raise layer_not_found(layer, known)
    return list(value)


__all__ = ["NeuralNetworkRepurposer", "TargetNetwork", "DEFAULT_OPTIMIZER_PARAMS"]
