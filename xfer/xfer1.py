"""Repurposers saved by Amazon's Xfer 1.1.0: read them, and convert them to this package's format.

Xfer 1.1.0's ``save_repurposer(P)`` writes ``P.json`` (the class, its parameters and its fitted
state) and, depending on the kind, ``P_source-symbol.json``/``P_source-0000.params`` (the source
model), ``P-symbol.json``/``P-0000.params`` (a fine-tuned network) or ``P_posterior.json`` and
``P_posterior_params.npz`` (a BNN posterior). How each kind is read:

==========================  =============================================  ==================
kind                        what Xfer stored                               read by
==========================  =============================================  ==================
LR, SVM                     scikit-learn attributes as ``[dtype, list]``   JSON, directly
GP                          GPy models as JSON (training inputs, kernel,   JSON, directly
                            EP site parameters)
fine-tune, random-freeze    an MXNet network (symbol JSON + ``.params``)   MXNet's loaders
BNN                         ``_posterior_params.npz``: *pickled* MXNet     only with
                            Gluon ``Parameter`` objects                    ``allow_pickle``
==========================  =============================================  ==================

Nothing here runs code from a file: Xfer's own loader ran ``eval`` on dtype names (here they come
from a fixed list) and ``np.load(..., allow_pickle=True)`` on the BNN posterior. The BNN posterior
can only be read by unpickling, so it is refused unless ``allow_pickle=True`` is passed. Even then
the classes the pickle names are never imported: a restricted unpickler rebuilds stand-in objects
for a fixed list of NumPy and MXNet names and refuses any other name, and only the arrays are
kept (MXNet decodes each array's bytes). The remaining risk is that of parsing an untrusted file
with Python's pickle parser and MXNet's array decoder: pass ``allow_pickle=True`` only for files
you trust, convert them once with :func:`convert_xfer1`, and keep the converted files.

A converted model predicts what Xfer predicted: LR becomes an :class:`~xfer.LrRepurposer`; SVM,
GP and BNN become :class:`ConvertedSvmRepurposer`, :class:`ConvertedGpRepurposer` and
:class:`ConvertedBnnRepurposer`, subclasses of this package's heads that keep Xfer's trained model
(libsvm's one-vs-one SVM, GPy's EP Gaussian processes, Xfer's Gluon BNN posterior, all evaluated
in NumPy) until they are fitted again, which trains this package's own head. Fine-tuners become
this package's fine-tuning repurposers holding Xfer's network. Labels follow Xfer: LR and SVM keep
the training labels; GP, BNN and the fine-tuners predicted class indices ``0..K-1``.

Examples
--------
>>> repurposer = xfer.load("old_lr_model")                 # doctest: +SKIP  (LR, SVM, GP, NN)
>>> convert_xfer1("old_bnn", "new_bnn", allow_pickle=True)  # doctest: +SKIP  (a file you trust)
>>> repurposer = xfer.load("new_bnn")                       # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy.special import ndtr, softmax

from xfer.exceptions import InvalidArgumentError, ModelFileNotFoundError, SerializationError
from xfer.repurposers import _linear
from xfer.repurposers.bnn import BnnRepurposer
from xfer.repurposers.gp import GpRepurposer
from xfer.repurposers.lr import LogisticModel, LrRepurposer
from xfer.repurposers.svm import SvmRepurposer
from xfer.serialization import model_prefix, register_repurposer

logger = logging.getLogger("xfer.xfer1")

#: Xfer 1.1.0's repurposer classes, as written in the ``repurposer_class`` field of ``P.json``.
XFER1_CLASSES = (
    "LrRepurposer",
    "SvmRepurposer",
    "GpRepurposer",
    "BnnRepurposer",
    "NeuralNetworkFineTuneRepurposer",
    "NeuralNetworkRandomFreezeRepurposer",
)
#: dtype names Xfer wrote beside arrays (it ran ``eval('np.' + name)`` on them).
_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64"]
)  # fmt: skip


# ------------------------------------------------------------------------------ reading P.json
def read_xfer1_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The contents of ``path`` if it is a repurposer file written by Xfer 1.1.0, else ``None``.

    Xfer's files are JSON objects with ``repurposer_class`` (one of :data:`XFER1_CLASSES`) and
    ``parameters``; its GP files are not strict JSON (``Infinity``), which is accepted here.
    """
    try:
        if not Path(path).is_file():  # a regular file (never a device)
            return None
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if (
        isinstance(content, dict)
        and "format" not in content
        and content.get("repurposer_class") in XFER1_CLASSES
        and isinstance(content.get("parameters"), dict)
    ):
        return content
    return None


def is_xfer1_file(model_name: str | os.PathLike, model_directory: str | os.PathLike = "") -> bool:
    """Whether ``model_directory/model_name.json`` is a repurposer saved by Xfer 1.1.0."""
    prefix = model_prefix(model_name, model_directory)
    return read_xfer1_manifest(prefix.with_name(prefix.name + ".json")) is not None


def _array(value: Any, where: str) -> np.ndarray:
    """An array Xfer wrote as ``[dtype name, nested list]`` (or a plain list/number)."""
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (list, int, float))
    ):
        dtype, data = value
        if dtype not in _DTYPES:
            raise SerializationError(f"{where}: unsupported array type {dtype!r}.")
        return np.asarray(data, dtype=dtype)
    if isinstance(value, (list, int, float)):
        return np.asarray(value, dtype=np.float64)
    raise SerializationError(f"{where}: expected an array, got {type(value).__name__}.")


class _Reader:
    """Checked access to the fields of one Xfer file (errors name the file and the field)."""

    def __init__(self, prefix: Path, content: dict[str, Any]):
        self.prefix = prefix
        self.path = prefix.with_name(prefix.name + ".json")
        self.content = content
        self.kind = content["repurposer_class"]

    def error(self, message: str) -> SerializationError:
        return SerializationError(f"{self.path} (saved by Xfer 1.1.0's {self.kind}): {message}")

    def get(self, mapping: Any, key: str, where: str = "") -> Any:
        if not isinstance(mapping, dict) or key not in mapping:
            raise self.error(f"the field {where + key!r} is missing; the file is damaged.")
        return mapping[key]

    def parameter(self, key: str, default: Any = None) -> Any:
        return self.content["parameters"].get(key, default)

    def file(self, suffix: str) -> Path:
        path = self.prefix.with_name(self.prefix.name + suffix)
        if not path.is_file():
            raise ModelFileNotFoundError(
                f"The file {path} of the Xfer 1.1.0 repurposer {self.path} is missing; copy it "
                "next to the JSON file."
            )
        return path


def _context_function(reader: _Reader) -> Any:
    from xfer.utils import deserialize_ctx_fn

    try:
        return deserialize_ctx_fn(reader.parameter("context_function", "cpu"))
    except InvalidArgumentError as error:
        raise reader.error(str(error)) from None


def _source_model(reader: _Reader, source_model: Any) -> Any:
    """The source model given, else the one Xfer saved beside the file (else None)."""
    if source_model is not None:
        return source_model
    source_prefix = reader.prefix.with_name(reader.prefix.name + "_source")
    if not Path(f"{source_prefix}-symbol.json").is_file():
        return None
    from xfer.model_handler import MXNetModelHandler

    return MXNetModelHandler.load_checkpoint(str(source_prefix))


def _feature_blocks(reader: _Reader, source: Any, layers: list[str], n_features: int) -> list[np.ndarray]:
    """Columns of the features from each layer: from the source model's shapes when possible."""
    if source is not None and len(layers) > 1:
        try:
            from xfer.model_handler import ModelHandler

            handler = ModelHandler(source)
            shape = tuple(reader.content["provide_data"][0][1])
            internals = handler.symbol.get_internals()
            sizes = []
            for layer in layers:
                _, outputs, _ = internals[f"{layer}_output"].infer_shape(**{handler.data_name: (1, *shape[1:])})
                sizes.append(int(np.prod(outputs[0][1:])))
            if sum(sizes) == n_features:
                starts = np.cumsum([0, *sizes])
                return [np.arange(starts[i], starts[i + 1]) for i in range(len(sizes))]
        except Exception:  # noqa: BLE001 - the split is only used if a converted model is refit
            logger.debug("Could not infer the feature width of each layer of %s", reader.path)
    return [np.arange(n_features)]


def _install(repurposer: Any, classes: np.ndarray, head: Any, blocks: list[np.ndarray], source: Any) -> Any:
    repurposer.classes_ = np.asarray(classes)
    n_features = int(sum(len(block) for block in blocks))
    repurposer._install_fitted(head, blocks, n_features, needs_source_model=True)
    if source is None:
        logger.warning(
            "The Xfer 1.1.0 repurposer was saved without its source model: pass source_model= to "
            "predict from raw inputs (predicting from features works without it)."
        )
    return repurposer


def _meta_common(reader: _Reader) -> dict[str, Any]:
    layers = reader.parameter("feature_layer_names")
    if not isinstance(layers, list) or not layers or not all(isinstance(n, str) for n in layers):
        raise reader.error("'parameters.feature_layer_names' must be a non-empty list of names.")
    return {
        "feature_layer_names": layers,
        "context_function": _context_function(reader),
        "num_devices": int(reader.parameter("num_devices", 1)),
    }


# ------------------------------------------------------------------------------ LR
def _sklearn_attributes(reader: _Reader) -> tuple[dict[str, Any], dict[str, Any]]:
    model = reader.get(reader.get(reader.content, "target_model"), "model", "target_model.")
    params = reader.get(model, "parameters", "target_model.model.")
    attributes = reader.get(model, "attributes", "target_model.model.")
    if not isinstance(params, dict) or not isinstance(attributes, dict):
        raise reader.error("'target_model.model' must hold 'parameters' and 'attributes' objects.")
    return params, attributes


def _convert_lr(reader: _Reader, source: Any) -> LrRepurposer:
    params, attributes = _sklearn_attributes(reader)
    coef = _array(reader.get(attributes, "coef_", "target_model.model.attributes."), f"{reader.path}: coef_")
    classes = _array(reader.get(attributes, "classes_", "target_model.model.attributes."), f"{reader.path}: classes_")
    intercept = _array(attributes.get("intercept_", 0.0), f"{reader.path}: intercept_")
    coef = np.atleast_2d(coef).astype(np.float64)
    intercept = np.broadcast_to(np.asarray(intercept, np.float64), (coef.shape[0],)).copy()
    multinomial = params.get("multi_class") == "multinomial"
    if len(classes) > 2 and not multinomial:
        raise reader.error(
            f"its logistic regression is one-vs-rest (multi_class={params.get('multi_class')!r}); "
            "only Xfer's multinomial one can be converted."
        )
    if coef.shape != (1 if len(classes) == 2 else len(classes), coef.shape[1]):
        raise reader.error(f"coef_ has shape {coef.shape} for {len(classes)} classes.")
    if len(classes) == 2 and multinomial:  # scikit-learn: softmax([-z, z]) == sigmoid(2z)
        coef, intercept = 2.0 * coef, 2.0 * intercept
    n_features = coef.shape[1]
    head = LogisticModel(np.zeros(n_features), np.ones(n_features), coef, intercept)
    common = _meta_common(reader)
    repurposer = LrRepurposer(
        source,
        **common,
        tol=float(reader.parameter("tol", 1e-4)),
        c=float(reader.parameter("c", 1.0)),
        n_jobs=reader.parameter("n_jobs", -1),
        standardize="none",  # Xfer trained on unscaled features
    )
    blocks = _feature_blocks(reader, source, common["feature_layer_names"], n_features)
    return _install(repurposer, classes, head, blocks, source)


# ------------------------------------------------------------------------------ imported heads
class XferHead:
    """A model trained by Xfer 1.1.0, kept as arrays and evaluated in NumPy."""

    kind: ClassVar[str] = ""

    def __init__(self, config: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.config = dict(config)
        self.arrays = {name: np.asarray(value) for name, value in arrays.items()}

    def predict_proba(self, features: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_codes(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(self.predict_proba(features), axis=1)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"xfer_1_1_0_head": self.kind, **self.config}, dict(self.arrays)


class XferSvmHead(XferHead):
    """scikit-learn's ``SVC`` as trained by Xfer: libsvm's one-vs-one votes and, with probability
    estimates, its pairwise-coupled Platt probabilities."""

    kind = "svm"

    def _pairwise(self, features: np.ndarray) -> np.ndarray:
        arrays, config = self.arrays, self.config
        kernel = _linear.kernel_matrix(
            np.asarray(features, np.float64), arrays["support_vectors"], config["kernel"],
            float(config["gamma"]), int(config["degree"]), float(config["coef0"]),
        )  # fmt: skip
        n_support, coef, rho = arrays["n_support"], arrays["dual_coef"], arrays["intercept"]
        starts = np.concatenate([[0], np.cumsum(n_support)])
        n_classes = len(n_support)
        values = np.empty((kernel.shape[0], n_classes * (n_classes - 1) // 2))
        pair = 0
        for i in range(n_classes):
            for j in range(i + 1, n_classes):
                rows_i, rows_j = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
                values[:, pair] = (
                    kernel[:, rows_i] @ coef[j - 1, rows_i] + kernel[:, rows_j] @ coef[i, rows_j] + rho[pair]
                )
                pair += 1
        return values

    def predict_codes(self, features: np.ndarray) -> np.ndarray:
        values = self._pairwise(features)
        n_classes = len(self.arrays["n_support"])
        votes = np.zeros((values.shape[0], n_classes), dtype=np.int64)
        pair = 0
        for i in range(n_classes):
            for j in range(i + 1, n_classes):
                votes[:, i] += values[:, pair] > 0
                votes[:, j] += values[:, pair] <= 0
                pair += 1
        return np.argmax(votes, axis=1)  # libsvm: the first class with the most votes

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        if "prob_a" not in self.arrays:
            from xfer.repurposers.svm import _probabilities_disabled

            raise _probabilities_disabled()
        values = self._pairwise(features)
        n_classes = len(self.arrays["n_support"])
        linear = values * self.arrays["prob_a"] + self.arrays["prob_b"]
        pairwise = 1.0 / (1.0 + np.exp(np.clip(linear, -700, 700)))
        pairwise = np.clip(pairwise, 1e-7, 1 - 1e-7)
        r = np.zeros((values.shape[0], n_classes, n_classes))  # the diagonal is unused: 0
        pair = 0
        for i in range(n_classes):
            for j in range(i + 1, n_classes):
                r[:, i, j], r[:, j, i] = pairwise[:, pair], 1.0 - pairwise[:, pair]
                pair += 1
        return _couple_pairwise(r)

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> XferSvmHead:
        return cls({k: v for k, v in config.items() if k != "xfer_1_1_0_head"}, arrays)


def _couple_pairwise(r: np.ndarray) -> np.ndarray:
    """libsvm's ``multiclass_probability`` (Wu, Lin and Weng 2004) for every row of ``r``."""
    n, k = r.shape[0], r.shape[1]
    q = -r.transpose(0, 2, 1) * r  # Q[t, j] = -r[j, t] r[t, j]
    idx = np.arange(k)
    q[:, idx, idx] = np.sum(r[:, :, :] ** 2, axis=1) - r[:, idx, idx] ** 2  # sum_{j != t} r[j, t]^2
    p = np.full((n, k), 1.0 / k)
    active = np.ones(n, dtype=bool)
    eps = 0.005 / k
    for _ in range(max(100, k)):
        qp = np.einsum("ntj,nj->nt", q, p)
        pqp = np.sum(p * qp, axis=1)
        active &= np.max(np.abs(qp - pqp[:, None]), axis=1) >= eps
        if not active.any():
            break
        rows = np.where(active)[0]
        qa, pa, qpa, pqpa = q[rows], p[rows], qp[rows], pqp[rows]
        for t in range(k):
            diff = (-qpa[:, t] + pqpa) / qa[:, t, t]
            pa[:, t] += diff
            pqpa = (pqpa + diff * (diff * qa[:, t, t] + 2 * qpa[:, t])) / (1 + diff) / (1 + diff)
            qpa = (qpa + diff[:, None] * qa[:, t, :]) / (1 + diff)[:, None]
            pa = pa / (1 + diff)[:, None]
        p[rows] = pa
    return p


def _convert_svm(reader: _Reader, source: Any) -> ConvertedSvmRepurposer:
    params, attributes = _sklearn_attributes(reader)
    where = f"{reader.path}: target_model.model.attributes."

    def attribute(*names: str) -> np.ndarray:
        for name in names:  # names changed across scikit-learn versions
            if name in attributes:
                return _array(attributes[name], where + name)
        raise reader.error(f"none of the SVM attributes {list(names)} is stored.")

    classes = attribute("classes_")
    support_vectors = np.atleast_2d(attribute("support_vectors_")).astype(np.float64)
    dual_coef = np.atleast_2d(attribute("_dual_coef_", "dual_coef_")).astype(np.float64)
    intercept = np.atleast_1d(attribute("_intercept_", "intercept_")).astype(np.float64)
    if "_dual_coef_" not in attributes and len(classes) == 2:  # public arrays are sign-flipped
        dual_coef, intercept = -dual_coef, -intercept
    n_support = np.atleast_1d(attribute("_n_support", "n_support_")).astype(np.int64)
    kernel = params.get("kernel", reader.parameter("kernel", "linear"))
    if kernel not in ("linear", "rbf", "poly", "sigmoid"):
        raise reader.error(f"unsupported SVM kernel {kernel!r}.")
    gamma = float(attribute("_gamma")) if "_gamma" in attributes else float(params.get("gamma", 0.0))
    arrays = {
        "support_vectors": support_vectors,
        "dual_coef": dual_coef,
        "intercept": intercept,
        "n_support": n_support,
    }
    probability = bool(params.get("probability", False))
    if probability:
        arrays["prob_a"] = np.atleast_1d(attribute("probA_", "_probA")).astype(np.float64)
        arrays["prob_b"] = np.atleast_1d(attribute("probB_", "_probB")).astype(np.float64)
    if int(n_support.sum()) != len(support_vectors) or len(n_support) != len(classes):
        raise reader.error("the support vectors do not match n_support and classes_.")
    config = {
        "kernel": kernel,
        "gamma": gamma,
        "degree": int(params.get("degree", 3)),
        "coef0": float(params.get("coef0", 0.0)),
    }
    head = XferSvmHead(config, arrays)
    common = _meta_common(reader)
    gamma_param = reader.parameter("gamma", "auto")
    repurposer = ConvertedSvmRepurposer(
        source,
        **common,
        c=float(reader.parameter("c", 1.0)),
        kernel=reader.parameter("kernel", kernel),
        gamma=gamma_param if isinstance(gamma_param, (str, int, float)) else "auto",
        enable_probability_estimates=bool(reader.parameter("enable_probability_estimates", probability)),
        standardize="none",
    )
    blocks = _feature_blocks(reader, source, common["feature_layer_names"], support_vectors.shape[1])
    return _install(repurposer, classes, head, blocks, source)


# ------------------------------------------------------------------------------ GP
def _rbf_parts(reader: _Reader, kernel: Any) -> list[dict[str, Any]]:
    if not isinstance(kernel, dict):
        raise reader.error("a GP kernel is not an object.")
    if kernel.get("class") == "GPy.kern.Add":
        parts = kernel.get("parts")
        if not isinstance(parts, dict) or not parts:
            raise reader.error("an additive GP kernel has no parts.")
        return [p for key in sorted(parts, key=int) for p in _rbf_parts(reader, parts[key])]
    if kernel.get("class") != "GPy.kern.RBF":
        raise reader.error(f"unsupported GP kernel {kernel.get('class')!r} (Xfer builds RBF kernels).")
    variance = np.asarray(reader.get(kernel, "variance", "kernel."), np.float64).reshape(-1)
    lengthscale = np.asarray(reader.get(kernel, "lengthscale", "kernel."), np.float64).reshape(-1)
    dims = np.asarray(reader.get(kernel, "active_dims", "kernel."), np.int64).reshape(-1)
    if variance.size != 1 or lengthscale.size not in (1, dims.size) or kernel.get("inv_l"):
        raise reader.error("unsupported RBF kernel parameters.")
    return [{"dims": dims, "variance": float(variance[0]), "lengthscale": lengthscale}]


def _rbf(a: np.ndarray, b: np.ndarray, parts: list[dict[str, Any]]) -> np.ndarray:
    total = np.zeros((a.shape[0], b.shape[0]))
    for part in parts:
        x = a[:, part["dims"]] / part["lengthscale"]
        z = b[:, part["dims"]] / part["lengthscale"]
        squared = np.sum(x**2, 1)[:, None] + np.sum(z**2, 1)[None, :] - 2.0 * x @ z.T
        total += part["variance"] * np.exp(-0.5 * np.maximum(squared, 0.0))
    return total


def _ep_sites(reader: _Reader, inference: Any) -> tuple[np.ndarray, np.ndarray]:
    """The EP site precisions and precision-means GPy uses on load (its stored approximation)."""
    approximation = inference.get("_ep_approximation") if isinstance(inference, dict) else None
    sites = approximation.get("ga_approx") if isinstance(approximation, dict) else None
    if sites is None and isinstance(inference, dict):
        sites = inference.get("ga_approx_old")
    if not isinstance(sites, dict):
        raise reader.error("a GP model has no EP site parameters (tau, v).")
    tau = np.asarray(reader.get(sites, "tau", "ga_approx."), np.float64).reshape(-1)
    v = np.asarray(reader.get(sites, "v", "ga_approx."), np.float64).reshape(-1)
    if tau.shape != v.shape or not np.all(np.isfinite(tau)) or np.any(tau <= 0):
        raise reader.error("a GP model has invalid EP site parameters.")
    return tau, v


def _gp_posterior(reader: _Reader, model: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """(support inputs, weight vector, weight matrix, kernel parts) of one GPy classifier:
    latent mean ``k(x, S) w``, variance ``k(x, x) - k(x, S) W k(S, x)``."""
    if not isinstance(model, dict):
        raise reader.error("a GP model is not an object.")
    parts = _rbf_parts(reader, reader.get(model, "kernel", "target_model[]."))
    if reader.get(model, "likelihood", "target_model[].").get("class") != "GPy.likelihoods.Bernoulli":
        raise reader.error("unsupported GP likelihood (Xfer uses Bernoulli).")
    x = np.asarray(reader.get(model, "X", "target_model[]."), np.float64)
    tau, v = _ep_sites(reader, reader.get(model, "inference_method", "target_model[]."))
    if x.ndim != 2 or len(x) != len(tau):
        raise reader.error("a GP model's inputs do not match its EP sites.")
    kind = model.get("class")
    if kind == "GPy.models.GPClassification":  # EP: (K + diag(1/tau))^-1
        root = np.sqrt(tau)
        b = np.eye(len(x)) + root[:, None] * _rbf(x, x, parts) * root[None, :]
        chol = np.linalg.cholesky(b)
        inverse = np.linalg.solve(chol.T, np.linalg.solve(chol, np.eye(len(x))))
        weights_matrix = root[:, None] * inverse * root[None, :]
        return x, weights_matrix @ (v / tau), weights_matrix, parts
    if kind == "GPy.models.SparseGPClassification":  # EP-DTC (GPy's VarDTC with EP sites)
        z = np.asarray(reader.get(model, "Z", "target_model[]."), np.float64)
        kmm = _rbf(z, z, parts) + 1e-8 * np.eye(len(z))
        kmn = _rbf(z, x, parts)
        a = kmm + (kmn * tau[None, :]) @ kmn.T
        weights = np.linalg.solve(a, kmn @ v)
        weights_matrix = np.linalg.inv(kmm) - np.linalg.inv(a)
        return z, weights, (weights_matrix + weights_matrix.T) / 2, parts
    raise reader.error(f"unsupported GP model class {kind!r}.")


class XferGpHead(XferHead):
    """Xfer's one-vs-rest GPy classifiers (probit, EP), predicting as GPy does."""

    kind = "gp"

    def _parts(self, model: int) -> list[dict[str, Any]]:
        return [
            {
                "dims": self.arrays[f"part{p}.dims"],
                "variance": float(self.arrays[f"model{model}.part{p}.variance"]),
                "lengthscale": self.arrays[f"model{model}.part{p}.lengthscale"],
            }
            for p in range(int(self.config["n_parts"]))
        ]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, np.float64) - self.arrays["feature_mean"]
        if self.config["apply_l2_norm"]:  # scikit-learn's Normalizer: zero rows stay zero
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.where(norms == 0, 1.0, norms)
        columns = []
        for m in range(int(self.config["n_models"])):
            parts = self._parts(m)
            kxs = _rbf(x, self.arrays[f"model{m}.support"], parts)
            mean = kxs @ self.arrays[f"model{m}.w"]
            variance = sum(p["variance"] for p in parts) - np.sum((kxs @ self.arrays[f"model{m}.W"]) * kxs, 1)
            variance = np.maximum(variance, 1e-15)
            columns.append(ndtr(mean / np.sqrt(1.0 + variance)))
        if len(columns) == 1:
            return np.column_stack([1.0 - columns[0], columns[0]])
        scores = np.nan_to_num(np.column_stack(columns))
        return scores / np.sum(scores, axis=1, keepdims=True)

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> XferGpHead:
        return cls({k: v for k, v in config.items() if k != "xfer_1_1_0_head"}, arrays)


def _convert_gp(reader: _Reader, source: Any) -> ConvertedGpRepurposer:
    models = reader.get(reader.content, "target_model")
    if not isinstance(models, list) or not models:
        raise reader.error("'target_model' must be a non-empty list of GP models.")
    feature_mean = np.asarray(reader.get(reader.content, "feature_mean"), np.float64).reshape(-1)
    arrays: dict[str, np.ndarray] = {"feature_mean": feature_mean}
    n_parts = None
    for m, model in enumerate(models):
        support, weights, weights_matrix, parts = _gp_posterior(reader, model)
        if n_parts is None:
            n_parts = len(parts)
            for p, part in enumerate(parts):
                arrays[f"part{p}.dims"] = part["dims"]
        if len(parts) != n_parts or support.shape[1] != feature_mean.size:
            raise reader.error("the GP models do not share one kernel structure and feature width.")
        arrays[f"model{m}.support"] = support
        arrays[f"model{m}.w"] = weights
        arrays[f"model{m}.W"] = weights_matrix
        for p, part in enumerate(parts):
            arrays[f"model{m}.part{p}.variance"] = np.asarray(part["variance"])
            arrays[f"model{m}.part{p}.lengthscale"] = part["lengthscale"]
    apply_l2_norm = bool(reader.parameter("apply_l2_norm", False))
    head = XferGpHead({"n_models": len(models), "n_parts": n_parts, "apply_l2_norm": apply_l2_norm}, arrays)
    common = _meta_common(reader)
    repurposer = ConvertedGpRepurposer(
        source,
        **common,
        max_function_evaluations=int(reader.parameter("max_function_evaluations", 100)),
        apply_l2_norm=apply_l2_norm,
    )
    n_classes = 2 if len(models) == 1 else len(models)  # Xfer's GP predicts class indices
    blocks = [arrays[f"part{p}.dims"] for p in range(n_parts)]
    return _install(repurposer, np.arange(n_classes), head, blocks, source)


# ------------------------------------------------------------------------------ BNN
#: Modules whose names a BNN posterior pickle may use; each becomes an inert stand-in.
_PICKLE_MODULES = ("numpy", "numpy.core.multiarray", "numpy.core.numeric", "numpy._core.multiarray",
                   "numpy._core.numeric", "mxnet")  # fmt: skip
_PICKLE_BUILTINS = {("builtins", "bytearray"): bytearray, ("builtins", "bytes"): bytes,
                    ("collections", "OrderedDict"): dict, ("builtins", "set"): set}  # fmt: skip


class _StandIn:
    """What a pickled NumPy/MXNet object becomes: its arguments and state, nothing run."""

    qualname = ""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.state = args, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_BUILTINS:
            return _PICKLE_BUILTINS[module, name]
        if module in _PICKLE_MODULES or module.startswith("mxnet."):
            return type(name, (_StandIn,), {"qualname": f"{module}.{name}"})
        raise SerializationError(
            f"the pickle names {module}.{name}, which a BNN posterior saved by Xfer never holds; "
            "it was not loaded."
        )


def _ndarray_from_stand_in(value: Any) -> np.ndarray:
    if not isinstance(value, _StandIn) or not value.qualname.endswith("NDArray"):
        raise SerializationError("expected a pickled MXNet NDArray")
    handle = (value.state or {}).get("handle")
    if not isinstance(handle, (bytes, bytearray)):
        raise SerializationError("a pickled MXNet NDArray has no data")
    from xfer._mxnet import mx

    array = mx.nd.NDArray(handle=None)
    array.__setstate__({"handle": bytearray(handle)})  # MXNet's array decoder (data only)
    return array.asnumpy()


def _read_posterior_arrays(path: Path) -> dict[str, list[np.ndarray]]:
    """``{name: [array per layer parameter]}`` from Xfer's pickled ``_posterior_params.npz``."""
    from numpy.lib import format as npy_format

    result: dict[str, list[np.ndarray]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                stream = io.BytesIO(archive.read(member))
                version = npy_format.read_magic(stream)
                header = (npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0)
                shape, _, dtype = header(stream)
                if dtype != np.dtype(object) or len(shape) != 1:
                    raise SerializationError(f"{member} is not a list of pickled parameters")
                parameters = _RestrictedUnpickler(stream).load()
                values = parameters if isinstance(parameters, list) else None
                if isinstance(parameters, _StandIn):  # a reconstructed object array
                    values = (parameters.state or (None,) * 5)[4]
                if not isinstance(values, list) or len(values) != shape[0]:
                    raise SerializationError(f"{member} does not hold {shape[0]} parameters")
                arrays = []
                for parameter in values:
                    data = (getattr(parameter, "state", None) or {}).get("_data")
                    data = data[0] if isinstance(data, list) and data else data
                    arrays.append(_ndarray_from_stand_in(data))
                result[member[: -len(".npy")] if member.endswith(".npy") else member] = arrays
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as error:
        raise SerializationError(f"{path} is not a BNN posterior saved by Xfer 1.1.0 ({error}).") from None
    return result


class XferBnnHead(XferHead):
    """Xfer's Bayesian network (L2-normalised features, ReLU dense layers, mean-field Gaussian
    posterior). Predicts the mean softmax over ``num_samples`` weight samples of a fixed seed:
    the expectation Xfer's Monte Carlo estimate approximates, deterministically."""

    kind = "bnn"

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, np.float32).astype(np.float64)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms == 0, 1.0, norms)
        n_params = int(self.config["n_params"])
        samples = int(self.config["num_samples"])
        rng = np.random.RandomState(int(self.config["seed"]))
        total = np.zeros((x.shape[0], self.arrays[f"mean{n_params - 1}"].shape[0]))
        for _ in range(samples):
            hidden = x
            for layer in range(n_params // 2):
                weight, bias = (
                    self.arrays[f"mean{i}"] + self.arrays[f"sigma{i}"] * rng.standard_normal(self.arrays[f"mean{i}"].shape)
                    for i in (2 * layer, 2 * layer + 1)
                )
                hidden = hidden @ weight.T + bias
                if layer < n_params // 2 - 1:
                    hidden = np.maximum(hidden, 0.0)
            total += softmax(hidden, axis=1)
        return total / samples

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> XferBnnHead:
        return cls({k: v for k, v in config.items() if k != "xfer_1_1_0_head"}, arrays)


def _convert_bnn(reader: _Reader, source: Any, allow_pickle: bool) -> ConvertedBnnRepurposer:
    posterior_json = reader.file("_posterior.json")
    posterior_npz = reader.file("_posterior_params.npz")
    if not allow_pickle:
        raise reader.error(
            f"its posterior {posterior_npz.name} holds pickled MXNet objects, and xfer never "
            "unpickles a file unless asked to. If you trust the file, convert it once with "
            f"xfer.xfer1.convert_xfer1({reader.prefix.name!r}, '<new name>', model_directory="
            f"{str(reader.prefix.parent)!r}, allow_pickle=True) and load the converted model with "
            "xfer.load('<new name>'). Unpickling an untrusted file can run code on your machine "
            "(see xfer.xfer1 for how the risk is limited)."
        )
    try:
        shapes = json.loads(posterior_json.read_text(encoding="utf-8"))["shape"]
        shapes = [tuple(int(d) for d in shape) for shape in shapes]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise reader.error(f"{posterior_json.name} is not readable ({error}).") from None
    parameters = _read_posterior_arrays(posterior_npz)
    means, rhos = parameters.get("mean"), parameters.get("rho")
    if means is None or rhos is None:
        raise reader.error(f"{posterior_npz.name} lacks the 'mean' or 'rho' parameters.")
    if len(means) == 1 < len(shapes):  # a shared parameter: Xfer replicates it
        means = [np.broadcast_to(means[0], shape) for shape in shapes]
    if len(rhos) == 1 < len(shapes):
        rhos = [np.broadcast_to(rhos[0], shape) for shape in shapes]
    if len(means) != len(shapes) or len(rhos) != len(shapes) or len(shapes) % 2:
        raise reader.error("the posterior does not match its layer shapes.")
    arrays: dict[str, np.ndarray] = {}
    for i, shape in enumerate(shapes):
        mean = np.broadcast_to(np.asarray(means[i], np.float64), shape)
        rho = np.broadcast_to(np.asarray(rhos[i], np.float64), shape)
        arrays[f"mean{i}"] = np.array(mean)
        arrays[f"sigma{i}"] = np.logaddexp(0.0, rho)  # softplus, as Xfer's transform_rhos
    num_classes = shapes[-1][0]
    samples = int(reader.parameter("num_samples_mc_prediction", 100))
    head = XferBnnHead({"n_params": len(shapes), "num_samples": max(samples, 1), "seed": 0}, arrays)
    common = _meta_common(reader)
    known = ("sigma", "num_layers", "n_hidden", "num_samples_mc", "learning_rate", "batch_size",
             "num_epochs", "start_annealing", "end_annealing", "num_samples_mc_prediction", "verbose")  # fmt: skip
    options = {name: reader.parameter(name) for name in known if reader.parameter(name) is not None}
    repurposer = ConvertedBnnRepurposer(source, **common, **options)
    blocks = _feature_blocks(reader, source, common["feature_layer_names"], shapes[0][1])
    return _install(repurposer, np.arange(num_classes), head, blocks, source)


# ------------------------------------------------------------------------------ fine-tuners
def _convert_network(reader: _Reader, source_model: Any) -> Any:
    """A fine-tuner holding the network Xfer trained (``P-symbol.json``, ``P-0000.params``)."""
    from xfer.model_handler import MXNetModelHandler
    from xfer.repurposers.fine_tune import (
        NeuralNetworkFineTuneRepurposer,
        NeuralNetworkRandomFreezeRepurposer,
    )

    reader.file("-symbol.json")
    reader.file("-0000.params")
    context_function = _context_function(reader)
    num_devices = int(reader.parameter("num_devices", 1))
    handler = MXNetModelHandler.load_checkpoint(
        str(reader.prefix), 0, context_function=context_function, num_devices=num_devices
    )
    output = reader.content.get("last_layer_name_target") or handler.layer_names[-1]
    if output not in handler.layer_names:
        raise reader.error(f"its output layer {output!r} is not in its network.")
    try:
        sample_shape = tuple(int(d) for d in reader.content["provide_data"][0][1][1:])
        _, (output_shape,), _ = handler.symbol.get_internals()[f"{output}_output"].infer_shape(
            **{handler.data_name: (1, *sample_shape)}
        )
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise reader.error(f"the input shape of its network is not readable ({error}).") from None
    n_classes = int(np.prod(output_shape[1:]))
    common = {
        "context_function": context_function,
        "num_devices": num_devices,
        "batch_size": int(reader.parameter("batch_size", 64)),
        "num_epochs": int(reader.parameter("num_epochs", 5)),
        "optimizer": reader.parameter("optimizer", "sgd"),
        "optimizer_params": reader.parameter("optimizer_params"),
    }
    target_class_count = reader.parameter("target_class_count", n_classes)
    if reader.kind == "NeuralNetworkFineTuneRepurposer":
        repurposer: Any = NeuralNetworkFineTuneRepurposer(
            source_model, reader.parameter("transfer_layer_name"), target_class_count, **common
        )
    else:
        repurposer = NeuralNetworkRandomFreezeRepurposer(
            source_model, target_class_count, reader.parameter("fixed_layers", []),
            reader.parameter("random_layers", []),
            num_layers_to_drop=int(reader.parameter("num_layers_to_drop", 2)), **common,
        )  # fmt: skip
    repurposer._install_network(handler, output, n_classes, sample_shape)
    return repurposer


# ------------------------------------------------------------------------------ converted classes
_HEADS = {head.kind: head for head in (XferSvmHead, XferGpHead, XferBnnHead)}


class _ImportedHeadMixin:
    """Predicts with an Xfer-trained head while it holds one; ``fit`` trains the package's own."""

    target_model_: Any

    def _predict_probability_from_features(self, features: np.ndarray) -> np.ndarray:
        if isinstance(self.target_model_, XferHead):
            return self.target_model_.predict_proba(features)
        return super()._predict_probability_from_features(features)  # type: ignore[misc]

    def _predict_label_from_features(self, features: np.ndarray) -> np.ndarray:
        if isinstance(self.target_model_, XferHead):
            return self.target_model_.predict_codes(features)
        return super()._predict_label_from_features(features)  # type: ignore[misc]

    def _get_target_model_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if isinstance(self.target_model_, XferHead):
            return self.target_model_.get_state()
        return super()._get_target_model_state()  # type: ignore[misc]

    def _set_target_model_state(self, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        kind = config.get("xfer_1_1_0_head")
        if kind is None:
            super()._set_target_model_state(config, arrays)  # type: ignore[misc]
        elif kind in _HEADS:
            self.target_model_ = _HEADS[kind].from_state(config, arrays)
        else:
            raise ValueError(f"unknown Xfer 1.1.0 head {kind!r}")


@register_repurposer(key="xfer1.ConvertedSvmRepurposer")
class ConvertedSvmRepurposer(_ImportedHeadMixin, SvmRepurposer):
    """An :class:`~xfer.SvmRepurposer` holding an SVM trained by Xfer 1.1.0 (made by
    :func:`load_xfer1`). Its labels are libsvm's one-vs-one votes and its probabilities libsvm's
    coupled Platt estimates, exactly as in Xfer (so a label can differ from the most probable
    class, as it could in Xfer). ``fit`` trains this package's SVM instead."""


@register_repurposer(key="xfer1.ConvertedGpRepurposer")
class ConvertedGpRepurposer(_ImportedHeadMixin, GpRepurposer):
    """A :class:`~xfer.GpRepurposer` holding Xfer 1.1.0's GPy classifiers (made by
    :func:`load_xfer1`), predicting as GPy did. ``fit`` trains this package's GP instead."""


@register_repurposer(key="xfer1.ConvertedBnnRepurposer")
class ConvertedBnnRepurposer(_ImportedHeadMixin, BnnRepurposer):
    """A :class:`~xfer.BnnRepurposer` holding the posterior of a BNN trained by Xfer 1.1.0 (made
    by :func:`load_xfer1`), predicting deterministically. ``fit`` trains this package's BNN."""


# ------------------------------------------------------------------------------ entry points
def load_xfer1(
    model_name: str | os.PathLike,
    model_directory: str | os.PathLike = "",
    source_model: Any = None,
    *,
    allow_pickle: bool = False,
) -> Any:
    """Load a repurposer saved by Xfer 1.1.0 as a repurposer of this package (in memory).

    :func:`xfer.load` calls this for Xfer 1.1.0 files, without ``allow_pickle``.

    Parameters
    ----------
    model_name : str
        Name (prefix) Xfer saved under (``P`` of ``P.json``).
    model_directory : str, default=''
        Directory of the files.
    source_model : optional
        The source model; by default the one Xfer saved beside the file (``P_source-*``), if any.
        Fine-tuners do not need one.
    allow_pickle : bool, default=False
        Allow reading the pickled posterior of a BNN (no other kind needs it). Unpickling an
        untrusted file can run code; see the module documentation for how the risk is limited,
        and pass True only for files you trust.

    Returns
    -------
    Repurposer
        Predicts the labels Xfer predicted (for the BNN, whose predictions were random draws in
        Xfer, the labels of the mean prediction).

    Raises
    ------
    ModelFileNotFoundError
        A file of the saved repurposer is missing.
    SerializationError
        Not an Xfer 1.1.0 file, a damaged one, an unsupported content, or a BNN without
        ``allow_pickle=True``.
    """
    prefix = model_prefix(model_name, model_directory)
    path = prefix.with_name(prefix.name + ".json")
    if not path.is_file():
        raise ModelFileNotFoundError(f"No saved repurposer at {path}: the file is missing.")
    content = read_xfer1_manifest(path)
    if content is None:
        raise SerializationError(f"{path} is not a repurposer file written by Xfer 1.1.0.")
    reader = _Reader(prefix, content)
    kind = reader.kind
    if kind in ("NeuralNetworkFineTuneRepurposer", "NeuralNetworkRandomFreezeRepurposer"):
        return _convert_network(reader, source_model)
    source = _source_model(reader, source_model)
    if kind == "LrRepurposer":
        return _convert_lr(reader, source)
    if kind == "SvmRepurposer":
        return _convert_svm(reader, source)
    if kind == "GpRepurposer":
        return _convert_gp(reader, source)
    return _convert_bnn(reader, source, allow_pickle)


def convert_xfer1(
    model_name: str | os.PathLike,
    output_name: str | os.PathLike,
    model_directory: str | os.PathLike = "",
    output_directory: str | os.PathLike = "",
    source_model: Any = None,
    *,
    allow_pickle: bool = False,
    save_source_model: bool | None = None,
) -> Any:
    """Convert a repurposer saved by Xfer 1.1.0 into this package's format, once.

    Reads ``model_directory/model_name`` with :func:`load_xfer1` and saves it as
    ``output_directory/output_name`` (strict JSON manifest + ``.npz`` arrays, no pickle), which
    :func:`xfer.load` reads from then on.

    Parameters
    ----------
    model_name, model_directory
        The Xfer 1.1.0 files.
    output_name, output_directory
        Where to write the converted repurposer.
    source_model : optional
        See :func:`load_xfer1`.
    allow_pickle : bool, default=False
        Needed for a BNN only; see :func:`load_xfer1` for the risk.
    save_source_model : bool, optional
        Save the source model beside the converted files (default: the class's choice).

    Returns
    -------
    Repurposer
        The converted repurposer.
    """
    repurposer = load_xfer1(model_name, model_directory, source_model, allow_pickle=allow_pickle)
    repurposer.save_repurposer(str(output_name), output_directory, save_source_model=save_source_model)
    return repurposer


__all__ = [
    "XFER1_CLASSES",
    "ConvertedBnnRepurposer",
    "ConvertedGpRepurposer",
    "ConvertedSvmRepurposer",
    "XferBnnHead",
    "XferGpHead",
    "XferHead",
    "XferSvmHead",
    "convert_xfer1",
    "is_xfer1_file",
    "load_xfer1",
    "read_xfer1_manifest",
]

