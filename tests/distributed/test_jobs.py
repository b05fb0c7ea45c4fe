"""Distributed jobs on localhost, both backends: MXNet ``dist_sync`` with 2 workers and 1 server
started by ``xfer.distributed.launch``, and torch DDP with 2 Gloo processes started by ``torchrun``.

What "the same as one process" means here: every process ends with bit-identical parameters
(and BatchNorm statistics); each process reads only its part of the data (disjoint, together all
of it); a run interrupted after its second epoch and resumed from its checkpoint ends exactly
where the uninterrupted run ends; and the distributed model's test accuracy is within 0.05 of a
fit of the same options in one process (the batches differ: each process shuffles its own part,
and a step sees both processes' batches). The processes also extract one feature store together.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xfer
from xfer.feature_store import FeatureStore
from xfer.model_handler import ModelHandler
from xfer.repurposers import NeuralNetworkFineTuneRepurposer

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "tests" / "distributed" / "_job.py"
ENV = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"}
TIMEOUT_S = 400


def run_job(command: list[str], timeout: float = TIMEOUT_S) -> str:
    """Run a job's command in its own process group; on a timeout the whole group is killed."""
    process = subprocess.Popen(command, env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the job did not finish in {timeout} s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def digits_task(digits_images):
    """Digits 5-9: 600 to train on (shared by the processes), the rest to test."""
    images, labels = digits_images
    keep = labels >= 5
    images, labels = images[keep], labels[keep]
    order = np.random.RandomState(0).permutation(len(images))
    return images[order[:600]], labels[order[:600]], images[order[600:]], labels[order[600:]]


def _check_job(output: Path, backend: str, source, train_x, train_y, test_x, test_y, log: str) -> None:
    reports = [json.loads((output / f"report-{rank}.json").read_text()) for rank in (0, 1)]
    for rank, report in enumerate(reports):
        assert (report["rank"], report["size"], report["backend"]) == (rank, 2, backend)
        assert report["sum"] == [3.0, 20.0] and report["gathered"] == ["rank 0", "rank 1"]
        assert report["store_rows"] == len(train_x) and report["interrupted"]
    # Each process read only its own examples; together, all of them.
    read = [set(report["read"]) for report in reports]
    assert not read[0] & read[1] and read[0] | read[1] == set(range(len(train_x)))
    assert reports[0]["n_training_examples"] == reports[1]["n_training_examples"] == 480
    # The same network everywhere; the resumed run ends where the uninterrupted one does.
    whole = [dict(np.load(output / f"a-{rank}.npz")) for rank in (0, 1)]
    resumed = [dict(np.load(output / f"b-{rank}.npz")) for rank in (0, 1)]
    for name in whole[0]:
        np.testing.assert_array_equal(whole[0][name], whole[1][name], err_msg=name)
        np.testing.assert_array_equal(resumed[0][name], whole[0][name], err_msg=name)
    assert reports[0]["history"] == reports[1]["history"]
    assert reports[0]["resumed_history"]["loss"] == pytest.approx(reports[0]["history"]["loss"])
    # Against one process with the same options, on the same 600 examples.
    options = {"batch_size": 16, "num_epochs": 3, "head_epochs": 1, "optimizer": "adam",
               "optimizer_params": {"learning_rate": 0.01}, "validation_fraction": 0.2,
               "early_stopping_patience": 3, "random_state": 0}
    alone = NeuralNetworkFineTuneRepurposer(source, "relu3", None, **options).fit(train_x, train_y)
    loaded = xfer.load(str(output / "model"), **({"source_model": source} if backend == "torch" else {}))
    together = loaded.score(test_x, test_y)
    assert together >= alone.score(test_x, test_y) - 0.05 and together > 0.8
    # The feature store the processes wrote together holds what one process extracts.
    expected = ModelHandler(source).get_layer_output(train_x, ["fc1"])[0]["fc1"]
    np.testing.assert_allclose(FeatureStore(output / "store").to_array()[0], expected, rtol=1e-5, atol=1e-5)
    assert "Wrote shard-00000" in log and "Wrote shard-00005" in log


@pytest.mark.slow
def test_mxnet_dist_sync_two_workers_one_server(digits_source_model, digits_task, tmp_path):
    from xfer.distributed.launch import launch

    train_x, train_y, test_x, test_y = digits_task
    np.save(tmp_path / "images.npy", train_x)
    np.save(tmp_path / "labels.npy", train_y)
    ModelHandler(digits_source_model).save_checkpoint(str(tmp_path / "source"))
    log = io.StringIO()
    code = launch([sys.executable, str(JOB), "mxnet", str(tmp_path)], num_workers=2, num_servers=1,
                  env=ENV, timeout=TIMEOUT_S, stdout=log)
    assert code == 0, log.getvalue()[-4000:]
    _check_job(tmp_path, "mxnet", digits_source_model, train_x, train_y, test_x, test_y, log.getvalue())


@pytest.mark.slow
def test_torch_ddp_two_gloo_processes(digits_task, tmp_path):
    from xfer.toy_models import train_torch_digits_cnn

    train_x, train_y, test_x, test_y = digits_task
    np.save(tmp_path / "images.npy", train_x)
    np.save(tmp_path / "labels.npy", train_y)
    source = train_torch_digits_cnn(classes=(0, 1, 2, 3, 4), num_epochs=3, seed=0)
    ModelHandler(source).save_checkpoint(str(tmp_path / "source"))
    log = run_job([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(JOB), "torch", str(tmp_path)])
    _check_job(tmp_path, "torch", source, train_x, train_y, test_x, test_y, log)
