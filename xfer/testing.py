"""Shared test battery for repurposers, importable by users who write their own heads.

Subclass :class:`RepurposerTestCase` in a pytest module, implement :meth:`create_repurposer`, and
every check below runs on your repurposer: fit/predict on features and through a source model,
label round trips, ``predict == classes_[argmax(predict_proba)]``, save/load equality with and
without the source model, determinism, context handling and bad inputs.

Examples
--------
>>> from xfer.testing import RepurposerTestCase
>>> class TestMyHead(RepurposerTestCase):            # doctest: +SKIP
...     def create_repurposer(self, source_model=None, feature_layer_names=None, **kwargs):
...         return MyHead(source_model, feature_layer_names, **kwargs)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from xfer.exceptions import (
    DeviceUnavailableError,
    InvalidTypeError,
    LayerNotFoundError,
    NotFittedError,
)

__all__ = ["RepurposerTestCase", "make_blob_features", "make_tiny_source_model", "write_image_folder"]

#: RGB colour of each class :func:`write_image_folder` writes by default.
IMAGE_COLOURS = {"red": (200, 40, 40), "blue": (40, 40, 200), "green": (40, 190, 40)}


def make_blob_features(
    n_per_class: int = 20, n_classes: int = 3, n_features: int = 6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs: float32 features and int labels ``0..n_classes-1`` (shuffled).

    Parameters
    ----------
    n_per_class : int, default=20
        Rows of each class.
    n_classes : int, default=3
        Number of classes.
    n_features : int, default=6
        Columns.
    seed : int, default=0
        Seed of the centres and the noise.

    Returns
    -------
    features : ndarray of float32, shape (n_classes * n_per_class, n_features)
    labels : ndarray of int, shape (n_classes * n_per_class,)
    """
    rng = np.random.RandomState(seed)
    centres = rng.normal(0.0, 4.0, size=(n_classes, n_features))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = centres[labels] + rng.normal(0.0, 1.0, size=(labels.size, n_features))
    order = rng.permutation(labels.size)
    return features[order].astype(np.float32), labels[order]


def make_tiny_source_model(n_inputs: int = 6, n_hidden: int = 8, n_outputs: int = 3, seed: int = 0):
    """An untrained MXNet MLP ``fc1(n_hidden) relu1 fc2 softmax`` with random weights.

    Parameters
    ----------
    n_inputs : int, default=6
        Width of the input.
    n_hidden : int, default=8
        Units of ``fc1``.
    n_outputs : int, default=3
        Units of ``fc2``.
    seed : int, default=0
        Seed of the weights.

    Returns
    -------
    tuple
        ``(symbol, arg_params, aux_params)``, a source model every repurposer accepts.
    """
    from xfer._mxnet import mx

    data = mx.sym.var("data")
    net = mx.sym.FullyConnected(data, num_hidden=n_hidden, name="fc1")
    net = mx.sym.Activation(net, act_type="relu", name="relu1")
    net = mx.sym.FullyConnected(net, num_hidden=n_outputs, name="fc2")
    net = mx.sym.SoftmaxOutput(net, name="softmax")
    rng = np.random.RandomState(seed)
    arg_params = {
        "fc1_weight": mx.nd.array(rng.normal(0, 0.5, (n_hidden, n_inputs))),
        "fc1_bias": mx.nd.array(rng.normal(0, 0.1, (n_hidden,))),
        "fc2_weight": mx.nd.array(rng.normal(0, 0.5, (n_outputs, n_hidden))),
        "fc2_bias": mx.nd.zeros((n_outputs,)),
    }
    return net, arg_params, {}


def write_image_folder(
    root: Any,
    classes: Any = ("red", "blue"),
    per_class: int = 4,
    size: tuple[int, int] = (20, 16),
    seed: int = 0,
) -> Any:
    """Write real image files (one sub-folder per class) of noisy single colours, for tests.

    Parameters
    ----------
    root : str or path-like
        The folder to write (created).
    classes : sequence of str or dict of str to (R, G, B), default=("red", "blue")
        Class names (from :data:`IMAGE_COLOURS`) or a mapping of class name to colour.
    per_class : int, default=4
        Images per class; even ones are written as JPEG, odd ones as PNG.
    size : (int, int), default=(20, 16)
        Width and height in pixels.
    seed : int, default=0
        Seed of the noise (image ``i`` of every class uses ``seed + i``).

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    from pathlib import Path

    from PIL import Image

    colours = classes if isinstance(classes, dict) else {c: IMAGE_COLOURS[c] for c in classes}
    root = Path(root)
    for name, colour in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng(seed + i)
            pixels = (np.array(colour) + rng.integers(-30, 30, (size[1], size[0], 3))).clip(0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


class RepurposerTestCase:
    """Checks every repurposer must pass. Subclasses implement :meth:`create_repurposer`.

    Class attributes tune the battery: ``has_predict_proba`` (False for heads without
    probabilities), ``uses_torch_device`` (GP/BNN: also run on CUDA when available),
    ``min_train_accuracy`` on well-separated blobs.
    """

    has_predict_proba: bool = True
    uses_torch_device: bool = False
    min_train_accuracy: float = 0.9
    n_features: int = 6
    n_classes: int = 3

    # ------------------------------------------------------------ to implement
    def create_repurposer(
        self, source_model: Any = None, feature_layer_names: list[str] | None = None, **kwargs: Any
    ) -> Any:
        """A fresh, unfitted repurposer (fast settings; ``random_state`` fixed): implement this.

        Parameters
        ----------
        source_model : optional
            The source model, or None for a head on feature arrays.
        feature_layer_names : list of str, optional
            Its feature layers.
        **kwargs
            Further constructor arguments some checks pass (``random_state``...).

        Returns
        -------
        Repurposer
        """
        raise NotImplementedError

    # ------------------------------------------------------------ helpers
    def data(self, seed: int = 0, n_per_class: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """Blob features of this case's size (see :func:`make_blob_features`).

        Parameters
        ----------
        seed : int, default=0
            Seed of the blobs.
        n_per_class : int, default=20
            Rows of each class.

        Returns
        -------
        features, labels : ndarray
        """
        return make_blob_features(n_per_class, self.n_classes, self.n_features, seed)

    def probabilities_or_labels(self, repurposer: Any, X: Any, **kwargs: Any) -> np.ndarray:
        """``predict_proba(X)``, or ``predict(X)`` for a head without probabilities.

        Parameters
        ----------
        repurposer : Repurposer
            A fitted repurposer.
        X : array-like
            Its inputs.
        **kwargs
            Passed on (``context=``).

        Returns
        -------
        ndarray
        """
        if self.has_predict_proba:
            return repurposer.predict_proba(X, **kwargs)
        return repurposer.predict(X, **kwargs)

    def fitted_on_features(self, labels_map: Any = None) -> tuple[Any, np.ndarray, np.ndarray]:
        """A repurposer fitted on :meth:`data`, with the data.

        Parameters
        ----------
        labels_map : sequence, optional
            ``labels_map[code]`` replaces each int label (to test strings or offset ints).

        Returns
        -------
        repurposer, X, y
        """
        X, y = self.data()
        if labels_map is not None:
            y = np.asarray(labels_map)[y]
        return self.create_repurposer().fit(X, y), X, y

    # ------------------------------------------------------------ fit / predict
    def test_fit_returns_self_and_predicts(self):
        X, y = self.data()
        repurposer = self.create_repurposer()
        assert repurposer.fit(X, y) is repurposer
        predictions = repurposer.predict(X)
        assert predictions.shape == (len(y),)
        assert np.mean(predictions == y) >= self.min_train_accuracy
        np.testing.assert_array_equal(repurposer.classes_, np.unique(y))

    def test_predict_proba_shape_and_rows(self):
        if not self.has_predict_proba:
            pytest.skip("head has no probabilities")
        repurposer, X, _ = self.fitted_on_features()
        probabilities = repurposer.predict_proba(X)
        assert probabilities.shape == (len(X), self.n_classes)
        assert np.all(probabilities >= 0) and np.all(probabilities <= 1)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)

    def test_predict_uncertainty_scores(self):
        """``predict_uncertainty``: its probabilities are ``predict_proba``'s; entropy, max-probability
        and the epistemic part are consistent per row (0 <= epistemic <= entropy <= log K)."""
        if not self.has_predict_proba or not hasattr(self.create_repurposer(), "predict_uncertainty"):
            pytest.skip("head has no probabilities")
        repurposer, X, _ = self.fitted_on_features()
        scores = repurposer.predict_uncertainty(X)
        np.testing.assert_allclose(scores.probabilities, repurposer.predict_proba(X), atol=1e-12)
        np.testing.assert_allclose(scores.max_probability, scores.probabilities.max(axis=1))
        assert scores.entropy.shape == scores.epistemic.shape == (len(X),)
        assert np.all(scores.entropy >= -1e-12) and np.all(scores.entropy <= np.log(self.n_classes) + 1e-9)
        assert np.all(scores.epistemic >= 0) and np.all(scores.epistemic <= scores.entropy + 1e-12)
        np.testing.assert_allclose(scores.aleatoric, scores.entropy - scores.epistemic)
        np.testing.assert_allclose(
            repurposer.predict_uncertainty_features(X).entropy, scores.entropy, atol=1e-12
        )

    def test_string_labels_round_trip(self):
        names = np.array(["cat", "dog", "emu", "fox", "gnu"])[: self.n_classes]
        repurposer, X, y = self.fitted_on_features(names)
        predictions = repurposer.predict(X)
        assert predictions.dtype.kind == "U"
        assert set(predictions) <= set(names)
        assert np.mean(predictions == y) >= self.min_train_accuracy
        # Xfer spellings return the same
        np.testing.assert_array_equal(repurposer.predict_label(X), predictions)

    def test_offset_integer_labels_round_trip(self):
        offsets = np.arange(self.n_classes) * 10 + 5  # 5, 15, 25: neither from 0 nor contiguous
        repurposer, X, y = self.fitted_on_features(offsets)
        predictions = repurposer.predict(X)
        assert predictions.dtype.kind in "iu"
        assert set(predictions.tolist()) <= set(offsets.tolist())
        assert np.mean(predictions == y) >= self.min_train_accuracy

    def test_predict_is_argmax_of_proba(self):
        if not self.has_predict_proba:
            pytest.skip("head has no probabilities")
        names = np.array(["a", "b", "c", "d", "e"])[: self.n_classes]
        repurposer, X, _ = self.fitted_on_features(names)
        X_new, _ = self.data(seed=1)
        probabilities = repurposer.predict_proba(X_new)
        np.testing.assert_array_equal(
            repurposer.predict(X_new), repurposer.classes_[np.argmax(probabilities, axis=1)]
        )
        np.testing.assert_array_equal(repurposer.predict_probability(X_new), probabilities)

    def test_feature_entry_points_match(self):
        X, y = self.data()
        repurposer = self.create_repurposer().fit_features(X, y)
        other = self.create_repurposer().fit(X, y)
        np.testing.assert_array_equal(repurposer.predict_features(X), other.predict(X))
        if self.has_predict_proba:
            np.testing.assert_allclose(
                repurposer.predict_proba_features(X), other.predict_proba(X), rtol=0, atol=1e-12
            )

    def test_score_is_accuracy(self):
        repurposer, X, y = self.fitted_on_features()
        assert repurposer.score(X, y) == pytest.approx(np.mean(repurposer.predict(X) == y))

    # ------------------------------------------------------------ determinism
    def test_deterministic_with_random_state(self):
        X, y = self.data()
        first = self.probabilities_or_labels(self.create_repurposer().fit(X, y), X)
        second = self.probabilities_or_labels(self.create_repurposer().fit(X, y), X)
        np.testing.assert_array_equal(first, second)

    def test_repeated_prediction_is_identical(self):
        repurposer, X, _ = self.fitted_on_features()
        np.testing.assert_array_equal(
            self.probabilities_or_labels(repurposer, X), self.probabilities_or_labels(repurposer, X)
        )

    # ------------------------------------------------------------ save / load
    def _assert_same_predictions(self, original: Any, loaded: Any, X: Any, **kwargs: Any) -> None:
        assert type(loaded) is type(original)
        np.testing.assert_array_equal(loaded.classes_, original.classes_)
        assert loaded.classes_.dtype == original.classes_.dtype
        np.testing.assert_array_equal(loaded.predict(X, **kwargs), original.predict(X, **kwargs))
        if self.has_predict_proba:
            np.testing.assert_array_equal(
                loaded.predict_proba(X, **kwargs), original.predict_proba(X, **kwargs)
            )

    def test_save_load_on_features(self, tmp_path):
        import xfer

        repurposer, X, _ = self.fitted_on_features(
            np.array(["x", "y", "z", "w", "v"])[: self.n_classes]
        )
        repurposer.save_repurposer("model", str(tmp_path))
        loaded = xfer.load("model", str(tmp_path))
        self._assert_same_predictions(repurposer, loaded, X)
        assert loaded.get_params().keys() == repurposer.get_params().keys()

    def test_save_load_unfitted(self, tmp_path):
        import xfer

        repurposer = self.create_repurposer()
        repurposer.save(tmp_path / "unfitted")
        loaded = xfer.load("unfitted", tmp_path)
        with pytest.raises(NotFittedError):
            loaded.predict(self.data()[0])

    def test_save_load_with_and_without_source_model(self, tmp_path):
        import xfer

        source = make_tiny_source_model(self.n_features)
        X, y = self.data()
        repurposer = self.create_repurposer(source, ["fc1"]).fit(X, y + 7)
        repurposer.save_repurposer("with_source", str(tmp_path))
        assert (tmp_path / "with_source_source-symbol.json").is_file()
        self._assert_same_predictions(repurposer, xfer.load("with_source", str(tmp_path)), X)

        repurposer.save_repurposer("no_source", str(tmp_path), save_source_model=False)
        assert not (tmp_path / "no_source_source-symbol.json").exists()
        loaded = xfer.load("no_source", str(tmp_path))
        with pytest.raises(ValueError, match="source model"):
            loaded.predict(X)
        features = repurposer.get_features_from_source_model(X).features
        np.testing.assert_array_equal(loaded.predict_features(features), repurposer.predict(X))
        with_given_source = xfer.load("no_source", str(tmp_path), source_model=source)
        self._assert_same_predictions(repurposer, with_given_source, X)

    # ------------------------------------------------------------ source model
    def test_fit_through_source_model_array_and_iterator(self):
        from xfer._mxnet import mx

        source = make_tiny_source_model(self.n_features)
        X, y = self.data()
        from_array = self.create_repurposer(source, ["fc1"]).fit(X, y)
        assert from_array.n_meta_features_ == 8
        iterator = mx.io.NDArrayIter(X, y.astype(np.float32), batch_size=7)  # padded last batch
        from_iterator = self.create_repurposer(source, ["fc1"]).repurpose(iterator)
        np.testing.assert_array_equal(from_iterator.classes_, from_array.classes_)
        test_iterator = mx.io.NDArrayIter(X, batch_size=7)  # no labels needed to predict
        np.testing.assert_array_equal(
            from_iterator.predict_label(test_iterator), from_array.predict(X)
        )
        meta = from_array.get_features_from_source_model(X)
        assert meta.features.shape == (len(X), 8) and meta.labels is None

    def test_two_layers_concatenated_in_order(self):
        source = make_tiny_source_model(self.n_features)
        X, y = self.data()
        repurposer = self.create_repurposer(source, ["fc2", "fc1"]).fit(X, y)
        indices = repurposer.feature_indices_per_layer_
        assert [len(i) for i in indices] == [3, 8]  # fc2 has 3 units, fc1 8
        assert indices[1][0] == 3

    def test_feature_layer_names_validated(self):
        source = make_tiny_source_model(self.n_features)
        X, y = self.data()
        with pytest.raises(TypeError, match="must be a list"):
            self.create_repurposer(source, "fc1").fit(X, y)
        with pytest.raises(ValueError, match="empty"):
            self.create_repurposer(source, []).fit(X, y)
        with pytest.raises(LayerNotFoundError, match="fc1"):
            self.create_repurposer(source, ["fc_1"]).fit(X, y)

    # ------------------------------------------------------------ bad inputs
    def test_not_fitted(self):
        X, _ = self.data()
        repurposer = self.create_repurposer()
        with pytest.raises(NotFittedError, match="not fitted"):
            repurposer.predict(X)
        with pytest.raises(NotFittedError):
            repurposer.predict_features(X)

    def test_wrong_feature_width(self):
        repurposer, X, _ = self.fitted_on_features()
        with pytest.raises(ValueError, match="features"):
            repurposer.predict(X[:, :-1])
        with pytest.raises(ValueError, match="features"):
            repurposer.predict_features(X[:, :-1])

    def test_label_count_mismatch(self):
        X, y = self.data()
        with pytest.raises(ValueError, match="inconsistent numbers of samples"):
            self.create_repurposer().fit(X, y[:-1])

    def test_one_class(self):
        X, _ = self.data()
        with pytest.raises(ValueError, match="at least 2 classes"):
            self.create_repurposer().fit(X, np.zeros(len(X), dtype=int))

    def test_missing_labels(self):
        X, _ = self.data()
        with pytest.raises(ValueError, match="requires y"):
            self.create_repurposer().fit(X)

    def test_non_finite_features(self):
        X, y = self.data()
        X = X.copy()
        X[0, 0] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            self.create_repurposer().fit(X, y)

    # ------------------------------------------------------------ context
    def test_context_cpu_accepted(self):
        X, y = self.data()
        repurposer = self.create_repurposer().fit(X, y, context="cpu")
        reference = self.probabilities_or_labels(repurposer, X)
        np.testing.assert_array_equal(
            self.probabilities_or_labels(repurposer, X, context="cpu:0"), reference
        )

    def test_bad_context(self):
        X, y = self.data()
        with pytest.raises(ValueError, match="Unknown context"):
            self.create_repurposer().fit(X, y, context="tpu")
        with pytest.raises(InvalidTypeError):
            self.create_repurposer().fit(X, y, context=3.5)

    def test_gpu_context(self):
        X, y = self.data()
        if not _gpu_available():
            with pytest.raises(DeviceUnavailableError, match="GPU"):
                self.create_repurposer().fit(X, y, context="gpu:0")
            repurposer = self.create_repurposer().fit(X, y)
            with pytest.raises(DeviceUnavailableError):
                repurposer.predict(X, context="gpu:0")
            return
        # On a CUDA machine the head runs there and agrees with the CPU.
        repurposer = self.create_repurposer().fit(X, y, context="gpu:0")
        on_gpu = repurposer.predict(X, context="gpu:0")
        assert np.mean(on_gpu == y) >= self.min_train_accuracy
        if self.uses_torch_device and self.has_predict_proba:
            cpu = repurposer.predict_proba(X, context="cpu")
            np.testing.assert_allclose(repurposer.predict_proba(X, context="gpu:0"), cpu, atol=1e-4)

    # ------------------------------------------------------------ sklearn parameters
    def test_get_set_params_and_clone(self):
        from sklearn.base import clone

        repurposer = self.create_repurposer()
        params = repurposer.get_params()
        assert "source_model" in params and "context_function" in params
        copy = clone(repurposer)
        assert copy.get_params().keys() == params.keys()
        assert copy.set_params(verbose=False) is copy
