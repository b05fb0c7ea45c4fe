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


def _threads_in_fresh_process(code: str, **env: str) -> int:
    import os
    import subprocess
    import sys

    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-c", code + "\nprint(torch.get_num_threads())"],
        capture_output=True, text=True, env=environment, check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_importing_mxnet_leaves_torch_its_threads():
    """MXNet's import sets OpenMP's thread count to 1; torch must not be left on one core."""
    default = _threads_in_fresh_process("import torch")
    # torch imported after MXNet: OpenMP's default comes back.
    assert _threads_in_fresh_process("import xfer._mxnet\nimport torch") == default
    assert _threads_in_fresh_process(
        "import numpy as np\nnp.bool = np.bool_\nimport mxnet\nimport xfer\nimport torch"
    ) == default, "MXNet imported by the user before xfer"
    # torch imported first: its count stands, including a user's explicit choice.
    assert _threads_in_fresh_process("import torch\nimport xfer._mxnet") == default
    assert _threads_in_fresh_process(
        "import torch\ntorch.set_num_threads(1)\nimport xfer\nimport xfer.repurposers\n"
        "from xfer.context import to_torch\nto_torch('cpu')"
    ) == 1
    # OMP_NUM_THREADS is OpenMP's default when set.
    assert _threads_in_fresh_process("import xfer._mxnet\nimport torch", OMP_NUM_THREADS="1") == 1
