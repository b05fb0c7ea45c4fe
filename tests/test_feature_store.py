"""Sharded feature files: same features as in memory, resumable after a kill, parallel, safe."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from xfer.exceptions import (
    DataFileNotFoundError,
    InvalidArgumentError,
    InvalidTypeError,
    LayerNotFoundError,
    SerializationError,
)
from xfer.feature_store import FeatureStore, extract_features
from xfer.model_handler import ModelHandler

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["fc1", "relu2"]


def _wait_for(condition, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.05)


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.is_file() else []


class _Record(torch.nn.Module):
    """Passes its input on; writes which process ran it, on how many torch threads, with which
    thread variables. The calling process waits in its first batch until a started process has run
    one, so both take shards whatever the start-up takes. (Importable: worker processes unpickle it.)"""

    def __init__(self, path: str, parent: int):
        super().__init__()
        self.path, self.parent = path, parent

    def forward(self, x):
        with open(self.path, "a") as handle:
            handle.write(f"{os.getpid()} {torch.get_num_threads()} {os.environ.get('OMP_NUM_THREADS')} "
                         f"{os.environ.get('MXNET_CPU_WORKER_NTHREADS')}\n")
        if os.getpid() == self.parent:
            _wait_for(lambda: any(int(line[0]) != self.parent for line in _lines(Path(self.path))),
                      "a started process to extract")
        return x


class _WaitingForWorkers(torch.utils.data.Dataset):
    """Another dataset's items; the calling process waits in its first item until the started
    processes have ended."""

    def __init__(self, data, parent: int):
        self.data, self.parent = data, parent

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        if os.getpid() == self.parent:
            _wait_for(lambda: not multiprocessing.active_children(), "the started processes to end")
        return self.data[index]


class _FailingInWorkers(torch.utils.data.Dataset):
    """Images that a started process cannot read (the calling process waits until one tried)."""

    def __init__(self, images: np.ndarray, parent: int, marker: str):
        self.images, self.parent, self.marker = images, parent, marker

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if os.getpid() != self.parent:
            Path(self.marker).touch()
            raise ValueError(f"cannot read image {index} in this process")
        _wait_for(Path(self.marker).is_file, "a started process to fail")
        return torch.as_tensor(self.images[index])


@pytest.fixture(scope="module")
def in_memory(digits_source_model, digits_images):
    images, labels = digits_images
    outputs, _ = ModelHandler(digits_source_model).get_layer_output(images, LAYERS)
    return np.concatenate([outputs[name] for name in LAYERS], axis=1)


def test_store_holds_what_get_layer_output_gives(digits_source_model, digits_images, in_memory, tmp_path):
    images, labels = digits_images
    names = np.array([f"digit {d}" for d in labels])
    store = extract_features(digits_source_model, images, LAYERS, tmp_path / "s", labels=names, shard_size=500)
    assert len(store) == len(images) == store.num_examples
    assert store.num_shards == 4 and store.shard_rows[-1] == (1500, 1797)
    assert store.layer_names == LAYERS
    assert [len(i) for i in store.feature_indices_per_layer] == [64, 512]
    features, read_labels = store.to_array()
    np.testing.assert_array_equal(features, in_memory)
    np.testing.assert_array_equal(read_labels, names)
    chunks = list(store.chunks(rows=700))  # crossing shard boundaries
    assert [len(c) for c, _ in chunks] == [700, 700, 397]
    np.testing.assert_array_equal(np.concatenate([c for c, _ in chunks]), in_memory)
    rows = [1796, 3, 3, 1000, 499, 500]
    np.testing.assert_array_equal(store.take(rows), in_memory[rows])
    np.testing.assert_array_equal(FeatureStore(tmp_path / "s", verify=True).rows(450, 1050), in_memory[450:1050])
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files[:4] == ["manifest.json", "shard-00000-labels.npy", "shard-00000.json", "shard-00000.npy"]


def test_chunk_size_follows_the_memory_setting(digits_source_model, digits_images, tmp_path):
    images, _ = digits_images
    extract_features(digits_source_model, images[:300], ["fc1"], tmp_path / "s", shard_size=128)
    store = FeatureStore(tmp_path / "s", chunk_mb=64 * 8 * 50 / 2**20)  # 50 float64 rows of 64
    assert store.chunk_rows() == 50
    assert [len(c) for c, _ in store.chunks()] == [50] * 6
    assert store.labels is None and store.has_labels is False


@pytest.mark.slow
def test_resumes_after_sigkill_without_redoing_finished_shards(digits_source_model, digits_images, in_memory, tmp_path):
    """A process killed while writing a shard leaves a store that refuses to load; the same call
    again extracts only the missing shards and gives the features of an uninterrupted run."""
    images, labels = digits_images
    np.save(tmp_path / "images.npy", images)
    ModelHandler(digits_source_model).save_checkpoint(str(tmp_path / "source"))
    store_dir = tmp_path / "store"
    script = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        import xfer.feature_store as fs
        from xfer.model_handler import ModelHandler

        original = fs.atomic_write_json

        def write_json(path, obj):
            if str(path).endswith("shard-00002.json"):  # its .npy files are written: die now
                os.kill(os.getpid(), signal.SIGKILL)
            original(path, obj)

        fs.atomic_write_json = write_json
        images = np.load({str(tmp_path / "images.npy")!r}, mmap_mode="r")
        source = ModelHandler.load_checkpoint({str(tmp_path / "source")!r})
        fs.extract_features(source, images, {LAYERS!r}, {str(store_dir)!r}, shard_size=400)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert (store_dir / "shard-00002.npy").is_file() and not (store_dir / "shard-00002.json").exists()
    with pytest.raises(SerializationError, match=r"incomplete: 3 of 5 shards are missing \(first: shard-00002\)"):
        FeatureStore(store_dir)
    finished = {name: (store_dir / name).stat().st_mtime_ns for name in ("shard-00000.npy", "shard-00001.npy")}
    (store_dir / ".shard-00003.npy.abc.tmp").write_bytes(b"half a file")  # a temporary file left behind

    images_map = np.load(tmp_path / "images.npy", mmap_mode="r")
    source = ModelHandler.load_checkpoint(str(tmp_path / "source"))
    store = extract_features(source, images_map, LAYERS, store_dir, shard_size=400)
    np.testing.assert_allclose(store.to_array()[0], in_memory, rtol=1e-6, atol=1e-6)
    assert {name: (store_dir / name).stat().st_mtime_ns for name in finished} == finished
    assert not list(store_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_ranks_and_local_processes_extract_disjoint_shards(digits_images, tmp_path):
    """Rank 0 of 2 writes the even shards and times out waiting for rank 1; a call with two local
    processes then writes the rest. The features equal one process's (torch, one thread each)."""
    import torch

    from xfer.context import torch_num_threads
    from xfer.toy_models import torch_digits_cnn

    images, labels = digits_images
    images, labels = images[:900], labels[:900]
    model = torch_digits_cnn(seed=3)
    with torch_num_threads(1):
        expected, _ = ModelHandler(model).get_layer_output(images, ["relu3"])
    store_dir = tmp_path / "store"
    with pytest.raises(TimeoutError, match="3 shards of .* were not written within 0.1 s .*every rank"):
        extract_features(model, images, ["relu3"], store_dir, labels=labels, shard_size=150,
                         rank=0, world_size=2, wait_timeout=0.1)
    assert sorted(p.name for p in store_dir.glob("*.json")) == [
        "manifest.json", "shard-00000.json", "shard-00002.json", "shard-00004.json"
    ]
    store = extract_features(model, images, ["relu3"], store_dir, labels=labels, shard_size=150,
                             num_processes=2, threads_per_process=1)
    features, read_labels = store.to_array()
    np.testing.assert_array_equal(features, expected["relu3"])
    np.testing.assert_array_equal(read_labels, labels)
    assert torch.get_num_threads() >= 1


def test_dataset_items_bring_their_labels(digits_source_model, digits_images, in_memory, tmp_path):
    import torch.utils.data

    images, labels = digits_images
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(images[:300]), torch.as_tensor(labels[:300]))
    store = extract_features(digits_source_model, dataset, LAYERS, tmp_path / "s", shard_size=128)
    np.testing.assert_array_equal(store.labels, labels[:300])
    np.testing.assert_allclose(store.to_array()[0], in_memory[:300], rtol=1e-6, atol=1e-6)


def test_refuses_other_data_and_foreign_directories(digits_source_model, digits_images, tmp_path):
    images, labels = digits_images
    extract_features(digits_source_model, images[:100], ["fc1"], tmp_path / "s", shard_size=64)
    with pytest.raises(InvalidArgumentError, match=r"holds a feature store of other data: extract into a new"):
        extract_features(digits_source_model, images[100:200], ["fc1"], tmp_path / "s", shard_size=64)
    with pytest.raises(InvalidArgumentError, match=r"of other layer_names"):
        extract_features(digits_source_model, images[:100], ["relu2"], tmp_path / "s", shard_size=64)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError, match="is not empty and holds no feature store"):
        extract_features(digits_source_model, images[:10], ["fc1"], tmp_path / "other")


def test_bad_arguments_get_clear_errors(digits_source_model, digits_images, tmp_path):
    from xfer._mxnet import mx

    images, labels = digits_images
    with pytest.raises(InvalidTypeError, match="cannot read a NDArrayIter, which only streams"):
        extract_features(digits_source_model, mx.io.NDArrayIter(images[:10], labels[:10], 5), ["fc1"], tmp_path / "a")
    with pytest.raises(InvalidArgumentError, match="shard_size must be a positive integer, got 0"):
        extract_features(digits_source_model, images, ["fc1"], tmp_path / "a", shard_size=0)
    with pytest.raises(InvalidArgumentError, match="Give both rank and world_size"):
        extract_features(digits_source_model, images, ["fc1"], tmp_path / "a", rank=1)
    with pytest.raises(InvalidArgumentError, match="rank must be in 0..1, got 2"):
        extract_features(digits_source_model, images, ["fc1"], tmp_path / "a", rank=2, world_size=2)
    with pytest.raises(InvalidArgumentError, match="but labels of shape"):
        extract_features(digits_source_model, images, ["fc1"], tmp_path / "a", labels=labels[:5])
    with pytest.raises(LayerNotFoundError, match="fc9"):
        extract_features(digits_source_model, images, ["fc9"], tmp_path / "a")
    with pytest.raises(DataFileNotFoundError, match="No feature store in .* write one with"):
        FeatureStore(tmp_path / "nowhere")


def test_a_damaged_shard_is_named(digits_source_model, digits_images, tmp_path):
    images, _ = digits_images
    extract_features(digits_source_model, images[:200], ["fc1"], tmp_path / "s", shard_size=64)
    shard = tmp_path / "s" / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(SerializationError, match=r"shard-00001.npy is missing or truncated .* delete"):
        FeatureStore(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SerializationError, match="format version 99; .* upgrade xfer"):
        FeatureStore(tmp_path / "s")


@pytest.mark.slow
def test_the_calling_process_and_started_ones_share_the_shards_on_the_given_threads(digits_images, tmp_path):
    """num_processes=2: this process extracts from the start and one started process joins when
    ready; shards go to whoever is free. Both run torch on threads_per_process threads, and the
    started one has the thread variables in its environment (3: neither torch's default nor the
    automatic policy gives 3 on this machine's cores)."""
    images, labels = digits_images
    images, labels = images[:240], labels[:240]
    record = tmp_path / "record.txt"
    model = torch.nn.Sequential(OrderedDict(
        record=_Record(str(record), os.getpid()), flatten=torch.nn.Flatten(), fc=torch.nn.Linear(64, 8),
    ))  # fmt: skip
    torch_threads_before = torch.get_num_threads()
    store = extract_features(model, images, ["fc"], tmp_path / "s", labels=labels, shard_size=40,
                             batch_size=40, num_processes=2, threads_per_process=3)
    lines = _lines(record)
    assert len(lines) == 6  # one batch per shard, each extracted once
    by_process = {int(line[0]) for line in lines}
    assert os.getpid() in by_process and len(by_process) == 2
    assert {line[1] for line in lines} == {"3"}
    assert {tuple(line[2:]) for line in lines if int(line[0]) != os.getpid()} == {("3", "3")}
    assert torch.get_num_threads() == torch_threads_before
    expected, _ = ModelHandler(model[1:]).get_layer_output(images, ["fc"])
    np.testing.assert_allclose(store.to_array()[0], expected["fc"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(store.labels, labels)


@pytest.mark.slow
def test_a_failing_worker_process_stops_the_call_with_its_error(digits_source_model, digits_images, tmp_path):
    """The started process rebuilds the MXNet model, then cannot read its shard: the call raises
    that error, and the store stays incomplete (resumable)."""
    images, _ = digits_images
    data = _FailingInWorkers(images[:200], os.getpid(), str(tmp_path / "tried"))
    with pytest.raises(RuntimeError, match=r"A feature-extraction process failed: ValueError: cannot read "
                                           r"image \d+ in this process"):
        extract_features(digits_source_model, data, ["fc1"], tmp_path / "s", shard_size=50, num_processes=2,
                         threads_per_process=1)
    with pytest.raises(SerializationError, match="incomplete"):  # the worker's shard is missing
        FeatureStore(tmp_path / "s")


def test_a_model_or_data_that_cannot_reach_other_processes_is_refused_before_any_starts(digits_source_model,
                                                                                       digits_images, tmp_path):
    images, _ = digits_images

    class Local(torch.utils.data.Dataset):  # defined in a function: no process can rebuild it
        def __len__(self):
            return 100

        def __getitem__(self, index):
            return torch.as_tensor(images[index])

    with pytest.raises(InvalidTypeError, match=r"The model or the data cannot be sent to other processes \("
                                               r".*Local.*\)\. Worker processes import your main module .* "
                                               r"Or extract with num_processes=1\."):
        extract_features(digits_source_model, Local(), ["fc1"], tmp_path / "s", shard_size=50, num_processes=2)
    assert not list((tmp_path / "s").glob("shard-*"))


@pytest.mark.slow
def test_a_worker_that_cannot_rebuild_the_data_says_why(digits_source_model, digits_images, tmp_path, monkeypatch):
    """Data whose class this process finds but a started process cannot import (here: a module that
    exists only in this process's memory, as a class of a script run without its `__main__` guard
    would be)."""
    import types

    images, _ = digits_images
    module = types.ModuleType("only_in_this_process")
    exec(
        "import torch\n"
        "class Images(torch.utils.data.Dataset):\n"
        "    def __init__(self, images): self.images = images\n"
        "    def __len__(self): return len(self.images)\n"
        "    def __getitem__(self, index): return torch.as_tensor(self.images[index])\n",
        module.__dict__,
    )
    monkeypatch.setitem(sys.modules, module.__name__, module)
    data = _WaitingForWorkers(module.Images(images[:200]), os.getpid())
    with pytest.raises(RuntimeError, match=r"A feature-extraction process failed: RuntimeError: It could not "
                                           r"rebuild the model and the data it was sent \(ModuleNotFoundError: "
                                           r"No module named 'only_in_this_process'\)\. Worker processes"):
        extract_features(digits_source_model, data, ["fc1"], tmp_path / "s", shard_size=50, num_processes=2,
                         threads_per_process=1)
