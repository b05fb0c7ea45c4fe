"""What a user's first fit imports, checked in fresh processes (import time is the user's wait).

An MXNet user fitting a logistic-regression or SVM head must not pay for torch and GPyTorch, and
no head's fit may import ``torch._dynamo`` (``torch.optim`` does, for 2-3 seconds). ``import xfer``
itself: tests/test_package.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_REPORT = "import json, sys\nprint(json.dumps({m: m in sys.modules for m in ('torch', 'gpytorch', 'torch._dynamo')}))\n"


def _modules_after(code: str) -> dict[str, bool]:
    result = subprocess.run([sys.executable, "-c", code + "\n" + _REPORT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


_TASK = """
import numpy as np
import xfer
from xfer.toy_models import train_digits_cnn, load_digit_images
source = train_digits_cnn(num_epochs=1)
images, labels = load_digit_images(classes=range(5, 10))
"""


@pytest.mark.slow
def test_fitting_linear_heads_on_an_mxnet_source_loads_no_torch():
    code = _TASK + """
xfer.LrRepurposer(source, ["fc1"]).fit(images[:100], labels[:100]).predict_proba(images[100:150])
xfer.SvmRepurposer(source, ["fc1"]).fit(images[:100], labels[:100]).predict(images[100:150])
"""
    assert _modules_after(code) == {"torch": False, "gpytorch": False, "torch._dynamo": False}


@pytest.mark.slow
def test_gp_and_bnn_fits_do_not_import_torch_dynamo():
    code = _TASK + """
xfer.GpRepurposer(source, ["fc1"]).fit(images[:100], labels[:100]).predict_proba(images[100:150])
xfer.BnnRepurposer(source, ["fc1"], num_epochs=2).fit(images[:100], labels[:100]).predict(images[100:150])
"""
    assert _modules_after(code) == {"torch": True, "gpytorch": True, "torch._dynamo": False}
