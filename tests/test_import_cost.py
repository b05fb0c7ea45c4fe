"""What a user's first fit imports, checked in fresh processes (import time is the user's wait).

An MXNet user fitting a logistic-regression or SVM head must not pay for torch and GPyTorch, no
head's user pays for the fine-tuning backends or the other heads (``xfer.repurposers`` resolves
its names on first use), no head's fit may import ``torch._dynamo`` (``torch.optim`` does,
for 2-3 seconds), and a torch network's user never imports MXNet (about 3 seconds), whose
``mx.cpu`` is the heads' default device (``xfer.context.cpu`` stands in for it), nor when it
fine-tunes it (the fine-tuning backends are imported per network). Handling a model or extracting
features does not import scikit-learn (~1.3 s of CPU in every process, feature-extraction workers
included): ``xfer.exceptions.NotFittedError``, a subclass of scikit-learn's, is defined on first
use. ``import xfer`` itself: tests/test_package.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_REPORT = "import json, sys\nprint(json.dumps({m: m in sys.modules for m in %r}))\n"


def _modules_after(code: str, modules: tuple[str, ...] = ("torch", "gpytorch", "torch._dynamo")) -> dict[str, bool]:
    report = _REPORT % (modules,)
    result = subprocess.run([sys.executable, "-c", code + "\n" + report], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


#: What a meta-model head's user does not need: the other backend, GPyTorch, the fine-tuning
#: package (both backends' trainers), the transferability scores and the other heads' modules.
_NOT_NEEDED = ("torch", "gpytorch", "xfer.fine_tuning", "xfer.transferability", "xfer.repurposers.auto",
               "xfer.repurposers.fine_tune", "xfer.repurposers.neural_network")  # fmt: skip


def test_importing_a_head_imports_neither_torch_nor_fine_tuning():
    checks = "\n".join(  # one process, both spellings: after each head, nothing it does not need
        f"{statement}\nassert not any(m in sys.modules for m in {_NOT_NEEDED!r}), "
        f"({statement!r}, [m for m in {_NOT_NEEDED!r} if m in sys.modules])"
        for statement in ("from xfer.repurposers import LrRepurposer", "xfer.SvmRepurposer",
                          "from xfer.repurposers import GpRepurposer", "xfer.BnnRepurposer")
    )  # fmt: skip
    loaded = _modules_after("import sys\nimport xfer\n" + checks, _NOT_NEEDED)
    assert not any(loaded.values()), [m for m, on in loaded.items() if on]


def test_the_package_names_resolve_on_first_use_and_load_finds_each_builtin_head():
    import xfer.repurposers
    from xfer import serialization

    for name in xfer.repurposers.__all__:
        assert getattr(xfer.repurposers, name).__name__ == name
    assert set(xfer.repurposers.__all__) <= set(dir(xfer.repurposers))
    with pytest.raises(AttributeError, match="module 'xfer.repurposers' has no attribute 'Nothing'"):
        xfer.repurposers.Nothing  # noqa: B018
    for key in xfer.repurposers.BUILTIN_KEYS:
        assert serialization._lookup(key, "manifest.json").serialization_key == key


def test_loading_a_saved_lr_head_imports_only_its_module(tmp_path):
    import numpy as np

    from xfer.repurposers import LrRepurposer

    x = np.r_[np.zeros((5, 2)), np.ones((5, 2))]
    LrRepurposer(None, None).fit(x, [0] * 5 + [1] * 5).save(tmp_path / "m")
    code = f"import xfer\nassert type(xfer.load({str(tmp_path / 'm')!r})).__name__ == 'LrRepurposer'"
    loaded = _modules_after(code, (*_NOT_NEEDED, "xfer.repurposers.gp", "xfer.repurposers.bnn"))
    assert not any(loaded.values()), [m for m, on in loaded.items() if on]


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


#: Modules a feature-extraction worker or a model handler's user imports.
_HANDLING = ("xfer.exceptions", "xfer.model_handler", "xfer.feature_store", "xfer.threads", "xfer.data",
             "xfer.serialization", "xfer.zoo", "xfer.context", "xfer.metrics", "xfer.distributed",
             "xfer.datasets", "xfer.cli", "xfer.fine_tuning")  # fmt: skip


def test_handling_models_and_features_imports_no_scikit_learn():
    code = "import importlib, sys\n" + "".join(
        f"importlib.import_module({name!r})\nassert 'sklearn' not in sys.modules, {name!r}\n" for name in _HANDLING
    ) + "from xfer.exceptions import *\nassert 'sklearn' in sys.modules\n"  # fmt: skip
    assert _modules_after(code, ("scipy.stats", "mxnet", "torch")) == {
        "scipy.stats": True, "mxnet": False, "torch": False}  # fmt: skip


def test_not_fitted_error_keeps_its_bases_name_and_pickles():
    import pickle

    import sklearn.exceptions

    import xfer.exceptions
    from xfer.exceptions import NotFittedError, XferError

    assert xfer.exceptions.NotFittedError is NotFittedError and "NotFittedError" in dir(xfer.exceptions)
    for base in (XferError, sklearn.exceptions.NotFittedError, ValueError, AttributeError, TypeError):
        assert issubclass(NotFittedError, base), base
    assert (NotFittedError.__module__, NotFittedError.__qualname__) == ("xfer.exceptions", "NotFittedError")
    copy = pickle.loads(pickle.dumps(NotFittedError("not fitted yet")))
    assert type(copy) is NotFittedError and str(copy) == "not fitted yet"
    with pytest.raises(sklearn.exceptions.NotFittedError, match="not fitted"):
        xfer.LrRepurposer(None, None).predict_proba([[0.0, 1.0]])
    with pytest.raises(AttributeError, match="module 'xfer.exceptions' has no attribute 'Nothing'"):
        xfer.exceptions.Nothing  # noqa: B018


@pytest.mark.slow
def test_a_torch_network_never_imports_mxnet(tmp_path):
    # A ModelHandler of a torch network (the next built-in backend is imported only when MXNet's
    # declines; extracting its features imports no scikit-learn either), then fit, predict, repr,
    # get_params, save and load of each meta-model head kind and each fine-tuner on it: neither the
    # handler, nor the heads' default device (Xfer's mx.cpu), nor the fine-tuning backends
    # (imported per network) may load MXNet (~3 s).
    code = f"""
import sys
import numpy as np
from torch import nn
import xfer
net = nn.Sequential(nn.Flatten(), nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 3))
handler = xfer.model_handler.ModelHandler(net)
assert type(handler).__name__ == "TorchModelHandler"
handler.get_layer_output(np.zeros((3, 3), np.float32), ["1"])
assert "sklearn" not in sys.modules
X = np.random.RandomState(1).randn(45, 3).astype(np.float32) + np.repeat(np.eye(3) * 3, 15, 0)
y = np.repeat(["a", "b", "c"], 15)
for name in ("LrRepurposer", "SvmRepurposer", "GpRepurposer", "BnnRepurposer", "LaplaceRepurposer"):
    head = getattr(xfer, name)(net, ["2"], **({{"num_epochs": 2}} if name == "BnnRepurposer" else {{}}))
    head.fit(X, y).predict(X)
    assert "context_function" not in repr(head), repr(head)
    assert head.get_params()["context_function"] is xfer.context.cpu
    head.save({str(tmp_path)!r} + "/" + name)
    assert (xfer.load({str(tmp_path)!r} + "/" + name, source_model=net).predict(X) == head.predict(X)).all()
for name, arguments in (("NeuralNetworkFineTuneRepurposer", ("2", 3)),
                        ("NeuralNetworkRandomFreezeRepurposer", (3, ["1"], []))):
    tuner = getattr(xfer, name)(net, *arguments, num_epochs=2, batch_size=16)
    predicted = tuner.fit(X, y).predict(X)
    tuner.predict_proba(X), repr(tuner), tuner.get_params()
    tuner.save({str(tmp_path)!r} + "/" + name)
    assert (xfer.load({str(tmp_path)!r} + "/" + name, source_model=net).predict(X) == predicted).all()
"""
    loaded = _modules_after(code, ("mxnet", "xfer._mxnet", "xfer.model_handler.mxnet", "xfer.fine_tuning.mxnet"))
    assert not any(loaded.values()), [m for m, on in loaded.items() if on]


def test_the_default_device_reads_as_mxnets_cpu_once_mxnet_is_imported():
    import mxnet as mx
    from sklearn.base import clone

    import xfer
    from xfer.context import cpu

    for head in (xfer.LrRepurposer(None, None), xfer.BnnRepurposer(None, None)):
        assert head.context_function is cpu  # stored as given (scikit-learn)
        params = head.get_params()  # as Xfer 1.1.0 reported them
        assert params["context_function"] is mx.cpu
        assert params.get("bnn_context_function", mx.cpu) is mx.cpu
        assert "context_function" not in repr(head), repr(head)  # a default is not a change
        assert clone(head).context_function is cpu
    assert xfer.LrRepurposer(None, None, context_function=mx.cpu).get_params()["context_function"] is mx.cpu
    assert "context_function=<function gpu" in repr(xfer.LrRepurposer(None, None, context_function=mx.gpu))
