"""Fine-tuning repurposers: training behaviour on the toy digits CNN (each fit well under a second)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import xfer
from xfer._mxnet import mx
from xfer.exceptions import (
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidTypeError,
    LayerNotFoundError,
    ModelError,
    ModelFileNotFoundError,
    NotFittedError,
)
from xfer.fine_tuning import checkpoint as training
from xfer.repurposers.fine_tune import (
    NeuralNetworkFineTuneRepurposer,
    NeuralNetworkRandomFreezeRepurposer,
)
from xfer.repurposers.neural_network import NeuralNetworkRepurposer

FAST = dict(
    batch_size=16, optimizer="adam", optimizer_params={"learning_rate": 0.01}, random_state=0
)
#: Layers of the toy CNN up to relu2 (transferred by a fine-tune at relu2).
TRANSFERRED = ["conv1_weight", "conv1_bias", "bn1_gamma", "bn1_beta", "conv2_weight", "conv2_bias"]


class Interrupted(Exception):
    """Raised from the epoch-end hook to simulate a crash."""


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


def params_of(repurposer) -> dict[str, np.ndarray]:
    handler = repurposer.target_handler_
    values = {k: v.asnumpy() for k, v in handler.arg_params.items()}
    values.update({k: v.asnumpy() for k, v in handler.aux_params.items()})
    return values


def source_params(module) -> dict[str, np.ndarray]:
    args, auxs = module.get_params()
    return {k: v.asnumpy() for k, v in {**args, **auxs}.items()}


def assert_same_params(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


# ------------------------------------------------------------------------------------ basics
def test_fine_tune_learns_and_follows_the_contract(digits_source_model, small_digits):
    X, y, X_test, y_test = small_digits
    repurposer = fine_tune(digits_source_model, num_epochs=4)
    assert repurposer.fit(X, y) is repurposer
    assert repurposer.score(X_test, y_test) >= 0.85
    probabilities = repurposer.predict_proba(X_test)
    assert probabilities.shape == (len(X_test), 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(
        repurposer.predict(X_test), repurposer.classes_[probabilities.argmax(1)]
    )
    np.testing.assert_array_equal(repurposer.classes_, [5, 6, 7, 8, 9])
    assert repurposer.target_handler_.layer_names[-2:] == [
        "fc_from_fine_tune_repurposer",
        "softmax",
    ]
    assert "fc1" not in repurposer.target_handler_.layer_names  # cut at relu2
    history = repurposer.history_
    assert history.epoch == [1, 2, 3, 4] and len(history.loss) == 4
    assert history.loss[-1] < history.loss[0]
    assert history.val_loss == [None] * 4


def test_string_labels_and_xfer_spellings(digits_source_model, small_digits):
    X, y, X_test, _ = small_digits
    names = np.array(["a-five", "b-six", "c-seven", "d-eight", "e-nine"])  # sorted like 5..9
    repurposer = fine_tune(digits_source_model, num_epochs=2)
    repurposer.repurpose(mx.io.NDArrayIter(X, y.astype(np.float32), 30, label_name="softmax_label"))
    strings = fine_tune(digits_source_model, num_epochs=2, target_class_count=None).fit(
        X, names[y - 5]
    )
    predictions = strings.predict(X_test)
    assert predictions.dtype.kind == "U" and set(predictions) <= set(names)
    # Same seed and same encoded labels: the string model is the integer model, relabelled.
    np.testing.assert_array_equal(strings.predict_proba(X_test), repurposer.predict_proba(X_test))
    np.testing.assert_array_equal(
        repurposer.predict_label(X_test), np.arange(5, 10)[strings.predict_proba(X_test).argmax(1)]
    )
    np.testing.assert_array_equal(
        repurposer.predict_probability(X_test), repurposer.predict_proba(X_test)
    )


def test_iterator_labels_come_back_as_ints(digits_source_model, small_digits):
    X, y, X_test, _ = small_digits
    repurposer = fine_tune(digits_source_model, num_epochs=1)
    repurposer.fit(mx.io.NDArrayIter(X, y.astype(np.float32), 50, label_name="softmax_label"))
    assert repurposer.classes_.dtype.kind == "i"
    unlabeled = mx.io.NDArrayIter(X_test, batch_size=7)  # no labels, padded last batch
    predictions = repurposer.predict(unlabeled)
    assert predictions.shape == (len(X_test),)
    np.testing.assert_array_equal(predictions, repurposer.predict(X_test))


def test_batch_size_is_honoured_for_arrays_and_iterators(
    digits_source_model, small_digits, tmp_path
):
    X, y, _, _ = small_digits
    for data, labels in ((X, y), (mx.io.NDArrayIter(X, y.astype(np.float32), 50), None)):
        directory = tmp_path / str(labels is None)
        fine_tune(
            digits_source_model, num_epochs=2, batch_size=16, checkpoint_dir=str(directory)
        ).fit(data, labels)
        manifest = json.loads((directory / "checkpoint.json").read_text())
        assert manifest["optimizer"]["num_update"] == 2 * int(np.ceil(len(X) / 16))


def test_reproducible_with_seed_and_different_without(digits_source_model, small_digits):
    X, y, _, _ = small_digits
    first = params_of(fine_tune(digits_source_model, num_epochs=2, random_state=7).fit(X, y))
    second = params_of(fine_tune(digits_source_model, num_epochs=2, random_state=7).fit(X, y))
    assert_same_params(first, second)
    other = params_of(fine_tune(digits_source_model, num_epochs=2, random_state=8).fit(X, y))
    assert not np.array_equal(
        first["fc_from_fine_tune_repurposer_weight"], other["fc_from_fine_tune_repurposer_weight"]
    )


# ------------------------------------------------------------------------------------ freezing
def test_random_freeze_fixed_layers_are_bit_identical(digits_source_model, small_digits):
    X, y, _, _ = small_digits
    before = source_params(digits_source_model)
    repurposer = NeuralNetworkRandomFreezeRepurposer(
        digits_source_model,
        5,
        fixed_layers=["conv1", "bn1"],
        random_layers=["conv2"],
        num_epochs=3,
        **FAST,
    ).fit(X, y)
    after = params_of(repurposer)
    for name in (
        "conv1_weight",
        "conv1_bias",
        "bn1_gamma",
        "bn1_beta",
        "bn1_moving_mean",
        "bn1_moving_var",
    ):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert not np.allclose(
        after["conv2_weight"], before["conv2_weight"]
    )  # re-initialised and trained
    assert not np.allclose(after["fc1_weight"], before["fc1_weight"])  # trained
    assert "new_fully_connected_layer_weight" in after
    assert repurposer.target_handler_.layer_names[-3:] == [
        "relu3",
        "new_fully_connected_layer",
        "softmax",
    ]


def test_unfrozen_batchnorm_statistics_do_change(digits_source_model, small_digits):
    """The check above can fail: without freezing, training updates BN statistics."""
    X, y, _, _ = small_digits
    before = source_params(digits_source_model)
    after = params_of(fine_tune(digits_source_model, num_epochs=1).fit(X, y))
    assert not np.array_equal(after["bn1_moving_mean"], before["bn1_moving_mean"])
    frozen = params_of(
        fine_tune(digits_source_model, num_epochs=1, freeze_batchnorm=True).fit(X, y)
    )
    for name in ("bn1_moving_mean", "bn1_moving_var", "bn1_gamma", "bn1_beta"):
        np.testing.assert_array_equal(frozen[name], before[name], err_msg=name)
    assert not np.array_equal(frozen["conv1_weight"], before["conv1_weight"])


def _conv1_conv10_model():
    data = mx.sym.var("data")
    net = mx.sym.Convolution(data, num_filter=3, kernel=(3, 3), pad=(1, 1), name="conv1")
    net = mx.sym.Convolution(net, num_filter=3, kernel=(3, 3), pad=(1, 1), name="conv10")
    net = mx.sym.Activation(net, act_type="relu", name="relu")
    net = mx.sym.Flatten(net, name="flatten")
    net = mx.sym.FullyConnected(net, num_hidden=4, name="fc")
    net = mx.sym.SoftmaxOutput(net, name="softmax")
    rng = np.random.RandomState(0)
    args = {
        "conv1_weight": mx.nd.array(rng.normal(0, 0.3, (3, 1, 3, 3))),
        "conv1_bias": mx.nd.zeros(3),
        "conv10_weight": mx.nd.array(rng.normal(0, 0.3, (3, 3, 3, 3))),
        "conv10_bias": mx.nd.zeros(3),
        "fc_weight": mx.nd.array(rng.normal(0, 0.1, (4, 192))),
        "fc_bias": mx.nd.zeros(4),
    }
    return net, args, {}


def test_fixed_layers_match_exactly_not_by_prefix(small_digits):
    X, y, _, _ = small_digits
    source = _conv1_conv10_model()
    repurposer = NeuralNetworkRandomFreezeRepurposer(
        source, 5, ["conv1"], [], num_epochs=2, **FAST
    ).fit(X, y)
    after = params_of(repurposer)
    np.testing.assert_array_equal(after["conv1_weight"], source[1]["conv1_weight"].asnumpy())
    assert not np.array_equal(after["conv10_weight"], source[1]["conv10_weight"].asnumpy())


def test_transferred_lr_mult_zero_freezes_the_body(digits_source_model, small_digits):
    X, y, _, _ = small_digits
    before = source_params(digits_source_model)
    after = params_of(
        fine_tune(
            digits_source_model, num_epochs=2, transferred_lr_mult=0.0, freeze_batchnorm=True
        ).fit(X, y)
    )
    for name in TRANSFERRED:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    slower = params_of(
        fine_tune(digits_source_model, num_epochs=2, transferred_lr_mult=0.1).fit(X, y)
    )
    full = params_of(fine_tune(digits_source_model, num_epochs=2).fit(X, y))
    moved_slow = np.abs(slower["conv2_weight"] - before["conv2_weight"]).mean()
    moved_full = np.abs(full["conv2_weight"] - before["conv2_weight"]).mean()
    assert 0 < moved_slow < 0.5 * moved_full


def test_two_phase_freezes_body_then_trains_it_slower(digits_source_model, small_digits, tmp_path):
    X, y, _, _ = small_digits
    before = source_params(digits_source_model)
    snapshots = {}

    class Recording(NeuralNetworkFineTuneRepurposer):
        def _epoch_end_hook(self, epoch):
            manifest = json.loads((tmp_path / "checkpoint.json").read_text())
            files = manifest["files"]["params"]["name"]
            snapshots[epoch] = dict(np.load(tmp_path / files, allow_pickle=False))

    repurposer = Recording(
        digits_source_model,
        "relu2",
        5,
        num_epochs=2,
        head_epochs=2,
        checkpoint_dir=str(tmp_path),
        **FAST,
    ).fit(X, y)
    for name in TRANSFERRED + ["bn1_moving_mean", "bn1_moving_var"]:
        kind = "aux" if "moving" in name else "arg"
        np.testing.assert_array_equal(snapshots[2][f"{kind}:{name}"], before[name], err_msg=name)
    assert not np.array_equal(
        snapshots[1]["arg:fc_from_fine_tune_repurposer_weight"],
        snapshots[2]["arg:fc_from_fine_tune_repurposer_weight"],
    )
    after = params_of(repurposer)
    assert not np.array_equal(after["conv1_weight"], before["conv1_weight"])
    history = repurposer.history_
    assert history.phase == ["head", "head", "full", "full"]
    assert history.learning_rate == pytest.approx([0.01, 0.01, 0.001, 0.001])


# ------------------------------------------------------------------------------------ validation
def test_validation_fraction_and_data(digits_source_model, small_digits):
    X, y, X_test, y_test = small_digits
    split = fine_tune(digits_source_model, num_epochs=2, validation_fraction=0.25).fit(X, y)
    assert all(v is not None for v in split.history_.val_accuracy)
    assert split.n_training_examples_ == 90
    given = fine_tune(digits_source_model, num_epochs=2).fit(X, y, validation_data=(X_test, y_test))
    probabilities = given.predict_proba(X_test)
    loss = -np.mean(np.log(probabilities[np.arange(len(y_test)), y_test - 5]))
    assert given.history_.val_loss[-1] == pytest.approx(loss, rel=1e-4)
    assert given.history_.val_accuracy[-1] == pytest.approx(given.score(X_test, y_test))


def test_early_stopping_restores_the_best_epoch(digits_source_model, small_digits):
    X, y, X_test, y_test = small_digits
    wrong = np.random.RandomState(1).permutation(y_test)  # validation loss rises as training fits X
    repurposer = fine_tune(digits_source_model, num_epochs=15, early_stopping_patience=2)
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
def test_lr_schedules(digits_source_model, small_digits, schedule, expected):
    X, y, _, _ = small_digits
    repurposer = fine_tune(digits_source_model, num_epochs=4, lr_schedule=schedule).fit(X, y)
    assert repurposer.history_.learning_rate == pytest.approx(expected)


def test_mxnet_scheduler_object(digits_source_model, small_digits):
    X, y, _, _ = small_digits
    scheduler = mx.lr_scheduler.FactorScheduler(step=4, factor=0.5)
    repurposer = fine_tune(digits_source_model, num_epochs=2, lr_schedule=scheduler).fit(X, y)
    assert repurposer.history_.learning_rate[1] < repurposer.history_.learning_rate[0]


def test_plot_history(digits_source_model, small_digits):
    import matplotlib

    matplotlib.use("Agg")
    X, y, _, _ = small_digits
    repurposer = fine_tune(
        digits_source_model, num_epochs=2, head_epochs=1, validation_fraction=0.2
    ).fit(X, y)
    axes = repurposer.plot_history()
    assert len(axes) == 2 and len(axes[0].lines) >= 2
    assert repurposer.history_["loss"] == repurposer.history_.loss


# ------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("stop_after", [1, 2, 3, 4])  # 2: between phases, 4: after the last epoch
def test_resume_after_interruption_reaches_the_same_weights(
    digits_source_model, small_digits, tmp_path, stop_after
):
    X, y, _, _ = small_digits
    options = dict(
        num_epochs=2,
        head_epochs=2,
        validation_fraction=0.2,
        lr_schedule="cosine",
        early_stopping_patience=5,
        random_state=None,
    )
    reference = fine_tune(digits_source_model, **{**options, "random_state": 11}).fit(X, y)

    class Crashing(NeuralNetworkFineTuneRepurposer):
        def _epoch_end_hook(self, epoch):
            if epoch == stop_after:
                raise Interrupted

    interrupted = Crashing(
        digits_source_model,
        "relu2",
        5,
        checkpoint_dir=str(tmp_path),
        **{**FAST, **options, "random_state": 11},
    )
    with pytest.raises(Interrupted):
        interrupted.fit(X, y)
    assert not hasattr(interrupted, "classes_")
    resumed = fine_tune(
        digits_source_model, checkpoint_dir=str(tmp_path), **{**options, "random_state": 11}
    )
    resumed.fit(X, y, resume=True)
    assert_same_params(params_of(resumed), params_of(reference))
    assert resumed.history_.loss == reference.history_.loss
    assert resumed.history_.val_loss == reference.history_.val_loss
    assert resumed.history_.best_epoch == reference.history_.best_epoch is not None


def test_resume_without_seed_uses_the_checkpoint_seed(digits_source_model, small_digits, tmp_path):
    X, y, _, _ = small_digits

    class Crashing(NeuralNetworkFineTuneRepurposer):
        def _epoch_end_hook(self, epoch):
            if epoch == 1:
                raise Interrupted

    options = {**FAST, "random_state": None, "num_epochs": 2, "checkpoint_dir": str(tmp_path)}
    with pytest.raises(Interrupted):
        Crashing(digits_source_model, "relu2", 5, **options).fit(X, y)
    seed = training.checkpoint_seed(tmp_path)
    resumed = fine_tune(digits_source_model, **options).fit(X, y, resume=True)
    reference = fine_tune(
        digits_source_model, **{**options, "random_state": seed, "checkpoint_dir": None}
    ).fit(X, y)
    assert_same_params(params_of(resumed), params_of(reference))


def test_resume_errors(digits_source_model, small_digits, tmp_path):
    X, y, _, _ = small_digits
    with pytest.raises(ModelFileNotFoundError, match="No checkpoint"):
        fine_tune(digits_source_model, checkpoint_dir=str(tmp_path)).fit(X, y, resume=True)
    with pytest.raises(InvalidArgumentError, match="checkpoint_dir"):
        fine_tune(digits_source_model).fit(X, y, resume=True)
    fine_tune(digits_source_model, num_epochs=1, checkpoint_dir=str(tmp_path)).fit(X, y)
    with pytest.raises(InvalidArgumentError, match="other data or settings"):
        fine_tune(digits_source_model, num_epochs=1, checkpoint_dir=str(tmp_path)).fit(
            X[:-1], y[:-1], resume=True
        )
    files = [p.name for p in tmp_path.iterdir()]
    assert not any(name.endswith((".tmp", ".pkl", ".pickle")) for name in files)


# ------------------------------------------------------------------------------------ devices
def test_two_cpu_contexts(digits_source_model, small_digits, tmp_path):
    X, y, X_test, y_test = small_digits
    options = dict(num_epochs=3, validation_fraction=0.2, checkpoint_dir=None)
    repurposer = fine_tune(digits_source_model, **options).fit(X, y, context=["cpu:0", "cpu:1"])
    assert repurposer.score(X_test, y_test) >= 0.8
    again = fine_tune(digits_source_model, **options).fit(X, y, context=["cpu:0", "cpu:1"])
    assert_same_params(params_of(repurposer), params_of(again))
    np.testing.assert_allclose(
        repurposer.predict_proba(X_test, context=["cpu:0", "cpu:1"]),
        repurposer.predict_proba(X_test, context="cpu"),
        atol=1e-5,
    )

    class Crashing(NeuralNetworkFineTuneRepurposer):
        def _epoch_end_hook(self, epoch):
            if epoch == 2:
                raise Interrupted

    with pytest.raises(Interrupted):
        Crashing(
            digits_source_model, "relu2", 5, **{**FAST, **options, "checkpoint_dir": str(tmp_path)}
        ).fit(X, y, context=["cpu:0", "cpu:1"])
    resumed = fine_tune(digits_source_model, **{**options, "checkpoint_dir": str(tmp_path)})
    resumed.fit(X, y, context=["cpu:0", "cpu:1"], resume=True)
    assert_same_params(params_of(resumed), params_of(repurposer))


def test_gpu_context_is_a_clear_error_without_gpu(digits_source_model, small_digits):
    X, y, _, _ = small_digits
    if mx.context.num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceUnavailableError, match="GPU"):
        fine_tune(digits_source_model, num_epochs=1).fit(X, y, context="gpu:0")
    repurposer = fine_tune(digits_source_model, num_epochs=1).fit(X, y)
    with pytest.raises(DeviceUnavailableError):
        repurposer.predict(X, context="gpu:0")


# ------------------------------------------------------------------------------------ saving
@pytest.mark.filterwarnings("ignore:Data provided by label_shapes")  # bound without labels
def test_save_load_round_trip(digits_source_model, small_digits, tmp_path):
    X, y, X_test, _ = small_digits
    names = np.array(["five", "six", "seven", "eight", "nine"])
    repurposer = fine_tune(
        digits_source_model, num_epochs=2, target_class_count=None, validation_fraction=0.2
    )
    repurposer.fit(X, names[y - 5])
    repurposer.save_repurposer("ft", str(tmp_path))
    for suffix in (".json", "-symbol.json", "-0000.params"):
        assert (tmp_path / f"ft{suffix}").is_file()
    assert not (tmp_path / "ft_source-symbol.json").exists()  # the target network is the model
    loaded = xfer.load("ft", str(tmp_path))
    assert type(loaded) is NeuralNetworkFineTuneRepurposer
    np.testing.assert_array_equal(loaded.classes_, repurposer.classes_)
    np.testing.assert_array_equal(loaded.predict_proba(X_test), repurposer.predict_proba(X_test))
    np.testing.assert_array_equal(
        loaded.predict(X_test, context=["cpu:0", "cpu:1"]), repurposer.predict(X_test)
    )
    assert loaded.history_.to_dict() == repurposer.history_.to_dict()
    assert loaded.get_params().keys() == repurposer.get_params().keys()
    # The target network is a plain MXNet checkpoint.
    module = mx.mod.Module.load(str(tmp_path / "ft"), 0, label_names=["softmax_label"])
    module.bind(data_shapes=[("data", (len(X_test), 1, 8, 8))], for_training=False)
    np.testing.assert_allclose(
        module.predict(mx.io.NDArrayIter(X_test, batch_size=len(X_test))).asnumpy(),
        repurposer.predict_proba(X_test),
        atol=1e-6,
    )
    (tmp_path / "ft-0000.params").unlink()
    with pytest.raises(ModelFileNotFoundError, match="ft-0000.params"):
        xfer.load("ft", str(tmp_path))


@pytest.mark.filterwarnings("ignore:Data provided by label_shapes")  # bound without labels
def test_save_unfitted_and_target_model_attribute(digits_source_model, small_digits, tmp_path):
    X, y, X_test, _ = small_digits
    repurposer = NeuralNetworkRandomFreezeRepurposer(digits_source_model, 5, ["conv1"], [], **FAST)
    repurposer.save(tmp_path / "unfitted")
    loaded = xfer.load("unfitted", tmp_path)
    with pytest.raises(NotFittedError):
        loaded.predict(X_test)
    with pytest.raises(NotFittedError):
        repurposer.target_model  # noqa: B018
    repurposer.fit(X, y)
    module = repurposer.target_model
    assert isinstance(module, mx.mod.Module)
    module.bind(data_shapes=[("data", (len(X_test), 1, 8, 8))], for_training=False)
    np.testing.assert_allclose(
        module.predict(mx.io.NDArrayIter(X_test, batch_size=len(X_test))).asnumpy(),
        repurposer.predict_proba(X_test),
        atol=1e-6,
    )


def test_scheduler_object_is_not_saved(digits_source_model, small_digits, tmp_path):
    X, y, _, _ = small_digits
    repurposer = fine_tune(
        digits_source_model, num_epochs=1, lr_schedule=mx.lr_scheduler.FactorScheduler(step=4)
    )
    repurposer.fit(X, y)
    with pytest.warns(UserWarning, match="lr_schedule"):
        repurposer.save(tmp_path / "m")
    assert xfer.load("m", tmp_path).lr_schedule is None


# ------------------------------------------------------------------------------------ user subclasses
def test_xfer_style_subclass_overriding_create_target_module(digits_source_model, small_digits):
    X, y, _, _ = small_digits
    from xfer.model_handler import ModelHandler

    class XferStyle(NeuralNetworkRepurposer):
        def _create_target_module(self, train_iterator):
            handler = ModelHandler(self.source_model)
            handler.drop_layer_top(2)
            handler.add_layer_top(
                [
                    mx.sym.FullyConnected(num_hidden=5, name="my_fc"),
                    mx.sym.SoftmaxOutput(name="softmax"),
                ]
            )
            return handler.get_module(train_iterator, fixed_layers=["conv1"])

    before = source_params(digits_source_model)
    repurposer = XferStyle(digits_source_model, num_epochs=2, **FAST).fit(X, y)
    after = params_of(repurposer)
    np.testing.assert_array_equal(after["conv1_weight"], before["conv1_weight"])
    assert "my_fc_weight" in after and repurposer.score(X, y) > 0.5


# ------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"batch_size": 0}, InvalidArgumentError, "batch_size"),
        ({"batch_size": 2.5}, InvalidTypeError, "batch_size must be an integer"),
        ({"num_epochs": 0}, InvalidArgumentError, "num_epochs"),
        ({"head_epochs": -1}, InvalidArgumentError, "head_epochs"),
        ({"optimizer": "sgdd"}, InvalidArgumentError, "Unknown optimizer"),
        ({"optimizer": mx.optimizer.SGD()}, InvalidTypeError, "optimizer"),
        ({"optimizer_params": {"learning_rate": -1}}, InvalidArgumentError, "learning_rate"),
        ({"optimizer_params": {"lr_scheduler": None}}, InvalidArgumentError, "lr_schedule"),
        ({"optimizer_params": [("learning_rate", 0.1)]}, InvalidTypeError, "optimizer_params"),
        ({"optimizer_params": {"momentum": "high"}}, InvalidArgumentError, "not valid"),
        ({"validation_fraction": 1.0}, InvalidArgumentError, "validation_fraction"),
        ({"early_stopping_patience": 2}, InvalidArgumentError, "needs validation data"),
        ({"early_stopping_patience": 0}, InvalidArgumentError, "early_stopping_patience"),
        ({"lr_schedule": "linear"}, InvalidArgumentError, "lr_schedule"),
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
def test_bad_arguments(digits_source_model, small_digits, options, error, match):
    X, y, _, _ = small_digits
    with pytest.raises(error, match=match):
        fine_tune(digits_source_model, **{"num_epochs": 1, **options}).fit(X, y)


@pytest.mark.parametrize(
    "fixed, random, drop, error, match",
    [
        ("conv1", [], 2, InvalidTypeError, "list of layer names"),
        (["conv_1"], [], 2, LayerNotFoundError, "conv1"),
        (["conv1"], ["conv1"], 2, InvalidArgumentError, "both"),
        (["fc2"], [], 2, InvalidArgumentError, "dropped"),
        ([], [], 0, ModelError, "output layer"),
        ([], [], -1, InvalidArgumentError, "num_layers_to_drop"),
    ],
)
def test_bad_random_freeze_arguments(
    digits_source_model, small_digits, fixed, random, drop, error, match
):
    X, y, _, _ = small_digits
    repurposer = NeuralNetworkRandomFreezeRepurposer(
        digits_source_model, 5, fixed, random, drop, num_epochs=1, **FAST
    )
    with pytest.raises(error, match=match):
        repurposer.fit(X, y)


def test_bad_data(digits_source_model, small_digits):
    X, y, X_test, _ = small_digits
    repurposer = fine_tune(digits_source_model, num_epochs=1)
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
        fine_tune(digits_source_model, validation_fraction=0.2).fit(X, y, validation_data=(X, y))
    with pytest.raises(InvalidTypeError, match="validation_data"):
        repurposer.fit(X, y, validation_data=X)
    with pytest.raises(InvalidArgumentError, match="not in the training labels"):
        repurposer.fit(X, y, validation_data=(X, y + 10))
    with pytest.raises(NotFittedError, match="not fitted"):
        repurposer.predict(X_test)
    repurposer.fit(X, y)
    with pytest.raises(InvalidArgumentError, match="shape"):
        repurposer.predict(X_test[:, :, :4, :4])
    with pytest.raises(InvalidArgumentError, match="labels were passed"):
        repurposer.fit(mx.io.NDArrayIter(X, y.astype(np.float32), 10), y)
    with pytest.raises(InvalidArgumentError, match="cannot be split"):
        fine_tune(digits_source_model, batch_size=1).fit(X, y, context=["cpu:0", "cpu:1"])


def test_get_params_and_clone(digits_source_model):
    from sklearn.base import clone

    repurposer = fine_tune(digits_source_model, head_epochs=2)
    params = repurposer.get_params()
    assert params["head_epochs"] == 2 and params["transfer_layer_name"] == "relu2"
    assert params["optimizer_params"] == {"learning_rate": 0.01}
    copy = clone(repurposer)
    assert copy.get_params().keys() == params.keys()
    defaults = NeuralNetworkFineTuneRepurposer(digits_source_model, "relu2", 5)
    assert (defaults.batch_size, defaults.num_epochs, defaults.optimizer) == (64, 5, "sgd")
    assert (
        defaults.optimizer_params is None
    )  # stored as given; {'learning_rate': 0.001} used in fit
