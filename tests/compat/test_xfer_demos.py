"""Xfer 1.1.0's demo flows, run as an Xfer user runs them, on small local stand-in models.

Xfer's demo notebooks (overview, ModelHandler, custom repurposers, hyper-parameter search, Gluon
source models, text transfer) download ImageNet models and read image folders through
``mx.image.ImageIter``. Here each flow runs with the same calls on a small network the test
builds and on PNG images the test writes into class folders, so the flows are checked end to end
in seconds. Written from Xfer's documented API; no Xfer code.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from PIL import Image

import xfer
from xfer._mxnet import mx

SIZE = 16
CLASSES = ("circle", "cross", "square", "stripes")


def _draw(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A 16x16 RGB image of one of four shapes, with noise and a random colour."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.integers(6, 10, size=2)
    if kind == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 16
    elif kind == "cross":
        mask = (np.abs(yy - cy) < 2) | (np.abs(xx - cx) < 2)
    elif kind == "square":
        mask = (np.abs(yy - cy) < 4) & (np.abs(xx - cx) < 4)
    else:
        mask = (xx % 4) < 2
    colour = rng.integers(120, 256, size=3)
    image = rng.integers(0, 60, size=(SIZE, SIZE, 3)) + mask[..., None] * colour
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """``root/<class>/<i>.png``: 12 images of each of 4 classes, as the demos' folders."""
    root = tmp_path_factory.mktemp("target_images")
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        os.makedirs(root / kind)
        for i in range(12):
            Image.fromarray(_draw(kind, rng)).save(root / kind / f"{i}.png")
    return root


def _iterators(root, label_name="prob_label", batch_size=4, splits=(0.5,)):
    """Image lists split per class (stratified), then ``mx.image.ImageIter`` s over them."""
    random.seed(1)
    lists = [[] for _ in range(len(splits) + 1)]
    for label, kind in enumerate(CLASSES):
        files = sorted(os.listdir(root / kind))
        cuts = np.cumsum([0] + [int(round(s * len(files))) for s in splits] + [len(files)])
        cuts[-1] = len(files)
        for part in range(len(lists)):
            lists[part] += [[float(label), str(root / kind / f)] for f in files[cuts[part] : cuts[part + 1]]]
    for part in lists:
        random.shuffle(part)
    iterators = [
        mx.image.ImageIter(batch_size, (3, SIZE, SIZE), imglist=part, label_name=label_name, path_root="")
        for part in lists
    ]
    labels = [np.array([int(label) for label, _ in part]) for part in lists]
    return iterators, labels


def _source_model(label_name="prob") -> mx.mod.Module:
    """A VGG-shaped network (conv, pool, fc7, fc8, softmax 'prob'), as the demos' source model,
    with random weights: its fc7 features still separate the shapes above."""
    net = mx.sym.var("data")
    net = mx.sym.Convolution(net, num_filter=8, kernel=(3, 3), pad=(1, 1), name="conv1_1")
    net = mx.sym.Activation(net, act_type="relu", name="relu1_1")
    net = mx.sym.Pooling(net, kernel=(2, 2), stride=(2, 2), pool_type="max", name="pool1")
    net = mx.sym.Convolution(net, num_filter=8, kernel=(3, 3), pad=(1, 1), name="conv2_1")
    net = mx.sym.Activation(net, act_type="relu", name="relu2_1")
    net = mx.sym.Pooling(net, kernel=(2, 2), stride=(2, 2), pool_type="max", name="pool2")
    net = mx.sym.Flatten(net, name="flatten_0")
    net = mx.sym.FullyConnected(net, num_hidden=32, name="fc7")
    net = mx.sym.Activation(net, act_type="relu", name="relu7")
    net = mx.sym.FullyConnected(net, num_hidden=10, name="fc8")
    net = mx.sym.SoftmaxOutput(net, name=label_name)
    module = mx.mod.Module(net, label_names=[f"{label_name}_label"])
    module.bind(data_shapes=[("data", (4, 3, SIZE, SIZE))], label_shapes=[(f"{label_name}_label", (4,))])
    mx.random.seed(0)
    module.init_params(mx.init.Xavier(magnitude=2.0))
    return module


@pytest.fixture(scope="module")
def source_model(tmp_path_factory):
    """The stand-in saved and loaded as the demos load theirs: ``Module.load(prefix, 0, label_names)``."""
    prefix = str(tmp_path_factory.mktemp("zoo") / "vgg_standin")
    _source_model().save_checkpoint(prefix, 0)
    return mx.module.Module.load(prefix, 0, label_names=["prob_label"])


def test_overview_meta_model_flow(image_folder, source_model, tmp_path):
    (train_iterator, test_iterator), (train_labels, test_labels) = _iterators(image_folder)
    mh = xfer.model_handler.ModelHandler(source_model)

    # The source model alone, unchanged, predicts its own 10 classes
    module = mh.get_module(iterator=test_iterator)
    predictions = np.argmax(module.predict(test_iterator), axis=1).asnumpy().astype(int)
    assert predictions.shape == (len(test_labels),) and predictions.max() < 10

    # Meta-model repurposers on fc7 features, trained and used through the iterators
    repurposers = {
        "lr": xfer.LrRepurposer(source_model=source_model, feature_layer_names=["fc7"]),
        "svm": xfer.SvmRepurposer(source_model=source_model, feature_layer_names=["fc7"]),
        "gp": xfer.GpRepurposer(source_model, ["fc7"], apply_l2_norm=True, max_function_evaluations=20, random_state=0),
        "bnn": xfer.BnnRepurposer(source_model, ["fc7"], num_epochs=40, num_samples_mc_prediction=20, random_state=0),
    }
    for name, repurposer in repurposers.items():
        assert repurposer.target_model is None
        repurposer.repurpose(train_iterator)
        labels = repurposer.predict_label(test_iterator)
        assert labels.shape == (len(test_labels),), name
        minimum = 0.35 if name == "bnn" else 0.5  # chance is 0.25; random source weights
        assert np.mean(labels == test_labels) >= minimum, (name, np.mean(labels == test_labels))
    uncertainty = repurposers["gp"].predict_probability(test_iterator)
    assert uncertainty.shape == (len(test_labels), 4)
    np.testing.assert_allclose(uncertainty.sum(axis=1), 1.0, atol=1e-6)

    # Save with and without the source model, load back, same predictions
    lr = repurposers["lr"]
    lr.save_repurposer(model_name="demo_lr", model_directory=str(tmp_path))
    for name in ("demo_lr.json", "demo_lr_source-symbol.json", "demo_lr_source-0000.params"):
        assert (tmp_path / name).is_file()
    loaded = xfer.load(model_name="demo_lr", model_directory=str(tmp_path))
    np.testing.assert_array_equal(loaded.predict_label(test_iterator), lr.predict_label(test_iterator))
    lr.save_repurposer("demo_lr_alone", str(tmp_path), save_source_model=False)
    alone = xfer.load("demo_lr_alone", str(tmp_path), source_model=source_model)
    np.testing.assert_array_equal(alone.predict_label(test_iterator), lr.predict_label(test_iterator))


def test_model_handler_flow(image_folder, source_model, tmp_path):
    (train_iterator, test_iterator), _ = _iterators(image_folder, label_name="softmax_label")
    mh = xfer.model_handler.ModelHandler(source_model)
    assert mh.layer_names[-1] == "prob" and mh.get_layer_type("conv1_1") == "Convolution"
    assert mh.get_layer_names_matching_type("Convolution") == ["conv1_1", "conv2_1"]

    # Features of two layers through the iterator (Xfer's keyword), in the order asked for
    features, labels = mh.get_layer_output(data_iterator=test_iterator, layer_names=["fc7", "pool2"])
    assert list(features) == ["fc7", "pool2"] and features["fc7"].shape == (24, 32)
    assert features["pool2"].shape == (24, 8 * 4 * 4) and labels.shape == (24,)
    # labels as Xfer returns them: int class indices (ImageIter carries them as float32); labels
    # that are not whole numbers are kept as they are (Xfer truncated them)
    assert labels.dtype == np.int64 and set(labels) == {0, 1, 2, 3}
    scores = mx.io.NDArrayIter(np.zeros((3, 3, SIZE, SIZE), np.float32), np.array([0.5, 1, 2]), 3)
    np.testing.assert_array_equal(mh.get_layer_output(scores, ["fc7"])[1], [0.5, 1, 2])

    # Surgery: replace the classifier, drop the first convolution, add a layer at the bottom
    mh.drop_layer_top(2)
    mh.add_layer_top([mx.sym.FullyConnected(num_hidden=4, name="fc_new"), mx.sym.SoftmaxOutput(name="softmax")])
    conv1_parameters = mh.get_layer_parameters(["conv1_1"])
    assert conv1_parameters == ["conv1_1_weight", "conv1_1_bias"]
    mh.drop_layer_bottom(2)
    assert mh.get_layer_parameters(["conv1_1"]) == []  # the demo asks after dropping it
    mh.add_layer_bottom([mx.sym.Convolution(kernel=(3, 3), pad=(1, 1), num_filter=8, name="conv_in")])
    assert mh.layer_names[:2] == ["conv_in", "pool1"]
    assert mh.visualize_net() is not None
    mh.save_symbol(str(tmp_path / "edited"))
    assert (tmp_path / "edited-symbol.json").is_file()

    # A trainable module: new layers random, the rest fixed, trained one epoch with Module.fit
    module = mh.get_module(
        train_iterator,
        fixed_layer_parameters=mh.get_layer_parameters(["conv2_1", "fc7"]),
        random_layer_parameters=mh.get_layer_parameters(["conv_in", "fc_new"]),
    )
    before = module.get_params()[0]["fc7_weight"].asnumpy().copy()
    module.fit(train_iterator, num_epoch=1, optimizer="sgd", optimizer_params={"learning_rate": 0.01})
    np.testing.assert_array_equal(module.get_params()[0]["fc7_weight"].asnumpy(), before)


def test_hyper_parameter_search_flow(image_folder, source_model):
    """The HPO demo's loop (there with GPyOpt; here a small grid): train on train, score on
    validation, retrain the best on train+validation, test. Iterators are reused throughout."""
    (train, validation, test), (_, validation_labels, test_labels) = _iterators(image_folder, splits=(0.34, 0.33))
    scores = {}
    for c in (0.01, 1.0, 100.0):
        repurposer = xfer.LrRepurposer(source_model, ["fc7"], c=c)
        repurposer.repurpose(train)
        scores[c] = np.mean(repurposer.predict_label(validation) == validation_labels)
    best = max(scores, key=scores.get)
    (train_validation, test_again), (_, labels_again) = _iterators(image_folder, splits=(0.67,))
    final = xfer.LrRepurposer(source_model, ["fc7"], c=best).repurpose(train_validation)
    assert np.mean(final.predict_label(test_again) == labels_again) >= 0.5  # chance: 0.25


def test_gluon_source_model_flow(image_folder, tmp_path):
    """A Gluon network as source model: hybridised and exported (or given as is), then repurposed."""
    (train_iterator, test_iterator), (_, test_labels) = _iterators(image_folder, label_name="softmax_label")
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(8, 3, padding=1, activation="relu"), mx.gluon.nn.MaxPool2D(2),
            mx.gluon.nn.Flatten(), mx.gluon.nn.Dense(32, activation="relu"), mx.gluon.nn.Dense(10))  # fmt: skip
    mx.random.seed(0)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net.hybridize()
    net(mx.nd.zeros((1, 3, SIZE, SIZE)))
    net.export(str(tmp_path / "gluon_net"))
    symbol, arg_params, aux_params = mx.model.load_checkpoint(str(tmp_path / "gluon_net"), 0)
    mh = xfer.model_handler.ModelHandler(mx.mod.Module(symbol, label_names=None))  # a graph: no weights
    assert mh.arg_params == {}
    dense = mh.get_layer_names_matching_type("FullyConnected")
    module = mx.mod.Module(mx.sym.SoftmaxOutput(symbol, name="softmax"), label_names=["softmax_label"])
    module.bind(data_shapes=[("data", (4, 3, SIZE, SIZE))], label_shapes=[("softmax_label", (4,))])
    module.set_params(arg_params, aux_params)
    repurposer = xfer.LrRepurposer(module, [dense[0]])
    repurposer.repurpose(train_iterator)
    assert np.mean(repurposer.predict_label(test_iterator) == test_labels) >= 0.6
    from_block = xfer.LrRepurposer(net, [xfer.model_handler.ModelHandler(net).layer_names[-2]])
    from_block.repurpose(train_iterator)
    assert from_block.predict_probability(test_iterator).shape == (len(test_labels), 4)


def test_text_transfer_flow():
    """Text as token ids through an embedding + convolution network (the text demo's source
    model kind), NDArrayIter data, a meta-model on the pooled features."""
    rng = np.random.default_rng(0)
    vocabulary, length, n = 50, 12, 80
    labels = rng.integers(0, 2, n)
    # the two classes use different halves of the vocabulary (say, two topics)
    tokens = rng.integers(0, vocabulary // 2, (n, length)) + (vocabulary // 2) * labels[:, None]
    data = mx.sym.var("data")
    net = mx.sym.Embedding(data, input_dim=vocabulary, output_dim=8, name="embed")
    net = mx.sym.reshape(mx.sym.transpose(net, axes=(0, 2, 1)), shape=(0, 8, 1, length), name="to_image")
    net = mx.sym.Convolution(net, num_filter=16, kernel=(1, 3), name="conv")
    net = mx.sym.Activation(net, act_type="relu", name="relu")
    net = mx.sym.Pooling(net, global_pool=True, kernel=(1, 1), pool_type="avg", name="pool")
    net = mx.sym.FullyConnected(mx.sym.Flatten(net, name="flatten"), num_hidden=2, name="fc")
    net = mx.sym.SoftmaxOutput(net, name="softmax")
    module = mx.mod.Module(net)
    module.bind(data_shapes=[("data", (10, length))], label_shapes=[("softmax_label", (10,))])
    mx.random.seed(0)
    module.init_params(mx.init.Xavier())
    # "pretrained": the embedding already tells the two topics apart (an offset on one axis)
    args, auxs = module.get_params()
    topic = np.arange(vocabulary)[:, None] >= vocabulary // 2
    args["embed_weight"] = mx.nd.array(0.3 * rng.standard_normal((vocabulary, 8)) + topic * np.eye(8)[0])
    module.set_params(args, auxs)
    train = mx.io.NDArrayIter(tokens[:60].astype(np.float32), labels[:60].astype(np.float32), batch_size=10)
    test = mx.io.NDArrayIter(tokens[60:].astype(np.float32), labels[60:].astype(np.float32), batch_size=10)
    repurposer = xfer.SvmRepurposer(module, ["pool"], enable_probability_estimates=True)
    repurposer.repurpose(train)
    assert np.mean(repurposer.predict_label(test) == labels[60:]) >= 0.9
    assert repurposer.predict_probability(test).shape == (20, 2)


def test_overview_fine_tuning_flow(image_folder, source_model):
    """Neural-network repurposers of the overview: random-freeze and fine-tune, trained through
    ImageIter (labels named after the source model's output, 'prob_label')."""
    (train_iterator, test_iterator), (_, test_labels) = _iterators(image_folder)
    freeze = xfer.NeuralNetworkRandomFreezeRepurposer(
        source_model, target_class_count=4, fixed_layers=["conv1_1"], random_layers=["conv2_1"],
        num_epochs=3, batch_size=4, optimizer="adam", optimizer_params={"learning_rate": 0.01},
    )  # fmt: skip
    fine_tune = xfer.NeuralNetworkFineTuneRepurposer(
        source_model, transfer_layer_name="relu7", target_class_count=4, num_epochs=3, batch_size=4,
        optimizer="adam", optimizer_params={"learning_rate": 0.01},
    )  # fmt: skip
    for repurposer in (freeze, fine_tune):
        assert repurposer.target_model is None
        repurposer.repurpose(train_iterator)
        assert isinstance(repurposer.target_model, mx.mod.Module)
        labels = repurposer.predict_label(test_iterator)
        assert labels.shape == (len(test_labels),) and set(labels) <= {0, 1, 2, 3}
        assert repurposer.predict_probability(test_iterator).shape == (len(test_labels), 4)
    arguments = freeze.target_model.symbol.list_arguments()
    assert "new_fully_connected_layer_weight" in arguments and "fc8_weight" not in arguments
    np.testing.assert_array_equal(
        freeze.target_model._arg_params["conv1_1_weight"].asnumpy(),
        source_model._arg_params["conv1_1_weight"].asnumpy(),
    )


class Add2FullyConnectedRepurposer(xfer.NeuralNetworkRepurposer):
    """The custom neural-network repurposer of Xfer's demo, as an Xfer user writes one: keep the
    source network up to a layer, add two dense layers, train with the convolutions fixed."""

    def __init__(self, source_model, transfer_layer_name, num_nodes, target_class_count,
                 context_function=mx.context.cpu, num_devices=1, batch_size=64, num_epochs=5):
        super().__init__(source_model, context_function, num_devices, batch_size, num_epochs)
        self.transfer_layer_name = transfer_layer_name
        self.num_nodes = num_nodes
        self.target_class_count = target_class_count

    def _create_target_module(self, train_iterator):
        handler = xfer.model_handler.ModelHandler(self.source_model, self.context_function, self.num_devices)
        if self.transfer_layer_name not in handler.layer_names:
            raise ValueError(f"transfer_layer_name: {self.transfer_layer_name} not found in source model")
        handler.update_sym(self.source_model.symbol.get_internals()[self.transfer_layer_name + "_output"])
        output_name = train_iterator.provide_label[0][0].replace("_label", "")
        handler.add_layer_top([
            mx.sym.FullyConnected(num_hidden=self.num_nodes, name="fc_rep"),
            mx.sym.FullyConnected(num_hidden=self.target_class_count, name="fc_from_custom_repurposer"),
            mx.sym.SoftmaxOutput(name=output_name),
        ])  # fmt: skip
        fixed = handler.get_layer_parameters(handler.get_layer_names_matching_type("Convolution"))
        return handler.get_module(train_iterator, fixed_layer_parameters=fixed)


def test_custom_neural_network_repurposer_flow(image_folder, source_model):
    (train_iterator, test_iterator), (_, test_labels) = _iterators(image_folder)
    repurposer = Add2FullyConnectedRepurposer(source_model, transfer_layer_name="relu7", num_nodes=16,
                                              target_class_count=4, batch_size=4, num_epochs=2)
    train_iterator.reset()
    repurposer.repurpose(train_iterator)
    assert repurposer.predict_label(test_iterator).shape == (len(test_labels),)
    module = repurposer.target_model
    assert "fc_rep_weight" in module.symbol.list_arguments()
    np.testing.assert_array_equal(  # the convolutions were fixed
        module._arg_params["conv2_1_weight"].asnumpy(), source_model._arg_params["conv2_1_weight"].asnumpy()
    )
    with pytest.raises(ValueError, match="transfer_layer_name: nope not found"):
        Add2FullyConnectedRepurposer(source_model, "nope", 4, 4).repurpose(train_iterator)


def test_repurposers_display_in_notebooks(image_folder, source_model):
    """A notebook cell ending in ``repurposer.repurpose(iterator)`` displays the repurposer it
    returns with scikit-learn's HTML repr (``_repr_mimebundle_``, what Jupyter calls). With an
    ``mx.mod.Module`` source model (it has ``get_params`` and ``fit``, but no ``deep``) that
    printed a TypeError under two cells of Xfer's custom-repurposer demo."""
    (train_iterator, _), _ = _iterators(image_folder)
    repurposers = [
        xfer.LrRepurposer(source_model, ["fc7"]),
        xfer.NeuralNetworkFineTuneRepurposer(source_model, "relu7", 4, num_epochs=1, batch_size=4),
        Add2FullyConnectedRepurposer(source_model, "relu7", 8, 4, batch_size=4, num_epochs=1),
    ]
    for repurposer in repurposers:
        for _ in ("unfitted", "fitted"):
            bundle = repurposer._repr_mimebundle_()
            assert type(repurposer).__name__ in bundle["text/html"]
            assert bundle["text/plain"].startswith(type(repurposer).__name__)
            train_iterator.reset()
            shown = repurposer.repurpose(train_iterator)
        assert shown is repurposer


def test_gluon_fine_tuning_with_more_classes_than_labels(image_folder, tmp_path):
    """The Gluon demo fine-tunes with target_class_count larger than the labels present: labels
    are class indices, the network gets target_class_count outputs."""
    (train_iterator, test_iterator), (_, test_labels) = _iterators(image_folder, label_name="softmax_label")
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(8, 3, padding=1, activation="relu"), mx.gluon.nn.MaxPool2D(2),
            mx.gluon.nn.Flatten(), mx.gluon.nn.Dense(16, activation="relu"), mx.gluon.nn.Dense(10))  # fmt: skip
    mx.random.seed(0)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net.hybridize()
    net(mx.nd.zeros((1, 3, SIZE, SIZE)))
    net.export(str(tmp_path / "gluon_net"))
    symbol, arg_params, aux_params = mx.model.load_checkpoint(str(tmp_path / "gluon_net"), 0)
    source = mx.mod.Module(mx.sym.SoftmaxOutput(symbol, name="softmax"), label_names=["softmax_label"])
    source.bind(data_shapes=[("data", (4, 3, SIZE, SIZE))], label_shapes=[("softmax_label", (4,))])
    source.set_params(arg_params, aux_params)
    dense = xfer.model_handler.ModelHandler(source).get_layer_names_matching_type("Activation")[-1]
    repurposer = xfer.NeuralNetworkFineTuneRepurposer(source, transfer_layer_name=dense, target_class_count=6,
                                                      num_epochs=2, batch_size=4)
    repurposer.repurpose(train_iterator)
    np.testing.assert_array_equal(repurposer.classes_, np.arange(6))
    probabilities = repurposer.predict_probability(test_iterator)
    assert probabilities.shape == (len(test_labels), 6)
    assert set(repurposer.predict_label(test_iterator)) <= set(range(6))
