"""The one context resolver: strings, MXNet contexts, torch devices, Xfer's context functions."""

from __future__ import annotations

import pytest
import torch

from xfer._mxnet import mx
from xfer.context import (
    Device,
    devices_from_function,
    format_context,
    resolve_context,
    to_mxnet,
    to_torch,
)
from xfer.exceptions import DeviceUnavailableError, InvalidArgumentError, InvalidTypeError


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        (None, [Device("cpu", 0)]),
        ("cpu", [Device("cpu", 0)]),
        ("cpu:1", [Device("cpu", 1)]),
        ("GPU", [Device("gpu", 0)]),
        ("gpu:2", [Device("gpu", 2)]),
        ("cuda:1", [Device("gpu", 1)]),
        (mx.cpu(3), [Device("cpu", 3)]),
        (mx.gpu(1), [Device("gpu", 1)]),
        (mx.cpu, [Device("cpu", 0)]),
        (torch.device("cpu"), [Device("cpu", 0)]),
        (torch.device("cuda", 1), [Device("gpu", 1)]),
        (["cpu:0", mx.cpu(1)], [Device("cpu", 0), Device("cpu", 1)]),
    ],
)
def test_resolve_context(context, expected):
    assert resolve_context(context) == expected


def test_default_is_used_only_when_context_is_none():
    assert resolve_context(None, default="gpu:1") == [Device("gpu", 1)]
    assert resolve_context("cpu", default="gpu:1") == [Device("cpu", 0)]


def test_xfer_context_function_and_num_devices():
    assert devices_from_function(mx.cpu, 2) == [Device("cpu", 0), Device("cpu", 1)]
    assert devices_from_function("gpu", 2) == [Device("gpu", 0), Device("gpu", 1)]
    with pytest.raises(InvalidArgumentError, match="num_devices must be a positive integer, got 0"):
        devices_from_function(mx.cpu, 0)


def test_format_context_round_trips():
    for context in ["cpu:0", ["gpu:0", "gpu:1"]]:
        assert format_context(resolve_context(context)) == context
        assert resolve_context(format_context(resolve_context(context))) == resolve_context(context)


def test_bad_contexts():
    with pytest.raises(InvalidArgumentError, match="Unknown context 'tpu'"):
        resolve_context("tpu")
    with pytest.raises(InvalidArgumentError, match="The context list is empty"):
        resolve_context([])
    with pytest.raises(InvalidArgumentError, match="repeats a device"):
        resolve_context(["cpu", "cpu:0"])
    with pytest.raises(InvalidTypeError, match="Cannot use 3.5"):
        resolve_context(3.5)


def test_backend_devices():
    assert to_mxnet(["cpu:0", "cpu:1"]) == [mx.cpu(0), mx.cpu(1)]
    assert to_torch("cpu") == torch.device("cpu")
    with pytest.raises(InvalidArgumentError, match="runs on one device, but 2 were given"):
        to_torch(["cpu:0", "cpu:1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_gpu_without_cuda_is_a_clear_error():
    with pytest.raises(DeviceUnavailableError, match=r"asks for a CUDA GPU, but torch .* sees no usable GPU"):
        to_torch("gpu:0")


@pytest.mark.skipif(mx.runtime.Features().is_enabled("CUDA"), reason="checks the CPU-only MXNet build")
def test_gpu_on_cpu_only_mxnet_names_the_missing_build():
    with pytest.raises(DeviceUnavailableError, match=r"CPU-only\. Install the CUDA build .*mxnet-cu112"):
        to_mxnet("gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_device_when_present():
    assert to_torch("gpu:0") == torch.device("cuda", 0)


def test_torch_gets_its_threads_back_after_mxnet(monkeypatch):
    """Importing MXNet sets OpenMP's thread count to 1; torch paths must not run on one core."""
    import xfer.context as context_module

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(context_module, "_torch_threads_restored", False)
    monkeypatch.setattr(context_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        to_torch("cpu")
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        to_torch("cpu")
        assert torch.get_num_threads() == 1, "only once: a user's later choice stands"
    finally:
        torch.set_num_threads(previous)
