"""Repurposers saved by Xfer 1.1.0 itself (``fixtures/xfer_1_1_0``, written by
``fixtures/make_xfer_1_1_0_fixtures.py`` in a separate Xfer environment) load, convert to this
package's format, and predict the labels Xfer predicted on the stored test images."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import xfer
from xfer.exceptions import ModelFileNotFoundError, SerializationError
from xfer.xfer1 import ConvertedBnnRepurposer, XferHead, convert_xfer1, is_xfer1_file, load_xfer1

FIXTURES = Path(__file__).parent / "fixtures" / "xfer_1_1_0"
EXACT_KINDS = ["lr", "svm", "gp", "gp_sparse", "fine_tune", "random_freeze"]


@pytest.fixture(scope="module")
def xfer_predictions():
    with np.load(FIXTURES / "predictions.npz", allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


@pytest.mark.parametrize("kind", EXACT_KINDS)
def test_xfer_load_predicts_what_xfer_predicted(kind, xfer_predictions):
    assert is_xfer1_file(kind, FIXTURES)
    repurposer = xfer.load(kind, str(FIXTURES))
    images = xfer_predictions["test_images"]
    np.testing.assert_array_equal(repurposer.predict_label(images), xfer_predictions[f"{kind}_labels"])
    np.testing.assert_allclose(
        repurposer.predict_probability(images), xfer_predictions[f"{kind}_probabilities"], atol=1e-5
    )


@pytest.mark.parametrize("kind", EXACT_KINDS)
def test_converted_files_are_this_packages_format_and_predict_the_same(kind, xfer_predictions, tmp_path):
    convert_xfer1(kind, "converted", FIXTURES, tmp_path)
    manifest = json.loads((tmp_path / "converted.json").read_text())
    assert manifest["format"] and not is_xfer1_file("converted", tmp_path)
    loaded = xfer.load("converted", tmp_path)  # with the source model saved beside it
    images = xfer_predictions["test_images"]
    np.testing.assert_array_equal(loaded.predict_label(images), xfer_predictions[f"{kind}_labels"])
    np.testing.assert_allclose(
        loaded.predict_probability(images), xfer_predictions[f"{kind}_probabilities"], atol=1e-5
    )


def test_bnn_needs_an_explicit_opt_in_to_unpickle(tmp_path):
    with pytest.raises(SerializationError, match=r"pickled MXNet objects.*allow_pickle=True"):
        xfer.load("bnn", FIXTURES)
    with pytest.raises(SerializationError, match="convert_xfer1\\('bnn', '<new name>'"):
        load_xfer1("bnn", FIXTURES)
    assert not list(tmp_path.iterdir())


def test_converted_bnn_predicts_labels_xfer_predicts(xfer_predictions, tmp_path):
    converted = convert_xfer1("bnn", "bnn_converted", FIXTURES, tmp_path, allow_pickle=True)
    assert isinstance(converted, ConvertedBnnRepurposer)
    loaded = xfer.load("bnn_converted", tmp_path)
    images = xfer_predictions["test_images"]
    labels = loaded.predict_label(images)
    np.testing.assert_array_equal(labels, loaded.predict_label(images))  # deterministic
    # Xfer's BNN labels are random draws (its own runs agree on 82-90% of these images): the
    # converted label must be one Xfer gave, and the probabilities within Monte Carlo error of
    # Xfer's 500-sample estimate (standard deviation <= 0.023).
    runs = np.stack([xfer_predictions["bnn_labels"]] + [xfer_predictions[f"bnn_labels_run{i}"] for i in range(5)])
    assert all(labels[i] in runs[:, i] for i in range(len(labels)))
    np.testing.assert_allclose(loaded.predict_probability(images), xfer_predictions["bnn_probabilities"], atol=0.1)
    with np.load(tmp_path / "bnn_converted.npz", allow_pickle=False) as arrays:  # no pickle left
        assert len(arrays.files) > 0


def test_a_pickle_naming_other_code_is_refused_and_not_run(tmp_path):
    for name in ("bnn.json", "bnn_posterior.json", "bnn_source-symbol.json", "bnn_source-0000.params"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buffer = io.BytesIO()
    np.save(buffer, np.array([Payload(), Payload()], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "bnn_posterior_params.npz", "w") as archive:
        archive.writestr("mean.npy", buffer.getvalue())
        archive.writestr("rho.npy", buffer.getvalue())
    with pytest.raises(SerializationError, match=r"names (posix|os)\.system"):
        load_xfer1("bnn", tmp_path, allow_pickle=True)
    assert not marker.exists()


def test_refitting_a_converted_model_trains_this_packages_head(xfer_predictions):
    repurposer = load_xfer1("svm", FIXTURES)
    assert isinstance(repurposer.target_model_, XferHead)
    images, labels = xfer_predictions["test_images"], xfer_predictions["test_labels"]
    repurposer.fit(images, labels)
    assert not isinstance(repurposer.target_model_, XferHead)
    assert repurposer.score(images, labels) > 0.5


def test_without_the_source_model_features_still_predict(xfer_predictions, tmp_path):
    for name in ("gp.json",):
        shutil.copy(FIXTURES / name, tmp_path / name)
    repurposer = xfer.load("gp", tmp_path)
    assert repurposer.source_model is None
    source = xfer.load("gp", FIXTURES)
    features = source.get_features_from_source_model(xfer_predictions["test_images"]).features
    np.testing.assert_array_equal(repurposer.predict_features(features), xfer_predictions["gp_labels"])
    with_source = xfer.load("gp", tmp_path, source_model=source.source_model)
    np.testing.assert_array_equal(
        with_source.predict_label(xfer_predictions["test_images"]), xfer_predictions["gp_labels"]
    )


def test_damaged_and_incomplete_files_say_what_is_wrong(tmp_path):
    content = json.loads((FIXTURES / "lr.json").read_text())
    del content["target_model"]["model"]["attributes"]["coef_"]
    (tmp_path / "lr.json").write_text(json.dumps(content))
    with pytest.raises(SerializationError, match=r"lr.json \(saved by Xfer 1.1.0's LrRepurposer\).*'target_model.model.attributes.coef_' is missing"):
        xfer.load("lr", tmp_path)
    content = json.loads((FIXTURES / "svm.json").read_text())
    content["target_model"]["model"]["attributes"]["support_vectors_"][0] = "object"
    (tmp_path / "svm.json").write_text(json.dumps(content))
    with pytest.raises(SerializationError, match="unsupported array type 'object'"):
        xfer.load("svm", tmp_path)
    shutil.copy(FIXTURES / "bnn.json", tmp_path / "bnn.json")
    with pytest.raises(ModelFileNotFoundError, match="bnn_posterior.json of the Xfer 1.1.0 repurposer"):
        load_xfer1("bnn", tmp_path, allow_pickle=True)
    with pytest.raises(SerializationError, match="not a repurposer file written by Xfer 1.1.0"):
        (tmp_path / "other.json").write_text("{}")
        load_xfer1("other", tmp_path)


def test_pickle_module_is_not_used_for_meta_model_kinds(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    for kind in EXACT_KINDS:
        xfer.load(kind, FIXTURES)
