"""The contract every repurposer follows, and the plumbing they share.

:class:`Repurposer` gives both spellings of the API (Xfer's ``repurpose`` / ``predict_label`` /
``predict_probability`` / ``save_repurposer`` and scikit-learn's ``fit`` / ``predict`` /
``predict_proba`` / ``score``), label encoding (labels come back as the user gave them), the
per-call ``context`` with the constructor's value as default, and saving/loading through
:mod:`xfer.serialization`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import accuracy_score

from xfer import _validation, serialization
from xfer._version import __version__
from xfer.context import (
    Device,
    cpu,
    devices_from_function,
    gpu_available,
    resolve_context,
    xfer_context_function,
)
from xfer.exceptions import (
    DeviceUnavailableError,
    InvalidArgumentError,
    ModelFileNotFoundError,
    NotFittedError,
    SerializationError,
)

logger = logging.getLogger("xfer.repurposers")

#: Suffix of the source-model checkpoint saved beside a repurposer (Xfer's ``P_source``).
SOURCE_SUFFIX = "_source"

#: True while the repr or ``clone`` reads the parameters: the default device then stays the
#: constructor's default (:func:`xfer.context.cpu`), so the repr does not list it as changed and
#: a clone keeps it (``get_params()`` reports it as ``mx.cpu`` once MXNet is imported, as Xfer).
_CONSTRUCTOR_PARAMS: ContextVar[bool] = ContextVar("xfer_constructor_params", default=False)


@contextmanager
def _constructor_params() -> Iterator[None]:
    token = _CONSTRUCTOR_PARAMS.set(True)
    try:
        yield
    finally:
        _CONSTRUCTOR_PARAMS.reset(token)


class Repurposer(ClassifierMixin, BaseEstimator):
    """Base class of every repurposer: turns a source model into a predictor for a target task.

    Subclasses implement :meth:`fit`, :meth:`predict_proba` and the state hooks
    :meth:`_get_fitted_state` / :meth:`_set_fitted_state`; everything else (Xfer spellings,
    scoring, label decoding, saving and loading) is shared.

    Parameters
    ----------
    source_model : mx.mod.Module, ModelHandler, (symbol, arg_params, aux_params) or None
        The pretrained network.
    context_function : callable, str, mx.Context or torch.device, default=mx.cpu
        Default device for computations (Xfer's ``context_function``); each call can override it
        with ``context=``. The default is :func:`xfer.context.cpu`, which is ``mx.cpu`` without
        importing MXNet; ``get_params()`` reports it as ``mx.cpu``.
    num_devices : int, default=1
        Number of devices of the kind ``context_function`` makes.

    Notes
    -----
    ``__init__`` only stores the arguments (scikit-learn convention): invalid values are reported
    by ``fit``. Fitted attributes end in ``_`` (``classes_``).
    """

    #: Registry key written into saved manifests (set by :func:`~xfer.serialization.register_repurposer`).
    serialization_key: ClassVar[str | None] = None
    #: Whether ``save_repurposer(..., save_source_model=None)`` saves the source model.
    _save_source_model_default: ClassVar[bool] = True

    def __init__(self, source_model: Any, context_function: Any = cpu, num_devices: int = 1):
        self.source_model = source_model
        self.context_function = context_function
        self.num_devices = num_devices

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Xfer's custom repurposers override ``get_params(self)`` without scikit-learn's ``deep``
        # argument; accept it, so that repr, clone, set_params and saving keep working.
        get_params = cls.__dict__.get("get_params")
        if callable(get_params) and "deep" not in inspect.signature(get_params).parameters:

            @functools.wraps(get_params)
            def get_params_with_deep(self: Any, deep: bool = True) -> dict[str, Any]:
                return get_params(self)

            cls.get_params = get_params_with_deep  # type: ignore[method-assign]

    # ---------------------------------------------------------------- Xfer spellings
    def repurpose(self, train_iterator: Any, context: Any = None) -> Repurposer:
        """Train the target model on ``train_iterator`` (Xfer spelling of :meth:`fit`).

        Parameters
        ----------
        train_iterator : ndarray, mx.io.DataIter, torch Tensor/Dataset/DataLoader or list of str
            Source-model inputs (Xfer passed an ``mx.io.DataIter`` with labels).
        context : str, mx.Context, torch.device or list, optional
            Device(s) for this call (default: the constructor's ``context_function``).

        Returns
        -------
        self
        """
        return self.fit(train_iterator, context=context)

    def predict_label(self, test_iterator: Any, context: Any = None) -> np.ndarray:
        """Predicted labels, in the user's label values (Xfer spelling of :meth:`predict`).

        Parameters
        ----------
        test_iterator : ndarray, mx.io.DataIter, torch Tensor/Dataset/DataLoader or list of str
            Source-model inputs (Xfer passed an ``mx.io.DataIter``; its labels are ignored).
        context : str, mx.Context, torch.device or list, optional
            Device(s) for this call (default: the constructor's ``context_function``).

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        return self.predict(test_iterator, context=context)

    def predict_probability(self, test_iterator: Any, context: Any = None) -> np.ndarray:
        """Class probabilities ``[N, n_classes]`` (Xfer spelling of :meth:`predict_proba`).

        Parameters
        ----------
        test_iterator : ndarray, mx.io.DataIter, torch Tensor/Dataset/DataLoader or list of str
            Source-model inputs (Xfer passed an ``mx.io.DataIter``; its labels are ignored).
        context : str, mx.Context, torch.device or list, optional
            Device(s) for this call (default: the constructor's ``context_function``).

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.
        """
        return self.predict_proba(test_iterator, context=context)

    # ---------------------------------------------------------------- scikit-learn spellings
    def fit(self, X: Any, y: Any = None, context: Any = None) -> Repurposer:  # pragma: no cover
        """Train the target model (every repurposer implements it).

        Parameters
        ----------
        X : ndarray, mx.io.DataIter, torch Tensor/Dataset/DataLoader or list of str
            Source-model inputs (features ``[N, D]`` for a head without a source model; texts for
            a text model).
        context : str, mx.Context, torch.device or list, optional
            Device(s) for this call (default: the constructor's ``context_function``).
        y : array-like of shape (n_samples,), optional
            Labels of any values (ints, strings); not needed when ``X`` brings its own (an
            iterator or dataset with labels).

        Returns
        -------
        self
        """
        raise NotImplementedError

    def predict_proba(self, X: Any, context: Any = None) -> np.ndarray:  # pragma: no cover
        """Class probabilities (every repurposer implements it).

        Parameters
        ----------
        X : ndarray, mx.io.DataIter, torch Tensor/Dataset/DataLoader or list of str
            Source-model inputs (features ``[N, D]`` for a head without a source model; texts for
            a text model).
        context : str, mx.Context, torch.device or list, optional
            Device(s) for this call (default: the constructor's ``context_function``).

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.
        """
        raise NotImplementedError

    def predict(self, X: Any, context: Any = None) -> np.ndarray:
        """Predicted labels: ``classes_[argmax(predict_proba(X))]``.

        Parameters
        ----------
        X : ndarray, mx.io.DataIter, torch Tensor/Dataset/DataLoader or list of str
            Source-model inputs (features ``[N, D]`` for a head without a source model; texts for
            a text model).
        context : str, mx.Context, torch.device or list, optional
            Device(s) for this call (default: the constructor's ``context_function``).

        Returns
        -------
        ndarray of shape (n_samples,)
            In the label values given to ``fit``.
        """
        probabilities = self.predict_proba(X, context=context)
        return self.classes_[np.argmax(probabilities, axis=1)]

    def score(self, X: Any, y: Any, sample_weight: Any = None, context: Any = None) -> float:
        """Mean accuracy of :meth:`predict` on ``X`` against ``y``.

        Parameters
        ----------
        X : ndarray, mx.io.DataIter, torch Tensor/Dataset/DataLoader or list of str
            Inputs, as for :meth:`predict`.
        y : array-like of shape (n_samples,)
            True labels.
        sample_weight : array-like of shape (n_samples,), optional
            Weight of each example.
        context : str, mx.Context, torch.device or list, optional
            Device(s) for this call.

        Returns
        -------
        float
            Accuracy in [0, 1].

        Raises
        ------
        InvalidTypeError
            ``y`` holds labels of another kind than ``classes_`` (strings against numbers...).
        InvalidArgumentError
            ``y`` or ``sample_weight`` of another length than ``X``, or bad values in them.
        """
        self._check_fitted()
        labels = _validation.check_labels(y, "y")  # before the costly prediction
        _validation.check_labels_like(labels, self.classes_)
        predictions = self.predict(X, context=context)
        labels = _validation.check_labels(labels, "y", n_samples=len(predictions))
        weights = _validation.check_sample_weight(sample_weight, len(labels))
        return float(accuracy_score(labels, predictions, sample_weight=weights))

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "classes_")

    def _unfit(self) -> None:
        """Forget the fitted state: the attributes ending in ``_`` (what ``target_model = None``
        does)."""
        for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("_")]:
            del self.__dict__[name]

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet: call fit(X, y) or "
                "repurpose(train_iterator) first."
            )

    # Xfer's validation hooks, run once at the start of repurpose/fit and of every prediction.
    def _validate_before_repurpose(self) -> None:
        """Check the parameters before training (subclasses add their checks)."""

    def _validate_before_predict(self) -> None:
        """Check that the repurposer can predict: it must be fitted."""
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"Cannot predict because target_model is not initialized: this "
                f"{type(self).__name__} is not fitted yet. Call fit(X, y) or "
                "repurpose(train_iterator) first."
            )

    # ---------------------------------------------------------------- labels
    def _encode_labels(self, y: Any) -> np.ndarray:
        """Set ``classes_`` from ``y`` and return ``y`` as int codes ``0..K-1``."""
        y = _validation.check_labels(y, "y")
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise InvalidArgumentError(
                f"A classifier needs at least 2 classes in the training labels; got 1 class "
                f"({classes[0]!r}). Check the labels passed to fit."
            )
        self.classes_ = classes
        return encoded.astype(np.int64, copy=False)

    def _decode_labels(self, encoded: np.ndarray) -> np.ndarray:
        return self.classes_[np.asarray(encoded, dtype=np.int64)]

    # ---------------------------------------------------------------- context
    def _default_devices(self) -> list[Device]:
        return devices_from_function(self.context_function, self.num_devices)

    def _resolve_devices(self, context: Any) -> list[Device]:
        """The devices for this call: ``context`` if given, else the constructor's."""
        if context is None:
            return self._default_devices()
        return resolve_context(context)

    @staticmethod
    def _require_available(devices: list[Device]) -> None:
        """Raise :class:`DeviceUnavailableError` when a GPU is asked for and none exists."""
        gpus = [str(d) for d in devices if d.kind == "gpu"]
        if gpus and not gpu_available():
            raise DeviceUnavailableError(
                f"Context {', '.join(gpus)} asks for a GPU, but neither torch nor MXNet sees a "
                "usable CUDA GPU on this machine. Use context='cpu', or install the CUDA builds "
                "of torch/MXNet on a machine with an NVIDIA GPU."
            )

    @contextmanager
    def _using_devices(self, devices: list[Device]) -> Iterator[None]:
        """Make ``devices`` visible to the hooks (``self._call_devices``) for one call."""
        previous = getattr(self, "_call_devices", None)
        self._call_devices = devices
        try:
            yield
        finally:
            self._call_devices = previous

    def _current_devices(self) -> list[Device]:
        devices = getattr(self, "_call_devices", None)
        return devices if devices is not None else self._default_devices()

    # ---------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike, save_source_model: bool | None = None) -> None:
        """Save to the path prefix ``path`` (files ``path.json``, ``path.npz``, ``path_source-*``).

        The save is all or nothing: interrupted at any moment (an exception, a crash, a kill), an
        earlier model saved under ``path`` stays whole and loads (see
        :func:`xfer.serialization.saving`).

        Parameters
        ----------
        path : str or path-like
            Path prefix of the files; directories are created.
        save_source_model : bool, optional
            Also save the source model (default: the class's choice, True for meta-model
            repurposers as in Xfer).

        Raises
        ------
        ModelSaveError
            ``path`` names a folder, a part of it is a file, or the folder is not writable.
        SerializationError
            A parameter or the fitted state cannot be saved (nothing is written then).
        """
        self._save_all(serialization.save_prefix(path), save_source_model)

    def save_repurposer(
        self,
        model_name: str,
        model_directory: str | os.PathLike = "",
        save_source_model: bool | None = None,
    ) -> None:
        """Save to ``model_directory/model_name`` (Xfer spelling; load with :func:`xfer.load`).

        All or nothing, as :meth:`save`.

        Parameters
        ----------
        model_name : str
            Name (prefix) of the files.
        model_directory : str or path-like, default=""
            Folder of the files (created).
        save_source_model : bool, optional
            Also save the source model (default: the class's choice, True for meta-model heads).
        """
        prefix = serialization.model_prefix(model_name, model_directory)
        self._save_all(serialization.save_prefix(prefix), save_source_model)

    def _save_all(self, prefix: Path, save_source_model: bool | None) -> None:
        """One save of every file of the model (subclasses' own files included)."""
        with serialization.saving(prefix.parent):
            self._save_to_prefix(prefix, save_source_model)

    def _save_to_prefix(self, prefix: Path, save_source_model: bool | None) -> None:
        if self.serialization_key is None or serialization.registered_repurposers().get(
            self.serialization_key
        ) is not type(self):
            raise SerializationError(
                f"{type(self).__qualname__} is not registered for saving: decorate the class with "
                "@xfer.serialization.register_repurposer so that xfer.load can find it again."
            )
        if save_source_model is None:
            save_source_model = self._save_source_model_default
        manifest: dict[str, Any] = {
            "format": serialization.FORMAT_NAME,
            "format_version": serialization.FORMAT_VERSION,
            "class_key": self.serialization_key,
            "xfer_version": __version__,
            "params": self._params_for_manifest(),
            "fitted": self.__sklearn_is_fitted__(),
        }
        arrays: dict[str, np.ndarray] = {}
        if manifest["fitted"]:
            manifest["classes"] = serialization.encode_classes(self.classes_)
            state, arrays = self._get_fitted_state()
            manifest["state"] = state
        serialization.to_strict_json(manifest)  # fail before writing anything
        arrays_bytes = serialization.arrays_to_npz_bytes(arrays)
        with serialization.saving(prefix.parent):
            arrays_path = prefix.with_name(prefix.name + ".npz")
            serialization.atomic_write_bytes(arrays_path, arrays_bytes)
            manifest["arrays_file"] = arrays_path.name
            manifest["arrays_sha256"] = serialization.sha256_of(arrays_path)
            manifest["source_model"] = None
            if save_source_model and self.source_model is not None:
                manifest["source_model"] = self._save_source_model(prefix)
            # The manifest is written last (its checksum binds the other files).
            serialization.write_manifest(prefix.with_name(prefix.name + ".json"), manifest)
        logger.info("Saved %s to %s.json", type(self).__name__, prefix)

    def _save_source_model(self, prefix: Path) -> dict[str, Any]:
        handler = self._get_model_handler()
        source_prefix = prefix.with_name(prefix.name + SOURCE_SUFFIX)
        with serialization.saving(prefix.parent) as save:
            before = set(save.names)
            handler.save_checkpoint(str(source_prefix))
            files = sorted(name for name in save.names if name not in before)
            return {
                "prefix_suffix": SOURCE_SUFFIX,
                "files": {name: save.sha256(name) for name in files},
            }

    def _get_model_handler(self) -> Any:
        """A ModelHandler of ``source_model`` (built once per source model object)."""
        from xfer.model_handler import ModelHandler

        if isinstance(self.source_model, ModelHandler):
            return self.source_model
        cache = getattr(self, "_handler_cache", None)
        if cache is not None and cache[0] is self.source_model:
            return cache[1]
        handler = ModelHandler(
            self.source_model, context_function=self.context_function, num_devices=self.num_devices
        )
        self._handler_cache = (self.source_model, handler)
        return handler

    def _params_for_manifest(self) -> dict[str, Any]:
        params = self.get_params(deep=False)
        params.pop("source_model", None)
        clean: dict[str, Any] = {}
        for name, value in params.items():
            clean[name] = self._json_param(name, value)
        return clean

    @staticmethod
    def _json_param(name: str, value: Any) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (np.integer, int)):
            return int(value)
        if isinstance(value, (np.floating, float)):
            return float(value)
        if isinstance(value, np.random.RandomState):
            warnings.warn(
                f"Parameter {name} is a RandomState, which cannot be saved; it is saved as None. "
                "Pass an int random_state for reproducible, saveable models.",
                stacklevel=4,
            )
            return None
        if isinstance(value, (list, tuple)):
            return [Repurposer._json_param(name, v) for v in value]
        if isinstance(value, dict):
            return {str(k): Repurposer._json_param(name, v) for k, v in value.items()}
        if "context" in name or callable(value) or hasattr(value, "device_type"):
            try:
                return serialization.context_to_json(value)
            except Exception as error:
                raise SerializationError(
                    f"Cannot save parameter {name}={value!r}: it is not a device description."
                ) from error
        raise SerializationError(
            f"Cannot save parameter {name}={value!r} (type {type(value).__name__}): saved "
            "parameters must be numbers, strings, booleans, None, devices or lists of those."
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters (scikit-learn).

        ``deep`` descends only into scikit-learn estimators: an ``mx.mod.Module`` source model
        has a ``get_params`` of its own that returns MXNet weights, not hyper-parameters.

        Parameters
        ----------
        deep : bool, default=True
            Also return the parameters of scikit-learn estimators among the parameters.

        Returns
        -------
        dict of str to object
        """
        params = super().get_params(deep=False)
        if not _CONSTRUCTOR_PARAMS.get():  # the default device as Xfer reported it (mx.cpu)
            params = {name: xfer_context_function(value) for name, value in params.items()}
        if deep:
            for name, value in list(params.items()):
                if isinstance(value, BaseEstimator):
                    params.update({f"{name}__{k}": v for k, v in value.get_params(deep=True).items()})
        return params

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:  # noqa: N803  (scikit-learn's name)
        """scikit-learn's repr (the parameters that differ from the constructor's defaults)."""
        with _constructor_params():
            return super().__repr__(N_CHAR_MAX)

    def _sk_visual_block_(self) -> Any:
        """How scikit-learn's HTML display (Jupyter) draws a repurposer: one box.

        Its default draws any parameter with ``get_params`` and ``fit`` as a nested estimator and
        calls ``get_params(deep=False)`` on it; an ``mx.mod.Module`` source model has both, but
        its ``get_params`` takes no ``deep``. A notebook cell ending in ``repurposer.repurpose(it)``
        (which returns the repurposer) printed that TypeError under the cell.
        """
        try:
            from sklearn.utils._repr_html.estimator import _VisualBlock
        except ImportError:  # scikit-learn < 1.7
            from sklearn.utils._estimator_html_repr import _VisualBlock
        return _VisualBlock("single", self, names=type(self).__name__, name_details=str(self))

    def __sklearn_clone__(self) -> Repurposer:
        """An unfitted copy with the same parameters; the source model is shared, not copied
        (it is not a scikit-learn estimator, and copying its weights would be wasteful)."""
        from sklearn.base import clone

        with _constructor_params():
            params = self.get_params(deep=False)
        source = params.pop("source_model")
        return type(self)(source_model=source, **{k: clone(v, safe=False) for k, v in params.items()})

    def _get_fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The fitted state as (JSON-safe config, arrays). Subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement saving.")

    def _set_fitted_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore the state written by :meth:`_get_fitted_state`. Subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement loading.")

    @classmethod
    def _from_manifest(
        cls,
        manifest: dict[str, Any],
        arrays: dict[str, np.ndarray],
        prefix: Path,
        source_model: Any = None,
    ) -> Repurposer:
        manifest_path = prefix.with_name(prefix.name + ".json")
        params = manifest["params"]
        if not isinstance(params, dict):
            raise SerializationError(f"{manifest_path}: 'params' must be an object.")
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "source_model"}
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise SerializationError(
                f"{manifest_path} has parameters {unknown} that {cls.__qualname__} does not take; "
                "the file was written by a different version of this class."
            )
        if source_model is None and manifest.get("source_model"):
            source_model = cls._load_source_model(manifest["source_model"], prefix, manifest_path)
        try:
            repurposer = cls(source_model=source_model, **params)
        except (TypeError, ValueError) as error:
            raise SerializationError(
                f"{manifest_path}: its parameters do not build a {cls.__qualname__} "
                f"({type(error).__name__}: {error})."
            ) from error
        if manifest.get("fitted"):
            try:
                repurposer.classes_ = serialization.decode_classes(
                    manifest.get("classes"), manifest_path, check=True
                )
                repurposer._set_fitted_state(manifest.get("state") or {}, arrays)
                repurposer._check_loaded_state()
            except (SerializationError, ModelFileNotFoundError):
                raise
            except Exception as error:  # a state no fit makes: any failure reads it wrongly
                raise SerializationError(
                    f"{manifest_path}: the saved state does not match {cls.__qualname__} "
                    f"({type(error).__name__}: {error}). Save the repurposer again."
                ) from error
        return repurposer

    def _check_loaded_state(self) -> None:
        """Check a loaded fitted state against itself; raise ValueError/IndexError if it does
        not fit together (turned into :class:`SerializationError` naming the file)."""

    @staticmethod
    def _load_source_model(info: Any, prefix: Path, manifest_path: Path) -> Any:
        if not isinstance(info, dict) or not isinstance(info.get("files"), dict):
            raise SerializationError(f"{manifest_path}: 'source_model' entry is malformed.")
        suffix = info.get("prefix_suffix", SOURCE_SUFFIX)
        if suffix != SOURCE_SUFFIX:
            raise SerializationError(f"{manifest_path}: unexpected source model suffix {suffix!r}.")
        source_prefix = prefix.with_name(prefix.name + SOURCE_SUFFIX)
        # The files are found by their role (the prefix may have been renamed as a whole) and
        # bound to this model by their checksums.
        torch_files, mxnet_files = (".json", ".safetensors"), ("-symbol.json", "-0000.params")
        files: dict[str, Any] = {}
        for name, digest in info["files"].items():
            ending = next(
                (e for e in mxnet_files + torch_files if str(name).endswith(SOURCE_SUFFIX + e)), None
            )
            if ending is None or ending in files:
                files = {}
                break
            files[ending] = digest
        torch_unverified = not info["files"] and serialization.resolve(
            source_prefix.with_name(source_prefix.name + ".safetensors")
        ).is_file()
        if torch_unverified:  # format 1 did not list a torch source's files
            files = dict.fromkeys(torch_files)
        if set(files) not in (set(torch_files), set(mxnet_files)):
            raise SerializationError(
                f"{manifest_path}: the source model entry lists the files {sorted(info['files'])}"
                ", not those of a saved source model (the manifest was edited or is corrupt)."
            )
        for ending, digest in files.items() if not torch_unverified else ():
            serialization.verify_file(
                source_prefix.with_name(source_prefix.name + ending),
                digest,
                "The source model file",
                f"It belongs with {manifest_path}: save the repurposer again, or pass "
                "source_model= to xfer.load.",
            )
        import xfer.model_handler as model_handler

        if set(files) == set(torch_files):
            raise InvalidArgumentError(
                f"The source model saved with {manifest_path} is a PyTorch network: its weights "
                f"are in {source_prefix.name}.safetensors, but its architecture is code, which "
                "xfer never stores or unpickles. Pass the network to xfer.load(..., "
                "source_model=<your torch.nn.Module>); to restore the saved weights into it, use "
                f"ModelHandler.load_checkpoint({str(source_prefix)!r}, model=<the module>)."
            )
        try:
            return model_handler.ModelHandler.load_checkpoint(str(source_prefix))
        except (ModelFileNotFoundError, SerializationError):
            raise
        except Exception as error:
            raise SerializationError(
                f"Cannot read the source model saved with {manifest_path} ({type(error).__name__}: "
                f"{error}). Save the repurposer again, or pass source_model= to xfer.load."
            ) from error


__all__ = ["Repurposer", "SOURCE_SUFFIX"]
