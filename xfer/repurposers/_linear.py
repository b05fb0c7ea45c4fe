"""Array-only prediction for fitted linear and kernel models.

Fitted scikit-learn models are kept as plain arrays (scaler statistics, coefficients, support
vectors, calibration parameters) and predicted from here, so a saved model needs no pickle and
does not depend on the scikit-learn version that trained it. Each function reproduces the
scikit-learn computation it replaces (tests check equality to 1e-10).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, softmax

from xfer.exceptions import InvalidArgumentError, SerializationError


def standardize(features: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``StandardScaler.transform`` in float64."""
    return (np.asarray(features, dtype=np.float64) - mean) / scale


def linear_decision(features: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """``X @ coef.T + intercept``; shape [N] for a binary model (one row of ``coef``)."""
    scores = features @ coef.T + intercept
    return scores.ravel() if coef.shape[0] == 1 else scores


def logistic_proba(decision: np.ndarray) -> np.ndarray:
    """Probabilities of a logistic model: logistic for binary, softmax for multinomial."""
    if decision.ndim == 1:
        positive = expit(decision)
        return np.column_stack([1.0 - positive, positive])
    return softmax(decision, axis=1)


def kernel_matrix(
    features: np.ndarray,
    support_vectors: np.ndarray,
    kernel: str,
    gamma: float,
    degree: int,
    coef0: float,
) -> np.ndarray:
    """libsvm's kernels between rows of ``features`` and ``support_vectors``."""
    if kernel == "linear":
        return features @ support_vectors.T
    if kernel == "rbf":
        squared = (
            np.sum(features**2, axis=1)[:, None]
            + np.sum(support_vectors**2, axis=1)[None, :]
            - 2.0 * features @ support_vectors.T
        )
        return np.exp(-gamma * np.maximum(squared, 0.0))
    if kernel == "poly":
        return (gamma * features @ support_vectors.T + coef0) ** degree
    if kernel == "sigmoid":
        return np.tanh(gamma * features @ support_vectors.T + coef0)
    raise ValueError(f"unknown kernel {kernel!r}")


def svc_decision(
    kernel_values: np.ndarray,
    dual_coef: np.ndarray,
    intercept: np.ndarray,
    n_support: np.ndarray,
) -> np.ndarray:
    """``SVC.decision_function`` (``decision_function_shape='ovr'``) from its public arrays.

    For two classes: ``dual_coef @ K + intercept``, shape [N]. For more: the one-vs-one values of
    every pair, turned into one-vs-rest scores (votes plus scaled confidences) as scikit-learn does.
    """
    n_classes = len(n_support)
    if n_classes == 2:
        return kernel_values @ dual_coef[0] + intercept[0]
    starts = np.concatenate([[0], np.cumsum(n_support)])
    pairwise = np.empty((kernel_values.shape[0], n_classes * (n_classes - 1) // 2))
    pair = 0
    for i in range(n_classes):
        for j in range(i + 1, n_classes):
            rows_i = slice(starts[i], starts[i + 1])
            rows_j = slice(starts[j], starts[j + 1])
            pairwise[:, pair] = (
                kernel_values[:, rows_i] @ dual_coef[j - 1, rows_i]
                + kernel_values[:, rows_j] @ dual_coef[i, rows_j]
                + intercept[pair]
            )
            pair += 1
    return ovr_from_ovo(pairwise < 0, -pairwise, n_classes)


def ovr_from_ovo(predictions: np.ndarray, confidences: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's one-vs-one to one-vs-rest transform (votes + confidences in (-1/3, 1/3))."""
    n_samples = predictions.shape[0]
    votes = np.zeros((n_samples, n_classes))
    sum_of_confidences = np.zeros((n_samples, n_classes))
    pair = 0
    for i in range(n_classes):
        for j in range(i + 1, n_classes):
            sum_of_confidences[:, i] -= confidences[:, pair]
            sum_of_confidences[:, j] += confidences[:, pair]
            votes[predictions[:, pair] == 0, i] += 1
            votes[predictions[:, pair] == 1, j] += 1
            pair += 1
    transformed = sum_of_confidences / (3 * (np.abs(sum_of_confidences) + 1))
    return votes + transformed


def sigmoid_calibrated_proba(decision: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``CalibratedClassifierCV(method='sigmoid')`` probabilities from decision values.

    Binary: one calibrator on the decision of the positive class. Multiclass: one calibrator per
    class (one-vs-rest), normalised; rows where every calibrator gives 0 become uniform.
    """
    if decision.ndim == 1:
        positive = expit(-(a[0] * decision + b[0]))
        proba = np.column_stack([1.0 - positive, positive])
    else:
        n_classes = decision.shape[1]
        proba = expit(-(decision * a[None, :] + b[None, :]))
        denominator = np.sum(proba, axis=1)[:, None]
        uniform = np.full_like(proba, 1.0 / n_classes)
        proba = np.divide(proba, denominator, out=uniform, where=denominator != 0)
    proba[(proba > 1.0) & (proba <= 1.0 + 1e-5)] = 1.0
    return proba


STANDARDIZE_MODES = ("layer", "column", "none")
#: Smallest column scale in ``"column"`` mode, as a fraction of the RMS standard deviation of the
#: column's layer block: near-constant columns are not blown up into noise.
SCALE_FLOOR = 1e-2


def check_standardize_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`STANDARDIZE_MODES`, else a clear error."""
    if not isinstance(mode, str) or mode not in STANDARDIZE_MODES:
        raise InvalidArgumentError(
            f"standardize must be one of {list(STANDARDIZE_MODES)}, got {mode!r}."
        )
    return mode


#: A layer's rows are L2-normalised only when their squared norm is spread over at least this many
#: columns (participation ratio, see :func:`l2_layers`).
L2_MIN_EFFECTIVE_COLUMNS = 10.0


def effective_columns(mean_squares: np.ndarray) -> float:
    """Participation ratio ``(sum_j e_j)^2 / sum_j e_j^2`` of the columns' mean squares ``e_j``.

    How many columns the rows' squared L2 norm is spread over: the number of columns when they
    carry equal shares, 1 when one column carries it all (0 for an all-zero block).
    """
    energy = np.asarray(mean_squares, dtype=np.float64)
    total = float(energy.sum())
    return 0.0 if total == 0.0 else total**2 / float(np.sum(energy**2))


def l2_layers(
    features: np.ndarray | None,
    feature_indices_per_layer: list[np.ndarray] | None,
    mean_squares: np.ndarray | None = None,
) -> np.ndarray:
    """Per layer, whether L2 normalisation of its rows keeps the information it is meant to keep.

    Dividing a row by its norm removes one degree of freedom, the row's overall magnitude, which
    on embeddings (pooled CNN activations, sentence vectors: the squared norm spread over hundreds
    of units) is a nuisance such as contrast or length. When a few columns carry the norm, as in
    unscaled tabular data where one column in large units dominates, the norm *is* those columns
    and normalising erases them (and rescales everything else by them). A layer is normalised
    when its norm is spread over at least :data:`L2_MIN_EFFECTIVE_COLUMNS` columns
    (:func:`effective_columns`, on the training rows).

    Parameters
    ----------
    features : numpy.ndarray or None
        The training rows ``(N, D)``; ``None`` when ``mean_squares`` is given.
    feature_indices_per_layer : list of numpy.ndarray or None
        Columns of each layer (``None``: one layer).
    mean_squares : numpy.ndarray, optional
        The columns' mean squares (e.g. from one pass over a feature store), instead of ``features``.

    Returns
    -------
    numpy.ndarray of bool, one per layer (one for ``None``)
    """
    if mean_squares is None:
        mean_squares = np.einsum("ij,ij->j", features, features, dtype=np.float64) / max(len(features), 1)
    layers = feature_indices_per_layer or [np.arange(len(mean_squares))]
    return np.array([effective_columns(mean_squares[columns]) >= L2_MIN_EFFECTIVE_COLUMNS for columns in layers])


def l2_layers_from_state(array: object, n_layers: int, label: str) -> np.ndarray:
    """The ``l2_layers`` flags of a saved model (:func:`l2_layers`), checked: one 0/1 per layer.

    Raises
    ------
    SerializationError
        Not one 0/1 flag per layer (``label`` names the model in the message).
    """
    flags = np.asarray(array)
    if flags.shape != (n_layers,) or not np.isin(flags, (0, 1)).all():
        raise SerializationError(
            f"{label} state array 'l2_layers' must hold one 0/1 flag per layer ({n_layers}), got {flags.tolist()}."
        )
    return flags.astype(bool)


def l2_normalize_layers(
    features: np.ndarray, feature_indices_per_layer: list[np.ndarray] | None, layers: np.ndarray | None = None
) -> np.ndarray:
    """Each layer's block of each row scaled to unit L2 norm (float64 copy; zero blocks stay 0).

    ``layers``: one bool per layer, normalise only those that are true (:func:`l2_layers`).
    """
    features = np.array(features, dtype=np.float64)
    for index, columns in enumerate(feature_indices_per_layer or [np.arange(features.shape[1])]):
        if layers is not None and not layers[index]:
            continue
        columns = np.asarray(columns)
        if len(columns) and np.array_equal(columns, np.arange(columns[0], columns[0] + len(columns))):
            columns = slice(int(columns[0]), int(columns[0]) + len(columns))  # a view: no copies
        block = features[:, columns]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
        if isinstance(columns, slice):
            block /= np.maximum(norms, 1e-12)
        else:
            features[:, columns] = block / np.maximum(norms, 1e-12)
    return features


def fit_standardizer(
    features: np.ndarray, feature_indices_per_layer: list[np.ndarray] | None, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ``(mean, scale)`` for :func:`standardize`: the one feature scaling of every head.

    ``"column"``: z-score every column (scikit-learn's ``StandardScaler``), except that a column's
    scale is at least :data:`SCALE_FLOOR` times the RMS standard deviation of its layer block and a
    constant column gets that RMS (a test value off the training constant then counts as much as a
    typical unit, instead of being multiplied by up to 1/floor). ``"layer"``: centre every column
    and divide each layer's block by one scale, the RMS of its column standard deviations, which
    keeps the relative scale of a layer's units. ``"none"``: identity. ``None`` layers: one block.
    """
    features = np.asarray(features, dtype=np.float64)
    check_standardize_mode(mode)
    if mode == "none":
        return np.zeros(features.shape[1]), np.ones(features.shape[1])
    return standardizer_from_moments(
        features.mean(axis=0), features.std(axis=0), feature_indices_per_layer, mode
    )


def standardizer_from_moments(
    mean: np.ndarray, std: np.ndarray, feature_indices_per_layer: list[np.ndarray] | None, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fit_standardizer` from the columns' means and standard deviations (computed in one
    pass over data that is not in memory, e.g. by :mod:`xfer.repurposers._out_of_core`)."""
    n_features = len(mean)
    check_standardize_mode(mode)
    if mode == "none":
        return np.zeros(n_features), np.ones(n_features)
    if feature_indices_per_layer is None:
        feature_indices_per_layer = [np.arange(n_features)]
    scale = np.ones(n_features)
    for columns in feature_indices_per_layer:
        block = std[columns]
        rms = float(np.sqrt(np.mean(block**2)))
        if rms == 0.0:
            continue  # a constant block: centring is all there is to do
        if mode == "layer":
            scale[columns] = rms
        else:
            scale[columns] = np.where(block > 0, np.maximum(block, SCALE_FLOOR * rms), rms)
    return mean, scale
