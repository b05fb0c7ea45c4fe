"""AutoRepurposer: the shared battery, plus the choice of layer and head and its report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import xfer
from xfer import AutoRepurposer
from xfer._mxnet import mx
from xfer.exceptions import InvalidArgumentError, InvalidTypeError
from xfer.model_handler import ModelHandler
from xfer.testing import RepurposerTestCase, make_tiny_source_model
from xfer.transferability import logme


class TestAutoRepurposerContract(RepurposerTestCase):
    def create_repurposer(self, source_model=None, feature_layer_names=None, **kwargs):
        kwargs.setdefault("random_state", 0)
        return AutoRepurposer(source_model, feature_layer_names, **kwargs)

    def test_two_layers_concatenated_in_order(self):
        # The battery's meta-model check, as it applies here: with two candidates the head reads
        # the one chosen; with n_layers=2 both, concatenated in the order given.
        source = make_tiny_source_model(self.n_features)
        X, y = self.data()
        one = self.create_repurposer(source, ["fc2", "fc1"]).fit(X, y)
        assert len(one.feature_layer_names_) == 1
        width = {"fc2": 3, "fc1": 8}[one.feature_layer_names_[0]]
        assert [len(i) for i in one.feature_indices_per_layer_] == [width]
        assert {row["layer"] for row in one.report_.layers} == {"fc2", "fc1"}
        both = self.create_repurposer(source, ["fc2", "fc1"], n_layers=2).fit(X, y)
        assert both.feature_layer_names_ == ["fc2", "fc1"]
        assert [len(i) for i in both.feature_indices_per_layer_] == [3, 8]


def signal_and_noise(seed=0, n_per_class=20):
    rng = np.random.RandomState(seed)
    labels = np.repeat([0, 1, 2], n_per_class)
    signal = 2.5 * np.eye(3)[labels] + 0.6 * rng.normal(size=(labels.size, 3))
    return np.c_[signal, rng.normal(size=(labels.size, 3))].astype(np.float32), labels


NOISE_ONLY = np.diag([0, 0, 0, 1, 1, 1]).astype(np.float32)


def mxnet_chain():
    """fc_all keeps every input column; fc_noise keeps only the noise columns."""
    net = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=6, name="fc_all")
    net = mx.sym.FullyConnected(net, num_hidden=6, name="fc_noise")
    net = mx.sym.SoftmaxOutput(net, name="softmax")
    args = {
        "fc_all_weight": mx.nd.array(np.eye(6)), "fc_all_bias": mx.nd.zeros(6),
        "fc_noise_weight": mx.nd.array(NOISE_ONLY), "fc_noise_bias": mx.nd.zeros(6),
    }  # fmt: skip
    return net, args, {}


def torch_conv_chain():
    """A conv layer whose channels carry the class (after pooling) and a layer that drops them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(6, 6, 1), nn.Conv2d(6, 6, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(6).reshape(6, 6, 1, 1))
        model[1].weight.copy_(torch.from_numpy(NOISE_ONLY).reshape(6, 6, 1, 1))
        model[0].bias.zero_()
        model[1].bias.zero_()
    return model.eval()


def as_images(features, seed=0):
    """Each feature becomes a 4 x 4 channel: its value plus zero-mean noise (mean = the value)."""
    noise = np.random.RandomState(seed).normal(size=(len(features), 6, 4, 4)).astype(np.float32)
    noise -= noise.mean(axis=(2, 3), keepdims=True)
    return features[:, :, None, None] + noise


@pytest.mark.parametrize("select", ["logme", "h_score", "cv"])
def test_chooses_the_layer_that_carries_the_class(select):
    X, y = signal_and_noise()
    auto = AutoRepurposer(mxnet_chain(), ["fc_noise", "fc_all"], select=select, random_state=0)
    auto.fit(X, y)
    assert auto.feature_layer_names_ == ["fc_all"]
    assert auto.report_.layers[0]["layer"] == "fc_all"
    assert auto.report_.rule == select and "fc_all" in auto.report_.reason
    X_test, y_test = signal_and_noise(seed=1)
    assert auto.score(X_test, y_test) > 0.9


def test_torch_feature_maps_are_average_pooled_for_scoring_and_prediction():
    X, y = signal_and_noise(seed=2)
    images = as_images(X, seed=2)
    model = torch_conv_chain()
    auto = AutoRepurposer(model, ["1", "0"], random_state=0).fit(images, y)
    assert auto.feature_layer_names_ == ["0"]
    pooled = ModelHandler(model).get_layer_output(images, ["0"], pooling="avg")[0]["0"]
    assert pooled.shape == (len(y), 6)
    np.testing.assert_allclose(auto.get_features_from_source_model(images).features, pooled)
    row = auto.report_.layers[0]
    assert row["n_features"] == 6 and row["logme"] == pytest.approx(logme(pooled, y))
    np.testing.assert_array_equal(auto.predict(images), auto.head_.predict(pooled))
    assert auto.head_name_ == "lr" and isinstance(auto.head_, xfer.LrRepurposer)


def test_chooses_the_head_by_cross_validation_and_says_why():
    X, y = signal_and_noise(seed=3)
    auto = AutoRepurposer(None, None, heads=["svm", "lr"], cv=3, random_state=0).fit(X, y)
    assert set(auto.report_.heads) == {"svm", "lr"} and auto.report_.cv_folds == 3
    best = max(auto.report_.heads.values())
    assert auto.report_.heads[auto.head_name_] == best
    assert "cross-validated" in auto.report_.reason and "no layer was chosen" in auto.report_.reason
    assert "heads (cross-validated accuracy, 3 folds)" in str(auto.report_)
    # a class with a single example: no cross-validation, the first head listed is used
    few = AutoRepurposer(None, None, heads=["lr", "svm"])
    keep = np.r_[np.flatnonzero(y != 2), np.flatnonzero(y == 2)[:1]]
    few.fit(X[keep], y[keep])
    assert few.head_name_ == "lr" and few.report_.heads == {} and few.report_.cv_folds == 0
    assert "too few examples per class" in few.report_.reason


def test_fit_features_chooses_among_column_blocks():
    X, y = signal_and_noise(seed=4)
    blocks = [np.arange(3, 6), np.arange(0, 3)]  # noise block first
    auto = AutoRepurposer(None, None, random_state=0).fit_features(X, y, blocks)
    assert auto.report_.chosen_layers == ["block 1"] and auto.feature_layer_names_ is None
    np.testing.assert_array_equal(auto.target_model_.columns, [0, 1, 2])
    np.testing.assert_array_equal(auto.predict_features(X), auto.head_.predict_features(X[:, :3]))


def test_fit_features_with_a_source_model_reads_every_candidate_to_predict(tmp_path):
    X, y = signal_and_noise(seed=5)
    auto = AutoRepurposer(mxnet_chain(), ["fc_noise", "fc_all"], random_state=0)
    data = auto.get_features_from_source_model(X)  # before fit: every candidate
    assert data.features.shape == (len(y), 12)
    auto.fit_features(data.features, y, data.feature_indices_per_layer)
    assert auto.feature_layer_names_ == ["fc_all"]
    np.testing.assert_array_equal(auto.predict(X), auto.predict_features(data.features))
    auto.save(tmp_path / "auto")
    loaded = xfer.load(tmp_path / "auto")
    np.testing.assert_array_equal(loaded.predict(X), auto.predict(X))


def test_report_survives_save_and_load(tmp_path):
    X, y = signal_and_noise(seed=6)
    auto = AutoRepurposer(mxnet_chain(), ["fc_noise", "fc_all"], heads=("lr", "svm"), cv=3,
                          random_state=0).fit(X, y)  # fmt: skip
    auto.save(tmp_path / "auto")
    manifest = json.loads((tmp_path / "auto.json").read_text())
    assert manifest["state"]["head"]["feature_layer_names"] == ["fc_all"]
    loaded = xfer.load(tmp_path / "auto")
    assert loaded.report_.to_dict() == auto.report_.to_dict()
    assert loaded.feature_layer_names_ == ["fc_all"] and loaded.head_name_ == auto.head_name_
    np.testing.assert_array_equal(loaded.predict_proba(X), auto.predict_proba(X))
    assert loaded.get_params()["heads"] == ["lr", "svm"]


def test_default_candidates_come_from_the_model():
    X, y = signal_and_noise(seed=7)
    auto = AutoRepurposer(mxnet_chain(), random_state=0).fit(X, y)
    assert {row["layer"] for row in auto.report_.layers} == {"fc_all", "fc_noise"}
    assert auto.feature_layer_names_ == ["fc_all"]


def test_bad_options():
    X, y = signal_and_noise()
    cases = [
        ({"select": "accuracy"}, InvalidArgumentError, "select must be one of"),
        ({"heads": ["knn"]}, InvalidArgumentError, "Unknown head 'knn'"),
        ({"heads": []}, InvalidTypeError, "heads must be"),
        ({"heads": ["lr", "lr"]}, InvalidArgumentError, "repeats"),
        ({"n_layers": 0}, InvalidArgumentError, "n_layers must be an integer >= 1"),
        ({"cv": 1}, InvalidArgumentError, "cv must be an integer >= 2"),
        ({"pooling": "max"}, InvalidArgumentError, "pooling must be one of"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            AutoRepurposer(None, None, **options).fit(X, y)


def test_a_feature_store_is_refused_with_what_to_do_instead(tmp_path):
    from xfer.feature_store import write_features

    X, y = signal_and_noise()
    store = write_features(tmp_path / "store", X, y)
    for auto in (AutoRepurposer(None, None), AutoRepurposer(mxnet_chain(), None)):
        with pytest.raises(InvalidTypeError, match="cannot train on a FeatureStore.*to_array"):
            auto.fit(store)
        with pytest.raises(InvalidTypeError, match="cannot train on a FeatureStore"):
            auto.fit_features(store, None)
    features, labels = store.to_array()
    fitted = AutoRepurposer(None, None).fit_features(features, labels)
    assert np.mean(fitted.predict_features(X) == y) > 0.9


def test_options_are_checked_before_features_are_extracted(monkeypatch):
    auto = AutoRepurposer(mxnet_chain(), None, select="accuracy")
    monkeypatch.setattr(
        AutoRepurposer, "_extract", lambda *a: pytest.fail("extracted before checking")
    )
    X, y = signal_and_noise()
    with pytest.raises(InvalidArgumentError, match="select must be one of"):
        auto.fit(X, y)
