"""What only the PyTorch training backend does: torch tensors, datasets and loaders as input,
MXNet optimiser names mapped onto ``torch.optim``, one device per process with
DistributedDataParallel for more, CUDA, the safetensors file of the target network and its
rebuilding from the source model. The behaviour every backend shares is in
``tests/repurposers/test_fine_tune.py``.

The source is the torch twin of the toy digits CNN (``conv1 bn1 relu1 pool1 conv2 relu2 flatten
fc1 relu3 fc2 softmax``) trained on digits 0-4; targets are digits 5-9.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fine_tune_support import (
    HEAD,
    assert_same_params,
    fine_tune,
    params_of,
    trained_torch_digits_cnn,
)

torch = pytest.importorskip("torch")

import xfer  # noqa: E402
from xfer._mxnet import mx  # noqa: E402
from xfer.exceptions import (  # noqa: E402
    InvalidArgumentError,
    ModelError,
)
from xfer.fine_tuning import torch as _torch_training  # noqa: E402
from xfer.repurposers.fine_tune import (  # noqa: E402
    NeuralNetworkFineTuneRepurposer,
)
from xfer.toy_models import train_torch_digits_cnn  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def torch_source():
    return trained_torch_digits_cnn()


def test_torch_inputs_and_progress_bar(torch_source, small_digits):
    X, y, X_test, _ = small_digits
    from torch.utils.data import DataLoader, TensorDataset

    arrays = fine_tune(torch_source, num_epochs=1).fit(X, y)
    dataset = TensorDataset(torch.as_tensor(X), torch.as_tensor(y))
    from_dataset = fine_tune(torch_source, num_epochs=1, verbose=True).fit(dataset)
    from_tensors = fine_tune(torch_source, num_epochs=1).fit(torch.as_tensor(X), torch.as_tensor(y))
    assert_same_params(params_of(from_dataset), params_of(arrays))
    assert_same_params(params_of(from_tensors), params_of(arrays))
    loader = DataLoader(TensorDataset(torch.as_tensor(X_test)), batch_size=7)
    np.testing.assert_array_equal(from_dataset.predict(loader), arrays.predict(X_test))
    with pytest.raises(InvalidArgumentError, match="labels were passed"):
        fine_tune(torch_source, num_epochs=1).fit(dataset, y)


def test_optimizer_names_and_parameters_map_to_torch_optim():
    sgd = _torch_training.torch_optimizer(
        "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4, "clip_gradient": 5}
    )
    assert sgd.cls is torch.optim.SGD and sgd.learning_rate == 0.1 and sgd.clip_gradient == 5.0
    assert sgd.kwargs == {"momentum": 0.9, "weight_decay": 1e-4}
    adam = _torch_training.torch_optimizer("Adam", {"beta1": 0.8, "epsilon": 1e-6})
    assert adam.cls is torch.optim.Adam and adam.learning_rate == 0.01  # MXNet's default
    assert adam.kwargs == {"betas": (0.8, 0.999), "eps": 1e-6}
    nag = _torch_training.torch_optimizer("nag", {"learning_rate": 0.1})
    assert nag.kwargs == {"momentum": 0.9, "nesterov": True}


def test_sgd_with_momentum_and_weight_decay_trains(torch_source, small_digits):
    X, y, X_test, y_test = small_digits
    repurposer = fine_tune(
        torch_source,
        num_epochs=3,
        optimizer="sgd",
        optimizer_params={"learning_rate": 0.05, "momentum": 0.9, "wd": 1e-4},
    ).fit(X, y)
    assert repurposer.score(X_test, y_test) >= 0.8


# ------------------------------------------------------------------------------------ devices
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_and_predict_on_cuda(torch_source, small_digits):
    X, y, X_test, y_test = small_digits
    on_gpu = fine_tune(torch_source, num_epochs=3).fit(X, y, context="gpu:0")
    assert next(on_gpu.target_handler_.model.parameters()).device.type == "cpu"  # kept on CPU
    assert on_gpu.score(X_test, y_test, context="gpu:0") >= 0.8
    np.testing.assert_allclose(
        on_gpu.predict_proba(X_test, context="gpu:0"), on_gpu.predict_proba(X_test), atol=1e-4
    )
    on_cpu = fine_tune(torch_source, num_epochs=3).fit(X, y)
    np.testing.assert_allclose(
        on_gpu.predict_proba(X_test), on_cpu.predict_proba(X_test), atol=0.05
    )


def test_single_process_distributed_matches_plain_training(torch_source, small_digits, tmp_path):
    """The DistributedDataParallel path on a one-process gloo group gives the plain fit's result."""
    import torch.distributed as dist

    X, y, _, _ = small_digits
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    options = dict(num_epochs=1, head_epochs=1, validation_fraction=0.2)
    plain = fine_tune(torch_source, **options).fit(X, y)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        from xfer.distributed.world import World, torch_world

        assert torch_world() == World(0, 1, "torch")
        distributed = fine_tune(torch_source, checkpoint_dir=str(tmp_path / "ck"), **options)
        distributed.fit(X, y)
    finally:
        dist.destroy_process_group()
    for name, value in params_of(plain).items():
        np.testing.assert_allclose(params_of(distributed)[name], value, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "ck" / "checkpoint.json").is_file()


def test_one_device_per_process(torch_source, small_digits):
    X, y, _, _ = small_digits
    with pytest.raises(InvalidArgumentError, match="torchrun"):
        fine_tune(torch_source, num_epochs=1).fit(X, y, context=["cpu:0", "cpu:1"])
    repurposer = fine_tune(torch_source, num_epochs=1).fit(X, y, context=torch.device("cpu"))
    with pytest.raises(InvalidArgumentError, match="torchrun"):
        repurposer.predict(X, context=["cpu:0", "cpu:1"])


# ------------------------------------------------------------------------------------ saving
def test_the_weights_are_a_safetensors_state_dict(torch_source, small_digits, tmp_path):
    from safetensors.torch import load_file

    X, y, _, _ = small_digits
    repurposer = fine_tune(torch_source, num_epochs=1).fit(X, y)
    repurposer.save_repurposer("ft", str(tmp_path))
    for suffix in (".json", "-target.json", "-target.safetensors"):
        assert (tmp_path / f"ft{suffix}").is_file()
    assert json.loads((tmp_path / "ft.json").read_text())["state"]["backend"] == "torch"
    weights = load_file(str(tmp_path / "ft-target.safetensors"))
    assert weights[f"{HEAD}.weight"].shape == (5, 512)
    assert set(weights) == set(repurposer.target_model.state_dict())


def test_load_with_another_architecture_is_a_clear_error(torch_source, small_digits, tmp_path):
    X, y, _, _ = small_digits
    repurposer = fine_tune(torch_source, num_epochs=1, transfer_layer_name="relu3").fit(X, y)
    repurposer.save(tmp_path / "m")
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU())
    with pytest.raises(ValueError, match="relu3"):
        xfer.load(tmp_path / "m", source_model=other)


# ------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    "options, match",
    [
        ({"optimizer": "ftml"}, "PyTorch source"),
        ({"optimizer_params": {"gamma9": 1}}, "gamma9"),
        ({"optimizer_params": {"clip_gradient": -1}}, "clip_gradient"),
        ({"lr_schedule": mx.lr_scheduler.FactorScheduler(step=4)}, "PyTorch source"),
    ],
)
def test_bad_torch_arguments(torch_source, small_digits, options, match):
    X, y, _, _ = small_digits
    with pytest.raises(InvalidArgumentError, match=match):
        fine_tune(torch_source, **{"num_epochs": 1, **options}).fit(X, y)


# ------------------------------------------------------------------------------------ accuracy
@pytest.mark.slow
def test_xfer_digits_task_accuracy(target_digits):
    """Xfer's toy task: source on digits 0-4, 30 labels per class of 5-9, the rest to test."""
    assert xfer_digits_accuracy(target_digits) >= 0.895


def xfer_digits_accuracy(target_digits, seed: int = 0) -> float:
    """Accuracy of a 5-epoch fine-tune at relu2 (adam, lr 0.01, batch 16) on Xfer's digits task."""
    images, labels = target_digits
    source = train_torch_digits_cnn(classes=(0, 1, 2, 3, 4), num_epochs=10, seed=seed)
    rng = np.random.RandomState(seed)
    train = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == k))[:30] for k in range(5, 10)]
    )
    test = np.setdiff1d(np.arange(len(labels)), train)
    repurposer = NeuralNetworkFineTuneRepurposer(
        source, "relu2", 5, batch_size=16, num_epochs=5, optimizer="adam",
        optimizer_params={"learning_rate": 0.01}, random_state=seed,
    )  # fmt: skip
    repurposer.fit(images[train], labels[train])
    return repurposer.score(images[test], labels[test])


def test_cut_before_a_function_call_names_the_next_module():
    import torch
    from torch import nn


    class FunctionalFlatten(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.drop = nn.Dropout(0.1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.drop(torch.flatten(self.pool(self.conv(x)), 1)))

    repurposer = xfer.NeuralNetworkFineTuneRepurposer(FunctionalFlatten(), "pool", 2, num_epochs=1)
    with pytest.raises(ModelError, match=r"Cut at a later module .*\(for example 'drop'\)"):
        repurposer.fit(np.random.rand(4, 1, 6, 6).astype(np.float32), np.array([0, 1, 0, 1]))
    cut_later = xfer.NeuralNetworkFineTuneRepurposer(FunctionalFlatten(), "drop", 2, num_epochs=1)
    cut_later.fit(np.random.rand(4, 1, 6, 6).astype(np.float32), np.array([0, 1, 0, 1]))
    assert cut_later.predict_proba(np.random.rand(2, 1, 6, 6).astype(np.float32)).shape == (2, 2)
