"""MXNet ModelHandler: inspection, graph surgery, feature extraction, freezing, files."""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest

import xfer.model_handler.base as base_handler
import xfer.model_handler.mxnet as mxnet_handler
from xfer._mxnet import mx
from xfer.exceptions import (
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidTypeError,
    LayerNotFoundError,
    MissingDependencyError,
    ModelArchitectureError,
    ModelError,
    ModelFileNotFoundError,
    SerializationError,
)
from xfer.model_handler import ModelHandler, MXNetModelHandler
from xfer.model_handler.consts import LayerType

TOY_LAYERS = ["conv1", "bn1", "relu1", "pool1", "conv2", "relu2", "flatten", "fc1", "relu3", "fc2", "softmax"]


@pytest.fixture
def handler(digits_source_model):
    return ModelHandler(digits_source_model)


def manual_forward(module_or_handler, images, layer):
    """The reference: a plain Module.forward of the graph's internal output, one batch."""
    handler = ModelHandler(module_or_handler)
    output = handler.symbol.get_internals()[f"{layer}_output"]
    labels = [name for name in output.list_arguments() if name.endswith("_label")]
    module = mx.mod.Module(output, data_names=["data"], label_names=labels, context=mx.cpu())
    label_shapes = [(name, (len(images),)) for name in labels] or None
    module.bind(data_shapes=[("data", images.shape)], label_shapes=label_shapes, for_training=False)
    module.set_params(handler.arg_params, handler.aux_params, allow_extra=True)
    module.forward(mx.io.DataBatch([mx.nd.array(images)]), is_train=False)
    return module.get_outputs()[0].asnumpy().reshape(len(images), -1)


def branched_symbol():
    """data -> conv_a, conv_b -> add -> fc: a residual-style merge of two branches."""
    data = mx.sym.var("data")
    a = mx.sym.Convolution(data, num_filter=2, kernel=(1, 1), name="conv_a")
    b = mx.sym.Convolution(data, num_filter=2, kernel=(1, 1), name="conv_b")
    added = mx.sym.elemwise_add(a, b, name="add")
    return mx.sym.FullyConnected(added, num_hidden=3, name="fc")


def init_params(symbol, data_shape):
    module = mx.mod.Module(symbol, label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", data_shape)], for_training=False)
    module.init_params(mx.init.Xavier())
    return module.get_params()


# ---------------------------------------------------------------------- construction
class TestConstruction:
    def test_dispatches_to_mxnet_backend(self, digits_source_model):
        handler = ModelHandler(digits_source_model)
        assert isinstance(handler, MXNetModelHandler)
        assert handler.layer_names == TOY_LAYERS
        assert handler.data_name == "data"
        assert handler.devices == [mx.cpu()]
        assert handler.input_shape == (1, 8, 8)

    def test_from_symbol_tuple_checkpoint_and_copy(self, handler, tmp_path):
        from_tuple = ModelHandler((handler.symbol, handler.arg_params, handler.aux_params))
        assert from_tuple.layer_names == TOY_LAYERS
        handler.save_checkpoint(str(tmp_path / "toy"))
        from_checkpoint = ModelHandler((str(tmp_path / "toy"), 0))
        assert sorted(from_checkpoint.arg_params) == sorted(handler.arg_params)
        copy = ModelHandler(handler)
        copy.drop_layer_top()
        assert handler.layer_names == TOY_LAYERS, "editing a copy must not change the original"

    def test_from_unbound_module_load(self, handler, tmp_path):
        handler.save_checkpoint(str(tmp_path / "toy"))
        module = mx.mod.Module.load(str(tmp_path / "toy"), 0)
        assert ModelHandler(module).layer_names == TOY_LAYERS

    def test_from_hybridized_gluon_block(self, rng):
        block = mx.gluon.nn.HybridSequential()
        block.add(mx.gluon.nn.Dense(5, activation="relu"), mx.gluon.nn.Dense(2))
        block.initialize(mx.init.Xavier())
        block.hybridize()
        x = rng.standard_normal((6, 4)).astype(np.float32)
        expected = block(mx.nd.array(x)).asnumpy()
        handler = ModelHandler(block)
        last = handler.layer_names[-1]
        features, labels = handler.get_layer_output(x, [last])
        np.testing.assert_allclose(features[last], expected, atol=1e-5)
        assert labels is None

    def test_uninitialised_gluon_block_is_refused(self):
        block = mx.gluon.nn.HybridSequential()
        block.add(mx.gluon.nn.Dense(2))
        block.initialize()
        with pytest.raises(ModelError, match="run one forward pass"):
            ModelHandler(block)

    def test_module_without_parameters_edits_but_cannot_read_features(self):
        # As in Xfer: a graph without weights can be inspected and edited.
        handler = ModelHandler(mx.mod.Module(branched_symbol(), label_names=None))
        assert handler.arg_params == {} and handler.aux_params == {}
        layers = handler.layer_names
        handler.drop_layer_top()
        assert handler.layer_names == layers[:-1]
        with pytest.raises(ModelError, match="have no values"):
            handler.get_layer_output(np.zeros((2, 2, 3, 3), np.float32), [handler.layer_names[0]])

    def test_wrong_type_is_refused(self):
        with pytest.raises(InvalidTypeError, match="Cannot build a ModelHandler from builtins.dict"):
            ModelHandler({"not": "a model"})

    def test_unknown_data_name(self, digits_source_model):
        with pytest.raises(ModelError, match="has no input named 'images'"):
            ModelHandler(digits_source_model, data_name="images")

    def test_xfer_signature_and_defaults(self):
        signature = inspect.signature(MXNetModelHandler.__init__)
        defaults = {k: v.default for k, v in signature.parameters.items()}
        assert defaults["context_function"] is mx.cpu
        assert defaults["num_devices"] == 1
        assert defaults["data_name"] == "data"
        for name in ["drop_layer_top", "drop_layer_bottom"]:
            assert inspect.signature(getattr(MXNetModelHandler, name)).parameters[
                "num_layers_to_drop"
            ].default == 1
        for name in [
            "add_layer_top", "add_layer_bottom", "get_layer_type", "get_layer_names_matching_type",
            "get_layer_parameters", "get_layer_output", "get_module", "visualize_net", "save_symbol",
            "update_sym",
        ]:
            assert callable(getattr(MXNetModelHandler, name))
        for attribute in ["symbol", "arg_params", "aux_params", "layer_type_dict", "devices", "data_name"]:
            assert hasattr(ModelHandler(tuple([branched_symbol(), *init_params(branched_symbol(), (1, 2, 3, 3))])), attribute)


# ---------------------------------------------------------------------- inspection
class TestInspection:
    def test_layer_types(self, handler):
        assert handler.get_layer_type("conv1") == "Convolution"
        assert handler.layer_type_dict["softmax"] == "SoftmaxOutput"
        assert handler.get_layer_names_matching_type("convolution") == ["conv1", "conv2"]
        assert handler.get_layer_names_matching_type(LayerType.FULLYCONNECTED) == ["fc1", "fc2"]
        assert handler.get_layer_names_matching_type("Deconvolution") == []

    def test_unknown_layer_lists_closest_names(self, handler):
        with pytest.raises(LayerNotFoundError, match=r"'conv3' is not in the model\. Did you mean: 'conv2', 'conv1'"):
            handler.get_layer_type("conv3")

    def test_parameters_of_a_layer_not_in_the_model_are_none(self, handler, caplog):
        # Xfer returns [] (its ModelHandler demo asks for a layer removed by drop_layer_bottom).
        with caplog.at_level("WARNING", logger="xfer.model_handler"):
            assert handler.get_layer_parameters(["fc9", "conv1"]) == ["conv1_weight", "conv1_bias"]
        assert "['fc9'] are not in the model" in caplog.text and "Did you mean: 'fc2', 'fc1'" in caplog.text
        handler.drop_layer_bottom()
        assert handler.get_layer_parameters(["conv1"]) == []

    def test_layer_parameters_are_matched_exactly(self):
        data = mx.sym.var("data")
        net = mx.sym.Convolution(data, num_filter=2, kernel=(1, 1), name="conv1")
        net = mx.sym.Convolution(net, num_filter=2, kernel=(1, 1), name="conv10")
        net = mx.sym.BatchNorm(net, name="conv1_bn")
        handler = ModelHandler((net, *init_params(net, (1, 1, 3, 3))))
        assert handler.get_layer_parameters(["conv1"]) == ["conv1_weight", "conv1_bias"]
        assert handler.get_layer_parameters(["conv1_bn"]) == [
            "conv1_bn_gamma", "conv1_bn_beta", "conv1_bn_moving_mean", "conv1_bn_moving_var",
        ]

    def test_layer_names_must_be_a_list(self, handler):
        with pytest.raises(InvalidTypeError, match=r"pass \['conv1'\]"):
            handler.get_layer_parameters("conv1")


# ---------------------------------------------------------------------- features
class TestGetLayerOutput:
    def test_equals_manual_forward(self, handler, target_digits):
        images = target_digits[0][:100]
        features, labels = handler.get_layer_output(images, ["fc1", "conv1", "softmax"], batch_size=32)
        assert list(features) == ["fc1", "conv1", "softmax"]
        assert labels is None
        assert features["fc1"].shape == (100, 64) and features["fc1"].dtype == np.float32
        assert features["conv1"].shape == (100, 16 * 8 * 8)
        for layer in ["fc1", "conv1", "softmax"]:
            np.testing.assert_allclose(features[layer], manual_forward(handler, images, layer), atol=1e-5)

    def test_several_layers_equal_one_at_a_time(self, handler, target_digits):
        """Reading intermediate and final layers together must not change any of them."""
        images = target_digits[0][:40]
        together, _ = handler.get_layer_output(images, ["conv1", "bn1", "fc1", "fc2", "softmax"])
        for layer, values in together.items():
            alone, _ = handler.get_layer_output(images, [layer])
            np.testing.assert_allclose(values, alone[layer], atol=1e-5, err_msg=layer)
        logits = together["fc2"]
        expected = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(together["softmax"], expected / expected.sum(1, keepdims=True), atol=1e-5)

    def test_dataiter_labels_and_padding(self, handler, target_digits):
        images, labels = target_digits[0][:50], target_digits[1][:50]
        iterator = mx.io.NDArrayIter(images, labels.astype(np.float32), batch_size=16, last_batch_handle="pad")
        next(iter(iterator))  # a consumed iterator must be reset by get_layer_output
        features, got_labels = handler.get_layer_output(iterator, ["fc1"])
        assert features["fc1"].shape == (50, 64)
        np.testing.assert_array_equal(got_labels, labels)
        expected, _ = handler.get_layer_output(images, ["fc1"], batch_size=7)
        np.testing.assert_allclose(features["fc1"], expected["fc1"], atol=1e-6)

    def test_iterator_of_unknown_length(self, handler, target_digits):
        images = target_digits[0][:40]
        inner = mx.io.NDArrayIter(images, batch_size=16, last_batch_handle="pad")
        iterator = mx.io.ResizeIter(inner, 3)  # no num_data attribute
        features, labels = handler.get_layer_output(iterator, ["fc1"])
        assert features["fc1"].shape == (40, 64)
        expected, _ = handler.get_layer_output(images, ["fc1"])
        np.testing.assert_allclose(features["fc1"], expected["fc1"], atol=1e-6)

    def test_two_cpu_contexts_and_progress_bar(self, handler, target_digits, capsys):
        images = target_digits[0][:30]
        single, _ = handler.get_layer_output(images, ["fc1"], context="cpu")
        double, _ = handler.get_layer_output(images, ["fc1"], context=["cpu:0", "cpu:1"], batch_size=8, verbose=True)
        np.testing.assert_allclose(single["fc1"], double["fc1"], atol=1e-5)
        assert "Extracting features" in capsys.readouterr().err

    def test_gpu_on_cpu_build_is_a_clear_error(self, handler, target_digits):
        with pytest.raises(DeviceUnavailableError, match="this MXNet build .* is CPU-only"):
            handler.get_layer_output(target_digits[0][:4], ["fc1"], context="gpu:0")

    def test_bad_inputs(self, handler, target_digits):
        with pytest.raises(InvalidArgumentError, match=r"Input of shape \(3, 8, 8\) per example does not fit"):
            handler.get_layer_output(np.zeros((2, 3, 8, 8), np.float32), ["fc1"])
        with pytest.raises(InvalidTypeError, match="Cannot read data of type str"):
            handler.get_layer_output("images.npy", ["fc1"])
        with pytest.raises(InvalidArgumentError, match="The data is empty"):
            handler.get_layer_output(np.zeros((0, 1, 8, 8), np.float32), ["fc1"])
        with pytest.raises(InvalidArgumentError, match="layer_names is empty"):
            handler.get_layer_output(target_digits[0][:2], [])
        with pytest.raises(InvalidArgumentError, match="batch_size must be a positive integer"):
            handler.get_layer_output(target_digits[0][:2], ["fc1"], batch_size=0)
        with pytest.raises(InvalidArgumentError, match="cannot be split over 2 devices"):
            handler.get_layer_output(target_digits[0][:1], ["fc1"], context=["cpu:0", "cpu:1"])

    def test_untrained_new_layer_is_a_clear_error(self, handler, target_digits):
        handler.drop_layer_top(2)
        handler.add_layer_top([mx.sym.FullyConnected(num_hidden=3, name="fc_new")])
        with pytest.raises(ModelError, match=r"Parameters \['fc_new_weight', 'fc_new_bias'\] have no values"):
            handler.get_layer_output(target_digits[0][:2], ["fc_new"])


# ---------------------------------------------------------------------- editing
class TestSurgery:
    def test_drop_then_add_restores_layers_and_outputs(self, handler, target_digits):
        images = target_digits[0][:20]
        before, _ = handler.get_layer_output(images, ["softmax"])
        saved = {k: handler.arg_params[k] for k in ["fc2_weight", "fc2_bias"]}
        handler.drop_layer_top(2)
        assert handler.layer_names == TOY_LAYERS[:-2]
        assert "fc2_weight" not in handler.arg_params
        handler.add_layer_top([mx.sym.FullyConnected(num_hidden=5, name="fc2"), mx.sym.SoftmaxOutput(name="softmax")])
        assert handler.layer_names == TOY_LAYERS
        handler.arg_params.update(saved)
        after, _ = handler.get_layer_output(images, ["softmax"])
        np.testing.assert_allclose(before["softmax"], after["softmax"], atol=1e-6)

    def test_drop_bottom_and_add_bottom(self, handler, target_digits):
        images = target_digits[0][:10]
        pool_features = handler.get_layer_output(images, ["pool1"])[0]["pool1"]
        reference = handler.get_layer_output(images, ["fc1"])[0]
        handler.drop_layer_bottom(4)  # conv1 bn1 relu1 pool1
        assert handler.layer_names == TOY_LAYERS[4:]
        assert not any(name.startswith(("conv1_", "bn1_")) for name in handler.arg_params)
        features, _ = handler.get_layer_output(pool_features.reshape(10, 16, 4, 4), ["fc1"])
        np.testing.assert_allclose(features["fc1"], reference["fc1"], atol=1e-5)
        handler.add_layer_bottom([mx.sym.Activation(act_type="relu", name="pre_relu")])
        assert handler.layer_names[:2] == ["pre_relu", "conv2"]

    def test_dropping_too_many(self, handler):
        with pytest.raises(ModelError, match="Cannot drop 11 layer\\(s\\) from the top of a model with 11 layers: at most 10"):
            handler.drop_layer_top(11)
        with pytest.raises(ModelError, match="from the bottom of a model with 11 layers"):
            handler.drop_layer_bottom(12)
        with pytest.raises(InvalidArgumentError, match="num_layers_to_drop must be a positive integer"):
            handler.drop_layer_top(0)
        assert handler.layer_names == TOY_LAYERS

    def test_branches_are_refused_not_mangled(self):
        symbol = branched_symbol()
        handler = ModelHandler((symbol, *init_params(symbol, (1, 2, 3, 3))))
        handler.drop_layer_top(1)
        assert handler.layer_names == ["conv_a", "conv_b", "add"]
        with pytest.raises(ModelArchitectureError, match=r"'add': it has 2 input layers \(\['conv_a', 'conv_b'\]\)"):
            handler.drop_layer_top(1)
        with pytest.raises(ModelArchitectureError, match="feeds 2 layers"):
            handler.drop_layer_bottom(1)
        assert handler.layer_names == ["conv_a", "conv_b", "add"]

    def test_residual_graph_surgery_keeps_the_merge(self, rng):
        """Dropping a chain below a residual add keeps both branches, outputs stay correct."""
        data = mx.sym.var("data")
        stem = mx.sym.Convolution(data, num_filter=2, kernel=(1, 1), name="stem")
        branch = mx.sym.Convolution(stem, num_filter=2, kernel=(1, 1), name="branch")
        merged = mx.sym.elemwise_add(stem, branch, name="add")
        head = mx.sym.FullyConnected(merged, num_hidden=2, name="fc")
        handler = ModelHandler((head, *init_params(head, (1, 3, 4, 4))))
        x = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
        stem_out = handler.get_layer_output(x, ["stem"])[0]["stem"].reshape(3, 2, 4, 4)
        full = handler.get_layer_output(x, ["fc"])[0]["fc"]
        handler.drop_layer_bottom(1)
        assert handler.layer_names == ["branch", "add", "fc"]
        np.testing.assert_allclose(handler.get_layer_output(stem_out, ["fc"])[0]["fc"], full, atol=1e-5)

    def test_multi_output_model_is_refused(self, handler):
        internals = handler.symbol.get_internals()
        handler.update_sym(mx.sym.Group([internals["fc1_output"], internals["fc2_output"]]))
        with pytest.raises(ModelArchitectureError, match="The model has 2 outputs"):
            handler.drop_layer_top()

    def test_add_above_output_layer_is_refused(self, handler):
        with pytest.raises(ModelError, match="ends in the output layer 'softmax' \\(SoftmaxOutput\\).*drop_layer_top"):
            handler.add_layer_top([mx.sym.FullyConnected(num_hidden=2, name="fc_new")])
        with pytest.raises(ModelError, match="ends in the output layer"):  # one layer, as Xfer
            handler.add_layer_top(mx.sym.FullyConnected(num_hidden=2, name="fc_new"))

    def test_one_layer_without_a_list(self, handler):
        handler.drop_layer_top()
        handler.add_layer_top(mx.sym.FullyConnected(num_hidden=2, name="fc_new"))
        handler.add_layer_bottom(mx.sym.Activation(act_type="relu", name="relu_in"))
        assert handler.layer_names[0] == "relu_in" and handler.layer_names[-1] == "fc_new"

    def test_new_layer_names_are_checked(self, handler):
        handler.drop_layer_top(2)
        with pytest.raises(InvalidArgumentError, match="A layer named 'fc1' already exists"):
            handler.add_layer_top([mx.sym.FullyConnected(num_hidden=2, name="fc1")])
        with pytest.raises(InvalidArgumentError, match="'fc_weight_new' contains '_weight'"):
            handler.add_layer_top([mx.sym.FullyConnected(num_hidden=2, name="fc_weight_new")])
        with pytest.raises(InvalidArgumentError, match="'twice' already exists"):
            handler.add_layer_top(
                [mx.sym.FullyConnected(num_hidden=2, name="twice"), mx.sym.FullyConnected(num_hidden=2, name="twice")]
            )
        with pytest.raises(InvalidTypeError, match="layer_list must be a list"):
            handler.add_layer_top("fc_new")
        with pytest.raises(InvalidTypeError, match="Layer 0 of the list is a str"):
            handler.add_layer_top(["fc_new"])
        with pytest.raises(InvalidArgumentError, match="layer_list is empty"):
            handler.add_layer_top([])
        assert handler.layer_names == TOY_LAYERS[:-2]


# ---------------------------------------------------------------------- training
class TestGetModule:
    def train(self, module, images, labels, epochs=2):
        iterator = mx.io.NDArrayIter(images, labels.astype(np.float32), batch_size=32, label_name="softmax_label")
        module.fit(iterator, num_epoch=epochs, optimizer="sgd", optimizer_params={"learning_rate": 0.1})
        return module.get_params()

    def test_frozen_layers_bit_identical_others_change(self, handler, target_digits):
        images, labels = target_digits[0][:128], target_digits[1][:128] - 5
        handler.freeze(["conv1", "bn1"])
        assert handler.frozen_layers == ["conv1", "bn1"]
        iterator = mx.io.NDArrayIter(images, labels.astype(np.float32), batch_size=32, label_name="softmax_label")
        module = handler.get_module(iterator, fixed_layers=["conv2"], random_layers=["fc2"])
        initial_fc2 = module.get_params()[0]["fc2_weight"].asnumpy().copy()
        assert not np.allclose(initial_fc2, handler.arg_params["fc2_weight"].asnumpy())
        args, auxs = self.train(module, images, labels)
        for name in ["conv1_weight", "conv1_bias", "bn1_gamma", "bn1_beta", "conv2_weight", "conv2_bias"]:
            np.testing.assert_array_equal(args[name].asnumpy(), handler.arg_params[name].asnumpy(), err_msg=name)
        for name in ["bn1_moving_mean", "bn1_moving_var"]:
            np.testing.assert_array_equal(auxs[name].asnumpy(), handler.aux_params[name].asnumpy(), err_msg=name)
        for name in ["fc1_weight", "fc2_weight"]:
            assert not np.array_equal(args[name].asnumpy(), handler.arg_params[name].asnumpy()), name

    def test_xfer_parameter_spelling_and_unfreeze(self, handler, target_digits):
        images, labels = target_digits[0][:64], target_digits[1][:64] - 5
        handler.freeze(["conv1"])
        handler.unfreeze()
        assert handler.frozen_layers == []
        iterator = mx.io.NDArrayIter(images, labels.astype(np.float32), batch_size=32, label_name="softmax_label")
        module = handler.get_module(iterator, fixed_layer_parameters=handler.get_layer_parameters(["conv2"]))
        args, _ = self.train(module, images, labels, epochs=1)
        np.testing.assert_array_equal(args["conv2_weight"].asnumpy(), handler.arg_params["conv2_weight"].asnumpy())
        assert not np.array_equal(args["conv1_weight"].asnumpy(), handler.arg_params["conv1_weight"].asnumpy())
        assert not np.array_equal(auxs_of(module)["bn1_moving_mean"], handler.aux_params["bn1_moving_mean"].asnumpy())

    def test_bad_arguments(self, handler):
        with pytest.raises(InvalidTypeError, match="needs an mx.io.DataIter"):
            handler.get_module(np.zeros((2, 1, 8, 8)))
        iterator = mx.io.NDArrayIter(np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, np.float32), batch_size=2, label_name="softmax_label")
        with pytest.raises(InvalidTypeError, match="must be a list of parameter names"):
            handler.get_module(iterator, fixed_layer_parameters="conv1_weight")
        with pytest.raises(LayerNotFoundError, match="'conv9' is not in the model"):
            handler.get_module(iterator, random_layers=["conv9"])


def auxs_of(module):
    return {k: v.asnumpy() for k, v in module.get_params()[1].items()}


# ---------------------------------------------------------------------- files
class TestFiles:
    def test_checkpoint_round_trip_is_exact(self, handler, tmp_path, target_digits):
        handler.drop_layer_top(2)
        prefix = str(tmp_path / "sub" / "model")
        handler.save_checkpoint(prefix)
        assert sorted(os.listdir(tmp_path / "sub")) == ["model-0000.params", "model-symbol.json"]
        loaded = MXNetModelHandler.load_checkpoint(prefix)
        assert loaded.layer_names == handler.layer_names
        for name, value in handler.arg_params.items():
            np.testing.assert_array_equal(loaded.arg_params[name].asnumpy(), value.asnumpy())
        images = target_digits[0][:5]
        np.testing.assert_array_equal(
            loaded.get_layer_output(images, ["fc1"])[0]["fc1"], handler.get_layer_output(images, ["fc1"])[0]["fc1"]
        )

    def test_save_symbol(self, handler, tmp_path):
        handler.save_symbol(str(tmp_path / "net"))
        assert mx.sym.load(str(tmp_path / "net-symbol.json")).list_outputs() == ["softmax_output"]

    def test_missing_corrupt_and_mismatched_files(self, handler, tmp_path):
        prefix = str(tmp_path / "model")
        with pytest.raises(ModelFileNotFoundError, match="model-symbol.json' does not exist"):
            MXNetModelHandler.load_checkpoint(prefix)
        handler.save_checkpoint(prefix)
        params = tmp_path / "model-0000.params"
        params.write_bytes(params.read_bytes()[:100])
        with pytest.raises(SerializationError, match="not a valid MXNet parameter file"):
            MXNetModelHandler.load_checkpoint(prefix)
        (tmp_path / "model-symbol.json").write_text("{not json")
        with pytest.raises(SerializationError, match="not a valid MXNet symbol file"):
            MXNetModelHandler.load_checkpoint(prefix)
        wrong = dict(handler.arg_params)
        wrong["fc2_weight"] = mx.nd.zeros((7, 64))
        with pytest.raises(SerializationError, match="parameter shape mismatch"):
            ModelHandler((handler.symbol, wrong, handler.aux_params))

    def test_failed_save_leaves_previous_files(self, handler, tmp_path, monkeypatch):
        prefix = str(tmp_path / "model")
        handler.save_checkpoint(prefix)
        before = (tmp_path / "model-0000.params").read_bytes()

        def crash(path, params):
            with open(path, "wb") as handle:
                handle.write(b"partial")
            raise OSError("disk full")

        monkeypatch.setattr(mxnet_handler.mx.nd, "save", crash)
        with pytest.raises(OSError, match="disk full"):
            handler.save_checkpoint(prefix)
        assert (tmp_path / "model-0000.params").read_bytes() == before
        assert sorted(os.listdir(tmp_path)) == ["model-0000.params", "model-symbol.json"]

    def test_visualize_net(self, handler, tmp_path, monkeypatch):
        digraph = handler.visualize_net()
        assert "conv1" in digraph.source and "softmax" in digraph.source
        if base_handler.shutil.which("dot"):
            handler.visualize_net(str(tmp_path / "graph"), format="svg")
            assert (tmp_path / "graph.svg").exists()
        monkeypatch.setattr(base_handler.shutil, "which", lambda name: None)
        with pytest.raises(MissingDependencyError, match="apt-get install graphviz"):
            handler.visualize_net(str(tmp_path / "graph"))


def test_facade_load_checkpoint_picks_the_backend(handler, tmp_path):
    handler.save_checkpoint(str(tmp_path / "toy"))
    loaded = ModelHandler.load_checkpoint(str(tmp_path / "toy"))
    assert isinstance(loaded, MXNetModelHandler) and loaded.layer_names == TOY_LAYERS
    with pytest.raises(ModelFileNotFoundError, match="missing-symbol.json' does not exist"):
        ModelHandler.load_checkpoint(str(tmp_path / "missing"))


def test_missing_checkpoint_message_lists_mxnet_files_first_whatever_registered_first(
    handler, tmp_path, monkeypatch
):
    """A backend registered before MXNet's was imported (lazy imports make that common) does
    not change the message: MXNet's files, then torch's, then the user's."""
    from xfer.model_handler import base

    class UserBackend:
        __module__ = "my_package.handlers"

        @classmethod
        def checkpoint_files(cls, prefix, epoch=0):
            return [f"{prefix}.mine"]

        @classmethod
        def open_checkpoint(cls, *args, **kwargs):
            return None

    monkeypatch.setattr(base, "_BACKENDS", [UserBackend, *base._BACKENDS[::-1]])
    with pytest.raises(ModelFileNotFoundError) as caught:
        ModelHandler.load_checkpoint(str(tmp_path / "missing"))
    message = str(caught.value)
    assert "missing-symbol.json' does not exist" in message
    assert message.index("-0000.params") < message.index(".safetensors") < message.index(".mine")
