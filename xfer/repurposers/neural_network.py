"""Fine-tuning repurposers: cut the source network, add a new head, train the result.

:class:`NeuralNetworkRepurposer` is the base of the fine-tuning family (Xfer's class of the same
name). It owns the shared contract (``fit``/``repurpose``, ``predict``/``predict_proba``, labels in
the user's values, ``context`` per call, saving) and the training options users ask for:
validation, early stopping that restores the best epoch, learning-rate schedules, a separate
learning-rate multiplier for transferred layers, two-phase freeze-then-unfreeze, frozen BatchNorm
statistics, seeding, checkpoint/resume, data parallelism and a per-epoch :class:`History`.

Writing your own
----------------
Subclass :class:`NeuralNetworkRepurposer`, decorate it with
:func:`xfer.serialization.register_repurposer`, and implement
``_create_target_network(handler, output_name, num_classes)``: edit ``handler`` (a copy of the
source model's :class:`~xfer.model_handler.ModelHandler`) into the target graph ending in
``SoftmaxOutput(name=output_name)`` and return a :class:`TargetNetwork` saying which layers are
new, fixed or re-initialised. Xfer's hook ``_create_target_module(train_iterator)`` (returning a
bound ``mx.mod.Module``) still works when overridden instead.

Saved files (``P = model_directory/model_name``): ``P.json`` (manifest), ``P.npz``,
``P-symbol.json`` and ``P-0000.params`` (the target network, loadable with
``mx.mod.Module.load(P, 0)``). The source model is not saved by default (as in Xfer): the target
network is the model.

PyTorch sources
---------------
A ``torch.nn.Module`` source takes the same parameters and gives the same ``history_``; the
:mod:`~xfer.fine_tuning.torch` loop trains it on one device per call (``context=``),
or under ``torch.distributed`` with DistributedDataParallel (``docs/distributed_torch.md``).
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
import copy
import hashlib
import json
import logging
import math
import numbers
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.utils.validation import check_consistent_length

from xfer import serialization
from xfer._mxnet import MODULE_LOGGER, mx
from xfer._progress import check_verbose
from xfer.context import format_context, to_mxnet
from xfer.data import as_batches
from xfer.exceptions import (
    InvalidArgumentError,
    InvalidTypeError,
    ModelError,
    ModelFileNotFoundError,
    SerializationError,
    layer_not_found,
)
from xfer.fine_tuning import checkpoint
from xfer.fine_tuning import mxnet as training
from xfer.fine_tuning.history import History
from xfer.fine_tuning.run import LR_SCHEDULES, Phase, Settings, derived_seed
from xfer.repurposers.base import Repurposer

logger = logging.getLogger("xfer.repurposers.neural_network")

#: Xfer's default optimiser parameters.
DEFAULT_OPTIMIZER_PARAMS = {"learning_rate": 0.001}

_LOADING_PREFIX: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "xfer_nn_loading", default=None
)


@dataclass
class TargetNetwork:
    """The target graph built from the source model, before training.

    Attributes
    ----------
    handler : MXNetModelHandler
        The target graph; parameters of transferred layers are set, new layers have none yet.
    output_layer : str
        Name of the ``SoftmaxOutput`` layer (its label is ``output_layer + "_label"``).
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


def _is_data_iterator(data: Any) -> bool:
    return isinstance(data, mx.io.DataIter)


def _is_torch_tensor(data: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(data, torch.Tensor)


def _is_torch_data(data: Any) -> bool:
    """A torch ``Dataset`` or ``DataLoader`` (read through :func:`xfer.data.as_batches`)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(
        data, (torch.utils.data.Dataset, torch.utils.data.DataLoader)
    )


def _check_int(name: str, value: Any, minimum: int = 1, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InvalidArgumentError(
            f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}."
        )


def _check_number(
    name: str,
    value: Any,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
    ):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}.")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}{')' if high_open or high is None else ']'}"
        raise InvalidArgumentError(f"{name} must be in {interval}, got {value!r}.")
    return value


def layer_output_symbol(symbol: Any, layer_name: str) -> Any:
    """The output of ``layer_name`` in ``symbol`` (the graph cut at that layer)."""
    internals = symbol.get_internals()
    outputs = internals.list_outputs()
    name = f"{layer_name}_output"
    if name not in outputs:
        raise ModelError(f"Layer {layer_name!r} has no output to cut the graph at.")
    return internals[outputs.index(name)]


def free_output_name(handler: Any, preferred: str) -> str:
    """``preferred`` or, when the graph already uses it, ``preferred_target``/``_target2``..."""
    taken = set(handler.layer_names) | set(handler.symbol.list_arguments())
    candidate, number = preferred, 1
    while candidate in taken or f"{candidate}_label" in taken:
        candidate = f"{preferred}_target{'' if number == 1 else number}"
        number += 1
    return candidate


class NeuralNetworkRepurposer(Repurposer):
    """Base class of repurposers that train a target network transferred from the source network.

    Parameters
    ----------
    source_model : mx.mod.Module, torch.nn.Module, ModelHandler or (symbol, arg_params, aux_params)
        The pretrained network (see "PyTorch sources" in the module documentation).
    context_function : callable, str, mx.Context or list, default=mx.cpu
        Default device(s) (Xfer's ``context_function``); ``context=`` on each call overrides it.
        A list of devices trains data-parallel through MXNet's kvstore.
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
    target_model : mx.mod.Module
        The trained target network (Xfer's attribute), unbound with its parameters set.
    """

    _save_source_model_default = False

    def __init__(
        self,
        source_model: Any,
        context_function: Any = mx.cpu,
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

    # ---------------------------------------------------------------- hooks
    def _create_target_network(
        self, handler: Any, output_name: str, num_classes: int
    ) -> TargetNetwork:
        """Edit ``handler`` (a copy of the source model's) into the target graph. Subclasses implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _create_target_network (or Xfer's "
            "_create_target_module)."
        )

    def _create_target_module(self, train_iterator: Any) -> Any:
        """Xfer's hook: the bound, initialised target ``mx.mod.Module`` for ``train_iterator``."""
        label_name = (train_iterator.provide_label or [mx.io.DataDesc("softmax_label", (1,))])[
            0
        ].name
        network = self._target_network(label_name, self._class_count_for_hook())
        return network.handler.get_module(
            train_iterator,
            fixed_layer_parameters=network.fixed_parameters,
            random_layer_parameters=network.random_parameters,
            context=to_mxnet(self._current_devices()),
        )

    def _class_count_for_hook(self) -> int:
        if hasattr(self, "classes_"):
            return len(self.classes_)
        count = getattr(self, "target_class_count", None)
        if count is None:
            raise InvalidArgumentError("target_class_count is needed to build the target module.")
        return int(count)

    # ---------------------------------------------------------------- validation
    def _validate_params(self) -> None:
        _check_int("batch_size", self.batch_size)
        _check_int("num_epochs", self.num_epochs)
        _check_int("head_epochs", self.head_epochs, allow_none=True)
        _check_int("early_stopping_patience", self.early_stopping_patience, allow_none=True)
        if not isinstance(self.optimizer, str):
            raise InvalidTypeError(
                f"optimizer must be the name of an MXNet optimiser (e.g. 'sgd', 'adam'), got "
                f"{type(self.optimizer).__name__}; pass its settings in optimizer_params."
            )
        if self.source_model is None:
            raise InvalidArgumentError(
                f"{type(self).__name__} needs a source model to fit: construct it with source_model=..."
            )
        torch_source = self._is_torch()
        registry = mx.optimizer.Optimizer.opt_registry
        if not torch_source and self.optimizer.lower() not in registry:
            raise InvalidArgumentError(
                f"Unknown optimizer {self.optimizer!r}: MXNet has {sorted(registry)}."
            )
        params = self._optimizer_params()
        if not isinstance(params, dict):
            raise InvalidTypeError(f"optimizer_params must be a dict, got {type(params).__name__}.")
        if "learning_rate" in params:
            _check_number("optimizer_params['learning_rate']", params["learning_rate"], 0.0)
        for reserved in ("rescale_grad", "lr_scheduler", "param_idx2name", "sym"):
            if reserved in params:
                raise InvalidArgumentError(
                    f"optimizer_params must not set {reserved!r}: the repurposer sets it "
                    "(use lr_schedule= for schedules)."
                )
        if torch_source:
            from xfer.fine_tuning import torch as _torch_training

            _torch_training.torch_optimizer(self.optimizer, params)
        else:
            try:
                mx.optimizer.create(self.optimizer, **params)
            except (TypeError, ValueError) as error:
                raise InvalidArgumentError(
                    f"optimizer_params {params!r} are not valid for optimizer {self.optimizer!r}: {error}"
                ) from error
        if self.validation_fraction is not None:
            _check_number("validation_fraction", self.validation_fraction, 0.0, 1.0, True, True)
        schedule = self.lr_schedule
        if not (
            schedule is None
            or isinstance(schedule, mx.lr_scheduler.LRScheduler)
            or (isinstance(schedule, str) and schedule in LR_SCHEDULES)
        ):
            raise InvalidArgumentError(
                f"lr_schedule must be None, one of {LR_SCHEDULES} or an "
                f"mx.lr_scheduler.LRScheduler, got {schedule!r}."
            )
        if torch_source and isinstance(schedule, mx.lr_scheduler.LRScheduler):
            raise InvalidArgumentError(
                f"lr_schedule must be None or one of {LR_SCHEDULES} for a PyTorch source "
                "(an mx.lr_scheduler object drives MXNet optimisers only)."
            )
        _check_number("transferred_lr_mult", self.transferred_lr_mult, 0.0)
        _check_number("unfreeze_lr_factor", self.unfreeze_lr_factor, 0.0, low_open=True)
        if not isinstance(self.freeze_batchnorm, bool):
            raise InvalidTypeError(
                f"freeze_batchnorm must be True or False, got {self.freeze_batchnorm!r}."
            )
        if not isinstance(self.kvstore, str) or not self.kvstore:
            raise InvalidTypeError(
                f"kvstore must be a kvstore type name such as 'device', got {self.kvstore!r}."
            )
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, Path)):
            raise InvalidTypeError(
                f"checkpoint_dir must be a path, got {type(self.checkpoint_dir).__name__}."
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

    def _is_torch(self) -> bool:
        """Whether the source model is a PyTorch network (the torch training loop is used)."""
        return getattr(self._get_model_handler(), "backend", "mxnet") == "torch"

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
        self, X: Any, y: Any, what: str
    ) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """``X`` (array or DataIter) as a float32 array with its labels (and the iterator's label name)."""
        label_name = None
        torch_data = _is_torch_data(X)
        if _is_data_iterator(X) or torch_data:
            if y is not None:
                raise InvalidArgumentError(
                    f"{what}: labels were passed together with an "
                    f"{'torch Dataset/DataLoader' if torch_data else 'mx.io.DataIter'}; its own "
                    "labels are used. Put the labels in it, or pass arrays."
                )
            if not torch_data and X.provide_label:
                label_name = X.provide_label[0].name
            batches = as_batches(X)
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
            if _is_torch_tensor(y):
                y = y.detach().cpu().numpy()
            if not isinstance(X, np.ndarray):
                if isinstance(X, (list, tuple)):
                    X = np.asarray(X)
                else:
                    raise InvalidTypeError(
                        f"{what}: cannot read data of type {type(X).__name__}; pass a NumPy array "
                        "with examples along the first axis, or an mx.io.DataIter."
                    )
            if X.ndim < 2 or len(X) == 0:
                raise InvalidArgumentError(
                    f"{what}: expected a non-empty array of examples (N x ...), got shape {X.shape}."
                )
            if not np.issubdtype(X.dtype, np.number):
                raise InvalidTypeError(f"{what}: the data must be numeric, got dtype {X.dtype}.")
            data = X.astype(np.float32, copy=False)
            labels = None if y is None else np.asarray(y)
        if not np.all(np.isfinite(data)):
            raise InvalidArgumentError(f"{what}: the data contains NaN or infinity.")
        if labels is not None:
            check_consistent_length(data, labels)
        return data, labels, label_name

    def _encode_known(self, labels: np.ndarray, what: str) -> np.ndarray:
        labels = np.asarray(labels).ravel()
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
        self._validate_params()
        devices = self._resolve_devices(context)
        self._require_available(devices)
        contexts = self._torch_device(devices) if self._is_torch() else to_mxnet(devices)
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

        data, labels, iterator_label_name = self._read_data(X, y, "fit")
        if labels is None:
            raise InvalidArgumentError(
                "fit requires y: pass labels, or an mx.io.DataIter that provides labels."
            )
        if iterator_label_name is not None:
            labels = self._iterator_labels_as_user_values(labels)
        for attribute in ("classes_", "target_handler_", "history_"):
            self.__dict__.pop(attribute, None)
        codes = self._encode_labels(labels)
        try:
            return self._fit_encoded(
                data, codes, iterator_label_name, validation_data, devices, contexts, resume
            )
        except BaseException:
            self.__dict__.pop("classes_", None)  # a failed fit leaves the repurposer unfitted
            raise

    def _seed(self, resume: bool) -> int:
        seed = self._draw_seed(resume)
        if self._is_torch():  # under torch.distributed every process takes rank 0's seed
            from xfer.fine_tuning import torch as _torch_training

            seed = _torch_training.shared_seed(seed)
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
        self, data, codes, iterator_label_name, validation_data, devices, contexts, resume
    ):
        num_classes = len(self.classes_)
        declared = getattr(self, "target_class_count", None)
        if declared is not None:
            _check_int("target_class_count", declared, minimum=2)
            if int(declared) != num_classes:
                raise InvalidArgumentError(
                    f"target_class_count={declared} but the training labels have {num_classes} classes "
                    f"({list(self.classes_)[:10]}). Pass target_class_count={num_classes}, or None to "
                    "take it from the labels."
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
        seed = self._seed(resume)
        validation = None
        if validation_data is not None:
            if _is_data_iterator(validation_data):
                val_x, val_y, val_label_name = self._read_data(
                    validation_data, None, "validation_data"
                )
                if val_y is None:
                    raise InvalidArgumentError("validation_data: the iterator provides no labels.")
                val_y = self._iterator_labels_as_user_values(val_y)
            elif isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
                val_x, val_y, _ = self._read_data(
                    validation_data[0], validation_data[1], "validation_data"
                )
                if val_y is None:
                    raise InvalidArgumentError(
                        "validation_data must be (X_val, y_val) with labels."
                    )
            else:
                raise InvalidTypeError(
                    "validation_data must be a tuple (X_val, y_val) or an mx.io.DataIter with labels."
                )
            if val_x.shape[1:] != data.shape[1:]:
                raise InvalidArgumentError(
                    f"validation_data examples have shape {val_x.shape[1:]}, training examples {data.shape[1:]}."
                )
            validation = (val_x, self._encode_known(val_y, "validation_data").astype(np.float32))
        elif self.validation_fraction is not None:
            data, codes, validation = self._split(data, codes, seed)

        if self._is_torch():
            return self._fit_torch(data, codes, validation, devices, contexts, seed, resume)
        with self._using_devices(devices):
            network = self._build_network(iterator_label_name, num_classes, data, codes, contexts)
        phases = self._phases(network)
        settings = Settings(
            batch_size=int(min(self.batch_size, max(len(data), len(contexts)))),
            optimizer=self.optimizer.lower(),
            optimizer_params=self._optimizer_params(),
            contexts=contexts,
            seed=seed,
            lr_schedule=self.lr_schedule,
            early_stopping_patience=self.early_stopping_patience,
            kvstore=self.kvstore,
            checkpoint_dir=None if self.checkpoint_dir is None else Path(self.checkpoint_dir),
            resume=resume,
            fingerprint=self._fingerprint(data, codes, validation, len(contexts)),
            verbose=check_verbose(self.verbose),
            label_name=network.label_name,
        )
        result = training.train(
            network.handler,
            phases,
            data,
            codes,
            validation,
            settings,
            epoch_end=getattr(self, "_epoch_end_hook", None),
        )
        self.target_handler_ = network.handler
        self.output_layer_ = network.output_layer
        self.history_ = result.history
        self.n_training_examples_ = int(len(data))
        self.sample_shape_ = tuple(int(s) for s in data.shape[1:])
        return self

    def _fit_torch(self, data, codes, validation, devices, contexts, seed, resume):
        """Build the target network from a PyTorch source and train it with the torch loop."""
        from xfer.fine_tuning import torch as _torch_training

        # The new layers are initialised from the seed (torch's global state is left alone).
        with _torch_training.seeded(derived_seed(seed, 4)), self._using_devices(devices):
            network = self._target_network(
                None, len(self.classes_), preferred="softmax", sample_shape=data.shape[1:]
            )
        settings = Settings(
            batch_size=int(min(self.batch_size, len(data))),
            optimizer=self.optimizer.lower(),
            optimizer_params=self._optimizer_params(),
            contexts=contexts,
            seed=seed,
            lr_schedule=self.lr_schedule,
            early_stopping_patience=self.early_stopping_patience,
            checkpoint_dir=None if self.checkpoint_dir is None else Path(self.checkpoint_dir),
            resume=resume,
            fingerprint=self._fingerprint(data, codes, validation, 1),
            verbose=check_verbose(self.verbose),
        )
        result = _torch_training.train(
            network.handler,
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
        self.history_ = result.history
        self.n_training_examples_ = int(len(data))
        self.sample_shape_ = tuple(int(s) for s in data.shape[1:])
        return self

    @staticmethod
    def _torch_device(devices) -> list:
        """The one ``torch.device`` of a torch fit or prediction (several need torch.distributed)."""
        from xfer.context import to_torch

        if len(devices) > 1:
            raise InvalidArgumentError(
                f"A PyTorch source trains on one device per process, but {len(devices)} were given "
                f"({[str(d) for d in devices]}). For several GPUs launch one process per GPU with "
                "torchrun and pass each its own context (see docs/distributed_torch.md)."
            )
        return [to_torch(format_context(devices))]

    def _split(self, data, codes, seed):
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
        if len(np.unique(codes[train_idx])) < len(self.classes_):
            raise InvalidArgumentError(
                "validation_fraction leaves a class without training examples: use a smaller "
                "fraction or pass validation_data."
            )
        return data[train_idx], codes[train_idx], (data[val_idx], codes[val_idx].astype(np.float32))

    def _fingerprint(self, data, codes, validation, num_contexts) -> str:
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
        params = {}
        for name, value in self.get_params(deep=False).items():
            if name in ignored:
                continue
            if isinstance(value, mx.lr_scheduler.LRScheduler):
                params[name] = f"{type(value).__name__}:{training._scheduler_state(value)}"
            else:
                params[name] = self._json_param(name, value)
        digest.update(json.dumps(params, sort_keys=True, default=str).encode())
        digest.update(str(num_contexts).encode())
        if self._is_torch():  # a torch checkpoint never resumes an MXNet fit, nor the reverse
            digest.update(b"torch")
        return digest.hexdigest()

    def _build_network(
        self, iterator_label_name, num_classes, data, codes, contexts
    ) -> TargetNetwork:
        overridden = (
            type(self)._create_target_module is not NeuralNetworkRepurposer._create_target_module
        )
        if overridden:  # an Xfer-style subclass: take the module it builds
            label_name = iterator_label_name or "softmax_label"
            iterator = mx.io.NDArrayIter(
                data[: self.batch_size],
                codes[: self.batch_size].astype(np.float32),
                min(self.batch_size, len(data)),
                label_name=label_name,
            )
            module = self._create_target_module(iterator)
            args, auxs = module.get_params()
            from xfer.model_handler import MXNetModelHandler

            handler = MXNetModelHandler(
                (module.symbol, args, auxs),
                context_function=self.context_function,
                num_devices=self.num_devices,
            )
            output = handler.layer_names[-1]
            if f"{output}_label" != label_name:
                raise ModelError(
                    f"The module from _create_target_module ends in {output!r}, whose label is not "
                    f"{label_name!r}: name the output layer after the iterator's label."
                )
            return TargetNetwork(
                handler, output, fixed_parameters=sorted(module._fixed_param_names or [])
            )
        preferred = (
            iterator_label_name[: -len("_label")]
            if iterator_label_name and iterator_label_name.endswith("_label")
            else "softmax"
        )
        return self._target_network(None, num_classes, preferred=preferred)

    def _target_network(
        self,
        label_name: str | None,
        num_classes: int,
        preferred: str | None = None,
        sample_shape: tuple | None = None,
    ) -> TargetNetwork:
        from xfer.model_handler import MXNetModelHandler, TorchModelHandler

        source = self._get_model_handler()
        if isinstance(source, TorchModelHandler):
            handler = TorchModelHandler(source)  # edits build new containers, sharing tensors
            handler.input_shape = None if sample_shape is None else tuple(sample_shape)
            network = self._create_target_network(handler, preferred or "softmax", num_classes)
            if not isinstance(network, TargetNetwork):
                raise InvalidTypeError("_create_target_network must return a TargetNetwork.")
            # Training writes into the target network: it must own its tensors, not the source's.
            network.handler.update_sym(copy.deepcopy(network.handler.model))
            return network
        if not isinstance(source, MXNetModelHandler):
            raise InvalidTypeError(
                f"{type(self).__name__} fine-tunes MXNet or PyTorch models; got a "
                f"{type(source).__name__}."
            )
        handler = MXNetModelHandler(source)  # a copy: the source model is never edited
        if preferred is None:
            preferred = (
                label_name[: -len("_label")]
                if label_name and label_name.endswith("_label")
                else "softmax"
            )
        network = self._create_target_network(handler, preferred, num_classes)
        if not isinstance(network, TargetNetwork):
            raise InvalidTypeError("_create_target_network must return a TargetNetwork.")
        return network

    def _phases(self, network: TargetNetwork) -> list[Phase]:
        handler = network.handler
        new_layers = set(network.new_layers)
        if getattr(handler, "backend", "mxnet") == "torch":
            all_parameters = list(handler.arg_params) + list(handler.aux_params)
        else:
            all_parameters = [
                p
                for p in handler.symbol.list_arguments() + handler.symbol.list_auxiliary_states()
                if p != handler.data_name and not p.endswith("_label")
            ]
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
        self._check_fitted()
        devices = self._resolve_devices(context)
        self._require_available(devices)
        if not _is_data_iterator(X):
            X, _, _ = self._read_data(X, None, "predict")
            if X.shape[1:] != getattr(self, "sample_shape_", X.shape[1:]):
                raise InvalidArgumentError(
                    f"X has examples of shape {X.shape[1:]}, but {type(self).__name__} was trained on "
                    f"examples of shape {self.sample_shape_}."
                )
        torch_target = getattr(self.target_handler_, "backend", "mxnet") == "torch"
        outputs, _ = self.target_handler_.get_layer_output(
            X,
            [self.output_layer_],
            context=self._torch_device(devices)[0] if torch_target else format_context(devices),
            batch_size=int(self.batch_size),
            verbose=check_verbose(self.verbose),
        )
        values = np.asarray(outputs[self.output_layer_], dtype=np.float64)
        if torch_target:  # the torch target network gives logits
            values = np.exp(values - values.max(axis=1, keepdims=True))
            values /= values.sum(axis=1, keepdims=True)
        return values

    # ---------------------------------------------------------------- Xfer attribute, history
    @property
    def target_model(self) -> Any:
        """The trained target network: an unbound ``mx.mod.Module`` with its parameters set, or,
        for a PyTorch source, the ``torch.nn.Module`` (it returns logits; softmax gives
        ``predict_proba``)."""
        self._check_fitted()
        handler = self.target_handler_
        if getattr(handler, "backend", "mxnet") == "torch":
            return handler.model
        module = mx.mod.Module(
            handler.symbol,
            data_names=[handler.data_name],
            label_names=[f"{self.output_layer_}_label"],
            context=to_mxnet(self._default_devices()),
            logger=MODULE_LOGGER,
        )
        module._arg_params = dict(handler.arg_params)  # what mx.mod.Module.load does
        module._aux_params = dict(handler.aux_params)
        module.params_initialized = True
        return module

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
    def _params_for_manifest(self) -> dict[str, Any]:
        params = self.get_params(deep=False)
        params.pop("source_model", None)
        clean: dict[str, Any] = {}
        for name, value in params.items():
            if name == "lr_schedule" and isinstance(value, mx.lr_scheduler.LRScheduler):
                warnings.warn(
                    "lr_schedule is an mx.lr_scheduler object, which is not saved (it only "
                    "matters for training); the loaded repurposer has lr_schedule=None.",
                    stacklevel=4,
                )
                clean[name] = None
                continue
            if name == "checkpoint_dir" and value is not None:
                clean[name] = str(value)
                continue
            clean[name] = self._json_param(name, value)
        return clean

    def _save_to_prefix(self, prefix: Path, save_source_model: bool | None) -> None:
        if self.__sklearn_is_fitted__():
            prefix.parent.mkdir(parents=True, exist_ok=True)
            if getattr(self.target_handler_, "backend", "mxnet") == "torch":
                self.target_handler_.save_checkpoint(str(_torch_target_prefix(prefix)))
                names = tuple(
                    f"{prefix.name}{TORCH_TARGET_SUFFIX}{e}" for e in (".json", ".safetensors")
                )
            else:
                self.target_handler_.save_checkpoint(str(prefix), 0)
                names = (f"{prefix.name}-symbol.json", f"{prefix.name}-0000.params")
            self._target_files = {
                name: serialization.sha256_of(prefix.parent / name) for name in names
            }
        try:
            super()._save_to_prefix(prefix, save_source_model)
        finally:
            self.__dict__.pop("_target_files", None)

    def _get_fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state = {
            "output_layer": self.output_layer_,
            "sample_shape": list(self.sample_shape_),
            "n_training_examples": self.n_training_examples_,
            "history": self.history_.to_dict(),
            "target_files": dict(self._target_files),
            "data_name": self.target_handler_.data_name,
        }
        if getattr(self.target_handler_, "backend", "mxnet") == "torch":
            # The architecture is code: loading re-applies these edits to a fresh source model.
            handler = self.target_handler_
            state["backend"] = "torch"
            state["target_network"] = {
                "layer_names": handler.layer_names,
                "new_layers": list(getattr(self, "new_layers_", [])),
                "new_parameters": {
                    name: list(handler.arg_params[name].shape)
                    for name in handler.get_layer_parameters(list(getattr(self, "new_layers_", [])))
                    if name in handler.arg_params
                },
            }
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
        if (
            manifest.get("fitted")
            and state.get("backend") == "torch"
            and source_model is None
            and not manifest.get("source_model")
        ):
            raise InvalidArgumentError(
                f"{prefix}.json holds a network fine-tuned from a PyTorch source. Its weights are "
                "saved, but its architecture is code, which xfer never stores or unpickles: pass "
                "the source network, freshly built, to xfer.load(..., source_model=<the torch.nn."
                "Module>); the edits recorded in the manifest are re-applied to it and the saved "
                "weights loaded."
            )
        token = _LOADING_PREFIX.set(Path(prefix))
        try:
            return super()._from_manifest(manifest, arrays, prefix, source_model=source_model)
        finally:
            _LOADING_PREFIX.reset(token)

    def _set_fitted_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        from xfer.model_handler import MXNetModelHandler

        prefix = _LOADING_PREFIX.get()
        if prefix is None:
            raise SerializationError(
                "The target network can only be read while loading (xfer.load)."
            )
        files = config["target_files"]
        for name, digest in files.items():
            path = prefix.parent / str(name)
            if Path(str(name)).name != str(name):
                raise SerializationError(f"Target network file {name!r} is not a plain file name.")
            if not path.is_file():
                raise ModelFileNotFoundError(
                    f"The target network file {path} is missing: copy it next to {prefix}.json, or "
                    "save the repurposer again."
                )
            if serialization.sha256_of(path) != digest:
                raise SerializationError(
                    f"The target network file {path} does not match {prefix}.json (checksum differs): "
                    "it is corrupt or from another save."
                )
        self.sample_shape_ = tuple(int(s) for s in config["sample_shape"])
        if config.get("backend") == "torch":
            self._load_torch_target(prefix, config)
        else:
            self.target_handler_ = MXNetModelHandler.load_checkpoint(
                str(prefix),
                0,
                context_function=self.context_function,
                num_devices=self.num_devices,
                data_name=config.get("data_name", "data"),
            )
        self.output_layer_ = str(config["output_layer"])
        self.n_training_examples_ = int(config["n_training_examples"])
        self.history_ = History.from_dict(config["history"])

    def _load_torch_target(self, prefix: Path, config: dict[str, Any]) -> None:
        """Rebuild the target network from the source model and load the saved weights into it."""
        from xfer.fine_tuning import torch as _torch_training
        from xfer.model_handler import TorchModelHandler

        if self.source_model is None or not self._is_torch():
            raise InvalidArgumentError(
                f"{prefix}.json was fine-tuned from a PyTorch source: pass that network, freshly "
                "built, as xfer.load(..., source_model=<the torch.nn.Module>)."
            )
        saved = config["target_network"]
        with _torch_training.seeded(0):
            network = self._target_network(
                None, len(self.classes_), preferred="softmax", sample_shape=self.sample_shape_
            )
        if network.handler.layer_names != list(saved["layer_names"]):
            raise SerializationError(
                f"The source model given to xfer.load does not rebuild the saved target network "
                f"of {prefix}.json (layers {network.handler.layer_names} instead of "
                f"{saved['layer_names']}): pass the source network the repurposer was fitted on."
            )
        self.target_handler_ = TorchModelHandler.load_checkpoint(
            str(_torch_target_prefix(prefix)),
            model=network.handler,
            context_function=self.context_function,
        )
        self.new_layers_ = list(saved["new_layers"])


#: Suffix of the files of a torch target network (``P-target.safetensors``, ``P-target.json``).
TORCH_TARGET_SUFFIX = "-target"


def _torch_target_prefix(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + TORCH_TARGET_SUFFIX)


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
