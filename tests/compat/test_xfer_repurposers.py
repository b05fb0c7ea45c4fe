"""Xfer 1.1.0's repurposer API, as Xfer documents it: module paths, attributes, hooks, errors."""

from __future__ import annotations

import importlib
from collections import OrderedDict
from unittest.mock import Mock, patch

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.neighbors import KNeighborsClassifier

import xfer
from xfer._mxnet import mx
from xfer.exceptions import NotFittedError
from xfer.testing import make_tiny_source_model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + 2 * (X[:, 1] > 0)
    return X, y


@pytest.fixture(scope="module")
def source():
    return make_tiny_source_model(6)


@pytest.mark.parametrize(
    "path, name",
    [
        ("xfer.repurposer", "Repurposer"),
        ("xfer.meta_model_repurposer", "MetaModelRepurposer"),
        ("xfer.meta_model_repurposer", "MetaModelData"),
        ("xfer.lr_repurposer", "LrRepurposer"),
        ("xfer.svm_repurposer", "SvmRepurposer"),
        ("xfer.gp_repurposer", "GpRepurposer"),
        ("xfer.bnn_repurposer", "BnnRepurposer"),
        ("xfer.neural_network_repurposer", "NeuralNetworkRepurposer"),
        ("xfer.neural_network_fine_tune_repurposer", "NeuralNetworkFineTuneRepurposer"),
        ("xfer.neural_network_random_freeze_repurposer", "NeuralNetworkRandomFreezeRepurposer"),
        ("xfer.load_repurposer", "load"),
        ("xfer.model_handler.model_handler", "ModelHandler"),
        ("xfer.model_handler.exceptions", "ModelArchitectureError"),
        ("xfer.model_handler.consts", "LayerType"),
        ("xfer.utils", "serialize_ctx_fn"),
    ],
)
def test_xfer_module_paths(path, name):
    module = importlib.import_module(path)
    top = getattr(xfer, name, None) or getattr(xfer.model_handler, name, None)
    assert getattr(module, name) is top or top is None
    # attribute access through the package works too (import xfer; xfer.lr_repurposer.X)
    parent = importlib.import_module(path.rpartition(".")[0])
    assert getattr(parent, path.rpartition(".")[2]) is module


def test_target_model_is_none_before_fitting(source, data):
    repurposer = xfer.LrRepurposer(source, ["fc1"])
    assert repurposer.target_model is None
    with pytest.raises(ValueError, match="Cannot predict because target_model is not initialized"):
        repurposer.predict_label(data[0])
    repurposer.fit(*data)
    assert repurposer.target_model is repurposer.target_model_ is not None


def test_source_model_handler_and_features_per_layer(source, data):
    repurposer = xfer.MetaModelRepurposer(source, ["fc2", "fc1"])
    assert repurposer.source_model_handler.layer_names == ["fc1", "relu1", "fc2", "softmax"]
    meta = repurposer.get_features_from_source_model(data_iterator=data[0])
    assert isinstance(meta.feature_indices_per_layer, OrderedDict)
    assert list(meta.feature_indices_per_layer) == ["fc2", "fc1"]
    n_fc2 = meta.feature_indices_per_layer["fc2"].size
    np.testing.assert_array_equal(meta.feature_indices_per_layer["fc1"], np.arange(n_fc2, meta.features.shape[1]))


def test_patching_xfers_model_handler_name_reaches_the_repurposers(source):
    features = OrderedDict([("a", np.ones((3, 2))), ("b", np.zeros((3, 1)))])
    with patch("xfer.meta_model_repurposer.ModelHandler") as handler_class:
        handler_class.return_value = Mock(layer_names=["a", "b"])
        handler_class.return_value.get_layer_output.return_value = features, np.array([0, 1, 0])
        meta = xfer.MetaModelRepurposer(source, ["a", "b"]).get_features_from_source_model(Mock())
    np.testing.assert_array_equal(meta.features, [[1, 1, 0]] * 3)
    assert handler_class.call_count == 1


def test_layer_name_errors_use_xfers_words(source, data):
    with pytest.raises(ValueError, match="feature_layer_names cannot be empty"):
        xfer.LrRepurposer(source, []).fit(*data)
    with pytest.raises(TypeError, match="feature_layer_names must be a list"):
        xfer.LrRepurposer(source, "fc1").fit(*data)
    with pytest.raises(ValueError, match="feature_layer_name 'phantom' is not found in source_model"):
        xfer.LrRepurposer(source, ["fc1", "phantom"]).fit(*data)


class KNNRepurposer(xfer.MetaModelRepurposer):
    """The custom meta-model repurposer of Xfer's demo, written as Xfer users write it."""

    def __init__(self, source_model, feature_layer_names, context_function=mx.context.cpu, num_devices=1,
                 n_neighbors=5):
        super().__init__(source_model, feature_layer_names, context_function, num_devices)
        self.n_neighbors = n_neighbors

    def _train_model_from_features(self, features, labels, feature_indices_per_layer=None):
        return KNeighborsClassifier(n_neighbors=self.n_neighbors).fit(features, labels)

    def _predict_probability_from_features(self, features):
        return self.target_model.predict_proba(features)

    def _predict_label_from_features(self, features):
        return self.target_model.predict(features)

    def get_params(self):  # Xfer's signature: no ``deep``
        params = super().get_params()
        params["n_neighbors"] = self.n_neighbors
        return params


def test_custom_repurposer_with_xfer_style_get_params(source, data):
    X, y = data
    repurposer = KNNRepurposer(source, ["fc1"], n_neighbors=3)
    assert "n_neighbors=3" in repr(repurposer)
    copy = clone(repurposer)
    assert copy.get_params()["n_neighbors"] == 3 and copy.source_model is source
    repurposer.repurpose(mx.io.NDArrayIter(X, y.astype(np.float32), batch_size=8))
    labels = repurposer.predict_label(mx.io.NDArrayIter(X, batch_size=8))
    assert labels.shape == (len(X),) and np.mean(labels == y) > 0.6
    np.testing.assert_allclose(repurposer.predict_probability(X).sum(axis=1), 1.0)


def test_validation_hooks_run_once_per_call(source, data):
    repurposer = xfer.LrRepurposer(source, ["fc1"])
    with patch.object(xfer.LrRepurposer, "_validate_before_repurpose") as before_fit:
        repurposer.fit(*data)
    assert before_fit.call_count == 1
    with patch.object(xfer.LrRepurposer, "_validate_before_predict") as before_predict:
        repurposer.predict_label(data[0])
        repurposer.predict_probability(data[0])
    assert before_predict.call_count == 2
    with pytest.raises(NotFittedError):
        xfer.LrRepurposer(source, ["fc1"])._validate_before_predict()


def test_context_functions_to_and_from_strings():
    from xfer import utils

    assert utils.serialize_ctx_fn(mx.cpu) == "cpu" and utils.serialize_ctx_fn(mx.gpu) == "gpu"
    assert utils.deserialize_ctx_fn("cpu") is mx.cpu and utils.deserialize_ctx_fn("gpu") is mx.gpu
    with pytest.raises(ValueError, match="Unexpected context function"):
        utils.serialize_ctx_fn("cpu")
    with pytest.raises(ValueError, match="Unexpected context function"):
        utils.deserialize_ctx_fn(mx.cpu)


def test_target_class_count_larger_than_the_labels_seen(source, data):
    X, y = data
    repurposer = xfer.NeuralNetworkFineTuneRepurposer(source, "relu1", target_class_count=6, num_epochs=1)
    assert repurposer.target_model is None
    repurposer.fit(X, y)  # labels 0..3 are class indices among 6
    np.testing.assert_array_equal(repurposer.classes_, np.arange(6))
    assert repurposer.predict_proba(X).shape == (len(X), 6)
    with pytest.raises(ValueError, match="are class indices 0..5; these labels are not"):
        xfer.NeuralNetworkFineTuneRepurposer(source, "relu1", 6, num_epochs=1).fit(X, np.array(list("abcd"))[y])
    with pytest.raises(ValueError, match="target_class_count=3 but the training labels have 4 classes"):
        xfer.NeuralNetworkFineTuneRepurposer(source, "relu1", 3, num_epochs=1).fit(X, y)


def test_random_freeze_ignores_layers_it_drops(source, data, caplog):
    X, y = data
    repurposer = xfer.NeuralNetworkRandomFreezeRepurposer(
        source, target_class_count=None, fixed_layers=["fc1"], random_layers=["fc2"], num_epochs=1
    )
    with caplog.at_level("WARNING", logger="xfer"):
        repurposer.fit(X, y)
    assert "['fc2'] are among the 2 top layers dropped" in caplog.text
    arguments = repurposer.target_model.symbol.list_arguments()
    assert "fc2_weight" not in arguments and "new_fully_connected_layer_weight" in arguments
    with pytest.raises(ValueError, match="'invented' is not in the model"):
        xfer.NeuralNetworkRandomFreezeRepurposer(source, None, ["invented"], [], num_epochs=1).fit(X, y)


def test_predicting_before_fitting_raises_the_types_xfer_raised(source, data):
    # Xfer 1.1.0: ValueError from a meta-model repurposer, TypeError from a neural-network one
    X, _ = data
    iterator = mx.io.NDArrayIter(X, batch_size=8)
    with pytest.raises(ValueError, match="not fitted"):
        xfer.LrRepurposer(source, ["fc1"]).predict_label(iterator)
    fine_tuner = xfer.NeuralNetworkFineTuneRepurposer(source, "relu1", 4, num_epochs=1)
    for predict in (fine_tuner.predict_label, fine_tuner.predict_probability):
        with pytest.raises(TypeError, match="not fitted"):
            predict(iterator)
    with pytest.raises(AttributeError):  # scikit-learn's NotFittedError is one too
        xfer.SvmRepurposer(source, ["fc1"]).predict(X)


class _LrWithClippedFeatures(xfer.LrRepurposer):
    """An Xfer-style custom head: overrides the hook with Xfer's signature and calls the parent's
    with two arguments, as Xfer's LR, SVM and BNN hooks allowed."""

    def _train_model_from_features(self, features, labels, feature_indices_per_layer=None):
        self.hook_layers_ = feature_indices_per_layer
        return super()._train_model_from_features(np.clip(features, -3, 3), labels)


def test_meta_model_hook_takes_xfers_two_argument_call(source, data):
    X, y = data
    repurposer = _LrWithClippedFeatures(source, ["fc1", "relu1"]).fit(X, y)
    assert [len(columns) for columns in repurposer.hook_layers_] == [8, 8]
    assert np.mean(repurposer.predict(X) == y) > 0.6
    # the parent hook called directly, as Xfer's hooks could be, with no layer split
    model = xfer.SvmRepurposer(source, ["fc1"])._train_model_from_features(X, y % 2)
    assert model is not None


def test_a_missing_source_model_is_a_type_error_as_in_xfer(data):
    X, y = data
    with pytest.raises(TypeError, match="Cannot repurpose because source_model is not an "
                                        r"`mxnet.mod.Module` object \(or another network a "
                                        r"ModelHandler takes\): it is None"):
        xfer.NeuralNetworkFineTuneRepurposer(None, "relu1", 4, num_epochs=1).fit(X, y)
    # Xfer's hook checks it too (Xfer's tests call it directly)
    for source in (None, ""):
        with pytest.raises(TypeError, match="Cannot repurpose because source_model is not an"):
            xfer.NeuralNetworkRepurposer(source_model=source)._validate_before_repurpose()
    xfer.NeuralNetworkRepurposer(source_model=make_tiny_source_model(6))._validate_before_repurpose()
    with pytest.raises(TypeError, match="needs a source model to extract features"):
        xfer.LrRepurposer(None, ["fc1"]).repurpose(mx.io.NDArrayIter(X, y, batch_size=8))


class _CheckedFineTuner(xfer.NeuralNetworkFineTuneRepurposer):
    """Xfer's extension point: a subclass adds its checks in _validate_before_repurpose."""

    calls = 0

    def _validate_before_repurpose(self):
        type(self).calls += 1
        if self.num_epochs > 3:
            raise ValueError("this fine-tuner trains for at most 3 epochs")


def test_fine_tuners_run_xfers_validate_before_repurpose_hook_once_per_fit(source, data):
    X, y = data
    _CheckedFineTuner(source, "relu1", 4, num_epochs=1).fit(X, y)
    assert _CheckedFineTuner.calls == 1
    with pytest.raises(ValueError, match="at most 3 epochs"):
        _CheckedFineTuner(source, "relu1", 4, num_epochs=5).repurpose(mx.io.NDArrayIter(X, y, batch_size=8))
    assert _CheckedFineTuner.calls == 2
