"""The input gate (xfer._validation): every bad input to a public entry point gives one clear
xfer error, subclassing the built-in a user would catch and naming the argument; none gives a
silent result or a raw error from NumPy, scikit-learn, MXNet or torch."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from xfer import (
    BnnRepurposer,
    GpRepurposer,
    LaplaceRepurposer,
    LrRepurposer,
    SvmRepurposer,
    _validation,
)
from xfer.exceptions import InvalidArgumentError, InvalidTypeError, XferError
from xfer.testing import make_blob_features, make_tiny_source_model

HEADS = {
    "lr": lambda source=None, layers=None: LrRepurposer(source, layers, random_state=0),
    "svm": lambda source=None, layers=None: SvmRepurposer(source, layers, random_state=0),
    "gp": lambda source=None, layers=None: GpRepurposer(
        source, layers, max_function_evaluations=3, random_state=0
    ),
    "bnn": lambda source=None, layers=None: BnnRepurposer(
        source, layers, num_epochs=2, num_samples_mc_prediction=3, random_state=0
    ),
    "laplace": lambda source=None, layers=None: LaplaceRepurposer(source, layers),
}

X, Y = make_blob_features(8, 3, 5)


def _with(array, index, value):
    array = np.array(array, dtype=np.float64)
    array[index] = value
    return array


def _generator():
    yield from X


# (X given to fit, error type, built-in a user catches, message) ---------------------------------
BAD_FEATURES = {
    "None": (None, InvalidTypeError, TypeError, "X is None: pass an array"),
    "generator": (_generator(), InvalidTypeError, TypeError, "X is a generator or iterator"),
    "dict": ({"a": [1.0]}, InvalidTypeError, TypeError, "X is dict, not array-like"),
    "string": ("features.npy", InvalidTypeError, TypeError, "X is str, not array-like"),
    "sparse": (scipy.sparse.csr_matrix(X), InvalidTypeError, TypeError, "X is a sparse matrix"),
    "1-D": (X[:, 0], InvalidArgumentError, ValueError, r"X is 1-D \(shape \(24,\)\).*reshape"),
    "3-D": (X.reshape(24, 5, 1), InvalidArgumentError, ValueError, "X is 3-D.*flatten each"),
    "scalar": (np.float64(3.0), InvalidArgumentError, ValueError, "X is a single value"),
    "no rows": (X[:0], InvalidArgumentError, ValueError, "X is empty"),
    "no columns": (X[:, :0], InvalidArgumentError, ValueError, "X has no columns"),
    "NaN": (_with(X, (3, 2), np.nan), InvalidArgumentError, ValueError, r"X contains NaN .*first at \(3, 2\)"),
    "inf": (_with(X, (5, 0), -np.inf), InvalidArgumentError, ValueError, r"X contains infinity .*\(5, 0\)"),
    "huge": (_with(X, (1, 1), 1e300), InvalidArgumentError, ValueError, "X contains values too large"),
    "strings": (X.astype(str), InvalidArgumentError, ValueError, "X holds strings"),
    "objects": (np.array([[{"a": 1}] * 5] * 24, dtype=object), InvalidTypeError, TypeError, "X holds values that are not numbers"),
    "words": (np.array([["a"] * 5] * 24, dtype=object), InvalidArgumentError, ValueError, "X holds values that are not numbers"),
    "complex": (X + 1j, InvalidArgumentError, ValueError, "Complex data not supported"),
    "ragged": ([[1.0, 2.0], [1.0]] * 12, InvalidArgumentError, ValueError, "rows of unequal length"),
    "dates": (np.zeros((24, 5), dtype="datetime64[s]"), InvalidTypeError, TypeError, "dates or times"),
    "masked": (np.ma.masked_array(X, mask=np.eye(24, 5, dtype=bool)), InvalidArgumentError, ValueError, r"X is a masked array with 5 masked \(missing\) entries.*X.filled"),
}

# (y given to fit with X, error type, built-in, message) ----------------------------------------
BAD_LABELS = {
    "None": (None, InvalidArgumentError, ValueError, "requires y to be passed, .*as {y}, one per sample of {X}"),
    "generator": ((v for v in Y), InvalidTypeError, TypeError, "{y} is a generator"),
    "ints and strings": (
        [1, "a"] * 12,
        InvalidTypeError,
        TypeError,
        r"{y} mixes labels of different kinds \(number and string: 1 at position 0, 'a' at position 1\)",
    ),
    "object ints and strings": (
        np.array([0, 1, "b"] * 8, dtype=object),
        InvalidTypeError,
        TypeError,
        "{y} mixes labels of different kinds",
    ),
    "bools and ints": ([True, 2, 3] * 8, InvalidTypeError, TypeError, "boolean and number"),
    "None inside": ([0, 1, None] * 8, InvalidArgumentError, ValueError, r"{y}\[2\] is None"),
    "NaN": (_with(Y, 4, np.nan), InvalidArgumentError, ValueError, "{y} contains NaN.*position 4"),
    "bytes": (np.array([b"a", b"b", b"c"] * 8), InvalidTypeError, TypeError, "bytes labels"),
    "bytes objects": ([b"a", b"b", b"c"] * 8, InvalidTypeError, TypeError, "labels of type bytes"),
    "two columns": (np.stack([Y, Y], axis=1), InvalidArgumentError, ValueError, r"{y} must be 1-D .*shape \(24, 2\)"),
    "one short": (Y[:-1], InvalidArgumentError, ValueError, "{X} has 24, {y} has 23"),
    "empty": ([], InvalidArgumentError, ValueError, "{y} is empty"),
    "continuous": (Y + 0.5, InvalidArgumentError, ValueError, "Unknown label type: continuous"),
    "one class": (np.zeros(24, dtype=int), InvalidArgumentError, ValueError, "at least 2 classes"),
    "dict": ({"a": 1}, InvalidTypeError, TypeError, "{y} is dict"),
    "masked": (np.ma.masked_array(Y, mask=np.arange(24) == 4), InvalidArgumentError, ValueError, "{y} is a masked array with 1 masked"),
}


def _assert_clear(raised, error_type, builtin, message):
    assert isinstance(raised.value, XferError), f"raw error: {raised.value!r}"
    assert isinstance(raised.value, error_type) and isinstance(raised.value, builtin)


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("case", sorted(BAD_FEATURES))
def test_bad_features_in_fit_and_predict(head, case):
    bad, error_type, builtin, message = BAD_FEATURES[case]
    if case == "generator":
        bad = _generator()
    with pytest.raises(error_type, match=message) as raised:
        HEADS[head]().fit(bad, Y)
    _assert_clear(raised, error_type, builtin, message)
    if case in ("generator", "ragged", "dict", "string", "None"):
        return
    fitted = _fitted(head)
    with pytest.raises(error_type, match=message.replace("X", "features")) as raised:
        fitted.predict_proba_features(bad)
    _assert_clear(raised, error_type, builtin, message)
    with pytest.raises(error_type, match=message) as raised:
        fitted.predict(bad)


_FITTED: dict[str, object] = {}


def _fitted(head):
    if head not in _FITTED:
        _FITTED[head] = HEADS[head]().fit(X, Y)
    return _FITTED[head]


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_labels_in_fit(head, case):
    bad, error_type, builtin, message = BAD_LABELS[case]
    if case == "generator":
        bad = (v for v in Y)
    with pytest.raises(error_type, match=message.format(y="y", X="X")) as raised:
        HEADS[head]().fit(X, bad)
    _assert_clear(raised, error_type, builtin, message)
    if case == "generator":
        bad = (v for v in Y)
    with pytest.raises(error_type, match=message.format(y="labels", X="features")):
        HEADS[head]().fit_features(X, bad)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_wrong_number_of_columns_without_source_model(head):
    fitted = _fitted(head)
    for width in (4, 6):
        wrong = np.ones((3, width))
        message = f"X has {width} features, but {type(fitted).__name__} is expecting 5 features"
        with pytest.raises(InvalidArgumentError, match=message):
            fitted.predict(wrong)
        with pytest.raises(InvalidArgumentError, match=message.replace("X", "features")):
            fitted.predict_features(wrong)


def test_labels_come_back_as_given():
    """Mixed labels are refused rather than stringified; each single kind comes back as is."""
    for labels in ([10, 20, 30], ["x", "y", "z"], [True, False, True]):
        given = np.array(labels, dtype=object)[Y % len(set(labels))]
        fitted = LrRepurposer(None, None).fit(X, list(given))
        assert {type(v) for v in fitted.predict(X).tolist()} == {type(labels[0])}


@pytest.mark.parametrize(
    ("y", "error_type", "message"),
    [
        (np.array(["a", "b", "c"])[Y], InvalidTypeError, "y holds string labels, but the model was fitted on number labels"),
        (Y.astype(bool), InvalidTypeError, "y holds boolean labels"),
        (Y[:-2], InvalidArgumentError, "X has 24, y has 22"),
        ([0, "a"] * 12, InvalidTypeError, "y mixes labels"),
        (None, InvalidArgumentError, "requires y"),
    ],
)
def test_score_with_bad_labels(y, error_type, message):
    with pytest.raises(error_type, match=message):
        _fitted("lr").score(X, y)


def test_score_with_bad_sample_weight():
    fitted = _fitted("lr")
    assert fitted.score(X, Y, sample_weight=np.ones(len(Y))) == fitted.score(X, Y)
    for weights, message in [
        (np.ones(3), "sample_weight has shape"),
        (-np.ones(len(Y)), "negative weights"),
        (_with(np.ones(len(Y)), 0, np.nan), "sample_weight contains NaN"),
    ]:
        with pytest.raises(InvalidArgumentError, match=message):
            fitted.score(X, Y, sample_weight=weights)


def test_heads_refuse_non_finite_probabilities_from_their_own_computation(monkeypatch):
    fitted = _fitted("lr")
    monkeypatch.setattr(
        type(fitted), "_predict_probability_from_features", lambda self, f: np.full((len(f), 3), np.nan)
    )
    with pytest.raises(InvalidArgumentError, match="NaN or infinite probabilities for 24 row"):
        fitted.predict_proba(X)


# ------------------------------------------------------------------------------ source models
@pytest.fixture(scope="module")
def source():
    return make_tiny_source_model(5)


def test_nan_input_through_a_source_model(source):
    """A NaN in the raw inputs is refused before extraction (never turned into features)."""
    bad = _with(X, (2, 3), np.nan)
    with pytest.raises(InvalidArgumentError, match=r"X contains NaN \(1 NaN value \(first at \(2, 3\)\)"):
        LrRepurposer(source, ["fc1"]).fit(bad, Y)
    fitted = LrRepurposer(source, ["fc1"]).fit(X, Y)
    with pytest.raises(InvalidArgumentError, match="X contains infinity"):
        fitted.predict(_with(X, (0, 0), np.inf))


def test_labels_of_another_length_through_a_source_model(source):
    with pytest.raises(InvalidArgumentError, match="X has 24, y has 30"):
        LrRepurposer(source, ["fc1"]).fit(X, np.resize(Y, 30))
    with pytest.raises(InvalidTypeError, match="y mixes labels"):
        LrRepurposer(source, ["fc1"]).fit(X, [1, "a"] * 12)


def test_features_overflowing_in_the_source_model_are_refused():
    symbol, args, auxs = make_tiny_source_model(5)
    args["fc1_weight"] = args["fc1_weight"] * 1e37  # finite inputs, infinite features
    with pytest.raises(InvalidArgumentError, match=r"features the source model gives at \['fc1'\]"):
        LrRepurposer((symbol, args, auxs), ["fc1"]).fit(X * 100, Y)


@pytest.mark.parametrize("backend", ["mxnet", "torch"])
def test_get_layer_output_refuses_a_nan_pixel(backend):
    """One NaN pixel: MXNet's BatchNorm + ReLU would turn it into all-finite features."""
    from xfer._mxnet import mx
    from xfer.model_handler import ModelHandler
    from xfer.toy_models import digits_cnn_symbol, torch_digits_cnn

    if backend == "mxnet":
        model = mx.mod.Module(digits_cnn_symbol(3), context=mx.cpu())
        model.bind(data_shapes=[("data", (5, 1, 8, 8))], label_shapes=[("softmax_label", (5,))])
        model.init_params(mx.init.Xavier())
    else:
        model = torch_digits_cnn(3)
    handler = ModelHandler(model)
    images = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    layer = "fc1"
    handler.get_layer_output(images, [layer])
    images[3, 0, 4, 4] = np.nan
    with pytest.raises(InvalidArgumentError, match=r"The data contains NaN .*\(3, 0, 4, 4\)"):
        handler.get_layer_output(images, [layer])


def test_get_layer_output_refuses_nan_in_a_later_batch():
    from xfer._mxnet import mx
    from xfer.model_handler import ModelHandler

    handler = ModelHandler(make_tiny_source_model(5))
    data = _with(X, (20, 1), np.nan).astype(np.float32)
    with pytest.raises(InvalidArgumentError, match=r"The data contains NaN .*first at \(20, 1\)"):
        handler.get_layer_output(mx.io.NDArrayIter(data, batch_size=8), ["fc1"])


def test_check_finite_scans_large_arrays_in_chunks():
    big = np.zeros((3000, 3, 32, 32), dtype=np.float32)  # larger than one chunk
    _validation.check_finite(big, "images", "")
    big[2999, 2, 31, 31] = np.inf
    with pytest.raises(InvalidArgumentError, match=r"first at \(2999, 2, 31, 31\)"):
        _validation.check_finite(big, "images", "")


def test_torch_loader_with_nan_in_a_later_batch():
    torch = pytest.importorskip("torch")
    from xfer.model_handler import ModelHandler

    handler = ModelHandler(torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU()))
    data = torch.tensor(_with(X, (17, 4), np.nan), dtype=torch.float32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=8)
    with pytest.raises(InvalidArgumentError, match=r"The data contains NaN .*first at \(17, 4\)"):
        handler.get_layer_output(loader, ["0"])
    with pytest.raises(InvalidArgumentError, match=r"The data contains NaN .*first at \(17, 4\)"):
        handler.get_layer_output(data, ["0"])  # a tensor is checked whole before any batch


def test_list_of_arrays_of_different_shapes_is_refused():
    from xfer.model_handler import ModelHandler

    handler = ModelHandler(make_tiny_source_model(5))
    with pytest.raises(InvalidArgumentError, match="list of arrays of different shapes"):
        handler.get_layer_output([X[0], X[1][:3]], ["fc1"])


# ------------------------------------------------------------------------------ fine-tuners
def _digits_cnn(backend):
    from xfer._mxnet import mx
    from xfer.toy_models import digits_cnn_symbol, torch_digits_cnn

    if backend == "torch":
        return torch_digits_cnn(3)
    module = mx.mod.Module(digits_cnn_symbol(3), context=mx.cpu())
    module.bind(data_shapes=[("data", (4, 1, 8, 8))], label_shapes=[("softmax_label", (4,))])
    module.init_params(mx.init.Xavier())
    return module


IMAGES = np.random.default_rng(0).random((12, 1, 8, 8), dtype=np.float32)
IMAGE_LABELS = np.arange(12) % 3


def _fine_tuner(backend, **options):
    from xfer import NeuralNetworkFineTuneRepurposer

    options = {"target_class_count": None, "num_epochs": 1, "batch_size": 4, **options}
    return NeuralNetworkFineTuneRepurposer(_digits_cnn(backend), "relu3", **options)


@pytest.mark.parametrize("backend", ["mxnet", "torch"])
@pytest.mark.parametrize(
    ("X", "y", "options", "error_type", "message"),
    [
        (IMAGES[:, 0], IMAGE_LABELS, {}, InvalidArgumentError, r"\(8, 8\).*does not fit the model"),
        (_with(IMAGES, (2, 0, 3, 3), np.nan), IMAGE_LABELS, {}, InvalidArgumentError, r"fit: X contains NaN .*\(2, 0, 3, 3\)"),
        (IMAGES, [1, "a", 2] * 4, {}, InvalidTypeError, "y mixes labels of different kinds"),
        (IMAGES, IMAGE_LABELS[:-1], {}, InvalidArgumentError, "X has 12, y has 11"),
        (IMAGES, IMAGE_LABELS, {"kvstore": "bogus"}, InvalidArgumentError, "kvstore='bogus' is not a kvstore type"),
        (IMAGES, IMAGE_LABELS, {"checkpoint_dir": __file__}, InvalidArgumentError, "checkpoint_dir=.* is not a folder"),
        (np.ma.masked_array(IMAGES, mask=IMAGES > 0.99), IMAGE_LABELS, {}, InvalidArgumentError, "fit: X is a masked array with"),
        (IMAGES, IMAGE_LABELS, {"target_class_count": 10**12}, InvalidArgumentError, r"target_class_count must be <= 16777216, got 1000000000000 \(one output per class"),
    ],
)
def test_fine_tuner_bad_inputs(backend, X, y, options, error_type, message):
    with pytest.raises(error_type, match=message) as raised:
        _fine_tuner(backend, **options).fit(X, y)
    assert isinstance(raised.value, XferError)


@pytest.mark.parametrize("backend", ["mxnet", "torch"])
def test_fine_tuner_channel_axis_hint(backend):
    with pytest.raises(InvalidArgumentError, match="The channel axis is missing: give images as N x C x H x W"):
        _fine_tuner(backend).fit(IMAGES[:, 0], IMAGE_LABELS)
    with pytest.raises(InvalidArgumentError, match=r"The channel axis is last: .*np.moveaxis\(\w, -1, 1\)"):
        _fine_tuner(backend).fit(np.moveaxis(IMAGES, 1, -1), IMAGE_LABELS)


def test_fine_tuner_validation_labels_of_another_kind():
    with pytest.raises(InvalidTypeError, match="y_val holds string labels, but the model was fitted on number"):
        _fine_tuner("mxnet").fit(IMAGES, IMAGE_LABELS, validation_data=(IMAGES, IMAGE_LABELS.astype(str)))


def test_get_layer_output_refuses_masked_entries():
    from xfer.model_handler import ModelHandler

    masked = np.ma.masked_array(X, mask=np.eye(24, 5, dtype=bool))
    with pytest.raises(InvalidArgumentError, match="is a masked array with 5 masked"):
        ModelHandler(make_tiny_source_model(5)).get_layer_output(masked, ["fc1"])
    unmasked = np.ma.masked_array(X, mask=False)  # nothing masked: read as the plain array
    np.testing.assert_array_equal(
        _fitted("lr").predict_proba(unmasked), _fitted("lr").predict_proba(X)
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LrRepurposer(None, None, n_jobs=10**20), "n_jobs=100000000000000000000 is more threads than can be asked for"),
        (lambda: SvmRepurposer(None, None, n_jobs=2**40), "n_jobs=1099511627776 is more threads"),
        (lambda: LrRepurposer(None, None, extraction_batch_size=0), "extraction_batch_size must be >= 1, got 0"),
        (lambda: GpRepurposer(None, None, extraction_batch_size=-2), "extraction_batch_size must be >= 1"),
    ],
)
def test_counts_that_cannot_be_honoured_are_refused(make, message):
    """Also where the value would go unused (no source model), so a mistake shows at once;
    a C int overflow (n_jobs) is not a raw ctypes error."""
    with pytest.raises(InvalidArgumentError, match=message):
        make().fit(X, Y)


@pytest.mark.parametrize("backend", ["mxnet", "torch"])
def test_fine_tuner_predict_and_score_go_through_the_gate(backend):
    import reliability_support

    fitted = reliability_support.fitted_tiny_fine_tuner(backend)
    features, labels = reliability_support.BLOBS
    with pytest.raises(InvalidArgumentError, match=r"predict: X contains NaN .*\(4, 1\)"):
        fitted.predict(_with(features, (4, 1), np.nan))
    with pytest.raises(InvalidArgumentError, match="predict: X contains infinity"):
        fitted.predict_proba(_with(features, (0, 0), np.inf))
    with pytest.raises(InvalidArgumentError, match="is a masked array"):
        fitted.predict(np.ma.masked_array(features, mask=np.eye(*features.shape, dtype=bool)))
    with pytest.raises(InvalidTypeError, match="y mixes labels of different kinds"):
        fitted.score(features, [0, "a", 1] * 8)
    with pytest.raises(InvalidArgumentError, match="X has 24, y has 23"):
        fitted.score(features, labels[:-1])
