"""The fine-tuning repurposers, one suite run on every backend (MXNet, PyTorch, and the test-only
functional backend of ``tests/functional_backend.py``).

The source is the toy digits CNN (``conv1 bn1 relu1 pool1 conv2 relu2 flatten fc1 relu3 fc2
softmax``) trained on digits 0-4, in each backend's form; targets are digits 5-9. Each fit takes
well under a second. What only one backend has (MXNet data iterators, kvstore and Xfer's module
hook; torch datasets, optimiser mapping and DistributedDataParallel) is tested in
``tests/fine_tuning/test_mxnet_backend.py`` and ``tests/fine_tuning/test_torch_backend.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import functional_backend
import numpy as np
import pytest
from fine_tune_support import (
    FAST,
    HEAD,
    Interrupted,
    assert_same_params,
    fine_tune,
    parameters,
    params_of,
    trained_torch_digits_cnn,
)

import xfer
from xfer.exceptions import (
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidTypeError,
    LayerNotFoundError,
    ModelError,
    ModelFileNotFoundError,
    NotFittedError,
)
from xfer.fine_tuning import training_backend
from xfer.fine_tuning.checkpoint import checkpoint_seed
from xfer.model_handler import ModelHandler
from xfer.repurposers import NeuralNetworkFineTuneRepurposer, NeuralNetworkRandomFreezeRepurposer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------ backends
#: Parameter kinds -> each backend's suffix: (separator, {kind: name}).
_NAMING = {
    "mxnet": ("_", {"scale": "gamma", "shift": "beta", "mean": "moving_mean", "var": "moving_var"}),
    "torch": (".", {"scale": "weight", "shift": "bias", "mean": "running_mean", "var": "running_var"}),
    "functional": ("/", {"scale": "weight", "shift": "bias", "mean": "running_mean", "var": "running_var"}),
}  # fmt: skip


@dataclass
class Kit:
    """One backend's toy source and the few facts the shared tests need about it."""

    name: str
    build_source: Callable[[], Any]
    fresh_source: Callable[[], Any]  # an untrained network of the same architecture
    target_proba: Callable[[Any, np.ndarray], np.ndarray]  # target_model's probabilities
    source: Any = None

    def param(self, layer: str, kind: str) -> str:
        """``param("bn1", "mean")`` -> ``bn1_moving_mean`` (MXNet), ``bn1.running_mean`` (torch)..."""
        separator, kinds = _NAMING[self.name]
        return f"{layer}{separator}{kinds.get(kind, kind)}"

    @property
    def transferred(self) -> list[str]:
        """The parameters of the layers up to relu2 (transferred by a fine-tune at relu2)."""
        return [self.param(*p) for p in [("conv1", "weight"), ("conv1", "bias"), ("bn1", "scale"),
                                         ("bn1", "shift"), ("conv2", "weight"), ("conv2", "bias")]]  # fmt: skip

    @property
    def statistics(self) -> list[str]:
        return [self.param("bn1", "mean"), self.param("bn1", "var")]

    def source_params(self) -> dict[str, np.ndarray]:
        return parameters(ModelHandler(self.source))


def _mxnet_proba(module: Any, X: np.ndarray) -> np.ndarray:
    from xfer._mxnet import mx

    module.bind(data_shapes=[("data", (len(X), *X.shape[1:]))], for_training=False)
    return module.predict(mx.io.NDArrayIter(X, batch_size=len(X))).asnumpy()


def _torch_proba(model: Any, X: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.softmax(model.eval()(torch.as_tensor(X)).double(), 1).numpy()


def _functional_proba(net: Any, X: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.softmax(net(torch.as_tensor(X)).double(), 1).numpy()


def _torch_fresh():
    from xfer.toy_models import torch_digits_cnn

    return torch_digits_cnn(seed=3)


KITS = {
    "mxnet": Kit("mxnet", lambda: None, lambda: None, _mxnet_proba),
    "torch": Kit("torch", trained_torch_digits_cnn, _torch_fresh, _torch_proba),
    "functional": Kit(
        "functional",
        lambda: functional_backend.from_sequential(trained_torch_digits_cnn()),
        lambda: functional_backend.from_sequential(_torch_fresh()),
        _functional_proba,
    ),
}


def _with_source(kit: Kit, request: Any) -> Kit:
    if kit.source is None:
        kit.source = (
            request.getfixturevalue("digits_source_model")
            if kit.name == "mxnet"
            else kit.build_source()
        )
    return kit


@pytest.fixture(params=list(KITS), scope="module")
def kit(request):
    return _with_source(KITS[request.param], request)


def checkpointed(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A parameter in a checkpoint's arrays (MXNet prefixes them with ``arg:``/``aux:``)."""
    for key in (name, f"arg:{name}", f"aux:{name}"):
        if key in arrays:
            return arrays[key]
    raise KeyError(name)


# ------------------------------------------------------------------------------------ basics
@pytest.mark.filterwarnings("ignore:Data provided by label_shapes")  # MXNet: bound without labels
def test_fine_tune_learns_and_follows_the_contract(kit, small_digits):
    X, y, X_test, y_test = small_digits
    before = kit.source_params()
    repurposer = fine_tune(kit.source, num_epochs=4)
    assert repurposer.fit(X, y) is repurposer
    assert repurposer.score(X_test, y_test) >= 0.85
    probabilities = repurposer.predict_proba(X_test)
    assert probabilities.shape == (len(X_test), 5) and probabilities.dtype == np.float64
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(
        repurposer.predict(X_test), repurposer.classes_[probabilities.argmax(1)]
    )
    np.testing.assert_array_equal(repurposer.classes_, [5, 6, 7, 8, 9])
    layers = repurposer.target_handler_.layer_names
    new = repurposer.new_layers_
    assert HEAD in new and layers[-len(new) :] == new and repurposer.output_layer_ == new[-1]
    assert layers[: -len(new)][-1] == "relu2" and "fc1" not in layers  # cut at relu2
    history = repurposer.history_
    assert history.epoch == [1, 2, 3, 4] and history.phase == ["full"] * 4
    assert history.loss[-1] < history.loss[0]
    assert history.val_loss == [None] * 4
    assert_same_params(kit.source_params(), before)  # training never writes into the source
    target = repurposer.target_model
    np.testing.assert_allclose(kit.target_proba(target, X_test), probabilities, atol=1e-5)


def test_string_labels_give_the_integer_model_relabelled(kit, small_digits):
    X, y, X_test, _ = small_digits
    names = np.array(["a-five", "b-six", "c-seven", "d-eight", "e-nine"])  # sorted like 5..9
    numbers = fine_tune(kit.source, num_epochs=2).fit(X, y)
    strings = fine_tune(kit.source, num_epochs=2, target_class_count=None).fit(X, names[y - 5])
    predictions = strings.predict(X_test)
    assert predictions.dtype.kind == "U" and set(predictions) <= set(names)
    np.testing.assert_array_equal(strings.predict_proba(X_test), numbers.predict_proba(X_test))
    np.testing.assert_array_equal(
        numbers.predict_label(X_test), np.arange(5, 10)[strings.predict_proba(X_test).argmax(1)]
    )
    np.testing.assert_array_equal(
        numbers.predict_probability(X_test), numbers.predict_proba(X_test)
    )


def test_reproducible_with_seed_and_different_without(kit, small_digits):
    X, y, _, _ = small_digits
    options = dict(num_epochs=2, validation_fraction=0.2)
    first = params_of(fine_tune(kit.source, random_state=7, **options).fit(X, y))
    second = params_of(fine_tune(kit.source, random_state=7, **options).fit(X, y))
    assert_same_params(first, second)  # bit for bit on CPU
    other = params_of(fine_tune(kit.source, random_state=8, **options).fit(X, y))
    head = kit.param(HEAD, "weight")
    assert not np.array_equal(first[head], other[head])


# ------------------------------------------------------------------------------------ freezing
def test_random_freeze_fixed_layers_are_bit_identical(kit, small_digits):
    X, y, _, _ = small_digits
    before = kit.source_params()
    repurposer = NeuralNetworkRandomFreezeRepurposer(
        kit.source, 5, fixed_layers=["conv1", "bn1"], random_layers=["conv2"], num_epochs=3, **FAST
    ).fit(X, y)
    after = params_of(repurposer)
    for name in kit.transferred[:4] + kit.statistics:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    conv2, fc1 = kit.param("conv2", "weight"), kit.param("fc1", "weight")
    assert not np.allclose(after[conv2], before[conv2])  # re-initialised and trained
    assert not np.allclose(after[fc1], before[fc1])  # trained
    layers, new = repurposer.target_handler_.layer_names, repurposer.new_layers_
    assert "new_fully_connected_layer" in new and layers[: -len(new)][-1] == "relu3"


def test_batchnorm_statistics_change_unless_frozen(kit, small_digits):
    """The frozen check can fail: without freezing, training updates BatchNorm statistics."""
    X, y, _, _ = small_digits
    before = kit.source_params()
    mean = kit.param("bn1", "mean")
    after = params_of(fine_tune(kit.source, num_epochs=1).fit(X, y))
    assert not np.array_equal(after[mean], before[mean])
    frozen = params_of(fine_tune(kit.source, num_epochs=1, freeze_batchnorm=True).fit(X, y))
    for name in kit.transferred[2:4] + kit.statistics:
        np.testing.assert_array_equal(frozen[name], before[name], err_msg=name)
    conv1 = kit.param("conv1", "weight")
    assert not np.array_equal(frozen[conv1], before[conv1])


def test_transferred_lr_mult(kit, small_digits):
    X, y, _, _ = small_digits
    before = kit.source_params()
    kept = params_of(
        fine_tune(kit.source, num_epochs=2, transferred_lr_mult=0.0, freeze_batchnorm=True).fit(
            X, y
        )
    )
    for name in kit.transferred + kit.statistics:
        np.testing.assert_array_equal(kept[name], before[name], err_msg=name)
    slower = params_of(fine_tune(kit.source, num_epochs=2, transferred_lr_mult=0.1).fit(X, y))
    full = params_of(fine_tune(kit.source, num_epochs=2).fit(X, y))
    conv2 = kit.param("conv2", "weight")
    moved_slow = np.abs(slower[conv2] - before[conv2]).mean()
    moved_full = np.abs(full[conv2] - before[conv2]).mean()
    assert 0 < moved_slow < 0.5 * moved_full


def test_two_phase_freezes_body_then_trains_it_slower(kit, small_digits, tmp_path):
    X, y, _, _ = small_digits
    before = kit.source_params()
    snapshots = {}

    class Recording(NeuralNetworkFineTuneRepurposer):
        def _epoch_end_hook(self, epoch):
            manifest = json.loads((tmp_path / "checkpoint.json").read_text())
            files = manifest["files"]["params"]["name"]
            snapshots[epoch] = dict(np.load(tmp_path / files, allow_pickle=False))

    repurposer = fine_tune(
        kit.source, Recording, num_epochs=2, head_epochs=2, checkpoint_dir=str(tmp_path)
    ).fit(X, y)
    for name in kit.transferred + kit.statistics:  # after the head phase
        np.testing.assert_array_equal(checkpointed(snapshots[2], name), before[name], err_msg=name)
    head = kit.param(HEAD, "weight")
    assert not np.array_equal(checkpointed(snapshots[1], head), checkpointed(snapshots[2], head))
    after = params_of(repurposer)
    for name in (kit.param("conv1", "weight"), kit.param("bn1", "mean")):
        assert not np.array_equal(after[name], before[name]), name
    history = repurposer.history_
    assert history.phase == ["head", "head", "full", "full"]
    assert history.learning_rate == pytest.approx([0.01, 0.01, 0.001, 0.001])


# ------------------------------------------------------------------------------------ validation
def test_validation_fraction_and_data(kit, small_digits):
    X, y, X_test, y_test = small_digits
    split = fine_tune(kit.source, num_epochs=1, validation_fraction=0.25).fit(X, y)
    assert split.n_training_examples_ == 90 and split.history_.val_accuracy[0] is not None
    given = fine_tune(kit.source, num_epochs=2).fit(X, y, validation_data=(X_test, y_test))
    probabilities = given.predict_proba(X_test)
    loss = -np.mean(np.log(probabilities[np.arange(len(y_test)), y_test - 5]))
    assert given.history_.val_loss[-1] == pytest.approx(loss, rel=1e-4)
    assert given.history_.val_accuracy[-1] == pytest.approx(given.score(X_test, y_test))


def test_early_stopping_restores_the_best_epoch(kit, small_digits):
    X, y, X_test, y_test = small_digits
    wrong = np.random.RandomState(1).permutation(y_test)  # validation loss rises as training fits X
    repurposer = fine_tune(kit.source, num_epochs=15, early_stopping_patience=2)
    repurposer.fit(X, y, validation_data=(X_test, wrong))
    history = repurposer.history_
    assert history.stopped_early and len(history) < 15
    best = int(np.argmin(history.val_loss)) + 1
    assert history.best_epoch == best and len(history) == best + 2
    probabilities = repurposer.predict_proba(X_test)
    loss = -np.mean(np.log(probabilities[np.arange(len(wrong)), wrong - 5]))
    assert loss == pytest.approx(history.val_loss[best - 1], rel=1e-4)
    assert loss < history.val_loss[-1]


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("step", [0.01, 0.01, 0.001, 0.0001]),
        ("cosine", [0.01 * 0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(4)]),
        (None, [0.01] * 4),
    ],
)
def test_lr_schedules(kit, small_digits, schedule, expected):
    X, y, _, _ = small_digits
    repurposer = fine_tune(kit.source, num_epochs=4, lr_schedule=schedule).fit(X, y)
    assert repurposer.history_.learning_rate == pytest.approx(expected)


def test_plot_history(kit, small_digits):
    import matplotlib

    matplotlib.use("Agg")
    X, y, _, _ = small_digits
    repurposer = fine_tune(kit.source, num_epochs=2, head_epochs=1, validation_fraction=0.2)
    axes = repurposer.fit(X, y).plot_history()
    assert len(axes) == 2 and len(axes[0].lines) >= 2
    assert repurposer.history_["loss"] == repurposer.history_.loss


# ------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("stop_after", [1, 2, 3, 4])  # 2: between phases, 4: after the last epoch
def test_resume_after_interruption_reaches_the_same_weights(kit, small_digits, tmp_path, stop_after):
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
    reference = fine_tune(kit.source, **options).fit(X, y)

    class Crashing(NeuralNetworkFineTuneRepurposer):
        def _epoch_end_hook(self, epoch):
            if epoch == stop_after:
                raise Interrupted

    interrupted = fine_tune(kit.source, Crashing, checkpoint_dir=str(tmp_path), **options)
    with pytest.raises(Interrupted):
        interrupted.fit(X, y)
    assert not hasattr(interrupted, "classes_")
    resumed = fine_tune(kit.source, checkpoint_dir=str(tmp_path), **options)
    resumed.fit(X, y, resume=True)
    assert_same_params(params_of(resumed), params_of(reference))
    assert resumed.history_.loss == reference.history_.loss
    assert resumed.history_.val_loss == reference.history_.val_loss
    assert resumed.history_.phase == reference.history_.phase
    assert resumed.history_.best_epoch == reference.history_.best_epoch is not None


def test_resume_without_seed_uses_the_checkpoint_seed(kit, small_digits, tmp_path):
    X, y, _, _ = small_digits

    class Crashing(NeuralNetworkFineTuneRepurposer):
        def _epoch_end_hook(self, epoch):
            if epoch == 1:
                raise Interrupted

    options = {"random_state": None, "num_epochs": 2, "checkpoint_dir": str(tmp_path)}
    with pytest.raises(Interrupted):
        fine_tune(kit.source, Crashing, **options).fit(X, y)
    seed = checkpoint_seed(tmp_path)
    resumed = fine_tune(kit.source, **options).fit(X, y, resume=True)
    reference = fine_tune(
        kit.source, **{**options, "random_state": seed, "checkpoint_dir": None}
    ).fit(X, y)
    assert_same_params(params_of(resumed), params_of(reference))


def test_resume_errors(kit, small_digits, tmp_path):
    X, y, _, _ = small_digits
    with pytest.raises(ModelFileNotFoundError, match="No checkpoint"):
        fine_tune(kit.source, checkpoint_dir=str(tmp_path)).fit(X, y, resume=True)
    with pytest.raises(InvalidArgumentError, match="resume=True needs checkpoint_dir"):
        fine_tune(kit.source).fit(X, y, resume=True)
    fine_tune(kit.source, num_epochs=1, checkpoint_dir=str(tmp_path)).fit(X, y)
    with pytest.raises(InvalidArgumentError, match="other data or settings"):
        fine_tune(kit.source, num_epochs=1, checkpoint_dir=str(tmp_path)).fit(
            X[:-1], y[:-1], resume=True
        )
    files = [p.name for p in tmp_path.iterdir()]
    assert not any(name.endswith((".tmp", ".pkl", ".pickle", ".pt")) for name in files)


def test_checkpoints_of_another_backend_are_refused(kit, small_digits, tmp_path, request):
    X, y, _, _ = small_digits
    other = _with_source(KITS["functional" if kit.name != "functional" else "mxnet"], request)
    fine_tune(other.source, num_epochs=1, checkpoint_dir=str(tmp_path)).fit(X, y)
    with pytest.raises(ValueError, match="training checkpoint|other data or settings"):
        fine_tune(kit.source, num_epochs=1, checkpoint_dir=str(tmp_path)).fit(X, y, resume=True)


# ------------------------------------------------------------------------------------ devices
def test_gpu_context_is_a_clear_error_without_gpu(kit, small_digits):
    from xfer.context import gpu_available

    X, y, _, _ = small_digits
    if gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceUnavailableError, match="GPU"):
        fine_tune(kit.source, num_epochs=1).fit(X, y, context="gpu:0")
    repurposer = fine_tune(kit.source, num_epochs=1).fit(X, y, context="cpu")
    with pytest.raises(DeviceUnavailableError):
        repurposer.predict(X, context="gpu:0")


# ------------------------------------------------------------------------------------ saving
@pytest.mark.filterwarnings("ignore:Data provided by label_shapes")  # MXNet: bound without labels
def test_save_load_round_trip(kit, small_digits, tmp_path):
    X, y, X_test, _ = small_digits
    names = np.array(["five", "six", "seven", "eight", "nine"])
    repurposer = fine_tune(
        kit.source, num_epochs=2, target_class_count=None, validation_fraction=0.2
    ).fit(X, names[y - 5])
    repurposer.save_repurposer("ft", str(tmp_path))
    manifest = json.loads((tmp_path / "ft.json").read_text())
    target_files = list(manifest["state"]["target_files"])
    assert target_files and all((tmp_path / name).is_file() for name in target_files)
    assert not list(tmp_path.glob("ft_source*"))  # the target network is the model
    backend = training_backend(repurposer.target_handler_)
    if backend.needs_source_to_load:
        with pytest.raises(InvalidArgumentError, match="source_model="):
            xfer.load("ft", str(tmp_path))
    # Any network of the source's architecture rebuilds the target: the weights come from the file.
    source = kit.fresh_source() if backend.needs_source_to_load else None
    loaded = xfer.load("ft", str(tmp_path), source_model=source)
    assert type(loaded) is NeuralNetworkFineTuneRepurposer
    np.testing.assert_array_equal(loaded.classes_, repurposer.classes_)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), repurposer.predict_proba(X_test))
    assert_same_params(params_of(loaded), params_of(repurposer))
    assert loaded.history_.to_dict() == repurposer.history_.to_dict()
    assert loaded.get_params().keys() == repurposer.get_params().keys()
    (tmp_path / target_files[-1]).unlink()
    with pytest.raises(ModelFileNotFoundError, match=target_files[-1]):
        xfer.load("ft", str(tmp_path), source_model=source)


def test_random_freeze_round_trip_and_unfitted_saves(kit, small_digits, tmp_path):
    X, y, X_test, _ = small_digits
    repurposer = NeuralNetworkRandomFreezeRepurposer(kit.source, 5, ["conv1"], ["fc1"], **FAST)
    repurposer.save(tmp_path / "unfitted")
    unfitted = xfer.load("unfitted", tmp_path)
    assert unfitted.get_params(deep=False).keys() == repurposer.get_params(deep=False).keys()
    with pytest.raises(NotFittedError):
        unfitted.predict(X_test)
    assert repurposer.target_model is None  # before fitting, as in Xfer
    repurposer.set_params(num_epochs=1).fit(X, y).save(tmp_path / "rf")
    again = xfer.load(tmp_path / "rf", source_model=kit.source)
    np.testing.assert_array_equal(again.predict_proba(X_test), repurposer.predict_proba(X_test))


# ------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"batch_size": 0}, InvalidArgumentError, "batch_size must be >= 1"),
        ({"batch_size": 2.5}, InvalidTypeError, "batch_size must be an integer"),
        ({"num_epochs": 0}, InvalidArgumentError, "num_epochs"),
        ({"head_epochs": -1}, InvalidArgumentError, "head_epochs"),
        ({"optimizer": "sgdd"}, InvalidArgumentError, "Unknown optimizer 'sgdd'"),
        ({"optimizer": 3}, InvalidTypeError, "optimizer must be the name"),
        ({"optimizer_params": {"learning_rate": -1}}, InvalidArgumentError, "learning_rate"),
        ({"optimizer_params": {"lr_scheduler": None}}, InvalidArgumentError, "lr_schedule="),
        ({"optimizer_params": [("learning_rate", 0.1)]}, InvalidTypeError, "optimizer_params"),
        ({"optimizer_params": {"momentum": "high"}}, InvalidArgumentError, "not valid"),
        ({"validation_fraction": 1.0}, InvalidArgumentError, "validation_fraction"),
        ({"early_stopping_patience": 2}, InvalidArgumentError, "needs validation data"),
        ({"early_stopping_patience": 0}, InvalidArgumentError, "early_stopping_patience"),
        ({"lr_schedule": "linear"}, InvalidArgumentError, "lr_schedule must be None"),
        ({"transferred_lr_mult": -0.5}, InvalidArgumentError, "transferred_lr_mult"),
        ({"unfreeze_lr_factor": 0}, InvalidArgumentError, "unfreeze_lr_factor"),
        ({"freeze_batchnorm": "yes"}, InvalidTypeError, "freeze_batchnorm"),
        ({"random_state": "seed"}, InvalidTypeError, "random_state"),
        ({"transfer_layer_name": "relu_2"}, LayerNotFoundError, "relu2"),
        ({"transfer_layer_name": ["relu2"]}, InvalidTypeError, "transfer_layer_name"),
        ({"transfer_layer_name": "softmax"}, ModelError, "output layer"),
        ({"target_class_count": 4}, InvalidArgumentError, "target_class_count=4"),
    ],
)
def test_bad_arguments(kit, small_digits, options, error, match):
    X, y, _, _ = small_digits
    with pytest.raises(error, match=match):
        fine_tune(kit.source, **{"num_epochs": 1, **options}).fit(X, y)


@pytest.mark.parametrize(
    "fixed, random, drop, error, match",
    [
        ("conv1", [], 2, InvalidTypeError, "list of layer names"),
        (["conv_1"], [], 2, LayerNotFoundError, "conv1"),
        (["conv1"], ["conv1"], 2, InvalidArgumentError, "both"),
        ([], [], 0, ModelError, "output layer"),
        ([], [], -1, InvalidArgumentError, "num_layers_to_drop"),
    ],
)
def test_bad_random_freeze_arguments(kit, small_digits, fixed, random, drop, error, match):
    X, y, _, _ = small_digits
    repurposer = NeuralNetworkRandomFreezeRepurposer(
        kit.source, 5, fixed, random, drop, num_epochs=1, **FAST
    )
    with pytest.raises(error, match=match):
        repurposer.fit(X, y)


def test_bad_data(kit, small_digits):
    X, y, X_test, _ = small_digits
    repurposer = fine_tune(kit.source, num_epochs=1)
    with pytest.raises(InvalidArgumentError, match="requires y"):
        repurposer.fit(X)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        repurposer.fit(X, y[:-1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        repurposer.fit(X, np.zeros(len(X), dtype=int))
    bad = X.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN"):
        repurposer.fit(bad, y)
    with pytest.raises(InvalidArgumentError, match="not both"):
        fine_tune(kit.source, validation_fraction=0.2).fit(X, y, validation_data=(X, y))
    with pytest.raises(InvalidTypeError, match="validation_data"):
        repurposer.fit(X, y, validation_data=X)
    with pytest.raises(InvalidArgumentError, match="not in the training labels"):
        repurposer.fit(X, y, validation_data=(X, y + 10))
    with pytest.raises(NotFittedError, match="not fitted"):
        repurposer.predict(X_test)
    repurposer.fit(X, y)
    with pytest.raises(InvalidArgumentError, match="shape"):
        repurposer.predict(X_test[:, :, :4, :4])


def test_get_params_and_clone(kit):
    from sklearn.base import clone

    from xfer._mxnet import mx

    repurposer = fine_tune(kit.source, head_epochs=2)
    params = repurposer.get_params()
    assert params["head_epochs"] == 2 and params["transfer_layer_name"] == "relu2"
    assert params["optimizer_params"] == {"learning_rate": 0.01}
    copy = clone(repurposer)
    assert copy.get_params().keys() == params.keys() and copy.source_model is kit.source
    defaults = NeuralNetworkFineTuneRepurposer(kit.source, "relu2", 5)
    assert (defaults.batch_size, defaults.num_epochs, defaults.optimizer) == (64, 5, "sgd")
    assert defaults.optimizer_params is None  # stored as given; {'learning_rate': 0.001} in fit
    assert defaults.get_params()["context_function"] is mx.cpu  # Xfer's default, as Xfer said
