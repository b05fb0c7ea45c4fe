"""docs/distributed.md ("When one machine is not enough") runs as written, on this machine.

The page's scripts (Python blocks starting ``# file: NAME``) are written into a temporary
directory; its Python snippets run there; of its shell commands, those that start processes on
this machine are run (with this interpreter for ``python`` and ``torchrun``), the ssh and
multi-machine lines are only checked to be there.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "distributed.md"
TIMEOUT_S = 600


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.S)


def _scripts() -> dict[str, str]:
    return {
        block.split("\n", 1)[0].split(":", 1)[1].strip(): block
        for block in _blocks("python")
        if block.startswith("# file:")
    }


def _commands() -> list[str]:
    lines = [line.split("#", 1)[0].strip() for block in _blocks("bash") for line in block.splitlines()]
    return [line for line in lines if line]


def _run(command: str, cwd: Path) -> str:
    """A page command with this interpreter, in its own process group (killed on a timeout)."""
    words = shlex.split(command)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    while "=" in words[0]:  # NAME=VALUE prefixes
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    if words[0] == "torchrun":
        words = [sys.executable, "-m", "torch.distributed.run", *words[1:]]
    words = [sys.executable if word == "python" else word for word in words]
    process = subprocess.Popen(words, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{command!r} did not finish in {TIMEOUT_S} s:\n{output[-3000:]}")
    assert process.returncode == 0, f"{command!r} failed:\n{output[-4000:]}"
    return output


def _write_scripts(directory: Path) -> None:
    for name, source in _scripts().items():
        (directory / name).write_text(source)


def test_page_lists_its_commands():
    commands = _commands()
    assert sorted(_scripts()) == ["extract.py", "train_mxnet.py", "train_torch.py"]
    assert "python extract.py" in commands
    assert "python -m xfer.distributed.launch -n 2 -s 1 python train_mxnet.py" in commands
    assert "python -m xfer.distributed.launch -n 4 -s 2 -H hosts python train_mxnet.py" in commands
    assert "OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 train_torch.py" in commands
    assert any(c.startswith("torchrun --nnodes=2") for c in commands)


@pytest.mark.slow
@pytest.mark.assets
def test_extract_to_a_store_and_train_heads_on_it(tmp_path, monkeypatch):
    from PIL import Image

    from xfer.datasets import load_fashion_mnist

    images = load_fashion_mnist("test", n_per_class=12, random_state=0)
    for index, (image, label) in enumerate(zip(images.data, images.labels)):
        if label in ("Trouser", "Bag", "Sneaker"):
            folder = tmp_path / "photos" / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index}.png")
    _write_scripts(tmp_path)
    output = _run("python extract.py", tmp_path)
    assert "FeatureStore(" in output and "36 rows x 1280 features of ['global_pool']" in output
    monkeypatch.chdir(tmp_path)
    for snippet in [block for block in _blocks("python") if "FeatureStore(" in block and "# file:" not in block]:
        namespace: dict = {}
        exec(compile(snippet, "docs/distributed.md", "exec"), namespace)
    assert namespace["proba"].shape == (36, 3)
    assert np.mean(namespace["lr"].predict(namespace["store"]) == namespace["store"].labels) > 0.9


@pytest.mark.slow
def test_mxnet_workers_started_by_the_launcher(tmp_path):
    import xfer
    from xfer.toy_models import load_digit_images

    _write_scripts(tmp_path)
    output = _run("python -m xfer.distributed.launch -n 2 -s 1 python train_mxnet.py", tmp_path)
    accuracies = re.findall(r"\[worker (\d)\] worker (\d) of 2: validation accuracy (\d\.\d+)", output)
    assert sorted(rank for _, rank, _ in accuracies) == ["0", "1"], output[-3000:]
    assert len({accuracy for _, _, accuracy in accuracies}) == 1  # one history for the job
    images, labels = load_digit_images(classes=range(5, 10))
    assert xfer.load(str(tmp_path / "digits_mxnet")).score(images, labels) > 0.8


@pytest.mark.slow
def test_torch_ranks_started_by_torchrun(tmp_path):
    import xfer
    from xfer.toy_models import load_digit_images, train_torch_digits_cnn

    _write_scripts(tmp_path)
    output = _run("OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 train_torch.py", tmp_path)
    assert "validation accuracy per epoch:" in output
    source = train_torch_digits_cnn(classes=(0, 1, 2, 3, 4), num_epochs=5, seed=0)
    images, labels = load_digit_images(classes=range(5, 10))
    assert xfer.load(str(tmp_path / "digits_torch"), source_model=source).score(images, labels) > 0.8
