"""Saved repurposers: strict JSON, no pickle, atomic writes, clear errors for bad files."""

from __future__ import annotations

import builtins
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import xfer
from xfer import LrRepurposer, MetaModelRepurposer, SvmRepurposer, serialization
from xfer.exceptions import ModelFileNotFoundError, SerializationError
from xfer.testing import make_blob_features

FIXTURES = Path(__file__).parent / "repurposers" / "fixtures"


def _strict(text):
    def refuse(name):
        raise ValueError(name)

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def saved(tmp_path):
    X, y = make_blob_features(15, 3, 5)
    repurposer = LrRepurposer(None, None).fit(X, np.array(["a", "b", "c"])[y])
    repurposer.save_repurposer("model", str(tmp_path))
    return repurposer, tmp_path, X


def test_manifest_is_strict_json_with_contract_keys(saved):
    _, directory, _ = saved
    manifest = _strict((directory / "model.json").read_text())
    assert manifest["format"] == "xfer-repurposer"
    assert manifest["format_version"] == serialization.FORMAT_VERSION
    assert manifest["class_key"] == "xfer.LrRepurposer"
    assert manifest["xfer_version"] == xfer.__version__
    assert manifest["classes"] == {"dtype": "str", "values": ["a", "b", "c"]}
    assert manifest["params"]["context_function"] == "cpu:0"
    assert "source_model" not in manifest["params"]
    with np.load(directory / "model.npz", allow_pickle=False) as arrays:
        assert all(arrays[name].dtype != object for name in arrays.files)


def test_load_uses_neither_pickle_nor_eval(saved, monkeypatch):
    repurposer, directory, X = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("load must not call pickle or eval")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(builtins, "eval", forbidden)
    loaded = xfer.load("model", str(directory))
    np.testing.assert_array_equal(loaded.predict_proba(X), repurposer.predict_proba(X))


def test_missing_manifest(tmp_path):
    with pytest.raises(ModelFileNotFoundError, match="manifest file is missing"):
        xfer.load("nothing", str(tmp_path))
    with pytest.raises(FileNotFoundError):  # the built-in type users catch
        xfer.load("nothing", str(tmp_path))


def test_truncated_manifest(saved):
    _, directory, _ = saved
    path = directory / "model.json"
    path.write_text(path.read_text()[:50])
    with pytest.raises(SerializationError, match="not strict JSON"):
        xfer.load("model", str(directory))


def test_non_strict_json_is_refused(saved):
    _, directory, _ = saved
    path = directory / "model.json"
    path.write_text(path.read_text().replace('"c": 1.0', '"c": NaN'))
    with pytest.raises(SerializationError, match="strict JSON"):
        xfer.load("model", str(directory))


def test_foreign_json(tmp_path):
    (tmp_path / "other.json").write_text('{"hello": "world"}')
    with pytest.raises(SerializationError, match="not an xfer repurposer manifest"):
        xfer.load("other", str(tmp_path))


def _edit_manifest(directory, **changes):
    path = directory / "model.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_unknown_format_version(saved):
    _, directory, _ = saved
    _edit_manifest(directory, format_version=99)
    with pytest.raises(SerializationError, match="format version 99.*Upgrade xfer"):
        xfer.load("model", str(directory))


def test_unknown_class_key_is_never_imported(saved):
    _, directory, _ = saved
    _edit_manifest(directory, class_key="os.system")
    with pytest.raises(SerializationError, match="not registered"):
        xfer.load("model", str(directory))


def test_missing_array_file(saved):
    _, directory, _ = saved
    (directory / "model.npz").unlink()
    with pytest.raises(ModelFileNotFoundError, match="array file"):
        xfer.load("model", str(directory))


def test_truncated_array_file(saved):
    _, directory, _ = saved
    path = directory / "model.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SerializationError, match="checksum"):
        xfer.load("model", str(directory))


def test_corrupt_array_file_with_matching_checksum(saved):
    _, directory, _ = saved
    path = directory / "model.npz"
    path.write_bytes(b"not a zip file")
    _edit_manifest(directory, arrays_sha256=serialization.sha256_of(path))
    with pytest.raises(SerializationError, match="corrupt or truncated"):
        xfer.load("model", str(directory))


def test_unexpected_parameter(saved):
    _, directory, _ = saved
    manifest = json.loads((directory / "model.json").read_text())
    manifest["params"]["bogus"] = 1
    (directory / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(SerializationError, match="bogus"):
        xfer.load("model", str(directory))


def test_crash_before_manifest_leaves_nothing_loadable(tmp_path, monkeypatch):
    X, y = make_blob_features()
    repurposer = LrRepurposer(None, None).fit(X, y)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "atomic_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        repurposer.save_repurposer("model", str(tmp_path))
    with pytest.raises(ModelFileNotFoundError):
        xfer.load("model", str(tmp_path))
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_overwrite_crash_does_not_load_mixed_files(saved, monkeypatch):
    repurposer, directory, X = saved
    other = LrRepurposer(None, None, c=0.01).fit(X, repurposer.predict(X)[::-1])
    monkeypatch.setattr(
        serialization, "atomic_write_json", lambda *a, **k: (_ for _ in ()).throw(OSError("crash"))
    )
    with pytest.raises(OSError):
        other.save_repurposer("model", str(directory))
    monkeypatch.undo()
    with pytest.raises(SerializationError, match="does not match its manifest"):
        xfer.load("model", str(directory))


def test_nan_parameter_refused_before_writing(tmp_path):
    with pytest.raises(SerializationError, match="strict JSON"):
        LrRepurposer(None, None, c=float("nan")).save(tmp_path / "nan")
    assert not list(tmp_path.iterdir())


def test_unregistered_subclass_cannot_be_saved(tmp_path):
    class Unregistered(LrRepurposer):
        pass

    X, y = make_blob_features()
    with pytest.raises(SerializationError, match="register_repurposer"):
        Unregistered(None, None).fit(X, y).save(tmp_path / "u")


def test_registry_refuses_a_second_class_under_one_key():
    with pytest.raises(SerializationError, match="already used"):

        @serialization.register_repurposer(key="xfer.LrRepurposer")
        class Impostor(MetaModelRepurposer):
            pass

    assert serialization.registered_repurposers()["xfer.LrRepurposer"] is LrRepurposer


def test_labels_keep_their_type(tmp_path):
    X, y = make_blob_features(10, 2, 3)
    for labels in (y + 5, np.array([True, False])[y], np.array(["no", "yes"])[y], (y + 0.5)):
        if labels.dtype.kind == "f":
            continue  # continuous labels are refused by fit
        repurposer = SvmRepurposer(None, None).fit(X, labels)
        repurposer.save(tmp_path / "m")
        loaded = xfer.load("m", tmp_path)
        assert loaded.classes_.dtype.kind == repurposer.classes_.dtype.kind
        assert type(loaded.predict(X)[0]) is type(repurposer.predict(X)[0])


def test_missing_source_model_file(tmp_path):
    from xfer.testing import make_tiny_source_model

    X, y = make_blob_features()
    repurposer = LrRepurposer(make_tiny_source_model(), ["fc1"]).fit(X, y)
    repurposer.save_repurposer("m", str(tmp_path))
    (tmp_path / "m_source-0000.params").unlink()
    with pytest.raises(ModelFileNotFoundError, match="source model file"):
        xfer.load("m", str(tmp_path))
    # Passing the source model explicitly does not need the files.
    loaded = xfer.load("m", str(tmp_path), source_model=make_tiny_source_model())
    np.testing.assert_array_equal(loaded.predict(X), repurposer.predict(X))


@pytest.mark.parametrize("name", ["lr_strings", "svm_rbf_proba_offset_ints"])
def test_format_v1_fixtures_keep_loading(name):
    """Files written by format version 1 load and predict what they predicted when written."""
    directory = FIXTURES / "v1"
    loaded = xfer.load(name, str(directory))
    with np.load(directory / f"{name}_expected.npz", allow_pickle=False) as expected:
        np.testing.assert_array_equal(loaded.predict(expected["X"]), expected["labels"])
        np.testing.assert_allclose(
            loaded.predict_proba(expected["X"]), expected["proba"], rtol=0, atol=1e-12
        )
