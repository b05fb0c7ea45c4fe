"""Saved repurposers: strict JSON, no pickle, atomic writes, clear errors for bad files."""

from __future__ import annotations

import builtins
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import reliability_support

import xfer
from xfer import LrRepurposer, MetaModelRepurposer, SvmRepurposer, serialization
from xfer.exceptions import ModelFileNotFoundError, ModelSaveError, SerializationError
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
    assert '"c": 1.0' in path.read_text()
    path.write_text(path.read_text().replace('"c": 1.0', '"c": NaN'))
    with pytest.raises(SerializationError, match="strict JSON"):
        xfer.load("model", str(directory))


def test_foreign_json(tmp_path):
    (tmp_path / "other.json").write_text('{"hello": "world"}')
    with pytest.raises(SerializationError, match="not an xfer repurposer manifest"):
        xfer.load("other", str(tmp_path))


def _edit_manifest(directory, name="model", resign=True, **changes):
    """Change keys of a saved manifest; with ``resign``, update its own checksum so that the
    checks behind it are reached."""
    path = directory / f"{name}.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    if resign:
        manifest["manifest_sha256"] = serialization.manifest_digest(manifest)
    path.write_text(json.dumps(manifest))
    return manifest


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
    params = json.loads((directory / "model.json").read_text())["params"]
    _edit_manifest(directory, params={**params, "bogus": 1})
    with pytest.raises(SerializationError, match="bogus"):
        xfer.load("model", str(directory))


def test_crash_before_manifest_leaves_nothing_loadable(tmp_path, monkeypatch):
    X, y = make_blob_features()
    repurposer = LrRepurposer(None, None).fit(X, y)

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(serialization, "write_manifest", crash)
    with pytest.raises(ModelSaveError, match="disk is full.*Nothing was changed"):
        repurposer.save_repurposer("model", str(tmp_path))
    with pytest.raises(ModelFileNotFoundError):
        xfer.load("model", str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no temporary files left behind


def test_failed_overwrite_keeps_the_old_model(saved, monkeypatch):
    repurposer, directory, X = saved
    other = LrRepurposer(None, None, c=0.01).fit(X, repurposer.predict(X)[::-1])
    monkeypatch.setattr(
        serialization, "write_manifest", lambda *a, **k: (_ for _ in ()).throw(OSError("crash"))
    )
    with pytest.raises(OSError):
        other.save_repurposer("model", str(directory))
    monkeypatch.undo()
    np.testing.assert_array_equal(
        xfer.load("model", str(directory)).predict_proba(X), repurposer.predict_proba(X)
    )
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.npz"]


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


@pytest.mark.parametrize(
    ("version", "name"),
    [
        ("v1", "lr_strings"),
        ("v1", "svm_rbf_proba_offset_ints"),
        ("v2", "lr_source_strings"),
        ("v2", "gp_offset_ints"),
    ],
)
def test_format_fixtures_keep_loading(version, name):
    """Files written by each format version load and predict what they predicted when written
    (fixtures/v2/make_fixtures.py wrote the version 2 ones)."""
    directory = FIXTURES / version
    loaded = xfer.load(name, str(directory))
    with np.load(directory / f"{name}_expected.npz", allow_pickle=False) as expected:
        np.testing.assert_array_equal(loaded.predict(expected["X"]), expected["labels"])
        np.testing.assert_allclose(
            loaded.predict_proba(expected["X"]), expected["proba"], rtol=0, atol=1e-7
        )


# ------------------------------------------------------------------------------ manifest checks
def test_manifest_checksum_detects_an_edit(saved):
    """Format 2 manifests carry their own checksum: a changed value is refused."""
    _, directory, _ = saved
    path = directory / "model.json"
    path.write_text(path.read_text().replace('"c": 1.0', '"c": 2.0'))
    with pytest.raises(SerializationError, match="altered after it was written.*manifest_sha256"):
        xfer.load("model", str(directory))


def test_repeated_keys_are_refused(saved):
    _, directory, _ = saved
    path = directory / "model.json"
    path.write_text(path.read_text().replace('"c": 1.0', '"c": 1.0, "c": 5.0'))
    with pytest.raises(SerializationError, match="key 'c' appears twice"):
        xfer.load("model", str(directory))


def test_deeply_nested_manifest_is_refused(tmp_path):
    depth = 200_000
    (tmp_path / "deep.json").write_text('{"format": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(SerializationError, match="nest deeper than 64 levels"):
        xfer.load("deep", str(tmp_path))


def test_oversized_manifest_is_refused_before_reading(saved, monkeypatch):
    _, directory, _ = saved
    monkeypatch.setattr(serialization, "MAX_JSON_BYTES", 100)
    with pytest.raises(SerializationError, match="larger than any file xfer writes"):
        xfer.load("model", str(directory))


def test_params_repeating_source_model_are_refused(saved):
    _, directory, _ = saved
    params = json.loads((directory / "model.json").read_text())["params"]
    _edit_manifest(directory, params={**params, "source_model": "other"})
    with pytest.raises(SerializationError, match=r"'params' holds \['source_model'\]"):
        xfer.load("model", str(directory))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("class_key", 5, "class_key' must be a JSON str"),
        ("params", [], "'params' must be a JSON object"),
        ("arrays_sha256", None, "arrays_sha256' must be a JSON str"),
        ("fitted", "yes", "'fitted' must be true or false"),
        ("source_model", "here", "'source_model' must be an object or null"),
        ("format_version", True, "format version True"),
        ("classes", {"dtype": "<i8", "values": [0, 1.5, 2]}, "integer classes must be JSON integers"),
        ("classes", {"dtype": "<i8", "values": [0, 2**70]}, "cannot read the label classes"),
        ("classes", {"dtype": "str", "values": ["a", 1]}, "string classes must be JSON strings"),
        ("classes", {"dtype": "object", "values": ["a", "b"]}, "cannot read the label classes"),
        ("classes", {"dtype": "str", "values": ["b", "a", "c"]}, "not distinct and sorted"),
        ("classes", {"dtype": "str", "values": ["a", "a", "c"]}, "not distinct and sorted"),
        ("classes", {"dtype": "str", "values": ["a"]}, "at least 2 label classes"),
        ("state", [], "'state' must be a JSON object"),
    ],
)
def test_manifest_values_of_the_wrong_kind(saved, key, value, message):
    _, directory, _ = saved
    _edit_manifest(directory, **{key: value})
    with pytest.raises(SerializationError, match=message):
        xfer.load("model", str(directory))


def test_manifest_lacking_a_key(saved):
    _, directory, _ = saved
    manifest = json.loads((directory / "model.json").read_text())
    del manifest["arrays_sha256"]
    manifest["manifest_sha256"] = serialization.manifest_digest(manifest)
    (directory / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(SerializationError, match="lacks the required key 'arrays_sha256'"):
        xfer.load("model", str(directory))


# ------------------------------------------------------------------------------ state checks
def _rewrite_arrays(directory, change):
    """Change the saved arrays and record their new checksum (a consistent but wrong file)."""
    path = directory / "model.npz"
    arrays = serialization.read_npz(path)
    change(arrays)
    path.write_bytes(serialization.arrays_to_npz_bytes(arrays))
    _edit_manifest(directory, arrays_sha256=serialization.sha256_of(path))


def test_classes_disagreeing_with_the_head_are_refused_at_load(saved):
    _, directory, _ = saved
    _edit_manifest(directory, classes={"dtype": "str", "values": ["a", "b", "c", "d"]})
    with pytest.raises(SerializationError, match="does not predict 4 classes from 5 features"):
        xfer.load("model", str(directory))


def test_array_shapes_disagreeing_are_refused_at_load(saved):
    _, directory, _ = saved
    arrays = serialization.read_npz(directory / "model.npz")
    head = next(name for name in arrays if arrays[name].ndim == 2)

    def shrink(arrays):
        arrays[head] = arrays[head][:, :-1]

    _rewrite_arrays(directory, shrink)
    with pytest.raises(SerializationError, match="saved state does not match LrRepurposer"):
        xfer.load("model", str(directory))


def test_feature_indices_out_of_range_are_refused_at_load(saved):
    _, directory, _ = saved

    def widen(arrays):
        arrays["meta.feature_indices.0"] = np.arange(9)

    _rewrite_arrays(directory, widen)
    with pytest.raises(SerializationError, match="do not index 5 feature columns"):
        xfer.load("model", str(directory))


def test_feature_widths_disagreeing_are_refused_at_load(saved):
    _, directory, _ = saved
    state = json.loads((directory / "model.json").read_text())["state"]
    _edit_manifest(directory, state={**state, "n_features_in": 7})
    with pytest.raises(SerializationError, match="n_features_in .7. differs from n_meta_features"):
        xfer.load("model", str(directory))


def test_missing_array_in_the_file(saved):
    _, directory, _ = saved
    _rewrite_arrays(directory, lambda arrays: arrays.pop("meta.feature_indices.0"))
    with pytest.raises(SerializationError, match="saved state does not match.*KeyError"):
        xfer.load("model", str(directory))


# ------------------------------------------------------------------------------ every checksum
@pytest.fixture
def saved_with_source(tmp_path):
    from xfer.testing import make_tiny_source_model

    X, y = make_blob_features()
    repurposer = LrRepurposer(make_tiny_source_model(), ["fc1"]).fit(X, y)
    repurposer.save(tmp_path / "m")
    return repurposer, tmp_path, X


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("m.json", "manifest .* was altered after it was written"),
        ("m.npz", "array file .*m.npz does not match its manifest"),
        ("m_source-symbol.json", "source model file .*m_source-symbol.json does not match"),
        ("m_source-0000.params", "source model file .*m_source-0000.params does not match"),
    ],
)
def test_each_checksum_catches_a_change_of_its_own_file(saved_with_source, name, message):
    """Flip one byte in the middle of each file of a saved model: its checksum catches it."""
    _, directory, _ = saved_with_source
    path = directory / name
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    while not chr(data[middle]).isdigit():  # a digit stays valid JSON in the manifest
        middle += 1
    data[middle] = ord("7") if data[middle] != ord("7") else ord("3")
    path.write_bytes(bytes(data))
    with pytest.raises(SerializationError, match=message):
        xfer.load("m", str(directory))


def test_files_swapped_between_two_models_are_refused(tmp_path):
    from xfer.testing import make_tiny_source_model

    X, y = make_blob_features()
    first = LrRepurposer(make_tiny_source_model(seed=0), ["fc1"]).fit(X, y)
    second = LrRepurposer(make_tiny_source_model(seed=1), ["fc1"]).fit(X, y)
    for kind in (".npz", "_source-0000.params", ".json"):  # (the two graphs are the same)
        first.save(tmp_path / "a")
        second.save(tmp_path / "b")
        assert (tmp_path / f"b{kind}").read_bytes() != (tmp_path / f"a{kind}").read_bytes()
        (tmp_path / f"b{kind}").write_bytes((tmp_path / f"a{kind}").read_bytes())
        with pytest.raises(SerializationError, match="does not match its manifest"):
            xfer.load("b", str(tmp_path))
    # A model renamed as a whole still loads: files are found by name, bound by checksums.
    first.save(tmp_path / "a")
    for kind in (".json", ".npz", "_source-0000.params", "_source-symbol.json"):
        (tmp_path / f"a{kind}").rename(tmp_path / f"c{kind}")
    np.testing.assert_array_equal(xfer.load("c", str(tmp_path)).predict(X), first.predict(X))


def test_source_model_entry_naming_other_files_is_refused(saved_with_source):
    _, directory, _ = saved_with_source
    manifest = json.loads((directory / "m.json").read_text())
    manifest["source_model"]["files"] = {}
    _edit_manifest(directory, name="m", source_model=manifest["source_model"])
    with pytest.raises(SerializationError, match="lists the files \\[\\], not those of a saved source"):
        xfer.load("m", str(directory))


def test_symlinked_files(saved_with_source, tmp_path):
    repurposer, directory, X = saved_with_source
    other = LrRepurposer(None, None).fit(X, repurposer.predict(X))
    other.save(directory / "other")
    (directory / "m.npz").unlink()
    (directory / "m.npz").symlink_to(directory / "other.npz")
    with pytest.raises(SerializationError, match="m.npz does not match its manifest"):
        xfer.load("m", str(directory))
    (directory / "loop.json").symlink_to(directory / "loop.json")
    with pytest.raises(ModelFileNotFoundError, match="manifest file is missing"):
        xfer.load("loop", str(directory))
    (directory / "dev.json").symlink_to("/dev/zero")
    with pytest.raises(ModelFileNotFoundError, match="manifest file is missing"):
        xfer.load("dev", str(directory))  # a device is never read (it would never end)


# ------------------------------------------------------------------------------ where to save
def test_saving_to_a_folder_is_refused(saved, tmp_path):
    repurposer, _, _ = saved
    (tmp_path / "folder").mkdir()
    for target in (tmp_path / "folder", f"{tmp_path / 'folder'}/", str(tmp_path / "new") + "/"):
        with pytest.raises(ModelSaveError, match="path names a folder.*give a path prefix"):
            repurposer.save(target)
    with pytest.raises(ModelSaveError, match="names a folder"):
        repurposer.save_repurposer("folder", str(tmp_path))
    with pytest.raises(IsADirectoryError.__mro__[1]):  # an OSError, as users catch it
        repurposer.save_repurposer(".", str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "model.json", "model.npz"]


def test_saving_over_a_folder_named_like_a_file_is_refused(saved, tmp_path):
    repurposer, _, _ = saved
    (tmp_path / "m.npz").mkdir()
    with pytest.raises(ModelSaveError, match="m.npz.*a folder stands where a file of the model"):
        repurposer.save(tmp_path / "m")
    assert not (tmp_path / "m.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_saving_under_a_file_is_refused(saved, tmp_path):
    repurposer, _, _ = saved
    (tmp_path / "plain").write_text("not a folder")
    with pytest.raises(ModelSaveError, match="a part of the path is a file, not a folder"):
        repurposer.save(tmp_path / "plain" / "m")
    with pytest.raises(ModelSaveError, match="a part of the path is a file"):
        repurposer.save(tmp_path / "plain" / "deeper" / "m")


def test_saving_into_a_read_only_folder_is_refused(saved, tmp_path, monkeypatch):
    repurposer, directory, X = saved
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: then the refusal is simulated below
        readonly.chmod(0o555)
        try:
            with pytest.raises(ModelSaveError, match="not writable by this user") as raised:
                repurposer.save(readonly / "m")
            assert isinstance(raised.value, PermissionError.__mro__[1])
        finally:
            readonly.chmod(0o755)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(directory))

    monkeypatch.setattr(serialization.tempfile, "mkstemp", refuse)
    with pytest.raises(ModelSaveError, match="Permission denied.*not writable.*still whole") as raised:
        LrRepurposer(None, None).fit(X, np.arange(len(X)) % 2).save(directory / "model")
    assert raised.value.errno == 13
    monkeypatch.undo()
    np.testing.assert_array_equal(xfer.load("model", directory).predict(X), repurposer.predict(X))


def test_save_path_of_the_wrong_type(saved):
    repurposer, _, _ = saved
    for bad in (None, 3, b"bytes", ""):
        with pytest.raises(TypeError, match="save path must be"):
            repurposer.save(bad)
    with pytest.raises(ValueError, match="NUL"):
        repurposer.save("a\x00b")


# ------------------------------------------------------------------------------ leftovers
def test_stray_temporary_files_are_ignored_then_removed(saved):
    repurposer, directory, X = saved
    strays = [".model.npz.k2j4h5g6.xfer-tmp", ".model.json.abcdefgh.tmp"]
    for name in strays:
        (directory / name).write_bytes(b"half a file")
    (directory / ".notes.txt.abcdefgh.tmp").write_text("not ours")  # left alone
    np.testing.assert_array_equal(xfer.load("model", directory).predict(X), repurposer.predict(X))
    repurposer.save(directory / "model")
    names = sorted(p.name for p in directory.iterdir())
    assert names == [".notes.txt.abcdefgh.tmp", "model.json", "model.npz"]


def test_damaged_pending_record_is_reported(saved):
    _, directory, _ = saved
    (directory / serialization.PENDING_RECORD).write_text('{"format": "xfer-pending-save"}')
    with pytest.raises(SerializationError, match="record of an interrupted save, is damaged"):
        xfer.load("model", directory)
    (directory / serialization.PENDING_RECORD).write_text(
        json.dumps(
            {
                "format": "xfer-pending-save",
                "files": [{"name": "model.npz", "temporary": "../../etc/passwd", "sha256": "0"}],
            }
        )
    )
    with pytest.raises(SerializationError, match="is damaged"):
        xfer.load("model", directory)


def test_a_failed_handler_checkpoint_keeps_the_old_pair(tmp_path, monkeypatch):
    from xfer.model_handler import MXNetModelHandler
    from xfer.testing import make_tiny_source_model

    old = MXNetModelHandler(make_tiny_source_model(seed=0))
    new = MXNetModelHandler(make_tiny_source_model(seed=1))
    old.save_checkpoint(str(tmp_path / "net"))
    monkeypatch.setattr(new, "save_symbol", lambda prefix: 1 / 0)  # the second file fails
    with pytest.raises(ZeroDivisionError):
        new.save_checkpoint(str(tmp_path / "net"))
    loaded = MXNetModelHandler.load_checkpoint(str(tmp_path / "net"))
    np.testing.assert_array_equal(
        loaded.arg_params["fc1_weight"].asnumpy(), old.arg_params["fc1_weight"].asnumpy()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net-0000.params", "net-symbol.json"]


def test_array_file_inflating_far_beyond_its_size_is_refused(saved):
    """A compressed archive (xfer writes none) is refused before it is inflated."""
    import io

    _, directory, _ = saved
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{"head.big": np.zeros(5_000_000)})  # 40 MB in ~40 kB
    (directory / "model.npz").write_bytes(buffer.getvalue())
    _edit_manifest(directory, arrays_sha256=serialization.sha256_of(directory / "model.npz"))
    with pytest.raises(SerializationError, match="inflate to 40000.* bytes from"):
        xfer.load("model", str(directory))


# ------------------------------------------------------------------------------ fine-tuners
@pytest.fixture(params=["mxnet", "torch"])
def fitted_fine_tuner(request):
    repurposer = reliability_support.fitted_tiny_fine_tuner(request.param)
    return request.param, repurposer, reliability_support.BLOBS[0]


def _load_fine_tuner(backend, name, directory):
    return xfer.load(name, str(directory), source_model=reliability_support.load_source(backend))


NETWORK_FILES = {"mxnet": ["m-symbol.json", "m-0000.params"], "torch": ["m-target.json", "m-target.safetensors"]}


def test_each_checksum_of_a_fine_tuner_catches_a_change_of_its_own_file(fitted_fine_tuner, tmp_path):
    backend, repurposer, X = fitted_fine_tuner
    repurposer.save(tmp_path / "m")
    np.testing.assert_array_equal(
        _load_fine_tuner(backend, "m", tmp_path).predict_proba(X), repurposer.predict_proba(X)
    )
    for name in NETWORK_FILES[backend] + ["m.json"]:
        repurposer.save(tmp_path / "m")
        path = tmp_path / name
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        while not chr(data[middle]).isdigit():  # a digit keeps JSON files valid JSON
            middle += 1
        data[middle] = ord("7") if data[middle] != ord("7") else ord("3")
        path.write_bytes(bytes(data))
        message = "altered after it was written" if name == "m.json" else f"fine-tuned network file .*{name} does not match"
        with pytest.raises(SerializationError, match=message):
            _load_fine_tuner(backend, "m", tmp_path)


def test_fine_tuner_network_files_are_bound_by_role(fitted_fine_tuner, tmp_path):
    """A fine-tuner renamed as a whole loads; a manifest listing other network files does not."""
    backend, repurposer, X = fitted_fine_tuner
    repurposer.save(tmp_path / "m")
    for path in list(tmp_path.iterdir()):
        path.rename(tmp_path / path.name.replace("m", "renamed", 1))
    np.testing.assert_array_equal(
        _load_fine_tuner(backend, "renamed", tmp_path).predict_proba(X), repurposer.predict_proba(X)
    )
    repurposer.save(tmp_path / "m")
    state = json.loads((tmp_path / "m.json").read_text())["state"]
    first = sorted(state["target_files"])[0]
    _edit_manifest(tmp_path, name="m", state={**state, "target_files": {first: state["target_files"][first]}})
    with pytest.raises(SerializationError, match="lists the network files"):
        _load_fine_tuner(backend, "m", tmp_path)


# ------------------------------------------------------------------------------ training checkpoints
@pytest.fixture(scope="module")
def interrupted_fit(tmp_path_factory):
    """An MXNet fine-tuning fit stopped after its first of two epochs, with its checkpoint."""
    directory = tmp_path_factory.mktemp("checkpoint")
    X, y = make_blob_features(8, 3, 6)

    class Stop(Exception):
        pass

    repurposer = reliability_support.tiny_fine_tuner(
        "mxnet", num_epochs=2, checkpoint_dir=str(directory)
    )

    def stop(epoch):
        raise Stop

    repurposer._epoch_end_hook = stop
    with pytest.raises(Stop):
        repurposer.fit(X, y)
    return directory, X, y


@pytest.fixture
def checkpoint_copy(interrupted_fit, tmp_path):
    import shutil

    directory, X, y = interrupted_fit
    copy = tmp_path / "checkpoint"
    shutil.copytree(directory, copy)
    return copy, X, y


def _resume(directory, X, y):
    return reliability_support.tiny_fine_tuner(
        "mxnet", num_epochs=2, checkpoint_dir=str(directory)
    ).fit(X, y, resume=True)


def _edit_checkpoint(directory, change):
    path = directory / "checkpoint.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_training_checkpoint_resumes(checkpoint_copy):
    resumed = _resume(*checkpoint_copy)
    assert len(resumed.history_) == 2


def test_training_checkpoint_file_checksum(checkpoint_copy):
    directory, X, y = checkpoint_copy
    for kind in ("params", "optimizer"):
        path = next(directory.glob(f"{kind}-*.npz"))
        original = path.read_bytes()
        path.write_bytes(original[:-10] + b"0123456789")
        with pytest.raises(SerializationError, match=f"checkpoint file .*{path.name} does not match"):
            _resume(directory, X, y)
        path.write_bytes(original)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("files"), "lacks the key 'files'"),
        (lambda m: m.pop("history"), "lacks the key 'history'"),
        (lambda m: m.update(epochs_done="1"), "'epochs_done' has the wrong kind of value"),
        (lambda m: m.update(wait=-1), "'wait' is negative"),
        (lambda m: m.update(files={"optimizer": m["files"]["optimizer"]}), "a checkpoint has 'params'"),
        (lambda m: m["files"]["params"].update(name="../../params.npz"), "plain file name"),
        (lambda m: m["history"].update(loss=[0.5, 0.4, 0.3]), "history or best parameters cannot be read"),
    ],
)
def test_training_checkpoint_manifest_checks(checkpoint_copy, change, message):
    directory, X, y = checkpoint_copy
    _edit_checkpoint(directory, change)
    with pytest.raises(SerializationError, match=message):
        _resume(directory, X, y)


def test_training_checkpoint_hostile_json(checkpoint_copy):
    directory, X, y = checkpoint_copy
    path = directory / "checkpoint.json"
    text = path.read_text()
    path.write_text(text.replace('"seed":', '"seed": 1, "seed":', 1))
    with pytest.raises(SerializationError, match="key 'seed' appears twice"):
        _resume(directory, X, y)
    path.write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(SerializationError, match="nest deeper than 64"):
        _resume(directory, X, y)


def test_training_checkpoint_whose_arrays_do_not_fit_the_network(checkpoint_copy):
    """Arrays of other shapes, recorded with matching checksums: refused before training."""
    directory, X, y = checkpoint_copy
    path = next(directory.glob("params-*.npz"))
    arrays = serialization.read_npz(path)
    arrays = {name: np.zeros(value.shape + (2,), value.dtype) for name, value in arrays.items()}
    path.write_bytes(serialization.arrays_to_npz_bytes(arrays))
    _edit_checkpoint(
        directory, lambda m: m["files"]["params"].update(sha256=serialization.sha256_of(path))
    )
    with pytest.raises(SerializationError, match="does not fit the network being trained"):
        _resume(directory, X, y)
