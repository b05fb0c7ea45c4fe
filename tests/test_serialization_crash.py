"""Killed saves: a process killed (SIGKILL) at ANY filesystem step of a save, an overwrite
included, leaves exactly one whole model under the name, the old or the new one.

Each test forks a child that saves with :data:`xfer.serialization._step_hook` set to kill itself
after its k-th filesystem step (temporary file written, pending record in place, a file moved,
record removed...), for every k of the save. The parent then loads the name and checks that it
predicts exactly what the old or the new model predicts, and that the next save cleans up.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np
import pytest
import reliability_support

import xfer
from xfer import LrRepurposer, serialization
from xfer.exceptions import ModelFileNotFoundError
from xfer.testing import make_blob_features, make_tiny_source_model

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    """A killed process's writes survive in the page cache: fsync (which guards against power
    cuts) changes nothing these tests can see, and skipping it keeps them fast."""
    monkeypatch.setattr(os, "fsync", lambda descriptor: None)


def _in_child(action, kill_at: int | None = None) -> tuple[list[str], bool]:
    """Run ``action`` in a forked child; with ``kill_at``, the child SIGKILLs itself after its
    ``kill_at``-th filesystem step. Returns (the steps taken, whether it was killed)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        steps = 0

        def hook(description: str) -> None:
            nonlocal steps
            steps += 1
            os.write(write_end, description.encode() + b"\n")
            if steps == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        serialization._step_hook = hook
        code = 0
        try:
            action()
        except BaseException:  # pragma: no cover - shows up as a failed exit code
            code = 1
        os._exit(code)
    os.close(write_end)
    taken = b""
    while chunk := os.read(read_end, 4096):
        taken += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert killed or os.WEXITSTATUS(status) == 0, "the save failed in the child"
    return taken.decode().splitlines(), killed


def _leftovers(directory) -> list[str]:
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.name.endswith(serialization.TEMP_SUFFIX) or p.name == serialization.PENDING_RECORD
    )


def _kill_at_every_step(tmp_path, save_old, save_new, read, old_value, new_value):
    """Kill ``save_new`` after each of its steps over the state ``save_old`` left; after each
    kill ``read()`` gives the old or the new value, and a clean save leaves no leftovers."""
    pristine = tmp_path / "pristine"
    directory = tmp_path / "models"
    if save_old is not None:
        save_old(directory)
        shutil.copytree(directory, pristine)
    steps, killed = _in_child(lambda: save_new(directory))
    total = len(steps)
    assert total >= 4 and not killed
    seen = set()
    for kill_at in range(1, total + 1):
        shutil.rmtree(directory)
        if save_old is not None:
            shutil.copytree(pristine, directory)
        _, killed = _in_child(lambda: save_new(directory), kill_at)
        assert killed
        try:
            value = read(directory)
        except ModelFileNotFoundError:
            assert save_old is None, f"killed after step {kill_at}: the old model is gone"
            seen.add("none")
            continue
        if _same(value, old_value) and save_old is not None:
            seen.add("old")
        else:
            assert _same(value, new_value), f"killed after step {kill_at}: a mixed model loaded"
            seen.add("new")
        # The next save (no kill) finishes or discards what the killed one left.
        save_new(directory)
        assert _same(read(directory), new_value)
        assert _leftovers(directory) == []
    assert seen == {"old" if save_old is not None else "none", "new"}
    return total


def _same(first, second) -> bool:
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(_same(first[k], second[k]) for k in first)
    return np.array_equal(np.asarray(first), np.asarray(second))


# ------------------------------------------------------------------------------ repurposers
@pytest.fixture(scope="module")
def two_heads():
    X, y = make_blob_features(10, 3, 6)
    old = LrRepurposer(make_tiny_source_model(6, seed=0), ["fc1"]).fit(X, y)
    new = LrRepurposer(make_tiny_source_model(6, seed=1), ["fc1"], c=0.1).fit(X, (y + 1) % 3)
    return old, new, X


def test_killed_overwrite_of_a_head_with_its_source_model(tmp_path, two_heads):
    """Manifest, arrays and both source model files: every kill leaves old or new."""
    old, new, X = two_heads
    total = _kill_at_every_step(
        tmp_path,
        lambda d: old.save(d / "m"),
        lambda d: new.save(d / "m"),
        lambda d: xfer.load("m", d).predict_proba(X),
        old.predict_proba(X),
        new.predict_proba(X),
    )
    assert total >= 10  # 4 files: written, recorded, moved; the record added and removed


def test_killed_first_save_leaves_nothing_or_the_model(tmp_path, two_heads):
    _, new, X = two_heads
    _kill_at_every_step(
        tmp_path,
        None,
        lambda d: new.save(d / "m"),
        lambda d: xfer.load("m", d).predict_proba(X),
        None,
        new.predict_proba(X),
    )


def test_killed_save_of_a_head_without_source_model(tmp_path):
    X, y = make_blob_features(10, 3, 4)
    old = LrRepurposer(None, None).fit(X, y)
    new = LrRepurposer(None, None).fit(X, np.array(["a", "b", "c"])[y])
    _kill_at_every_step(
        tmp_path,
        lambda d: old.save_repurposer("m", d),
        lambda d: new.save_repurposer("m", d),
        lambda d: xfer.load("m", d).predict(X),
        old.predict(X),
        new.predict(X),
    )


def test_killed_save_while_finishing_a_killed_save(tmp_path, two_heads):
    """A save killed while it finishes the save a killed process left still leaves one model."""
    old, new, X = two_heads
    directory = tmp_path / "models"
    old.save(directory / "m")
    pristine = tmp_path / "pristine"
    shutil.copytree(directory, pristine)
    steps, _ = _in_child(lambda: new.save(directory / "m"))
    shutil.rmtree(directory)
    shutil.copytree(pristine, directory)
    # Kill the first save right after its pending record is in place (nothing moved yet).
    _in_child(lambda: new.save(directory / "m"), steps.index("put the pending record in place") + 1)
    assert (directory / serialization.PENDING_RECORD).exists()
    interrupted = tmp_path / "interrupted"
    shutil.copytree(directory, interrupted)
    second, _ = _in_child(lambda: old.save(directory / "m"))
    assert second[0].startswith("moved")  # the second save first finishes the first
    for kill_at in range(1, len(second) + 1):
        shutil.rmtree(directory)
        shutil.copytree(interrupted, directory)
        _in_child(lambda: old.save(directory / "m"), kill_at)
        value = xfer.load("m", directory).predict_proba(X)
        assert _same(value, new.predict_proba(X)) or _same(value, old.predict_proba(X))


# ------------------------------------------------------------------------------ handlers
def test_killed_mxnet_checkpoint_overwrite(tmp_path):
    from xfer.model_handler import MXNetModelHandler

    old = MXNetModelHandler(make_tiny_source_model(6, seed=0))
    new = MXNetModelHandler(make_tiny_source_model(6, n_hidden=5, seed=1))

    def read(directory):
        loaded = MXNetModelHandler.load_checkpoint(str(directory / "net"))
        return {k: v.asnumpy() for k, v in loaded.arg_params.items()}

    _kill_at_every_step(
        tmp_path,
        lambda d: old.save_checkpoint(str(d / "net")),
        lambda d: new.save_checkpoint(str(d / "net")),
        read,
        {k: v.asnumpy() for k, v in old.arg_params.items()},
        {k: v.asnumpy() for k, v in new.arg_params.items()},
    )


def test_killed_torch_checkpoint_overwrite(tmp_path):
    torch = pytest.importorskip("torch")
    from xfer.model_handler import TorchModelHandler

    def network(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))

    old, new = TorchModelHandler(network(0)), TorchModelHandler(network(1))

    def weights(handler):
        return {k: v.detach().numpy().copy() for k, v in handler.model.state_dict().items()}

    _kill_at_every_step(
        tmp_path,
        lambda d: old.save_checkpoint(str(d / "net")),
        lambda d: new.save_checkpoint(str(d / "net")),
        lambda d: weights(TorchModelHandler.load_checkpoint(str(d / "net"), model=network(2))),
        weights(old),
        weights(new),
    )


# ------------------------------------------------------------------------------ concurrency
def test_concurrent_saves_and_loads_never_mix(tmp_path, two_heads):
    """Two processes overwrite one name in turns while this one loads it: every load gives one
    of the two models, and the name ends with one whole model."""
    old, new, X = two_heads
    directory = tmp_path / "models"
    old.save(directory / "m")
    expected = [old.predict_proba(X), new.predict_proba(X)]

    def writer(model):
        def run():
            for _ in range(6):
                model.save(directory / "m")

        return run

    pids = []
    for model in (old, new):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                writer(model)()
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    running, statuses = set(pids), []
    while running:
        for pid in list(running):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                running.discard(pid)
                statuses.append(status)
        value = xfer.load("m", directory).predict_proba(X)
        assert any(_same(value, e) for e in expected)
    assert all(os.WIFEXITED(s) and os.WEXITSTATUS(s) == 0 for s in statuses)
    value = xfer.load("m", directory).predict_proba(X)
    assert any(_same(value, e) for e in expected)
    assert _leftovers(directory) == []


def test_kills_at_random_moments(tmp_path, two_heads):
    """A child overwrites the name in a loop and is killed after a random delay, ten times."""
    old, new, X = two_heads
    directory = tmp_path / "models"
    old.save(directory / "m")
    expected = [old.predict_proba(X), new.predict_proba(X)]
    rng = np.random.default_rng(0)
    for _ in range(10):
        pid = os.fork()
        if pid == 0:
            while True:
                new.save(directory / "m")
                old.save(directory / "m")
        time.sleep(float(rng.uniform(0.0, 0.15)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        value = xfer.load("m", directory).predict_proba(X)
        assert any(_same(value, e) for e in expected)


# ------------------------------------------------------------------------------ fine-tuners
@pytest.fixture(scope="module", params=["mxnet", "torch"])
def two_fine_tuners(request, tmp_path_factory):
    """A fine-tuner fitted for one epoch, and a copy of it whose network weights are changed."""
    old = reliability_support.fitted_tiny_fine_tuner(request.param)
    X = reliability_support.BLOBS[0]
    directory = tmp_path_factory.mktemp("fine_tuner")
    old.save(directory / "copy")
    new = xfer.load("copy", directory, source_model=reliability_support.load_source(request.param))
    handler = new.target_handler_
    if request.param == "mxnet":
        handler.arg_params["fc1_weight"] = handler.arg_params["fc1_weight"] * 2
    else:
        import torch

        with torch.no_grad():
            handler.model.fc1.weight.mul_(2)
    assert not np.allclose(new.predict_proba(X), old.predict_proba(X))
    return old, new, X, request.param


def test_killed_overwrite_of_a_fine_tuner(tmp_path, two_fine_tuners):
    """Manifest, arrays and the fine-tuned network's files (P-symbol.json and P-0000.params for
    MXNet, P-target.json and P-target.safetensors for torch): every kill leaves old or new."""
    old, new, X, backend = two_fine_tuners

    def read(directory):
        source = reliability_support.load_source(backend)
        return xfer.load("m", directory, source_model=source).predict_proba(X)

    total = _kill_at_every_step(
        tmp_path,
        lambda d: old.save(d / "m"),
        lambda d: new.save(d / "m"),
        read,
        old.predict_proba(X),
        new.predict_proba(X),
    )
    assert total >= 10


# ------------------------------------------------------------------------------ training checkpoints
def _checkpoint(epochs_done, scale):
    """What a fit's checkpoint holds after ``epochs_done`` epochs (parameters scaled by ``scale``)."""
    from xfer.fine_tuning.run import Progress

    progress = Progress(phase_index=0, epochs_done=epochs_done, best_metric=0.5, best_epoch=1)
    arrays = {
        "params": {"arg:fc1_weight": np.full((4, 3), scale), "arg:fc1_bias": np.full(4, scale)},
        "optimizer": {"state.0": np.full(4, -scale)},
        "best": {"arg:fc1_weight": np.full((4, 3), scale / 2), "arg:fc1_bias": np.zeros(4)},
    }
    return progress, arrays


@pytest.mark.parametrize("same_epoch", [False, True])
def test_killed_training_checkpoint(tmp_path, same_epoch):
    """A fit killed while it writes a checkpoint resumes from the previous checkpoint or the new
    one, never a mix, also when the new one rewrites the same epoch's files."""
    import xfer.fine_tuning.mxnet  # noqa: F401 - registers the MXNet training backend
    from xfer.fine_tuning.backend import training_backend_for_files
    from xfer.fine_tuning.checkpoint import read_checkpoint, write_checkpoint
    from xfer.fine_tuning.run import Settings

    backend = training_backend_for_files(None)

    def settings(directory):
        return Settings(8, "sgd", {}, [], seed=3, fingerprint="same fit", checkpoint_dir=directory)

    def write(epochs_done, scale):
        def run(directory):
            progress, arrays = _checkpoint(epochs_done, scale)
            write_checkpoint(directory, progress, settings(directory), arrays, {"n": 1}, backend)

        return run

    def read(directory):
        progress = read_checkpoint(directory, "same fit", backend, lambda arrays: arrays)
        return {"epochs": progress.epochs_done, **progress.params, **progress.optimizer_arrays}

    def expected(epochs_done, scale):
        _, arrays = _checkpoint(epochs_done, scale)
        return {"epochs": epochs_done, **arrays["params"], **arrays["optimizer"]}

    new_epoch = 1 if same_epoch else 2
    _kill_at_every_step(
        tmp_path,
        write(1, 1.0),
        write(new_epoch, 2.0),
        read,
        expected(1, 1.0),
        expected(new_epoch, 2.0),
    )
