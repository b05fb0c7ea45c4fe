"""Xfer 1.1.0's ModelHandler behaviour, as Xfer documents it, on a tiny network the tests build.

Iterators of every kind MXNet ships describe their arrays either with ``DataDesc`` objects or
with plain ``(name, shape)`` tuples; Xfer reads both, and so must we.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from xfer._mxnet import mx
from xfer.exceptions import InvalidTypeError, ModelError
from xfer.model_handler import ModelHandler

SIZE = 12  # tiny RGB images


def _network() -> mx.mod.Module:
    net = mx.sym.var("data")
    net = mx.sym.Convolution(net, num_filter=4, kernel=(3, 3), name="conv1")
    net = mx.sym.Activation(net, act_type="relu", name="relu1")
    net = mx.sym.Pooling(net, kernel=(2, 2), stride=(2, 2), pool_type="max", name="pool1")
    net = mx.sym.Flatten(net, name="flatten")
    net = mx.sym.FullyConnected(net, num_hidden=6, name="fc1")
    net = mx.sym.FullyConnected(net, num_hidden=3, name="fc2")
    net = mx.sym.SoftmaxOutput(net, name="softmax")
    module = mx.mod.Module(net, label_names=["softmax_label"])
    module.bind(data_shapes=[("data", (2, 3, SIZE, SIZE))], label_shapes=[("softmax_label", (2,))])
    mx.random.seed(0)
    module.init_params(mx.init.Xavier())
    return module


@pytest.fixture(scope="module")
def module():
    return _network()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Seven PNG images in class folders (7 is not a multiple of the batch size: padding)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    imglist = []
    for i in range(7):
        label = i % 3
        os.makedirs(root / f"class{label}", exist_ok=True)
        name = f"class{label}/img{i}.png"
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / name)
        imglist.append([float(label), name])
    arrays = np.stack(
        [np.asarray(Image.open(root / name), dtype=np.float32).transpose(2, 0, 1) for _, name in imglist]
    )
    return root, imglist, arrays


def _image_iter(images, batch_size=2, label_name="softmax_label"):
    root, imglist, _ = images
    return mx.image.ImageIter(batch_size, (3, SIZE, SIZE), imglist=imglist, path_root=str(root),
                              label_name=label_name)


def _expected(module, arrays):
    features, _ = ModelHandler(module).get_layer_output(arrays, ["fc1", "flatten"])
    return features


class _UserIter(mx.io.DataIter):
    """A user-written iterator whose provide_data/provide_label are plain tuples."""

    def __init__(self, data, labels, batch_size):
        super().__init__(batch_size)
        self.data, self.labels, self.cursor = data, labels, 0

    @property
    def provide_data(self):
        return [("data", (self.batch_size, *self.data.shape[1:]))]

    @property
    def provide_label(self):
        return [("softmax_label", (self.batch_size,))]

    def reset(self):
        self.cursor = 0

    def next(self):
        if self.cursor >= len(self.data):
            raise StopIteration
        chunk = self.data[self.cursor : self.cursor + self.batch_size]
        labels = self.labels[self.cursor : self.cursor + self.batch_size]
        pad = self.batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        self.cursor += self.batch_size
        return mx.io.DataBatch([mx.nd.array(chunk)], [mx.nd.array(labels)], pad=pad)


def _iterators(images, tmp_path):
    root, imglist, arrays = images
    labels = np.array([label for label, _ in imglist], np.float32)
    yield "ImageIter", _image_iter(images)
    csv_data, csv_labels = tmp_path / "data.csv", tmp_path / "labels.csv"
    np.savetxt(csv_data, arrays.reshape(len(arrays), -1), delimiter=",")
    np.savetxt(csv_labels, labels, delimiter=",")
    yield "CSVIter", mx.io.CSVIter(data_csv=str(csv_data), data_shape=(3, SIZE, SIZE), label_csv=str(csv_labels),
                                   batch_size=3, round_batch=False, label_name="softmax_label")
    yield "NDArrayIter", mx.io.NDArrayIter(arrays, labels, batch_size=4, label_name="softmax_label")
    yield "PrefetchingIter", mx.io.PrefetchingIter(
        mx.io.NDArrayIter(arrays, labels, batch_size=4, label_name="softmax_label"))
    yield "user DataIter", _UserIter(arrays, labels, batch_size=3)
    record = mx.recordio.MXIndexedRecordIO(str(tmp_path / "im.idx"), str(tmp_path / "im.rec"), "w")
    for i, (label, name) in enumerate(imglist):
        encoded = (root / name).read_bytes()  # what im2rec packs: the encoded image file
        record.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, label, i, 0), encoded))
    record.close()
    # batch_size=1: MXNet 1.9.1's ImageRecordIter reports pad=0 for a short last batch
    yield "ImageRecordIter", mx.io.ImageRecordIter(path_imgrec=str(tmp_path / "im.rec"), data_shape=(3, SIZE, SIZE),
                                                   batch_size=1, round_batch=False, label_name="softmax_label")


def test_every_mxnet_iterator_kind_reads_the_same_features(module, images, tmp_path):
    expected = _expected(module, images[2])
    labels = np.array([label for label, _ in images[1]])
    handler = ModelHandler(module)
    for kind, iterator in _iterators(images, tmp_path):
        iterator.reset()
        for _ in range(2):  # half-consumed iterators are reset first
            next(iter(iterator))
        features, read_labels = handler.get_layer_output(iterator, ["fc1", "flatten"])
        assert list(features) == ["fc1", "flatten"], kind
        assert features["flatten"].shape == (7, 4 * 5 * 5), kind
        np.testing.assert_allclose(features["fc1"], expected["fc1"], rtol=1e-4, atol=1e-3, err_msg=kind)
        np.testing.assert_array_equal(read_labels, labels, err_msg=kind)


def test_get_layer_output_takes_xfers_keyword(module, images):
    features, labels = ModelHandler(module).get_layer_output(data_iterator=_image_iter(images), layer_names=["fc2"])
    assert features["fc2"].shape == (7, 3) and labels.shape == (7,)


def test_get_module_with_an_image_iterator_warns_and_ignores_unknown_parameters(module, images, caplog):
    handler = ModelHandler(module)
    with caplog.at_level("WARNING", logger="xfer"):
        trainable = handler.get_module(
            _image_iter(images),
            fixed_layer_parameters=["conv1_weight", "conv1_bias", "conv1_foo"],
            random_layer_parameters=["fc2_weight", "fc2_bias", "fc2_foo"],
        )
    assert isinstance(trainable, mx.mod.Module)
    assert trainable._fixed_param_names == ["conv1_weight", "conv1_bias"]  # in the order given
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["Could not find layer parameters: conv1_foo", "Could not find layer parameters: fc2_foo"]
    args, _ = trainable.get_params()
    np.testing.assert_array_equal(args["fc1_weight"].asnumpy(), handler.arg_params["fc1_weight"].asnumpy())
    assert not np.array_equal(args["fc2_weight"].asnumpy(), handler.arg_params["fc2_weight"].asnumpy())


def test_module_without_parameters_can_be_edited(module):
    bare = mx.mod.Module(module.symbol, label_names=["softmax_label"])
    handler = ModelHandler(bare)
    assert handler.arg_params == {} and handler.aux_params == {}
    handler.drop_layer_top()
    handler.drop_layer_bottom()
    assert handler.layer_names == ["relu1", "pool1", "flatten", "fc1", "fc2"]


def test_parameters_of_a_dropped_layer_are_an_empty_list(module):
    handler = ModelHandler(module)
    handler.drop_layer_bottom()
    assert handler.get_layer_parameters(["conv1"]) == []
    with pytest.raises(TypeError):  # a single name is still a mistake, as in Xfer
        handler.get_layer_parameters("conv1")


def test_adding_one_layer_above_the_output_is_a_model_error(module):
    with pytest.raises(ModelError):
        ModelHandler(module).add_layer_top(mx.sym.FullyConnected(num_hidden=5))


def test_xfer_module_paths():
    import xfer.model_handler as model_handler
    from xfer.model_handler import consts, exceptions

    assert model_handler.ModelHandler is ModelHandler
    assert issubclass(exceptions.ModelArchitectureError, exceptions.ModelError)
    assert consts.LayerType.CONVOLUTION == "Convolution"
    assert [t.value for t in (consts.LayerType.PLUS, consts.LayerType.SVMOUTPUT, consts.LayerType.LRN,
                              consts.LayerType.DATA, consts.LayerType.MEAN,
                              consts.LayerType.EMBEDDING)] == [
        "_Plus", "SVMOutput", "LRN", "Data", "mean", "Embedding"]  # every member of Xfer's enum
    with pytest.raises(InvalidTypeError):
        ModelHandler({"not": "a model"})


def test_get_module_reinitialises_random_parameters_whatever_their_stored_values(module, images):
    # Xfer re-initialises random_layer_parameters without reading them: a stored value of another
    # shape (an edited handler's leftover) does not matter; a fixed one of the wrong shape does.
    handler = ModelHandler(module)
    handler.arg_params["fc2_bias"] = mx.nd.ones((7,))
    trainable = handler.get_module(_image_iter(images), random_layer_parameters=["fc2_weight", "fc2_bias"])
    assert trainable.get_params()[0]["fc2_bias"].shape == (3,)
    with pytest.raises(ValueError, match="operator fc2"):
        handler.get_module(_image_iter(images), fixed_layer_parameters=["fc2_bias"])


def test_xfers_private_graph_helpers_that_map_to_this_handler(module):
    from xfer.model_handler import consts

    # Xfer's tests call these private helpers; they are this handler's own reading of the graph
    handler = ModelHandler(module)
    assert list(handler._get_layer_type_dict().items()) == [
        ("conv1", "Convolution"), ("relu1", "Activation"), ("pool1", "Pooling"),
        ("flatten", "Flatten"), ("fc1", "FullyConnected"), ("fc2", "FullyConnected"),
        ("softmax", "SoftmaxOutput"),
    ]  # fmt: skip
    symbol_dict = handler._get_symbol_dict(handler.symbol)
    nodes = symbol_dict[consts.NODES]
    assert [node[consts.NAME] for node in nodes][:3] == ["data", "conv1_weight", "conv1_bias"]
    assert nodes[0][consts.OPERATION] == consts.NO_OP and nodes[3][consts.OPERATION] == "Convolution"
    assert {consts.ARG_NODES, consts.HEADS, consts.ATTRIBUTES, consts.NODE_PTR} <= set(symbol_dict)
    handler._validate_layer_name("fc3")
    for taken in ("conv1", "data", "softmax"):
        with pytest.raises(ValueError, match=f"A layer named '{taken}' already exists"):
            handler._validate_layer_name(taken)
    for reserved in ("prob_label", "conv3_output", "conv3_moving_mean", "conv3_beta_q"):
        with pytest.raises(ValueError, match="reserved for parameter and output names"):
            handler._validate_layer_name(reserved)
    with pytest.raises(ValueError, match="'fc3' already exists"):
        handler._validate_layer_name("fc3", taken=["fc3"])
