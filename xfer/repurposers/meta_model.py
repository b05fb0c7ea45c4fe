"""Meta-model repurposers: features from layers of the source model -> a separate classifier.

A :class:`MetaModelRepurposer` extracts the outputs of ``feature_layer_names`` once per dataset
(concatenated in the order given), trains a target model on them, and predicts through the same
extraction. Users who cache features call :meth:`~MetaModelRepurposer.fit_features` and
:meth:`~MetaModelRepurposer.predict_proba_features` directly.

Writing your own head
---------------------
Subclass :class:`MetaModelRepurposer`, decorate it with
:func:`xfer.serialization.register_repurposer`, and override Xfer's hooks:

``_train_model_from_features(features, labels, feature_indices_per_layer=None)``
    Train and return the target model (stored as ``target_model_``). In ``fit``, ``labels`` are
    **int codes 0..K-1** (``classes_[labels]`` are the user's labels) and ``len(self.classes_)``
    is K. Xfer's scripts also call it directly and assign the result to ``target_model``; a
    head that needs K calls ``self._hook_arguments(...)``, which handles both cases.
``_predict_probability_from_features(features)``
    Return float probabilities ``[N, K]`` in the order of ``classes_``.
``_predict_label_from_features(features)``
    Return int codes; the default is the argmax of the probabilities, which keeps
    ``predict == classes_[argmax(predict_proba)]``.
``_get_target_model_state()`` / ``_set_target_model_state(config, arrays)``
    The target model as (JSON-safe dict, dict of numeric arrays) and back, for saving.
``_describe_target_model(model)``
    What assigning ``repurposer.target_model = model`` needs to know of a model: its classes and
    feature width (the default reads this package's heads and scikit-learn-style classifiers).

The device of the current call is ``self._head_device()`` (a :class:`xfer.context.Device`) or
``self._torch_device()``.
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, ClassVar, NamedTuple

import numpy as np
from sklearn.utils.validation import validate_data

from xfer import _validation
from xfer._arguments import check_int
from xfer._progress import check_verbose
from xfer.context import Device, cpu, to_torch
from xfer.data import is_data_iterator
from xfer.exceptions import (
    InvalidArgumentError,
    InvalidTypeError,
    LayerNotFoundError,
    closest_names_hint,
)
from xfer.feature_store import FeatureStore
from xfer.model_handler import ModelHandler
from xfer.repurposers._uncertainty import UncertaintyMixin
from xfer.repurposers.base import Repurposer

logger = logging.getLogger("xfer.repurposers.meta_model")


class MetaModelData(NamedTuple):
    """Features extracted from a source model (Xfer's ``MetaModelData``).

    Attributes
    ----------
    features : ndarray of shape (n_samples, n_features)
        Outputs of the feature layers, concatenated in the order of ``feature_layer_names``.
    feature_indices_per_layer : OrderedDict of str to ndarray
        For each layer (in that order), the column indices of ``features`` that came from it.
    labels : ndarray or None
        Labels read from the data iterator, when it had them.
    """

    features: np.ndarray
    feature_indices_per_layer: OrderedDict
    labels: np.ndarray | None


class TargetModelInfo(NamedTuple):
    """What the ``target_model`` setter learns of an assigned model
    (:meth:`MetaModelRepurposer._describe_target_model`).

    Attributes
    ----------
    model : object
        The model to hold (the assigned one, or this package's equivalent of it).
    classes : ndarray
        Labels of the model's outputs, in order (``0..K-1`` when the model does not know them).
    n_features : int
        Width of the features the model takes.
    feature_indices_per_layer : list of ndarray or None
        Columns of each feature layer, when the model records them (None: one block).
    """

    model: Any
    classes: np.ndarray
    n_features: int
    feature_indices_per_layer: list[np.ndarray] | None = None


#: The repurposer whose ``fit`` is calling its training hook (the hook is also called directly).
_FITTING: ContextVar[Any] = ContextVar("xfer_meta_model_fitting", default=None)


def _is_instance(model: Any, kind: type | str) -> bool:
    """``isinstance`` for a class or a ``"module:Class"`` name (False while the module is not
    imported: no instance of the class can exist then)."""
    if isinstance(kind, str):
        module, _, name = kind.partition(":")
        kind = getattr(sys.modules.get(module), name, None)
        if kind is None:
            return False
    return isinstance(model, kind)


def _type_name(kind: type | str) -> str:
    if isinstance(kind, str):
        return kind.partition(":")[2]
    if kind.__module__.split(".")[0] == "sklearn":
        return f"{kind.__module__.split('.')[0]} {kind.__qualname__}"
    return kind.__qualname__


class MetaModelRepurposer(UncertaintyMixin, Repurposer):
    """Base class of repurposers that train a classifier on features of the source model.

    Parameters
    ----------
    source_model : mx.mod.Module, ModelHandler, (symbol, arg_params, aux_params) or None
        The pretrained network. ``None`` means the inputs given to ``fit``/``predict`` are
        already features (arrays ``[N, D]``): the repurposer is then a plain scikit-learn
        classifier.
    feature_layer_names : list of str
        Layers whose outputs are the features, concatenated in this order.
    context_function : callable, str, mx.Context or torch.device, default=xfer.context.cpu
        Default device (Xfer's ``context_function``); ``context=`` on each call overrides it.
        The default is Xfer's ``mx.cpu`` without importing MXNet (``get_params()`` reports
        ``mx.cpu`` once MXNet is imported).
    num_devices : int, default=1
        Number of devices for feature extraction.
    extraction_batch_size : int, optional
        Batch size for feature extraction from arrays (default: the ModelHandler's).
    verbose : bool or int, default=False
        ``1``/``True``: progress bars; ``0``/``False``: none. Log records go to the ``xfer``
        loggers whatever the value (see "Progress bars and logs" in :mod:`xfer`).
    """

    _save_source_model_default = True
    #: The model type(s) this head's ``_train_model_from_features`` returns, which the
    #: ``target_model`` setter accepts: classes, or ``"module:Class"`` names of classes in
    #: modules imported lazily (None: any model :meth:`_describe_target_model` can read).
    _target_model_types: ClassVar[tuple[type | str, ...] | None] = None

    def __init__(
        self,
        source_model: Any,
        feature_layer_names: list[str] | None,
        context_function: Any = cpu,
        num_devices: int = 1,
        *,
        extraction_batch_size: int | None = None,
        verbose: bool = False,
    ):
        super().__init__(source_model, context_function=context_function, num_devices=num_devices)
        self.feature_layer_names = feature_layer_names
        self.extraction_batch_size = extraction_batch_size
        self.verbose = verbose

    # ---------------------------------------------------------------- Xfer attributes
    @property
    def target_model(self) -> Any:
        """The fitted target model, or None before fitting (Xfer's attribute; also ``target_model_``).

        Assigning it, as Xfer's scripts do with ``rep.target_model =
        rep._train_model_from_features(X, y)``, makes the repurposer fitted with that model:
        ``classes_``, the feature width and the feature layers' columns are read from the model
        (:meth:`_describe_target_model`). A model of this package's heads does not know the
        label values it was trained on, so ``classes_`` is ``0..K-1`` (Xfer's convention: its
        heads predicted class indices); a scikit-learn ``LogisticRegression`` assigned to an
        :class:`~xfer.LrRepurposer` brings its own ``classes_``.
        Assigning ``None`` makes the repurposer unfitted. A model of another type raises
        :class:`~xfer.exceptions.InvalidTypeError` (a ``TypeError``) naming the accepted types.
        """
        return getattr(self, "target_model_", None)

    @target_model.setter
    def target_model(self, model: Any) -> None:
        if model is None:
            self._unfit()
            return
        types = self._accepted_target_model_types()
        if types is not None and not any(_is_instance(model, t) for t in types):
            raise InvalidTypeError(self._target_model_type_message(model, types))
        info = self._describe_target_model(model)
        n_features = int(info.n_features)
        indices = self._check_feature_indices(info.feature_indices_per_layer, n_features)
        classes = np.asarray(info.classes)
        if classes.ndim != 1 or len(classes) < 2:
            raise InvalidArgumentError(
                f"The assigned target model has {classes.size} class(es); a classifier has at "
                "least 2."
            )
        self._unfit()
        self.classes_ = classes
        needs_source_model = self.source_model is not None
        if not needs_source_model:  # scikit-learn's bookkeeping, as fit on feature arrays does
            self.n_features_in_ = n_features
        self._install_fitted(info.model, indices, n_features, needs_source_model)

    def _accepted_target_model_types(self) -> tuple[type | str, ...] | None:
        """``_target_model_types``, unless a subclass trains its own model type: when
        ``_train_model_from_features`` is overridden below the class that declared the types,
        any model :meth:`_describe_target_model` can read is accepted."""
        mro = type(self).__mro__
        declared = next(c for c in mro if "_target_model_types" in c.__dict__)
        trainer = next(c for c in mro if "_train_model_from_features" in c.__dict__)
        if trainer is not declared and issubclass(trainer, declared):
            return None
        return self._target_model_types

    def _target_model_type_message(self, model: Any, types: tuple[type | str, ...]) -> str:
        names = " or ".join(_type_name(t) for t in types)
        return (
            f"{type(self).__name__}.target_model must be of type {names} (what "
            f"_train_model_from_features returns), or None to unfit it; got "
            f"{type(model).__module__}.{type(model).__qualname__}. Train one with "
            "fit/repurpose, or with _train_model_from_features(features, labels)."
        )

    def _describe_target_model(self, model: Any) -> TargetModelInfo:
        """Classes, feature width and layer columns of a model assigned to ``target_model``.

        The default reads this package's heads (``n_classes_``, ``n_features_``,
        ``layer_indices_``; classes ``0..K-1``) and fitted scikit-learn-style classifiers
        (``classes_`` and ``n_features_in_``). The hooks predict class codes, so such a
        classifier must have been trained on the codes ``0..K-1`` (what ``fit`` passes the hook).
        A subclass whose model is neither overrides it.

        Parameters
        ----------
        model : object
            The assigned model (not None).

        Returns
        -------
        TargetModelInfo
        """
        n_classes = getattr(model, "n_classes_", None)
        n_features = getattr(model, "n_features_", None)
        if isinstance(n_classes, (int, np.integer)) and isinstance(n_features, (int, np.integer)):
            return TargetModelInfo(
                model, np.arange(int(n_classes)), int(n_features), getattr(model, "layer_indices_", None)
            )
        classes = getattr(model, "classes_", None)
        n_features = getattr(model, "n_features_in_", None)
        if classes is not None and isinstance(n_features, (int, np.integer)):
            classes = np.asarray(classes)
            codes = np.arange(len(classes))
            if classes.dtype.kind not in "iuf" or not np.array_equal(classes, codes):
                raise InvalidArgumentError(
                    f"The assigned {type(model).__qualname__} was trained on the labels "
                    f"{list(classes)[:10]}, but {type(self).__name__}'s hooks predict class codes "
                    f"0..{len(classes) - 1}: train it on codes (fit passes the hook codes; "
                    "sklearn.preprocessing.LabelEncoder makes them), or fit the repurposer."
                )
            return TargetModelInfo(model, codes, int(n_features))
        raise InvalidTypeError(
            f"{type(self).__name__} cannot tell the classes and feature width of the assigned "
            f"{type(model).__module__}.{type(model).__qualname__}: assign a fitted classifier with "
            "classes_ and n_features_in_ (scikit-learn's), or override _describe_target_model in "
            "your subclass to return a TargetModelInfo."
        )

    def _unfit(self) -> None:
        super()._unfit()
        self.__dict__.pop("_needs_source_model", None)

    @property
    def source_model_handler(self) -> Any:
        """The :class:`~xfer.model_handler.ModelHandler` of ``source_model`` (Xfer's attribute)."""
        return self._get_model_handler()

    def _get_model_handler(self) -> Any:
        # Built through this module's ``ModelHandler`` name, which Xfer's module path
        # ``xfer.meta_model_repurposer.ModelHandler`` refers to (Xfer's tests patch it there).
        if isinstance(self.source_model, _ModelHandlerType):
            return self.source_model
        cache = getattr(self, "_handler_cache", None)
        if cache is not None and cache[0] is self.source_model and cache[2] is ModelHandler:
            return cache[1]
        handler = ModelHandler(self.source_model, self.context_function, self.num_devices)
        self._handler_cache = (self.source_model, handler, ModelHandler)
        return handler

    # ---------------------------------------------------------------- features
    def _validated_layer_names(self) -> list[str]:
        names = self.feature_layer_names
        if not isinstance(names, list):
            raise InvalidTypeError(
                f"feature_layer_names must be a list of layer names, got {type(names).__name__} "
                f"({names!r}); for one layer write ['{names}']."
            )
        if not names:
            raise InvalidArgumentError(
                "feature_layer_names cannot be empty: give at least one layer name."
            )
        if not all(isinstance(name, str) for name in names):
            raise InvalidTypeError(f"feature_layer_names must hold strings, got {names!r}.")
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"feature_layer_names repeats a layer: {names!r}.")
        return names

    def _extraction_layer_names(self) -> list[str]:
        """The layers read by feature extraction (a subclass may choose them in ``fit``)."""
        return self._validated_layer_names()

    def _extraction_pooling(self) -> str | None:
        """``get_layer_output``'s ``pooling`` for feature extraction (None: flatten as they are)."""
        return None

    def get_features_from_source_model(
        self, data_iterator: Any, context: Any = None
    ) -> MetaModelData:
        """Extract features of ``data_iterator`` (array or ``mx.io.DataIter``) from the source model.

        Parameters
        ----------
        data_iterator : ndarray or mx.io.DataIter
            Inputs of the source model.
        context : optional
            Device(s) for extraction (default: the constructor's).

        Returns
        -------
        MetaModelData
        """
        devices = self._resolve_devices(context)
        return self._extract(data_iterator, devices)

    def _extract(self, data: Any, devices: list[Device]) -> MetaModelData:
        if self.source_model is None:
            raise InvalidArgumentError(
                "This repurposer has no source model (source_model=None), so it cannot extract "
                "features: pass feature arrays, or construct it with a source model."
            )
        names = self._extraction_layer_names()
        handler = self._get_model_handler()
        self._check_layers_in(handler, names)
        if isinstance(data, np.ndarray):
            _validation.check_finite(
                data, "X", "Remove or repair those inputs before extracting features."
            )
        outputs, labels = handler.get_layer_output(
            data,
            names,
            context=devices,
            batch_size=self.extraction_batch_size,
            verbose=check_verbose(self.verbose),
            pooling=self._extraction_pooling(),
        )
        # Concatenated in the order the handler returns them (the order asked for).
        arrays = [np.asarray(array) for array in outputs.values()]
        arrays = [a.reshape(a.shape[0], -1) for a in arrays]
        features = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)
        _validation.check_finite(
            features,
            f"The features the source model gives at {names}",
            "The inputs are finite, so the network overflows on them: check that they are scaled "
            "as the network expects (e.g. images normalised, not raw 0-255 values).",
        )
        indices: OrderedDict = OrderedDict()
        start = 0
        for name, array in zip(outputs, arrays):
            indices[name] = np.arange(start, start + array.shape[1])
            start += array.shape[1]
        return MetaModelData(features, indices, labels)

    @staticmethod
    def _check_layers_in(handler: Any, names: list[str]) -> None:
        layer_names = list(handler.layer_names)
        for name in names:
            if name not in layer_names:
                raise LayerNotFoundError(
                    f"Layer {name!r} is not in the model: feature_layer_name {name!r} is not "
                    "found in source_model."
                    f"{closest_names_hint(name, layer_names)} Its layers are "
                    f"{', '.join(layer_names[:20])}{', ...' if len(layer_names) > 20 else ''} "
                    "(see ModelHandler.layer_names)."
                )

    @staticmethod
    def _check_feature_indices(indices: Any, n_features: int) -> list[np.ndarray]:
        if indices is None:
            return [np.arange(n_features)]
        if isinstance(indices, Mapping):  # Xfer's {layer_name: indices}, in layer order
            indices = list(indices.values())
        if not isinstance(indices, (list, tuple)) or not indices:
            raise InvalidTypeError(
                "feature_indices_per_layer must be a non-empty list of index arrays (or a dict "
                "of layer name to index array)."
            )
        checked = []
        for layer_indices in indices:
            array = np.asarray(layer_indices)
            if array.ndim != 1 or array.dtype.kind not in "iu" or array.size == 0:
                raise InvalidArgumentError(
                    "Each entry of feature_indices_per_layer must be a non-empty 1-D integer array."
                )
            if array.min() < 0 or array.max() >= n_features:
                raise InvalidArgumentError(
                    f"feature_indices_per_layer refers to column {int(array.max())}, but the "
                    f"features have {n_features} columns."
                )
            checked.append(array.astype(np.int64))
        return checked

    # ---------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any = None, context: Any = None) -> MetaModelRepurposer:
        """Extract features of ``X`` once and train the target model on them.

        Parameters
        ----------
        X : ndarray, mx.io.DataIter or FeatureStore
            Source-model inputs (or, when ``source_model`` is None, features ``[N, D]``). An
            iterator supplies its own labels. A :class:`~xfer.feature_store.FeatureStore`
            (features on disk, e.g. larger than memory) is read a piece at a time by the heads
            that can (LR, GP, BNN); its labels are used unless ``y`` is given.
        y : array-like of shape (n_samples,), optional
            Labels of any values (ints, strings); required unless ``X`` is an iterator with labels.
        context : str, mx.Context, torch.device or list, optional
            Device(s) for this call (default: the constructor's ``context_function``).

        Returns
        -------
        self
        """
        self._validate_before_repurpose()
        devices = self._resolve_devices(context)
        if isinstance(X, FeatureStore):
            return self._fit_store(X, y, devices)
        if self.source_model is None:
            if is_data_iterator(X):
                raise InvalidTypeError(  # Xfer: TypeError for a missing source model
                    "A data iterator needs a source model to extract features from; this "
                    "repurposer has source_model=None and takes feature arrays."
                )
            features = _validation.check_features(X, "X")
            labels = _validation.check_labels(y, "y", n_samples=len(features))
            self._record_feature_names(X, reset=True)
            return self._fit_checked(features, labels, None, devices, needs_source_model=False)
        if y is not None:
            y = _validation.check_labels(y, "y")  # before the costly extraction
        data = self._extract(X, devices)
        labels = data.labels
        if y is not None:
            labels = y
        if labels is None:
            raise InvalidArgumentError(
                "fit needs labels: this classifier requires y to be passed, but the target y is "
                "None. Pass y, or an mx.io.DataIter that provides labels."
            )
        labels = _validation.check_labels(labels, "y", n_samples=len(data.features))
        return self._fit_checked(
            data.features, labels, data.feature_indices_per_layer, devices, needs_source_model=True
        )

    def fit_features(
        self,
        features: Any,
        labels: Any,
        feature_indices_per_layer: list | None = None,
        context: Any = None,
    ) -> MetaModelRepurposer:
        """Train on features you extracted yourself (e.g. cached ``get_layer_output`` results).

        Parameters
        ----------
        features : array-like of shape (n_samples, n_features), or FeatureStore
            The features (a store is read from disk a piece at a time; see :meth:`fit`).
        labels : array-like of shape (n_samples,)
            Labels of any values (None: a store's own labels).
        feature_indices_per_layer : list of int arrays or dict, optional
            Columns of ``features`` from each layer, in layer order (default: one layer); a dict
            of layer name to columns, as in ``MetaModelData``, works too.
        context : optional
            Device for the head (GP/BNN).

        Returns
        -------
        self
        """
        devices = self._resolve_devices(context)
        if isinstance(features, FeatureStore):
            return self._fit_store(features, labels, devices)
        features = self._as_feature_array(features)
        labels = _validation.check_labels(
            labels, "labels", n_samples=len(features), x_name="features"
        )
        return self._fit_checked(
            features,
            labels,
            feature_indices_per_layer,
            devices,
            needs_source_model=self.source_model is not None,
        )

    def _fit_store(self, store: FeatureStore, labels: Any, devices: list[Device]) -> MetaModelRepurposer:
        """Train on the features of a store on disk (heads with ``_train_model_from_store``)."""
        if self.source_model is not None and store.layer_names != self._validated_layer_names():
            raise InvalidArgumentError(
                f"The FeatureStore holds layers {store.layer_names}, but this repurposer reads "
                f"{self.feature_layer_names}: extract the store from feature_layer_names, or "
                "construct the repurposer with the store's layers."
            )
        if labels is None:
            labels = store.labels
        if labels is None:
            raise InvalidArgumentError(
                "fit needs labels: the FeatureStore has none (its data had no labels); pass y."
            )
        labels = _validation.check_labels(labels, "y", n_samples=len(store), x_name="the store")
        if self.source_model is None:  # scikit-learn's bookkeeping, as _record_feature_names does
            self.n_features_in_ = store.num_features
            self.__dict__.pop("feature_names_in_", None)
        return self._fit_checked(
            store,
            labels,
            store.feature_indices_per_layer,
            devices,
            needs_source_model=self.source_model is not None,
        )

    def _fit_checked(
        self,
        features: np.ndarray | FeatureStore,
        labels: Any,
        feature_indices_per_layer: list | None,
        devices: list[Device],
        needs_source_model: bool,
    ) -> MetaModelRepurposer:
        self._require_available(devices)
        check_verbose(self.verbose)
        for attribute in ("classes_", "target_model_"):
            self.__dict__.pop(attribute, None)
        on_disk = isinstance(features, FeatureStore)
        n_rows, n_columns = (
            (len(features), features.num_features) if on_disk else features.shape
        )
        if on_disk and type(self)._train_model_from_store is MetaModelRepurposer._train_model_from_store:
            raise InvalidTypeError(
                f"{type(self).__name__} cannot train on a FeatureStore (features on disk); "
                "LrRepurposer, GpRepurposer and BnnRepurposer can. If the features fit in memory, "
                "pass store.to_array() instead."
            )
        indices = self._check_feature_indices(feature_indices_per_layer, n_columns)
        encoded = self._encode_labels(labels)
        with self._using_devices(devices):
            logger.info(
                "%s: training on %d examples x %d features, %d classes%s.",
                type(self).__name__,
                n_rows,
                n_columns,
                len(self.classes_),
                " (read from disk)" if on_disk else "",
            )
            train = self._train_model_from_store if on_disk else self._train_model_from_features
            token = _FITTING.set(self)
            try:
                target_model = train(features, encoded, indices)
            except BaseException:
                del self.classes_  # a failed fit leaves the repurposer unfitted
                raise
            finally:
                _FITTING.reset(token)
        self._install_fitted(target_model, indices, int(n_columns), needs_source_model)
        return self

    def _install_fitted(
        self,
        target_model: Any,
        feature_indices_per_layer: list[np.ndarray],
        n_meta_features: int,
        needs_source_model: bool,
    ) -> None:
        """Set the fitted state beside ``classes_`` (by fit, and by readers of other formats)."""
        self.target_model_ = target_model
        self.feature_indices_per_layer_ = feature_indices_per_layer
        self.n_meta_features_ = n_meta_features
        self._needs_source_model = needs_source_model

    # ---------------------------------------------------------------- predict
    def _as_feature_array(self, features: Any, expected_features: int | None = None) -> np.ndarray:
        if is_data_iterator(features):
            raise InvalidTypeError(
                "Expected a feature array [N, D], got a data iterator; use fit/predict for "
                "source-model inputs."
            )
        return _validation.check_features(
            features,
            "features",
            expected_features=expected_features,
            estimator_name=type(self).__name__,
        )

    def _record_feature_names(self, X: Any, reset: bool) -> None:
        """scikit-learn's bookkeeping of ``n_features_in_``/``feature_names_in_`` (X is checked)."""
        try:
            validate_data(self, X, reset=reset, skip_check_array=True)
        except ValueError as error:  # feature names that differ from fit's
            raise InvalidArgumentError(str(error)) from error

    def _validate_before_repurpose(self) -> None:
        """Check the feature layer names (when there is a source model to read them from) and
        ``extraction_batch_size`` (also when it is unused, so that a mistake shows at once)."""
        check_int("extraction_batch_size", self.extraction_batch_size, allow_none=True)
        if self.source_model is not None:
            self._validated_layer_names()

    def _prediction_features(self, X: Any, devices: list[Device]) -> np.ndarray:
        self._check_fitted()
        if self.source_model is None:
            if getattr(self, "_needs_source_model", False):
                raise InvalidArgumentError(
                    f"This {type(self).__name__} was trained on source-model features but has no "
                    "source model (it was saved or loaded without one). Pass source_model= to "
                    "xfer.load, or give features to predict_proba_features/predict_features."
                )
            if is_data_iterator(X):
                raise InvalidTypeError(  # Xfer: TypeError for a missing source model
                    "A data iterator needs a source model to extract features from; this "
                    "repurposer has source_model=None and takes feature arrays."
                )
            features = _validation.check_features(
                X,
                "X",
                expected_features=getattr(self, "n_features_in_", self.n_meta_features_),
                estimator_name=type(self).__name__,
            )
            self._record_feature_names(X, reset=False)
            return features
        return self._extract(X, devices).features

    def _check_prediction_features(self, features: np.ndarray) -> np.ndarray:
        if features.shape[1] != self.n_meta_features_:
            raise InvalidArgumentError(
                f"X has {features.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_meta_features_} features as input (the width of the training features)."
            )
        return features

    def _proba_from_features(self, features: np.ndarray, devices: list[Device]) -> np.ndarray:
        self._check_prediction_features(features)
        self._require_available(devices)
        with self._using_devices(devices):
            probabilities = self._predict_probability_from_features(features)
        return _validation.check_probabilities(
            probabilities, len(features), len(self.classes_), type(self).__name__
        )

    def _labels_from_features(self, features: np.ndarray, devices: list[Device]) -> np.ndarray:
        self._check_prediction_features(features)
        self._require_available(devices)
        with self._using_devices(devices):
            encoded = np.asarray(self._predict_label_from_features(features))
        if (
            encoded.shape != (len(features),)
            or encoded.dtype.kind not in "iu"
            or (encoded.size and (encoded.min() < 0 or encoded.max() >= len(self.classes_)))
        ):
            raise InvalidArgumentError(
                f"{type(self).__name__}'s head returned label codes of shape {encoded.shape} "
                f"(dtype {encoded.dtype}); expected one integer in 0..{len(self.classes_) - 1} "
                "per row: the head is inconsistent with classes_."
            )
        return self._decode_labels(encoded)

    def _over_store(self, store: FeatureStore, compute: Any, devices: list[Device]) -> np.ndarray:
        """``compute(features, devices)`` over a store's rows, a chunk at a time."""
        self._check_fitted()
        if self.source_model is not None and store.layer_names != self._validated_layer_names():
            raise InvalidArgumentError(
                f"The FeatureStore holds layers {store.layer_names}, but this repurposer reads "
                f"{self.feature_layer_names}."
            )
        return np.concatenate([compute(chunk, devices) for chunk, _ in store.chunks()])

    def predict_proba(self, X: Any, context: Any = None) -> np.ndarray:
        """Class probabilities ``[N, n_classes]`` in the order of ``classes_``.

        Parameters
        ----------
        X : ndarray, mx.io.DataIter, torch Tensor/Dataset/DataLoader, list of str or FeatureStore
            Source-model inputs (labels, if any, are ignored), features when ``source_model`` is
            None, or a :class:`~xfer.feature_store.FeatureStore` of the feature layers (read a
            chunk at a time).
        context : optional
            Device(s) for this call.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        self._validate_before_predict()
        devices = self._resolve_devices(context)
        if isinstance(X, FeatureStore):
            return self._over_store(X, self._proba_from_features, devices)
        return self._proba_from_features(self._prediction_features(X, devices), devices)

    def predict(self, X: Any, context: Any = None) -> np.ndarray:
        """Predicted labels in the user's label values.

        Parameters
        ----------
        X : ndarray, mx.io.DataIter, torch Tensor/Dataset/DataLoader, list of str or FeatureStore
            Source-model inputs, features when ``source_model`` is None, or a store of them.
        context : optional
            Device(s) for this call.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        self._validate_before_predict()
        devices = self._resolve_devices(context)
        if isinstance(X, FeatureStore):
            return self._over_store(X, self._labels_from_features, devices)
        return self._labels_from_features(self._prediction_features(X, devices), devices)

    def predict_proba_features(self, features: Any, context: Any = None) -> np.ndarray:
        """Class probabilities from features you extracted yourself.

        Parameters
        ----------
        features : array-like of shape (n_samples, n_features), or FeatureStore
            Features as the head was trained on (the feature layers' outputs, concatenated in
            the order of ``feature_layer_names``).
        context : optional
            Device for the head (GP, BNN).

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        self._check_fitted()
        devices = self._resolve_devices(context)
        if isinstance(features, FeatureStore):
            return self._over_store(features, self._proba_from_features, devices)
        return self._proba_from_features(
            self._as_feature_array(features, self.n_meta_features_), devices
        )

    def predict_features(self, features: Any, context: Any = None) -> np.ndarray:
        """Predicted labels (user's values) from features you extracted yourself.

        Parameters
        ----------
        features : array-like of shape (n_samples, n_features)
            Features as the head was trained on (the feature layers' outputs, concatenated in
            the order of ``feature_layer_names``).
        context : optional
            Device for the head (GP, BNN).

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        self._check_fitted()
        devices = self._resolve_devices(context)
        if isinstance(features, FeatureStore):
            return self._over_store(features, self._labels_from_features, devices)
        return self._labels_from_features(
            self._as_feature_array(features, self.n_meta_features_), devices
        )

    # ---------------------------------------------------------------- hooks (Xfer's names)
    def _train_model_from_features(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        feature_indices_per_layer: list[np.ndarray] | None = None,
    ) -> Any:
        """Train and return the target model. ``labels`` are int codes ``0..K-1``;
        ``feature_indices_per_layer`` gives each feature layer's columns (``None``, Xfer's
        default: one block of all columns)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _train_model_from_features."
        )

    def _hook_arguments(
        self, features: Any, labels: Any, feature_indices_per_layer: Any = None
    ) -> tuple[Any, np.ndarray, int, list[np.ndarray] | None]:
        """The training hook's arguments as heads use them: ``(features, codes, K, indices)``.

        Within ``fit`` they are passed on unchanged (``labels`` are codes of ``classes_``, K is
        ``len(classes_)``). Called directly, as Xfer's scripts do
        (``_train_model_from_features(X, y)``), ``labels`` may be any values: they are numbered
        in sorted order, as Xfer's heads did (scikit-learn's ``LabelBinarizer``), so the model
        predicts those numbers ``0..K-1``; ``feature_indices_per_layer`` may be Xfer's dict of
        layer name to columns, or None (one block).
        """
        if _FITTING.get() is self:
            return features, labels, len(self.classes_), feature_indices_per_layer
        features = self._as_feature_array(features)
        labels = _validation.check_labels(
            labels, "labels", n_samples=len(features), x_name="features"
        )
        classes, codes = np.unique(labels, return_inverse=True)
        indices = self._check_feature_indices(feature_indices_per_layer, features.shape[1])
        return features, codes.astype(np.int64), len(classes), indices

    def _train_model_from_store(
        self, store: FeatureStore, labels: np.ndarray, feature_indices_per_layer: list[np.ndarray]
    ) -> Any:
        """Train from features on disk, reading them a piece at a time (optional: heads that
        implement it accept a :class:`~xfer.feature_store.FeatureStore` in ``fit``)."""
        raise NotImplementedError  # _fit_checked refuses a store before calling this

    def _predict_probability_from_features(self, features: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, K]`` from ``self.target_model_``."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _predict_probability_from_features."
        )

    def _predict_label_from_features(self, features: np.ndarray) -> np.ndarray:
        """Int label codes; the default is the argmax of the probabilities."""
        return np.argmax(self._predict_probability_from_features(features), axis=1)

    # ---------------------------------------------------------------- devices for heads
    def _head_device(self) -> Device:
        """The device the head computes on in the current call (first of the call's devices)."""
        return self._current_devices()[0]

    def _torch_device(self) -> Any:
        return to_torch(self._head_device())

    # ---------------------------------------------------------------- state
    def _get_target_model_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The target model as (JSON-safe config, numeric arrays). Heads override this."""
        get_state = getattr(self.target_model_, "get_state", None)
        if get_state is None:
            raise NotImplementedError(
                f"{type(self).__name__} must implement _get_target_model_state to be saved."
            )
        return get_state()

    def _set_target_model_state(
        self, config: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> None:
        """Rebuild ``target_model_`` from :meth:`_get_target_model_state` output."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement _set_target_model_state to be loaded."
        )

    def _get_fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        config, head_arrays = self._get_target_model_state()
        arrays = {f"head.{name}": np.asarray(value) for name, value in head_arrays.items()}
        for i, layer_indices in enumerate(self.feature_indices_per_layer_):
            arrays[f"meta.feature_indices.{i}"] = layer_indices
        state = {
            "head": config,
            "n_meta_features": self.n_meta_features_,
            "n_feature_layers": len(self.feature_indices_per_layer_),
            "needs_source_model": bool(getattr(self, "_needs_source_model", False)),
            "n_features_in": int(self.n_features_in_) if hasattr(self, "n_features_in_") else None,
        }
        return state, arrays

    def _check_loaded_state(self) -> None:
        """The loaded indices, widths and head must fit together: a trial prediction on two rows
        of the saved width must give one probability per class (else ValueError)."""
        width = self.n_meta_features_
        if width < 1:
            raise ValueError(f"n_meta_features is {width}")
        for layer_indices in self.feature_indices_per_layer_:
            if (
                layer_indices.ndim != 1
                or layer_indices.dtype.kind not in "iu"
                or layer_indices.size == 0
                or layer_indices.min() < 0
                or layer_indices.max() >= width
            ):
                raise ValueError(
                    f"feature indices {layer_indices!r:.60} do not index {width} feature columns"
                )
        if hasattr(self, "n_features_in_") and not self._needs_source_model:
            if self.n_features_in_ != width:
                raise ValueError(
                    f"n_features_in ({self.n_features_in_}) differs from n_meta_features ({width})"
                )
        probe = np.vstack([np.ones(width), np.linspace(-1.0, 1.0, width)])
        from xfer.exceptions import ProbabilityEstimatesDisabledError

        try:
            try:
                self.predict_proba_features(probe, context="cpu")
            except ProbabilityEstimatesDisabledError:
                self.predict_features(probe, context="cpu")
        except (ValueError, IndexError, TypeError, RuntimeError) as error:
            raise ValueError(
                f"the saved head does not predict {len(self.classes_)} classes from {width} "
                f"features ({type(error).__name__}: {error})"
            ) from error

    def _set_fitted_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        n_layers = int(config["n_feature_layers"])
        self.feature_indices_per_layer_ = [
            arrays[f"meta.feature_indices.{i}"] for i in range(n_layers)
        ]
        self.n_meta_features_ = int(config["n_meta_features"])
        self._needs_source_model = bool(config["needs_source_model"])
        if config.get("n_features_in") is not None:
            self.n_features_in_ = int(config["n_features_in"])
        head_arrays = {k[len("head.") :]: v for k, v in arrays.items() if k.startswith("head.")}
        self._set_target_model_state(config["head"], head_arrays)


_ModelHandlerType = ModelHandler  # the real class, for isinstance checks while the name is patched

__all__ = ["MetaModelData", "MetaModelRepurposer", "TargetModelInfo"]
