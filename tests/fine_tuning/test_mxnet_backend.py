"""What only the MXNet training backend does: data iterators, Xfer's spellings and module hook,
MXNet scheduler objects, kvstore data parallelism over contexts, and the plain MXNet checkpoint
of the target network. The behaviour every backend shares is in
``tests/repurposers/test_fine_tune.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fine_tune_support import FAST, Interrupted, assert_same_params, fine_tune, params_of

import xfer
from xfer._mxnet import mx
from xfer.exceptions import InvalidArgumentError, InvalidTypeError, ModelError
from xfer.fine_tuning.mxnet import free_output_name, layer_output_symbol
from xfer.model_handler import ModelHandler
from xfer.repurposers import (
    NeuralNetworkFineTuneRepurposer,
    NeuralNetworkRandomFreezeRepurposer,
    NeuralNetworkRepurposer,
)


# ------------------------------------------------------------------------------------ iterators
def test_repurpose_an_iterator_is_fit_on_its_arrays(digits_source_model, small_digits):
    X, y, X_test, _ = small_digits
    from_iterator = fine_tune(digits_source_model, num_epochs=2)
    from_iterator.repurpose(
        mx.io.NDArrayIter(X, y.astype(np.float32), 30, label_name="softmax_label")
    )
    from_arrays = fine_tune(digits_source_model, num_epochs=2).fit(X, y)
    np.testing.assert_array_equal(
        from_iterator.predict_proba(X_test), from_arrays.predict_proba(X_test)
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
    with pytest.raises(InvalidArgumentError, match="labels were passed"):
        repurposer.fit(mx.io.NDArrayIter(X, y.astype(np.float32), 10), y)


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
        assert "backend" not in manifest  # the MXNet checkpoint format of xfer 0.1


# ------------------------------------------------------------------------------------ the graph
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


def test_head_names_avoid_the_graph_s_names(digits_source_model):
    handler = ModelHandler(digits_source_model)
    assert free_output_name(handler, "softmax") == "softmax_target"
    assert free_output_name(handler, "new") == "new"
    with pytest.raises(ModelError, match="no output to cut"):
        layer_output_symbol(handler.symbol, "conv1_weight")


# ------------------------------------------------------------------------------------ schedules
def test_mxnet_scheduler_object_drives_the_rate_and_is_not_saved(
    digits_source_model, small_digits, tmp_path
):
    X, y, _, _ = small_digits
    scheduler = mx.lr_scheduler.FactorScheduler(step=4, factor=0.5)
    repurposer = fine_tune(digits_source_model, num_epochs=2, lr_schedule=scheduler).fit(X, y)
    assert repurposer.history_.learning_rate[1] < repurposer.history_.learning_rate[0]
    with pytest.warns(UserWarning, match="lr_schedule"):
        repurposer.save(tmp_path / "m")
    assert xfer.load("m", tmp_path).lr_schedule is None


def test_optimizer_objects_are_refused(digits_source_model, small_digits):
    X, y, _, _ = small_digits
    with pytest.raises(InvalidTypeError, match="optimizer must be the name"):
        fine_tune(digits_source_model, optimizer=mx.optimizer.SGD()).fit(X, y)


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
    with pytest.raises(InvalidArgumentError, match="cannot be split"):
        fine_tune(digits_source_model, batch_size=1).fit(X, y, context=["cpu:0", "cpu:1"])


# ------------------------------------------------------------------------------------ files
@pytest.mark.filterwarnings("ignore:Data provided by label_shapes")  # bound without labels
def test_the_target_network_is_a_plain_mxnet_checkpoint(digits_source_model, small_digits, tmp_path):
    X, y, X_test, _ = small_digits
    repurposer = fine_tune(digits_source_model, num_epochs=2).fit(X, y)
    repurposer.save_repurposer("ft", str(tmp_path))
    for suffix in (".json", "-symbol.json", "-0000.params"):
        assert (tmp_path / f"ft{suffix}").is_file()
    assert "backend" not in json.loads((tmp_path / "ft.json").read_text())["state"]
    module = mx.mod.Module.load(str(tmp_path / "ft"), 0, label_names=["softmax_label"])
    module.bind(data_shapes=[("data", (len(X_test), 1, 8, 8))], for_training=False)
    np.testing.assert_allclose(
        module.predict(mx.io.NDArrayIter(X_test, batch_size=len(X_test))).asnumpy(),
        repurposer.predict_proba(X_test),
        atol=1e-6,
    )
    assert isinstance(repurposer.target_model, mx.mod.Module)
    loaded = xfer.load("ft", str(tmp_path))
    np.testing.assert_array_equal(
        loaded.predict(X_test, context=["cpu:0", "cpu:1"]), repurposer.predict(X_test)
    )


# ------------------------------------------------------------------------------------ Xfer's hook
def test_xfer_style_subclass_overriding_create_target_module(digits_source_model, small_digits):
    X, y, _, _ = small_digits

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

    before = ModelHandler(digits_source_model).arg_params["conv1_weight"].asnumpy()
    repurposer = XferStyle(digits_source_model, num_epochs=2, **FAST).fit(X, y)
    after = params_of(repurposer)
    np.testing.assert_array_equal(after["conv1_weight"], before)
    assert "my_fc_weight" in after and repurposer.score(X, y) > 0.5


def test_default_xfer_hook_builds_the_bound_target_module(digits_source_model, small_digits):
    X, y, _, _ = small_digits
    repurposer = fine_tune(digits_source_model)
    module = repurposer._create_target_module(
        mx.io.NDArrayIter(X[:16], y[:16].astype(np.float32) - 5, 16, label_name="softmax_label")
    )
    assert isinstance(module, mx.mod.Module) and module.binded
    assert module.symbol.list_outputs() == ["softmax_output"]
