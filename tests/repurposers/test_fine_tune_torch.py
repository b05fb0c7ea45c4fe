"""Fine-tuning repurposers on a PyTorch source: the MXNet behaviours (test_fine_tune.py), mirrored.

The source is the torch twin of the toy digits CNN (``conv1 bn1 relu1 pool1 conv2 relu2 flatten
fc1 relu3 fc2 softmax``) trained on digits 0-4; targets are digits 5-9. Each fit takes well under a
second on one CPU thread.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import xfer  # noqa: E402
from xfer._mxnet import mx  # noqa: E402
from xfer.exceptions import (  # noqa: E402
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidTypeError,
    LayerNotFoundError,
    ModelError,
    ModelFileNotFoundError,
    NotFittedError,
)
from xfer.fine_tuning import torch as _torch_training  # noqa: E402
from xfer.repurposers.fine_tune import (  # noqa: E402
    NeuralNetworkFineTuneRepurposer,
    NeuralNetworkRandomFreezeRepurposer,
)
from xfer.toy_models import torch_digits_cnn, train_torch_digits_cnn  # noqa: E402

FAST = dict(
    batch_size=16, optimizer="adam", optimizer_params={"learning_rate": 0.01}, random_state=0
)
HEAD = "fc_from_fine_tune_repurposer"
#: Parameters and buffers of the layers up to relu2 (transferred by a fine-tune at relu2).
TRANSFERRED = ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "conv2.weight", "conv2.bias"]
BN_STATS = ["bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"]


class Interrupted(Exception):
    """Raised from the epoch-end hook to simulate a crash."""


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads run ~100x slower."""
    from xfer.context import to_torch

    to_torch("cpu")  # lets xfer's one-time thread restore run first, so it does not undo this
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def torch_source():
    return train_torch_digits_cnn(classes=(0, 1, 2, 3, 4), num_epochs=5, seed=0)


@pytest.fixture(scope="module")
def small_digits(target_digits):
    """120 training digits (5-9, 24 per class) and 100 others to test on."""
    images, labels = target_digits
    rng = np.random.RandomState(0)
    train = np.concatenate(
        [rng.choice(np.where(labels == c)[0], 24, replace=False) for c in range(5, 10)]
    )
    train = rng.permutation(train)
    test = np.setdiff1d(np.arange(len(labels)), train)[:100]
    return images[train], labels[train], images[test], labels[test]


def fine_tune(source, **kwargs):
    options = {**FAST, **kwargs}
    return NeuralNetworkFineTuneRepurposer(
        source,
        options.pop("transfer_layer_name", "relu2"),
        options.pop("target_class_count", 5),
        **options,
    )


def state_of(module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def params_of(repurposer) -> dict[str, np.ndarray]:
    return state_of(repurposer.target_handler_.model)


def assert_same_params(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


# ------------------------------------------------------------------------------------ basics
def test_fine_tune_learns_and_follows_the_contract(torch_source, small_digits):
    X, y, X_test, y_test = small_digits
    source_before = state_of(torch_source)
    repurposer = fine_tune(torch_source, num_epochs=4)
    assert repurposer.fit(X, y) is repurposer
    assert repurposer.score(X_test, y_test) >= 0.85
    probabilities = repurposer.predict_proba(X_test)
    assert probabilities.shape == (len(X_test), 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(
        repurposer.predict(X_test), repurposer.classes_[probabilities.argmax(1)]
    )
    np.testing.assert_array_equal(repurposer.classes_, [5, 6, 7, 8, 9])
    layers = repurposer.target_handler_.layer_names
    assert layers[-1] == HEAD and repurposer.output_layer_ == HEAD
    assert "fc1" not in layers and "relu2" in layers  # cut at relu2
    history = repurposer.history_
    assert history.epoch == [1, 2, 3, 4] and history.phase == ["full"] * 4
    assert history.loss[-1] < history.loss[0]
    assert history.val_loss == [None] * 4
    # Training never writes into the source network.
    assert_same_params(state_of(torch_source), source_before)
    # The target network is a torch module giving logits; softmax of them is predict_proba.
    target = repurposer.target_model
    assert isinstance(target, torch.nn.Module)
    with torch.no_grad():
        logits = target.eval()(torch.as_tensor(X_test)).double()
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), probabilities, atol=1e-6)


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


def test_string_labels(torch_source, small_digits):
    X, y, X_test, _ = small_digits
    names = np.array(["a-five", "b-six", "c-seven", "d-eight", "e-nine"])  # sorted like 5..9
    numbers = fine_tune(torch_source, num_epochs=2).fit(X, y)
    strings = fine_tune(torch_source, num_epochs=2, target_class_count=None).fit(X, names[y - 5])
    predictions = strings.predict(X_test)
    assert predictions.dtype.kind == "U" and set(predictions) <= set(names)
    # Same seed and same encoded labels: the string model is the integer model, relabelled.
    np.testing.assert_array_equal(strings.predict_proba(X_test), numbers.predict_proba(X_test))
    np.testing.assert_array_equal(numbers.predict_label(X_test), np.arange(5, 10)[
        strings.predict_proba(X_test).argmax(1)
    ])  # fmt: skip


def test_reproducible_with_seed_and_different_without(torch_source, small_digits):
    X, y, _, _ = small_digits
    options = dict(num_epochs=2, validation_fraction=0.2)
    first = params_of(fine_tune(torch_source, random_state=7, **options).fit(X, y))
    second = params_of(fine_tune(torch_source, random_state=7, **options).fit(X, y))
    assert_same_params(first, second)  # bit for bit on CPU
    other = params_of(fine_tune(torch_source, random_state=8, **options).fit(X, y))
    assert not np.array_equal(first[f"{HEAD}.weight"], other[f"{HEAD}.weight"])


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


# ------------------------------------------------------------------------------------ freezing
def test_random_freeze_fixed_layers_are_bit_identical(torch_source, small_digits):
    X, y, _, _ = small_digits
    before = state_of(torch_source)
    repurposer = NeuralNetworkRandomFreezeRepurposer(
        torch_source,
        5,
        fixed_layers=["conv1", "bn1"],
        random_layers=["conv2"],
        num_epochs=3,
        **FAST,
    ).fit(X, y)
    after = params_of(repurposer)
    for name in ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", *BN_STATS]:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert not np.allclose(after["conv2.weight"], before["conv2.weight"])  # re-initialised
    assert not np.allclose(after["fc1.weight"], before["fc1.weight"])  # trained
    assert "new_fully_connected_layer.weight" in after
    assert repurposer.target_handler_.layer_names[-3:] == [
        "relu3",
        "new_fully_connected_layer_flatten",
        "new_fully_connected_layer",
    ]


def test_batchnorm_statistics_change_unless_frozen(torch_source, small_digits):
    """The frozen check can fail: without freezing, training updates BN statistics."""
    X, y, _, _ = small_digits
    before = state_of(torch_source)
    after = params_of(fine_tune(torch_source, num_epochs=1).fit(X, y))
    assert not np.array_equal(after["bn1.running_mean"], before["bn1.running_mean"])
    frozen = params_of(fine_tune(torch_source, num_epochs=1, freeze_batchnorm=True).fit(X, y))
    for name in ["bn1.weight", "bn1.bias", *BN_STATS]:
        np.testing.assert_array_equal(frozen[name], before[name], err_msg=name)
    assert not np.array_equal(frozen["conv1.weight"], before["conv1.weight"])


def test_transferred_lr_mult(torch_source, small_digits):
    X, y, _, _ = small_digits
    before = state_of(torch_source)
    kept = params_of(fine_tune(torch_source, num_epochs=2, transferred_lr_mult=0.0).fit(X, y))
    for name in TRANSFERRED + BN_STATS:
        np.testing.assert_array_equal(kept[name], before[name], err_msg=name)
    assert not np.array_equal(kept[f"{HEAD}.weight"], params_of(fine_tune(torch_source, num_epochs=1).fit(X, y))[f"{HEAD}.weight"])  # fmt: skip
    slower = params_of(fine_tune(torch_source, num_epochs=2, transferred_lr_mult=0.1).fit(X, y))
    full = params_of(fine_tune(torch_source, num_epochs=2).fit(X, y))
    moved_slow = np.abs(slower["conv2.weight"] - before["conv2.weight"]).mean()
    moved_full = np.abs(full["conv2.weight"] - before["conv2.weight"]).mean()
    assert 0 < moved_slow < 0.5 * moved_full


def test_two_phase_freezes_body_then_trains_it(torch_source, small_digits, tmp_path):
    X, y, _, _ = small_digits
    before = state_of(torch_source)
    snapshots = {}

    class Recording(NeuralNetworkFineTuneRepurposer):
        def _epoch_end_hook(self, epoch):
            manifest = json.loads((tmp_path / "checkpoint.json").read_text())
            files = manifest["files"]["params"]["name"]
            snapshots[epoch] = dict(np.load(tmp_path / files, allow_pickle=False))

    repurposer = Recording(
        torch_source, "relu2", 5, num_epochs=2, head_epochs=2, checkpoint_dir=str(tmp_path), **FAST
    ).fit(X, y)
    for name in TRANSFERRED + BN_STATS:  # after the head phase
        np.testing.assert_array_equal(snapshots[2][name], before[name], err_msg=name)
    assert not np.array_equal(snapshots[1][f"{HEAD}.weight"], snapshots[2][f"{HEAD}.weight"])
    after = params_of(repurposer)
    assert not np.array_equal(after["conv1.weight"], before["conv1.weight"])
    assert not np.array_equal(after["bn1.running_mean"], before["bn1.running_mean"])
    history = repurposer.history_
    assert history.phase == ["head", "head", "full", "full"]
    assert history.learning_rate == pytest.approx([0.01, 0.01, 0.001, 0.001])


# ------------------------------------------------------------------------------------ validation
def test_validation_data_early_stopping_and_schedules(torch_source, small_digits):
    X, y, X_test, y_test = small_digits
    given = fine_tune(torch_source, num_epochs=2, lr_schedule="step")
    given.fit(X, y, validation_data=(X_test, y_test))
    probabilities = given.predict_proba(X_test)
    loss = -np.mean(np.log(probabilities[np.arange(len(y_test)), y_test - 5]))
    assert given.history_.val_loss[-1] == pytest.approx(loss, rel=1e-4)
    assert given.history_.val_accuracy[-1] == pytest.approx(given.score(X_test, y_test))
    assert given.history_.learning_rate == pytest.approx([0.01, 0.001])

    wrong = np.random.RandomState(1).permutation(y_test)  # validation loss rises as training fits X
    stopping = fine_tune(
        torch_source, num_epochs=15, early_stopping_patience=2, lr_schedule="cosine"
    )
    stopping.fit(X, y, validation_data=(X_test, wrong))
    history = stopping.history_
    assert history.stopped_early and len(history) < 15
    best = int(np.argmin(history.val_loss)) + 1
    assert history.best_epoch == best and len(history) == best + 2
    probabilities = stopping.predict_proba(X_test)
    loss = -np.mean(np.log(probabilities[np.arange(len(wrong)), wrong - 5]))
    assert loss == pytest.approx(history.val_loss[best - 1], rel=1e-4)
    assert loss < history.val_loss[-1]
    cosine = [0.01 * 0.5 * (1 + np.cos(np.pi * e / 15)) for e in range(len(history))]
    assert history.learning_rate == pytest.approx(cosine)

    split = fine_tune(torch_source, num_epochs=1, validation_fraction=0.25).fit(X, y)
    assert split.n_training_examples_ == 90 and split.history_.val_accuracy[0] is not None


# ------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("stop_after", [1, 2, 3, 4])  # 2: between phases, 4: after the last epoch
def test_resume_after_interruption_reaches_the_same_weights(
    torch_source, small_digits, tmp_path, stop_after
):
    X, y, _, _ = small_digits
    options = dict(
        num_epochs=2,
        head_epochs=2,
        validation_fraction=0.2,
        lr_schedule="cosine",
        early_stopping_patience=5,
        optimizer="sgd",
        optimizer_params={"learning_rate": 0.05, "momentum": 0.9},
        random_state=11,
    )
    reference = fine_tune(torch_source, **options).fit(X, y)

    class Crashing(NeuralNetworkFineTuneRepurposer):
        def _epoch_end_hook(self, epoch):
            if epoch == stop_after:
                raise Interrupted

    interrupted = Crashing(
        torch_source, "relu2", 5, checkpoint_dir=str(tmp_path), **{**FAST, **options}
    )
    with pytest.raises(Interrupted):
        interrupted.fit(X, y)
    assert not hasattr(interrupted, "classes_")
    resumed = fine_tune(torch_source, checkpoint_dir=str(tmp_path), **options)
    resumed.fit(X, y, resume=True)
    assert_same_params(params_of(resumed), params_of(reference))
    assert resumed.history_.loss == reference.history_.loss
    assert resumed.history_.val_loss == reference.history_.val_loss
    assert resumed.history_.best_epoch == reference.history_.best_epoch is not None
    assert resumed.history_.phase == reference.history_.phase


def test_resume_errors(torch_source, small_digits, tmp_path):
    X, y, _, _ = small_digits
    with pytest.raises(ModelFileNotFoundError, match="No checkpoint"):
        fine_tune(torch_source, checkpoint_dir=str(tmp_path)).fit(X, y, resume=True)
    with pytest.raises(InvalidArgumentError, match="checkpoint_dir"):
        fine_tune(torch_source).fit(X, y, resume=True)
    fine_tune(torch_source, num_epochs=1, checkpoint_dir=str(tmp_path)).fit(X, y)
    with pytest.raises(InvalidArgumentError, match="other data or settings"):
        fine_tune(torch_source, num_epochs=1, checkpoint_dir=str(tmp_path)).fit(
            X[:-1], y[:-1], resume=True
        )
    files = [p.name for p in tmp_path.iterdir()]
    assert not any(name.endswith((".tmp", ".pkl", ".pickle", ".pt")) for name in files)


# ------------------------------------------------------------------------------------ devices
def test_gpu_context_is_a_clear_error_without_gpu(torch_source, small_digits):
    X, y, _, _ = small_digits
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceUnavailableError, match="GPU"):
        fine_tune(torch_source, num_epochs=1).fit(X, y, context="gpu:0")
    repurposer = fine_tune(torch_source, num_epochs=1).fit(X, y, context=torch.device("cpu"))
    with pytest.raises(DeviceUnavailableError):
        repurposer.predict(X, context="gpu:0")
    with pytest.raises(InvalidArgumentError, match="torchrun"):
        fine_tune(torch_source, num_epochs=1).fit(X, y, context=["cpu:0", "cpu:1"])


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
        assert _torch_training.distributed_world() == (0, 1)
        distributed = fine_tune(torch_source, checkpoint_dir=str(tmp_path / "ck"), **options)
        distributed.fit(X, y)
    finally:
        dist.destroy_process_group()
    for name, value in params_of(plain).items():
        np.testing.assert_allclose(params_of(distributed)[name], value, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "ck" / "checkpoint.json").is_file()


# ------------------------------------------------------------------------------------ saving
def test_save_load_round_trip_with_source_model(torch_source, small_digits, tmp_path):
    X, y, X_test, _ = small_digits
    names = np.array(["five", "six", "seven", "eight", "nine"])
    repurposer = fine_tune(
        torch_source, num_epochs=2, target_class_count=None, validation_fraction=0.2
    ).fit(X, names[y - 5])
    repurposer.save_repurposer("ft", str(tmp_path))
    for suffix in (".json", "-target.json", "-target.safetensors"):
        assert (tmp_path / f"ft{suffix}").is_file()
    assert not list(tmp_path.glob("ft_source*"))  # the target network is the model
    with pytest.raises(InvalidArgumentError, match="source_model="):
        xfer.load("ft", str(tmp_path))
    # Any network of the source's architecture rebuilds the target: the weights come from the file.
    loaded = xfer.load("ft", str(tmp_path), source_model=torch_digits_cnn(seed=3))
    assert type(loaded) is NeuralNetworkFineTuneRepurposer
    np.testing.assert_array_equal(loaded.classes_, repurposer.classes_)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), repurposer.predict_proba(X_test))
    np.testing.assert_array_equal(loaded.predict(X_test), repurposer.predict(X_test))
    assert loaded.history_.to_dict() == repurposer.history_.to_dict()
    assert loaded.get_params().keys() == repurposer.get_params().keys()
    assert_same_params(params_of(loaded), params_of(repurposer))
    # The weights are a plain safetensors file of the target network's state_dict.
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "ft-target.safetensors"))
    assert weights[f"{HEAD}.weight"].shape == (5, 512)

    random_freeze = NeuralNetworkRandomFreezeRepurposer(
        torch_source, 5, ["conv1"], ["fc1"], num_epochs=1, **FAST
    ).fit(X, y)
    random_freeze.save(tmp_path / "rf")
    again = xfer.load(tmp_path / "rf", source_model=torch_source)
    np.testing.assert_array_equal(again.predict_proba(X_test), random_freeze.predict_proba(X_test))
    (tmp_path / "ft-target.safetensors").unlink()
    with pytest.raises(ModelFileNotFoundError, match="ft-target.safetensors"):
        xfer.load("ft", str(tmp_path), source_model=torch_source)


def test_load_with_another_architecture_is_a_clear_error(torch_source, small_digits, tmp_path):
    X, y, _, _ = small_digits
    repurposer = fine_tune(torch_source, num_epochs=1, transfer_layer_name="relu3").fit(X, y)
    repurposer.save(tmp_path / "m")
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU())
    with pytest.raises(ValueError, match="relu3"):
        xfer.load(tmp_path / "m", source_model=other)


def test_save_unfitted(torch_source, tmp_path):
    repurposer = fine_tune(torch_source, head_epochs=1)
    repurposer.save(tmp_path / "unfitted")
    loaded = xfer.load("unfitted", tmp_path)
    assert loaded.head_epochs == 1
    with pytest.raises(NotFittedError):
        loaded.predict(np.zeros((2, 1, 8, 8), np.float32))


# ------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"batch_size": 0}, InvalidArgumentError, "batch_size"),
        ({"optimizer": "sgdd"}, InvalidArgumentError, "Unknown optimizer"),
        ({"optimizer": "ftml"}, InvalidArgumentError, "PyTorch source"),
        ({"optimizer_params": {"momentum": "high"}}, InvalidArgumentError, "not valid"),
        ({"optimizer_params": {"gamma9": 1}}, InvalidArgumentError, "gamma9"),
        ({"optimizer_params": {"learning_rate": -1}}, InvalidArgumentError, "learning_rate"),
        ({"optimizer_params": {"clip_gradient": -1}}, InvalidArgumentError, "clip_gradient"),
        ({"lr_schedule": "linear"}, InvalidArgumentError, "lr_schedule"),
        (
            {"lr_schedule": mx.lr_scheduler.FactorScheduler(step=4)},
            InvalidArgumentError,
            "PyTorch source",
        ),
        ({"early_stopping_patience": 2}, InvalidArgumentError, "needs validation data"),
        ({"transfer_layer_name": "relu_2"}, LayerNotFoundError, "relu2"),
        ({"transfer_layer_name": ["relu2"]}, InvalidTypeError, "transfer_layer_name"),
        ({"transfer_layer_name": "softmax"}, ModelError, "output layer"),
        ({"target_class_count": 4}, InvalidArgumentError, "target_class_count=4"),
    ],
)
def test_bad_arguments(torch_source, small_digits, options, error, match):
    X, y, _, _ = small_digits
    with pytest.raises(error, match=match):
        fine_tune(torch_source, **{"num_epochs": 1, **options}).fit(X, y)


def test_bad_random_freeze_arguments(torch_source, small_digits):
    X, y, _, _ = small_digits
    with pytest.raises(InvalidArgumentError, match="dropped"):
        NeuralNetworkRandomFreezeRepurposer(torch_source, 5, ["fc2"], [], **FAST).fit(X, y)
    with pytest.raises(ModelError, match="output layer"):
        NeuralNetworkRandomFreezeRepurposer(torch_source, 5, [], [], 0, **FAST).fit(X, y)
    with pytest.raises(InvalidArgumentError, match="both"):
        NeuralNetworkRandomFreezeRepurposer(torch_source, 5, ["fc1"], ["fc1"], **FAST).fit(X, y)


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

    from xfer.exceptions import ModelError

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
