"""Assigning ``target_model``, as Xfer 1.1.0's scripts and tests do.

``rep.target_model = rep._train_model_from_features(X, y)`` (meta-model heads) and
``rep.target_model = mx.mod.Module.load(...)`` (fine-tuners) make the repurposer fitted with that
model; None unfits it; a model of another type is a TypeError naming what is accepted.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

import xfer
from xfer._mxnet import mx
from xfer.exceptions import InvalidArgumentError, InvalidTypeError, NotFittedError
from xfer.repurposers.laplace import LaplaceRepurposer
from xfer.testing import make_tiny_source_model


@pytest.fixture(scope="module")
def features():
    """Three well-separated classes labelled 1.0, 3.0, 5.0 (not codes), two feature layers."""
    rng = np.random.RandomState(0)
    centres = np.array([[0, 0, 0, 0], [3, 3, 0, 0], [0, 0, 3, 3]])
    X = np.concatenate([rng.normal(c, 0.5, (10, 4)) for c in centres])
    y = np.repeat([1.0, 3.0, 5.0], 10)
    return X, y


HEADS = [
    (xfer.LrRepurposer, {}, "LogisticModel or sklearn LogisticRegression"),
    (xfer.SvmRepurposer, {"enable_probability_estimates": True}, "SvmModel"),
    pytest.param(
        xfer.GpRepurposer, {"max_function_evaluations": 5}, "GpClassifierCore",
        marks=pytest.mark.slow,  # ~10 s on 2 busy cores
    ),
    (xfer.BnnRepurposer, {"num_epochs": 30, "random_state": 0}, "BnnClassifierCore"),
    (LaplaceRepurposer, {}, "LaplaceClassifierCore"),
]


@pytest.mark.parametrize(
    "cls, options, accepted", HEADS, ids=["lr", "svm", "gp", "bnn", "laplace"]
)
def test_assigning_the_hooks_model_makes_a_fitted_repurposer(cls, options, accepted, features, tmp_path):
    X, y = features
    repurposer = cls(None, None, **options)
    # Xfer's call: two arguments (or its dict of layer columns), any label values, outside fit
    model = repurposer._train_model_from_features(X, y, {"l1": np.arange(2), "l2": np.arange(2, 4)})
    assert not hasattr(repurposer, "classes_")
    repurposer.target_model = model
    assert repurposer.target_model is model
    np.testing.assert_array_equal(repurposer.classes_, [0, 1, 2])  # Xfer: class indices
    assert repurposer.n_meta_features_ == 4 and repurposer.n_features_in_ == 4
    probabilities = repurposer.predict_proba(X)
    labels = repurposer.predict(X)
    np.testing.assert_array_equal(labels, np.argmax(probabilities, axis=1))
    assert np.mean(labels == np.repeat([0, 1, 2], 10)) > 0.6  # labels numbered in sorted order
    np.testing.assert_array_equal(repurposer._predict_label_from_features(X), labels)

    repurposer.save(tmp_path / "assigned")
    loaded = xfer.load(tmp_path / "assigned")
    np.testing.assert_allclose(loaded.predict_proba(X), probabilities, atol=1e-6)
    np.testing.assert_array_equal(loaded.classes_, repurposer.classes_)

    with pytest.raises(TypeError, match=f"{cls.__name__}.target_model must be of type {accepted} "
                                        r"\(what _train_model_from_features returns\), or None to "
                                        "unfit it; got builtins.dict"):
        repurposer.target_model = {}
    assert repurposer.target_model is model  # a refused assignment changes nothing

    repurposer.target_model = None
    assert repurposer.target_model is None and not hasattr(repurposer, "classes_")
    with pytest.raises(NotFittedError, match="not fitted"):
        repurposer.predict(X)


def test_a_head_model_with_a_source_model_reads_features_from_it(features):
    X, y = features
    source = make_tiny_source_model(4)
    repurposer = xfer.LrRepurposer(source, ["fc1"])
    hidden = repurposer.get_features_from_source_model(X).features
    repurposer.target_model = repurposer._train_model_from_features(hidden, y)
    assert repurposer.n_meta_features_ == 8 and not hasattr(repurposer, "n_features_in_")
    np.testing.assert_allclose(
        repurposer.predict_proba(X), repurposer.predict_proba_features(hidden), atol=1e-12
    )


def test_a_scikit_learn_logistic_regression_keeps_its_classes(features):
    X, y = features
    labels = np.array(["ant", "bee", "cat"])[np.repeat([0, 1, 2], 10)]
    estimator = LogisticRegression(C=0.5).fit(X, labels)
    repurposer = xfer.LrRepurposer(None, None)
    repurposer.target_model = estimator
    np.testing.assert_array_equal(repurposer.classes_, ["ant", "bee", "cat"])
    np.testing.assert_array_equal(repurposer.predict(X), estimator.predict(X))
    np.testing.assert_allclose(repurposer.predict_proba(X), estimator.predict_proba(X), atol=1e-10)
    binary = LogisticRegression().fit(X[:20], labels[:20])
    repurposer.target_model = binary
    np.testing.assert_allclose(
        repurposer.predict_proba(X), binary.predict_proba(X), atol=1e-10
    )
    with pytest.raises(ValueError, match="not fitted"):  # scikit-learn's NotFittedError
        repurposer.target_model = LogisticRegression()


def test_the_svm_hook_and_the_gp_hook_need_no_fit_first(features):
    X, y = features
    # labels that are not codes: the SVM's calibration counts classes, the GP needs K
    assert xfer.SvmRepurposer(None, None, enable_probability_estimates=True)._train_model_from_features(
        X, y
    ).n_classes_ == 3
    assert xfer.GpRepurposer(None, None, max_function_evaluations=2)._train_model_from_features(
        X, y
    ).n_classes_ == 3
    with pytest.raises(ValueError, match="labels"):
        xfer.GpRepurposer(None, None)._train_model_from_features(X, y[:10])


class _KnnRepurposer(xfer.MetaModelRepurposer):
    """A user's head (Xfer's demo): the hook trains a scikit-learn classifier."""

    def _train_model_from_features(self, features, labels, feature_indices_per_layer=None):
        return KNeighborsClassifier(n_neighbors=3).fit(features, labels)

    def _predict_probability_from_features(self, features):
        return self.target_model.predict_proba(features)


def test_a_users_head_accepts_a_classifier_trained_on_codes(features):
    X, y = features
    codes = np.repeat([0, 1, 2], 10)
    repurposer = _KnnRepurposer(None, None)
    repurposer.target_model = KNeighborsClassifier(n_neighbors=3).fit(X, codes)
    np.testing.assert_array_equal(repurposer.classes_, [0, 1, 2])
    assert np.mean(repurposer.predict(X) == codes) > 0.9
    with pytest.raises(ValueError, match=r"trained on the labels \[1.0, 3.0, 5.0\].*class codes 0..2"):
        repurposer.target_model = KNeighborsClassifier(n_neighbors=3).fit(X, y)
    with pytest.raises(TypeError, match="cannot tell the classes and feature width of the assigned "
                                        "builtins.object.*override _describe_target_model"):
        repurposer.target_model = object()
    # a subclass of a package head that trains its own model type is not held to the head's type
    class _Lr(xfer.LrRepurposer):
        def _train_model_from_features(self, features, labels, feature_indices_per_layer=None):
            return KNeighborsClassifier(n_neighbors=3).fit(features, labels)

    lr = _Lr(None, None)
    lr.target_model = KNeighborsClassifier(n_neighbors=3).fit(X, codes)
    assert lr.target_model is not None


# ---------------------------------------------------------------------------------- fine-tuners
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A network saved as Xfer's tests find them: ``mx.mod.Module.load(prefix, 0)``."""
    prefix = str(tmp_path_factory.mktemp("network") / "net")
    mx.model.save_checkpoint(prefix, 0, *make_tiny_source_model(6, n_outputs=3))
    return prefix


def _trained_module(checkpoint, bind: bool = False):
    if not bind:
        return mx.mod.Module.load(checkpoint, 0, label_names=None)
    module = mx.mod.Module.load(checkpoint, 0)
    module.bind(data_shapes=[("data", (2, 6))], for_training=False)
    return module


def test_assigning_a_trained_module_makes_a_fine_tuner_predict_with_it(checkpoint, tmp_path):
    X = np.random.RandomState(1).normal(size=(10, 6)).astype(np.float32)
    module = _trained_module(checkpoint)
    expected = xfer.model_handler.ModelHandler(module).get_layer_output(X, ["softmax"])[0]["softmax"]

    repurposer = xfer.NeuralNetworkRepurposer(source_model=None)
    with pytest.raises(TypeError, match="Cannot predict because target_model is not an "
                                        "`mxnet.mod.Module` object"):
        repurposer._validate_before_predict()
    repurposer.target_model = module
    np.testing.assert_array_equal(repurposer.classes_, [0, 1, 2])
    assert repurposer.sample_shape_ is None  # an unbound module never saw data
    probabilities = repurposer.predict_probability(X)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    np.testing.assert_array_equal(repurposer.predict_label(X), np.argmax(expected, axis=1))
    assert isinstance(repurposer.target_model, mx.mod.Module)

    fine_tuner = xfer.NeuralNetworkFineTuneRepurposer(None, "relu1", 3)
    fine_tuner.target_model = _trained_module(checkpoint, bind=True)
    assert fine_tuner.sample_shape_ == (6,)
    fine_tuner.save(tmp_path / "assigned")
    loaded = xfer.load(tmp_path / "assigned")
    np.testing.assert_allclose(loaded.predict_proba(X), expected, atol=1e-6)

    repurposer.target_model = None
    assert repurposer.target_model is None and not hasattr(repurposer, "classes_")


def test_assigning_something_else_to_a_fine_tuner_says_what_it_takes(checkpoint):
    repurposer = xfer.NeuralNetworkRepurposer(source_model=None)
    with pytest.raises(InvalidTypeError, match=r"NeuralNetworkRepurposer.target_model must be a "
                                               r"trained `mxnet.mod.Module` object \(e.g. "
                                               r"mx.mod.Module.load\(prefix, epoch\)\), or None"):
        repurposer.target_model = {}
    symbol = _trained_module(checkpoint).symbol
    with pytest.raises(InvalidArgumentError, match="target_model params aren't initialized"):
        repurposer.target_model = mx.mod.Module(symbol, label_names=None)
    logits = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=3, name="fc")
    module = mx.mod.Module(logits, label_names=None)
    module.bind(data_shapes=[("data", (1, 6))], for_training=False)
    module.init_params()
    with pytest.raises(InvalidArgumentError, match="not in a softmax layer"):
        repurposer.target_model = module
    assert repurposer.target_model is None


def test_xfers_bnn_classifier_module_imports_and_says_it_is_not_provided():
    from xfer.bnn_classifier import BnnClassifier

    with pytest.raises(NotImplementedError, match="Xfer 1.1.0's Gluon BNN model.*migrating_from_xfer"):
        BnnClassifier(None, None, None)
