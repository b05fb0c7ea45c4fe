"""xfer's thread policy: a setting wins, a user's torch setting stands, else the free cores."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import xfer
from xfer import threads
from xfer.exceptions import InvalidArgumentError, InvalidTypeError


@pytest.fixture(autouse=True)
def fresh_policy(monkeypatch):
    """Each test starts with no setting, no recorded torch count, and torch's count restored."""
    monkeypatch.delenv(threads.ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.setattr(threads, "_setting", None)
    monkeypatch.setattr(threads, "_torch_first_seen", None)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_set_num_threads_fixes_the_count_whatever_the_load(monkeypatch):
    monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda: 100)
    xfer.set_num_threads(3)
    assert xfer.get_num_threads() == 3
    with threads.torch_threads() as used:
        assert used == 3 and torch.get_num_threads() == 3
    xfer.set_num_threads(None)
    assert xfer.get_num_threads() is None


def test_environment_variable_is_the_setting_when_none_was_made(monkeypatch):
    monkeypatch.setenv("XFER_NUM_THREADS", "2")
    assert xfer.get_num_threads() == 2
    xfer.set_num_threads(1)  # set_num_threads wins over the variable
    assert xfer.get_num_threads() == 1


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_environment_variable_says_what_to_set(monkeypatch, value):
    monkeypatch.setenv("XFER_NUM_THREADS", value)
    with pytest.raises(InvalidArgumentError, match=r"XFER_NUM_THREADS=.* is not a positive integer: set it"):
        xfer.get_num_threads()


def test_bad_settings_are_refused():
    with pytest.raises(InvalidTypeError, match="num_threads must be a positive int or None, got 2.0"):
        xfer.set_num_threads(2.0)
    with pytest.raises(InvalidTypeError, match="got True"):
        xfer.set_num_threads(True)
    with pytest.raises(InvalidArgumentError, match="num_threads must be at least 1, got 0"):
        xfer.set_num_threads(0)


def test_automatic_count_is_the_free_cores(monkeypatch):
    torch.set_num_threads(4)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda: 0)
    assert threads.choose_torch_threads() == 4
    monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda: 3)
    assert threads.choose_torch_threads() == 1
    monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda: 9)
    assert threads.choose_torch_threads() == 1, "never fewer than one"
    monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda: 0)
    assert threads.choose_torch_threads(preferred=1) == 1, "a caller may ask for fewer (tiny work)"


def test_automatic_count_never_exceeds_torchs(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda: 0)
    assert threads.choose_torch_threads() == 1


def test_the_count_is_restored_after_the_computation(monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda: 1)
    with threads.torch_threads() as used:
        assert used == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), threads.torch_threads():
        raise RuntimeError("the computation failed")
    assert torch.get_num_threads() == 2


def test_a_users_torch_set_num_threads_stands(monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda: 1)
    with threads.torch_threads():  # xfer looks for the first time: torch's count is 2
        pass
    torch.set_num_threads(3)  # the user's explicit choice afterwards
    with threads.torch_threads() as used:
        assert used == 3 and torch.get_num_threads() == 3
    assert threads.choose_torch_threads() is None


def test_nothing_is_chosen_before_torch_is_loaded(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")
    assert threads.choose_torch_threads() is None


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="needs Linux /proc")
def test_a_busy_process_is_counted_and_this_one_is_not():
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert max(threads.busy_cores_elsewhere() for _ in range(5)) >= 1
        assert threads.free_cores() <= max(1, threads.usable_cores() - 1)
    finally:
        process.kill()
        process.wait()
    assert threads._own_running_threads() >= 1  # the thread reading counts itself


def _probe(seen: list[int]) -> torch.nn.Module:
    """A layer recording the thread count torch runs it on."""

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x

    return Probe()


def test_torch_feature_extraction_runs_under_the_policy(monkeypatch):
    from torch import nn

    from xfer.model_handler import ModelHandler

    seen = []
    model = nn.Sequential(nn.Flatten(), _probe(seen), nn.Linear(4, 2))
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda: 1)
    ModelHandler(model).get_layer_output(torch.rand(3, 4).numpy(), ["2"], batch_size=2)
    assert seen == [1, 1] and torch.get_num_threads() == 2


def test_a_fixed_setting_repeats_results_bit_for_bit_whatever_the_load(monkeypatch):
    from torch import nn

    from xfer.model_handler import ModelHandler

    seen = []
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), _probe(seen), nn.Linear(256, 64), nn.Tanh(), nn.Linear(64, 8))
    data = torch.rand(64, 256).numpy()
    handler = ModelHandler(model)
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)

    def extract(busy_elsewhere: int):
        monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda: busy_elsewhere)
        seen.clear()
        features = handler.get_layer_output(data, ["4"], batch_size=64)[0]["4"]
        return seen[:], features

    assert extract(0)[0] == [2] and extract(1)[0] == [1]  # automatic: the load decides the count
    xfer.set_num_threads(2)  # fixed: the same count, the same bits, whatever the load
    (counts_idle, idle), (counts_busy, busy) = extract(0), extract(1)
    assert counts_idle == counts_busy == [2]
    assert np.array_equal(idle, busy)


@pytest.mark.slow
def test_xfer_num_threads_reaches_mxnet_in_a_fresh_process():
    code = "import xfer._mxnet, os; print(os.environ['MXNET_OMP_MAX_THREADS'])"
    environment = {**os.environ, "XFER_NUM_THREADS": "1"}
    environment.pop("MXNET_OMP_MAX_THREADS", None)
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "1"
    environment["MXNET_OMP_MAX_THREADS"] = "2"  # the user's own MXNet setting stands
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "2"


def test_one_blas_thread_limits_blas_inside_and_restores_it_after():
    from threadpoolctl import threadpool_info

    from xfer.threads import one_blas_thread

    def blas_counts():
        return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]

    before = blas_counts()
    with one_blas_thread():
        assert blas_counts() and all(count == 1 for count in blas_counts())
    assert blas_counts() == before


def test_num_threads_setting_sets_inside_and_restores_the_previous_setting():
    from xfer.threads import num_threads_setting

    xfer.set_num_threads(3)
    try:
        with num_threads_setting(1):
            assert xfer.get_num_threads() == 1
        assert xfer.get_num_threads() == 3
    finally:
        xfer.set_num_threads(None)
