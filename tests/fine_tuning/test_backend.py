"""The seam between the backend-neutral fine-tuning code and the backends.

The neutral modules never import a framework nor test a backend's name; backends are found
through the registry by the ModelHandler's ``backend`` key, and a third backend registered from
outside the package (``tests/functional_backend.py``) is found like the built-in ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import functional_backend
import pytest

import xfer
from xfer.exceptions import InvalidArgumentError, InvalidTypeError, SerializationError
from xfer.fine_tuning import TrainingBackend, register_training_backend, training_backend
from xfer.fine_tuning.backend import training_backend_for_files
from xfer.fine_tuning.mxnet import MXNetTrainingBackend
from xfer.fine_tuning.torch import TorchTrainingBackend
from xfer.model_handler import ModelHandler

PACKAGE = Path(xfer.__file__).parent
#: The modules that must stay backend-neutral.
NEUTRAL = [
    "fine_tuning/backend.py",
    "fine_tuning/checkpoint.py",
    "fine_tuning/history.py",
    "fine_tuning/loop.py",
    "fine_tuning/run.py",
    "repurposers/base.py",
    "repurposers/neural_network.py",
    "repurposers/fine_tune.py",
]
FRAMEWORKS = ("mxnet", "torch", "xfer._mxnet", "xfer.fine_tuning.mxnet", "xfer.fine_tuning.torch",
              "xfer.model_handler.mxnet", "xfer.model_handler.torch")  # fmt: skip


def _framework_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found += [n for n in names if any(n == f or n.startswith(f"{f}.") for f in FRAMEWORKS)]
    return found


def _backend_name_tests(tree: ast.AST) -> list[int]:
    """Lines comparing something with ``"mxnet"`` or ``"torch"`` (``==``, ``!=``, ``in``)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in ("mxnet", "torch") for o in operands):
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("module", NEUTRAL)
def test_neutral_modules_import_no_framework_and_test_no_backend_name(module):
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    assert _framework_imports(tree) == []
    assert _backend_name_tests(tree) == []


def test_the_checks_can_fail():
    tree = ast.parse("import torch\nfrom xfer._mxnet import mx\nif backend == 'torch': pass\n")
    assert _framework_imports(tree) == ["torch", "xfer._mxnet", "xfer._mxnet.mx"]
    assert _backend_name_tests(tree) == [3]


def test_backends_are_found_by_the_handler_key(digits_source_model):
    assert isinstance(training_backend(ModelHandler(digits_source_model)), MXNetTrainingBackend)
    from xfer.toy_models import torch_digits_cnn

    net = functional_backend.from_sequential(torch_digits_cnn())
    assert isinstance(
        training_backend(ModelHandler(net)), functional_backend.FunctionalTrainingBackend
    )
    assert isinstance(training_backend_for_files(None), MXNetTrainingBackend)
    assert isinstance(training_backend_for_files("torch"), TorchTrainingBackend)


def test_unknown_backends_are_clear_errors():
    class Handler:
        backend = "onnx"

    with pytest.raises(InvalidTypeError, match="no training backend is registered for it"):
        training_backend(Handler())
    with pytest.raises(SerializationError, match="'onnx' that is not registered"):
        training_backend_for_files("onnx")


def test_registration_refuses_clashes_and_non_backends():
    with pytest.raises(InvalidTypeError, match="TrainingBackend subclass"):
        register_training_backend(object)

    class AnotherTorch(TorchTrainingBackend):
        pass

    with pytest.raises(InvalidArgumentError, match="already registered for 'torch' models"):
        register_training_backend(AnotherTorch)

    class NoFileKey(functional_backend.FunctionalTrainingBackend):
        key = "functional-2"
        file_key = None  # the MXNet backend's

    with pytest.raises(InvalidArgumentError, match="file key None"):
        register_training_backend(NoFileKey)
    assert issubclass(functional_backend.FunctionalTrainingBackend, TrainingBackend)
