"""PyTorch ModelHandler: layers, fx and hook paths, surgery, training copies, files."""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import xfer.model_handler.base as base_handler
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
from xfer.model_handler import ModelHandler, TorchModelHandler
from xfer.model_handler.consts import LayerType
from xfer.model_handler.torch import frozen_batchnorm_layers

TOY_LAYERS = ["conv1", "bn1", "relu1", "pool1", "conv2", "relu2", "flatten", "fc1", "relu3", "fc2"]


def toy_cnn(seed: int = 0) -> nn.Sequential:
    """conv1 bn1 relu1 pool1 conv2 relu2 flatten fc1 relu3 fc2 on 1 x 8 x 8, BN statistics set."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 4, 3, padding=1),
            bn1=nn.BatchNorm2d(4),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(4, 8, 3, padding=1),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(8 * 4 * 4, 16),
            relu3=nn.ReLU(),
            fc2=nn.Linear(16, 3),
        )
    )
    with torch.no_grad():
        model(torch.rand(32, 1, 8, 8) * 3)  # training-mode forward: non-trivial running stats
    return model.eval()


class Residual(nn.Module):
    """stem -> branch; add(stem, branch) -> pool -> flatten -> fc; traces with fx."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        stem = self.stem(x)
        merged = stem + self.bn(self.branch(stem))
        return self.fc(torch.flatten(self.pool(merged), 1))


class TwoBranches(nn.Module):
    """conv_a(x) + conv_b(x) -> fc: the merge of two layers reading the input."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(2, 2, 1)
        self.conv_b = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x):
        return self.fc((self.conv_a(x) + self.conv_b(x)).flatten(1))


class DataDependent(nn.Module):
    """Data-dependent control flow: does not trace with torch.fx. ``late`` counts its calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 6 * 6, 4)
        self.late = nn.Linear(4, 2)
        self.late_calls = 0

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        if x.sum() > 0:  # data-dependent
            x = x * 1.0
        x = self.fc(x.flatten(1))
        self.late_calls += 1
        return self.late(x)


class SharedActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 3)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        return nn.functional.normalize(self.act(self.fc2(self.act(self.fc1(x)))), dim=1)


class CharEncoder(nn.Module):
    """A tiny text model: a list of strings in, a fixed-size vector per string out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.EmbeddingBag(128, 6, mode="mean")
        self.proj = nn.Linear(6, 4)

    def forward(self, texts):
        if not isinstance(texts, list):
            raise TypeError("CharEncoder takes a list of strings")
        ids = [torch.tensor([ord(c) % 128 for c in text] or [0]) for text in texts]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return self.proj(self.embedding(torch.cat(ids), offsets))


@pytest.fixture(autouse=True)
def _fixed_threads(monkeypatch):
    # Several tests compare two passes bit for bit; the automatic policy picks torch's thread
    # count from the machine's load per call, and another count sums in another order (1e-8).
    monkeypatch.setenv("XFER_NUM_THREADS", "1")


@pytest.fixture
def images(rng):
    return rng.uniform(0, 1, (10, 1, 8, 8)).astype(np.float32)


@pytest.fixture
def handler():
    return ModelHandler(toy_cnn())


def manual(model, x, layers):
    """The reference: a plain eval-mode forward with forward hooks capturing the layers."""
    model.eval()
    captured = {}

    def capture(name):
        def hook(module, args, output):
            captured.setdefault(name, output.reshape(len(x), -1).numpy().copy())

        return hook

    handles = [model.get_submodule(name).register_forward_hook(capture(name)) for name in layers]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in handles:
        h.remove()
    return captured


# ---------------------------------------------------------------------- construction and inspection
class TestConstruction:
    def test_dispatch_attributes_and_lazy_torch(self, handler):
        assert isinstance(handler, TorchModelHandler) and handler.backend == "torch"
        assert handler.layer_names == TOY_LAYERS
        assert handler.tracing == "fx" and handler.trace_error is None
        assert handler.devices == [torch.device("cpu")]
        assert handler.data_name == "input"
        assert handler.get_layer_type("conv1") == "Conv2d"
        assert "bn1.running_mean" in handler.aux_params and "conv1.weight" in handler.arg_params
        assert "TorchModelHandler(10 layers, fx: conv1 ... fc2)" == repr(handler)

    def test_numbered_children_are_numbered_on(self):
        handler = ModelHandler(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
        handler.drop_layer_top(1)
        handler.add_layer_top([nn.Linear(8, 5), nn.Softmax(dim=1)])
        assert handler.layer_names == ["0", "1", "2", "3"] and type(handler.model) is nn.Sequential

    def test_copy_is_independent(self, handler):
        copy = ModelHandler(handler)
        copy.drop_layer_top(2)
        copy.freeze(["conv1"])
        assert handler.layer_names == TOY_LAYERS and handler.frozen_layers == []
        assert isinstance(copy.model, nn.Sequential) and len(handler.model) == 10

    def test_bad_construction(self):
        with pytest.raises(InvalidArgumentError, match=r"tracing must be one of \['auto', 'fx', 'hooks'\]"):
            TorchModelHandler(toy_cnn(), tracing="jit")
        with pytest.raises(InvalidTypeError, match="needs a torch.nn.Module, got dict"):
            TorchModelHandler({"not": "a model"})
        with pytest.raises(ModelArchitectureError, match="does not trace with torch.fx .*tracing='auto' or 'hooks'"):
            TorchModelHandler(DataDependent(), tracing="fx")

        class NoLayers(nn.Module):
            def forward(self, x):
                return x * 2

        with pytest.raises(ModelError, match="has no layer modules"):
            ModelHandler(NoLayers())
        with pytest.raises(InvalidArgumentError, match="on one device"):
            TorchModelHandler(toy_cnn(), "cpu", num_devices=2)


class TestInspection:
    def test_types_match_classes_bases_and_mxnet_names(self):
        handler = ModelHandler(toy_cnn())
        assert handler.get_layer_names_matching_type("conv2d") == ["conv1", "conv2"]
        assert handler.get_layer_names_matching_type(LayerType.CONVOLUTION) == ["conv1", "conv2"]
        assert handler.get_layer_names_matching_type(LayerType.FULLYCONNECTED) == ["fc1", "fc2"]
        assert handler.get_layer_names_matching_type(LayerType.ACTIVATION) == ["relu1", "relu2", "relu3"]
        assert handler.get_layer_names_matching_type(LayerType.POOLING) == ["pool1"]
        assert handler.get_layer_names_matching_type(nn.Linear) == ["fc1", "fc2"]

        class PaddedConv(nn.Conv2d):  # like EfficientNet's Conv2dStaticSamePadding: has a child
            def __init__(self):
                super().__init__(1, 2, 3)
                self.pad = nn.ZeroPad2d(1)

            def forward(self, x):
                return super().forward(self.pad(x))

        custom = ModelHandler(nn.Sequential(PaddedConv(), nn.ReLU()))
        assert custom.layer_names == ["0", "1"], "a torch.nn layer subclass is one layer"
        assert custom.get_layer_type("0") == "PaddedConv"
        assert custom.get_layer_names_matching_type("CONV2D") == ["0"]
        assert custom.get_layer_parameters(["0"]) == ["0.weight", "0.bias"]

    def test_parameters_are_exact_with_buffers(self):
        model = nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 2, 1), conv10=nn.Conv2d(2, 2, 1), conv1_bn=nn.BatchNorm2d(2)))
        handler = ModelHandler(model)
        assert handler.get_layer_parameters(["conv1"]) == ["conv1.weight", "conv1.bias"]
        assert handler.get_layer_parameters(["conv1_bn"]) == [
            "conv1_bn.weight", "conv1_bn.bias", "conv1_bn.running_mean", "conv1_bn.running_var",
            "conv1_bn.num_batches_tracked",
        ]  # fmt: skip
        assert handler.get_layer_parameters(["conv10", "conv1"]) == [
            "conv10.weight", "conv10.bias", "conv1.weight", "conv1.bias",
        ]  # fmt: skip

    def test_shared_module_calls_and_output_pseudo_layer(self, rng):
        handler = ModelHandler(SharedActivation())
        assert handler.layer_names == ["fc1", "act", "fc2", "act#1", "output"]
        assert handler.get_layer_type("act#1") == "Tanh" and handler.get_layer_type("output") == "Output"
        assert handler.get_layer_parameters(["act#1", "output"]) == []
        x = rng.standard_normal((4, 3)).astype(np.float32)
        features, _ = handler.get_layer_output(x, ["act", "act#1", "output"])
        model = handler.model
        with torch.no_grad():
            first = model.act(model.fc1(torch.from_numpy(x)))
            second = model.act(model.fc2(first))
        np.testing.assert_allclose(features["act"], first.numpy(), atol=1e-6)
        np.testing.assert_allclose(features["act#1"], second.numpy(), atol=1e-6)
        np.testing.assert_allclose(features["output"], nn.functional.normalize(second, dim=1).numpy(), atol=1e-6)

    def test_unknown_layer_names(self, handler):
        with pytest.raises(LayerNotFoundError, match=r"'conv3' is not in the model\. Did you mean: 'conv2', 'conv1'"):
            handler.get_layer_type("conv3")
        with pytest.raises(InvalidTypeError, match=r"pass \['conv1'\]"):
            handler.get_layer_output(np.zeros((1, 1, 8, 8), np.float32), "conv1")


# ---------------------------------------------------------------------- features
class TestGetLayerOutput:
    def test_equals_manual_forward(self, handler, images):
        features, labels = handler.get_layer_output(images, ["fc2", "conv1", "bn1", "fc1"], batch_size=4)
        assert list(features) == ["fc2", "conv1", "bn1", "fc1"] and labels is None
        assert features["conv1"].shape == (10, 4 * 8 * 8) and features["fc2"].dtype == np.float32
        expected = manual(toy_cnn(), images, ["fc2", "conv1", "bn1", "fc1"])
        for name, values in features.items():
            np.testing.assert_allclose(values, expected[name], atol=1e-5, err_msg=name)

    def test_fx_and_hooks_give_identical_features(self, images):
        fx_handler = ModelHandler(toy_cnn())
        hook_handler = TorchModelHandler(toy_cnn(), tracing="hooks")
        assert hook_handler.tracing == "hooks" and hook_handler.layer_names == TOY_LAYERS + ["output"]
        layers = ["conv1", "bn1", "relu2", "fc2"]
        by_fx, _ = fx_handler.get_layer_output(images, layers, batch_size=3)
        by_hooks, _ = hook_handler.get_layer_output(images, layers, batch_size=3)
        # the same kernels run; only BLAS's alignment-dependent summation order may differ
        for name in layers:
            np.testing.assert_allclose(by_fx[name], by_hooks[name], rtol=0, atol=1e-6, err_msg=name)
        output, _ = hook_handler.get_layer_output(images, ["output"])
        np.testing.assert_allclose(output["output"], by_fx["fc2"], rtol=0, atol=1e-6)

    def test_untraceable_model_uses_hooks_and_stops_early(self, rng):
        model = DataDependent().eval()
        handler = ModelHandler(model)
        assert handler.tracing == "hooks" and handler.trace_error
        assert handler.layer_names == ["conv", "bn", "fc", "late", "output"]
        x = rng.uniform(0, 1, (5, 1, 8, 8)).astype(np.float32)
        features, _ = handler.get_layer_output(x, ["bn", "fc"], batch_size=2)
        assert model.late_calls == 0, "the forward must stop after the deepest requested layer"
        with torch.no_grad():
            bn = model.bn(model.conv(torch.from_numpy(x)))
            fc = model.fc(torch.relu(bn).flatten(1))
        np.testing.assert_allclose(features["bn"], bn.reshape(5, -1).numpy(), atol=1e-6)
        np.testing.assert_allclose(features["fc"], fc.numpy(), atol=1e-6)
        output, _ = handler.get_layer_output(x, ["output"])
        with torch.no_grad():
            np.testing.assert_allclose(output["output"], model(torch.from_numpy(x)).numpy(), atol=1e-6)
        with pytest.raises(ModelArchitectureError, match="does not trace with torch.fx"):
            handler.drop_layer_top()

    def test_eval_mode_for_extraction_and_modes_restored(self, images):
        model = toy_cnn()
        model.train()
        before = model.bn1.running_mean.clone()
        handler = ModelHandler(model)
        features, _ = handler.get_layer_output(images, ["bn1"])
        assert model.training and model.bn1.training, "the model's modes are restored"
        torch.testing.assert_close(model.bn1.running_mean, before, rtol=0, atol=0)
        expected = manual(toy_cnn(), images, ["bn1"])["bn1"]
        np.testing.assert_allclose(features["bn1"], expected, atol=1e-5)
        dropout = ModelHandler(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9)).train())
        x = np.ones((6, 4), np.float32)
        out = dropout.get_layer_output(x, ["1"])[0]["1"]
        np.testing.assert_array_equal(out, dropout.get_layer_output(x, ["0"])[0]["0"])

    def test_torch_inputs_datasets_loaders_and_labels(self, handler, images):
        reference, _ = handler.get_layer_output(images, ["fc1"])
        tensor_features, _ = handler.get_layer_output(torch.from_numpy(images), ["fc1"])
        np.testing.assert_array_equal(tensor_features["fc1"], reference["fc1"])
        labels = torch.arange(10)
        dataset = torch.utils.data.TensorDataset(torch.from_numpy(images), labels)
        from_dataset, got = handler.get_layer_output(dataset, ["fc1"], batch_size=4)
        np.testing.assert_allclose(from_dataset["fc1"], reference["fc1"], atol=1e-6)
        np.testing.assert_array_equal(got, np.arange(10))
        loader = torch.utils.data.DataLoader(dataset, batch_size=3)
        from_loader, got = handler.get_layer_output(loader, ["fc1"], verbose=False)
        np.testing.assert_allclose(from_loader["fc1"], reference["fc1"], atol=1e-6)
        np.testing.assert_array_equal(got, np.arange(10))
        unlabelled = torch.utils.data.DataLoader(torch.from_numpy(images), batch_size=4, sampler=range(7))
        from_sampler, got = handler.get_layer_output(unlabelled, ["fc1"])
        assert got is None
        np.testing.assert_allclose(from_sampler["fc1"], reference["fc1"][:7], atol=1e-6)

    def test_text_model_takes_lists_of_strings(self, capsys):
        handler = ModelHandler(CharEncoder())
        assert handler.tracing == "hooks" and handler.layer_names == ["embedding", "proj", "output"]
        texts = ["a cat", "the stock market fell", "hi", "xyz", "hello world"]
        features, labels = handler.get_layer_output(texts, ["embedding", "output"], batch_size=2, verbose=True)
        assert "Extracting features" in capsys.readouterr().err
        with torch.no_grad():
            expected = handler.model(texts)
        np.testing.assert_allclose(features["output"], expected.numpy(), atol=1e-6)
        assert features["embedding"].shape == (5, 6) and labels is None

    def test_errors(self, handler, images):
        with pytest.raises(InvalidArgumentError, match=r"The data \(examples of shape \(3, 8, 8\)\) does not fit the model: RuntimeError"):
            handler.get_layer_output(np.zeros((2, 3, 8, 8), np.float32), ["fc1"])
        with pytest.raises(InvalidArgumentError, match="layer_names is empty"):
            handler.get_layer_output(images, [])
        with pytest.raises(InvalidArgumentError, match="The data is empty"):
            handler.get_layer_output(np.zeros((0, 1, 8, 8), np.float32), ["fc1"])
        with pytest.raises(InvalidTypeError, match="Cannot read data of type str"):
            handler.get_layer_output("images.npy", ["fc1"])
        with pytest.raises(InvalidArgumentError, match="Unknown context 'tpu'"):
            handler.get_layer_output(images, ["fc1"], context="tpu")
        lstm = ModelHandler(nn.Sequential(nn.LSTM(3, 2, batch_first=True)), tracing="hooks")
        with pytest.raises(ModelError, match="Layer '0' gives a tuple, not one tensor"):
            lstm.get_layer_output(np.zeros((2, 4, 3), np.float32), ["0"])
        unused = ModelHandler(DataDependent())
        unused.model.unused = nn.ReLU()
        unused = ModelHandler(unused.model)
        with pytest.raises(ModelError, match=r"Layers \['unused'\] did not run"):
            unused.get_layer_output(np.zeros((2, 1, 8, 8), np.float32), ["unused"])
        varying = ModelHandler(CharEncoder())
        varying.model.forward = lambda texts: torch.zeros(len(texts), len(texts[0]))
        with pytest.raises(InvalidArgumentError, match="gives 5 values per example in this batch but 2 before"):
            varying.get_layer_output(["ab", "cd", "efghi"], ["output"], batch_size=2)

    @pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
    def test_cuda_without_cuda_is_a_clear_error(self, handler, images):
        with pytest.raises(DeviceUnavailableError, match="asks for a CUDA GPU, but torch .* sees no usable GPU"):
            handler.get_layer_output(images, ["fc1"], context="gpu:0")
        with pytest.raises(DeviceUnavailableError, match="sees no usable GPU"):
            handler.get_module(context=torch.device("cuda", 0))

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_cuda_context_per_call(self, handler, images):
        on_cpu, _ = handler.get_layer_output(images, ["conv1", "fc2"])
        on_gpu, _ = handler.get_layer_output(images, ["conv1", "fc2"], context="gpu:0")
        again, _ = handler.get_layer_output(images, ["conv1", "fc2"], context=torch.device("cuda", 0))
        for name in on_cpu:
            np.testing.assert_allclose(on_gpu[name], on_cpu[name], rtol=1e-3, atol=1e-3)
            np.testing.assert_array_equal(again[name], on_gpu[name])
        assert next(handler.model.parameters()).device.type == "cpu", "the handler's model stays put"
        assert next(handler.get_module(context="gpu:0").parameters()).device.type == "cuda"
        gpu_handler = TorchModelHandler(toy_cnn(), "gpu:0")
        assert gpu_handler.devices == [torch.device("cuda", 0)]
        np.testing.assert_allclose(gpu_handler.get_layer_output(images, ["fc2"])[0]["fc2"], on_cpu["fc2"], atol=1e-3)


# ---------------------------------------------------------------------- editing
class TestSurgery:
    def test_sequential_stays_sequential_and_outputs_are_kept(self, handler, images):
        before, _ = handler.get_layer_output(images, ["fc1"])
        handler.drop_layer_top(2)
        assert handler.layer_names == TOY_LAYERS[:-2] and type(handler.model) is nn.Sequential
        handler.add_layer_top([nn.Linear(16, 5), ("head_act", nn.Softmax(dim=1))])
        assert handler.layer_names == TOY_LAYERS[:-2] + ["linear", "head_act"]
        after, _ = handler.get_layer_output(images, ["fc1", "head_act"])
        np.testing.assert_array_equal(after["fc1"], before["fc1"])
        np.testing.assert_allclose(after["head_act"].sum(1), 1, atol=1e-6)
        handler.add_layer_bottom({"scale": nn.Identity()})
        assert handler.layer_names[:2] == ["scale", "conv1"]

    def test_fx_surgery_on_a_residual_model(self, rng):
        model = Residual().eval()
        handler = ModelHandler(model)
        assert handler.layer_names == ["stem", "branch", "bn", "pool", "fc"]
        x = rng.standard_normal((3, 3, 5, 5)).astype(np.float32)
        stem_out = handler.get_layer_output(x, ["stem"])[0]["stem"].reshape(3, 4, 5, 5)
        full = handler.get_layer_output(x, ["fc"])[0]["fc"]
        bottom = ModelHandler(handler)
        bottom.drop_layer_bottom(1)
        assert bottom.layer_names == ["branch", "bn", "pool", "fc"]
        assert isinstance(bottom.model, torch.fx.GraphModule) and "stem.weight" not in bottom.arg_params
        np.testing.assert_allclose(bottom.get_layer_output(stem_out, ["fc"])[0]["fc"], full, atol=1e-5)
        top = ModelHandler(handler)
        top.drop_layer_top(1)  # fc goes, flatten stays: the output is flatten(pool(...))
        assert top.layer_names == ["stem", "branch", "bn", "pool", "output"]
        top.add_layer_top([nn.Linear(4, 7)])
        assert top.layer_names[-1] == "linear"
        assert top.get_layer_output(x, ["linear"])[0]["linear"].shape == (3, 7)
        top.add_layer_bottom([nn.Identity(), nn.Identity()])
        assert top.layer_names[:3] == ["identity", "identity_1", "stem"]
        np.testing.assert_array_equal(top.get_layer_output(x, ["pool"])[0]["pool"], handler.get_layer_output(x, ["pool"])[0]["pool"])
        top.drop_layer_top(2)  # linear, pool: the top is now the residual merge
        with pytest.raises(ModelArchitectureError, match=r"the model's output combines 2 layers \(\['stem', 'bn'\]\)"):
            top.drop_layer_top(1)
        assert model.stem is handler.model.stem and isinstance(model.fc, nn.Linear), "the source is untouched"

    def test_branches_are_refused_not_mangled(self):
        handler = ModelHandler(TwoBranches())
        handler.drop_layer_top(1)
        assert handler.layer_names == ["conv_a", "conv_b", "output"]
        with pytest.raises(ModelArchitectureError, match=r"combines 2 layers \(\['conv_a', 'conv_b'\]\)"):
            handler.drop_layer_top(1)
        with pytest.raises(ModelArchitectureError, match=r"The input 'x' feeds 2 layers \(\['conv_a', 'conv_b'\]\)"):
            handler.drop_layer_bottom(1)
        assert handler.layer_names == ["conv_a", "conv_b", "output"]

    def test_multi_output_model_is_refused(self):
        class TwoHeads(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

            def forward(self, x):
                return self.a(x), self.b(x)

        handler = ModelHandler(TwoHeads())
        with pytest.raises(ModelArchitectureError, match="The model has 2 outputs"):
            handler.drop_layer_top()
        with pytest.raises(ModelArchitectureError, match="The model has 2 outputs"):
            handler.add_layer_top([nn.ReLU()])

    def test_nothing_is_added_above_a_softmax_output(self):
        class FunctionalSoftmax(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 3)

            def forward(self, x):
                return torch.log_softmax(self.fc(x), dim=1)

        class ModuleSoftmax(FunctionalSoftmax):
            def __init__(self):
                super().__init__()
                self.prob = nn.Softmax(dim=1)

            def forward(self, x):
                return self.prob(self.fc(x) + 1.0)

        sequential = ModelHandler(nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)))
        with pytest.raises(ModelError, match=r"ends in the output layer '1' \(Softmax\); nothing can be added above it\. Drop it first with drop_layer_top\(\)"):
            sequential.add_layer_top([nn.Linear(3, 2)])
        with pytest.raises(ModelError, match=r"ends in the output layer 'prob' \(Softmax\)"):
            ModelHandler(ModuleSoftmax()).add_layer_top([nn.Linear(3, 2)])
        functional = ModelHandler(FunctionalSoftmax())
        with pytest.raises(ModelError, match=r"ends in the output layer 'log_softmax' \(log_softmax\)"):
            functional.add_layer_top([nn.Linear(3, 2)])
        sequential.drop_layer_top(1)
        sequential.add_layer_top([nn.Linear(3, 2), nn.LogSoftmax(dim=1)])
        assert sequential.layer_names == ["0", "1", "2"]
        with pytest.raises(ModelError, match=r"output layer '2' \(LogSoftmax\)"):
            sequential.add_layer_top([nn.ReLU()])

    def test_new_layers_are_checked(self, handler):
        handler.drop_layer_top(1)
        with pytest.raises(InvalidArgumentError, match="A layer named 'fc1' already exists"):
            handler.add_layer_top([("fc1", nn.Linear(16, 2))])
        with pytest.raises(InvalidArgumentError, match="'twice' already exists"):
            handler.add_layer_top([("twice", nn.ReLU()), ("twice", nn.ReLU())])
        with pytest.raises(InvalidArgumentError, match="Layer name 'a.b' is not allowed"):
            handler.add_layer_top([("a.b", nn.ReLU())])
        with pytest.raises(InvalidArgumentError, match="Layer name 'output' is not allowed"):
            handler.add_layer_top([("output", nn.ReLU())])
        with pytest.raises(InvalidArgumentError, match="already part of the model"):
            handler.add_layer_top([handler.model.relu1])
        with pytest.raises(InvalidTypeError, match="layer_list must be a list"):
            handler.add_layer_top(nn.Linear(16, 2))
        with pytest.raises(InvalidTypeError, match="Layer 0 of the list is a str"):
            handler.add_layer_top(["fc_new"])
        with pytest.raises(InvalidArgumentError, match="layer_list is empty"):
            handler.add_layer_top([])
        with pytest.raises(ModelError, match=r"Cannot drop 9 layer\(s\) from the bottom of a model with 9 layers: at most 8"):
            handler.drop_layer_bottom(9)
        assert handler.layer_names == TOY_LAYERS[:-1]

    def test_update_sym_and_frozen_layers_follow_edits(self, handler):
        handler.freeze(["conv1", "fc2"])
        handler.drop_layer_top(1)
        assert handler.frozen_layers == ["conv1"]
        with pytest.raises(InvalidTypeError, match="new_model must be a torch.nn.Module"):
            handler.update_sym("model")
        handler.update_sym(nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 1, 1))))
        assert handler.layer_names == ["conv1"] and handler.frozen_layers == ["conv1"]


# ---------------------------------------------------------------------- training copies
class TestGetModule:
    def train_step(self, module, images, steps=3):
        optimiser = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5, momentum=0.9, weight_decay=0.1)
        x, y = torch.from_numpy(images), torch.arange(len(images)) % 3
        for _ in range(steps):
            optimiser.zero_grad()
            nn.functional.cross_entropy(module(x), y).backward()
            optimiser.step()

    def test_frozen_bit_identical_frozen_bn_uses_stored_statistics(self, handler, images):
        handler.freeze(["conv1", "bn1"])
        module = handler.get_module(fixed_layers=["conv2"], random_layers=["fc2"], seed=0)
        assert module.training and not module.bn1.training, "a frozen BN stays in eval mode"
        module.train()
        assert not module.bn1.training and module.fc1.training
        assert frozen_batchnorm_layers(module) == ["bn1"]
        assert not torch.equal(module.fc2.weight, handler.model.fc2.weight), "fc2 re-initialised"
        reinitialised = handler.get_module(random_layers=["fc2"], seed=0)
        assert torch.equal(reinitialised.fc2.weight, module.fc2.weight), "the seed makes it reproducible"
        source = {k: v.clone() for k, v in handler.model.state_dict().items()}
        self.train_step(module, images)
        trained = module.state_dict()
        for name in handler.get_layer_parameters(["conv1", "bn1", "conv2"]):
            assert torch.equal(trained[name], source[name]), name
        for name in ["fc1.weight", "fc2.weight"]:
            assert not torch.equal(trained[name], source[name]), name
        for name, value in handler.model.state_dict().items():
            assert torch.equal(value, source[name]), f"the handler's {name} changed"

    def test_unfrozen_bn_updates_and_xfer_spelling(self, handler, images):
        module = handler.get_module(None, fixed_layer_parameters=handler.get_layer_parameters(["conv2"]))
        assert not module.conv2.weight.requires_grad and module.conv1.weight.requires_grad
        self.train_step(module, images, steps=1)
        assert not torch.equal(module.bn1.running_mean, handler.model.bn1.running_mean)
        assert torch.equal(module.conv2.weight, handler.model.conv2.weight)
        all_bn_fixed = handler.get_module(fixed_layer_parameters=["bn1.weight", "bn1.bias"])
        assert frozen_batchnorm_layers(all_bn_fixed) == ["bn1"]

    def test_fx_model_frozen_bn(self, rng):
        handler = ModelHandler(Residual())
        handler.drop_layer_top(1)
        handler.add_layer_top([nn.Linear(4, 3)])
        handler.freeze(["bn"])
        module = handler.get_module()
        assert isinstance(module, torch.fx.GraphModule) and frozen_batchnorm_layers(module) == ["bn"]
        before = module.bn.running_var.clone()
        x = rng.standard_normal((6, 3, 5, 5)).astype(np.float32)
        module(torch.from_numpy(x)).sum().backward()
        assert torch.equal(module.bn.running_var, before) and module.bn.weight.grad is None

    def test_bad_arguments(self, handler, caplog):
        with caplog.at_level("WARNING", logger="xfer.model_handler"):  # ignored, as in Xfer
            module = handler.get_module(fixed_layer_parameters=["conv9.weight", "conv1.weight"])
        assert "Could not find layer parameters: conv9.weight" in caplog.text
        assert not module.conv1.weight.requires_grad
        with pytest.raises(LayerNotFoundError, match="'conv9' is not in the model"):
            handler.get_module(random_layers=["conv9"])
        with pytest.raises(InvalidTypeError, match="must be a list of parameter names"):
            handler.get_module(random_layer_parameters="fc1.weight")

        class NoReset(nn.Module):
            def __init__(self):
                super().__init__()
                self.scale = nn.Parameter(torch.ones(3))

            def forward(self, x):
                return x * self.scale

        custom = ModelHandler(nn.Sequential(NoReset(), nn.Linear(3, 2)))
        with pytest.raises(ModelError, match=r"Cannot re-initialise '0' \(NoReset\): it has no reset_parameters"):
            custom.get_module(random_layers=["0"])


# ---------------------------------------------------------------------- files
class TestFiles:
    def test_round_trip_is_exact(self, handler, images, tmp_path):
        handler.drop_layer_top(1)
        handler.freeze(["conv1"])
        prefix = tmp_path / "sub" / "model"
        handler.save_checkpoint(str(prefix))
        assert sorted(os.listdir(tmp_path / "sub")) == ["model.json", "model.safetensors"]
        manifest = json.loads((tmp_path / "sub" / "model.json").read_text())
        assert manifest["layer_names"] == TOY_LAYERS[:-1] and manifest["format_version"] == 1
        architecture = toy_cnn(seed=3)
        del architecture.fc2
        loaded = TorchModelHandler.load_checkpoint(prefix, model=architecture)
        assert loaded.frozen_layers == ["conv1"] and loaded.model is architecture
        for name, value in handler.model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[name], value), name
        np.testing.assert_array_equal(
            loaded.get_layer_output(images, ["fc1"])[0]["fc1"], handler.get_layer_output(images, ["fc1"])[0]["fc1"]
        )

    def test_edited_fx_model_round_trip(self, tmp_path, rng):
        def edited(seed):
            torch.manual_seed(seed)
            h = ModelHandler(Residual())
            h.drop_layer_top(1)
            h.add_layer_top([nn.Linear(4, 3)])
            return h

        handler = edited(0)
        handler.save_checkpoint(tmp_path / "m")
        loaded = TorchModelHandler.load_checkpoint(tmp_path / "m", model=edited(1))
        x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
        np.testing.assert_array_equal(loaded.get_layer_output(x, ["linear"])[0]["linear"], handler.get_layer_output(x, ["linear"])[0]["linear"])

    def test_missing_corrupt_and_mismatched_files(self, handler, tmp_path):
        prefix = str(tmp_path / "model")
        with pytest.raises(InvalidTypeError, match="needs the architecture"):
            TorchModelHandler.load_checkpoint(prefix)
        with pytest.raises(ModelFileNotFoundError, match="model.json' does not exist"):
            TorchModelHandler.load_checkpoint(prefix, model=toy_cnn())
        handler.save_checkpoint(prefix)
        with pytest.raises(SerializationError, match=r"does not match the model's parameters \(missing in the file: extra.weight.*fc2.weight: saved \(3, 16\), model has \(4, 16\)"):
            wrong = toy_cnn()
            wrong.fc2 = nn.Linear(16, 4)
            wrong.add_module("extra", nn.Linear(1, 1))
            TorchModelHandler.load_checkpoint(prefix, model=wrong)
        with pytest.raises(SerializationError, match="not in the model: fc2.weight"):
            smaller = toy_cnn()
            del smaller.fc2
            TorchModelHandler.load_checkpoint(prefix, model=smaller)
        weights = tmp_path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        with pytest.raises(SerializationError, match="model.safetensors does not match its manifest"):
            TorchModelHandler.load_checkpoint(prefix, model=toy_cnn())
        manifest = json.loads((tmp_path / "model.json").read_text())
        del manifest["safetensors_sha256"]  # as written before checksums were recorded
        (tmp_path / "model.json").write_text(json.dumps(manifest))
        with pytest.raises(SerializationError, match="not a valid safetensors file"):
            TorchModelHandler.load_checkpoint(prefix, model=toy_cnn())
        (tmp_path / "model.json").write_text("{not json")
        with pytest.raises(SerializationError, match="not a valid xfer torch checkpoint manifest"):
            TorchModelHandler.load_checkpoint(prefix, model=toy_cnn())
        (tmp_path / "model.json").write_text(json.dumps({"backend": "torch", "format_version": 99}))
        with pytest.raises(SerializationError, match="format version 99"):
            TorchModelHandler.load_checkpoint(prefix, model=toy_cnn())

    def test_failed_save_leaves_previous_files(self, handler, tmp_path, monkeypatch):
        prefix = str(tmp_path / "model")
        handler.save_checkpoint(prefix)
        before = (tmp_path / "model.safetensors").read_bytes()

        def crash(state, path, metadata=None):
            with open(path, "wb") as handle:
                handle.write(b"partial")
            raise OSError("disk full")

        import safetensors.torch

        monkeypatch.setattr(safetensors.torch, "save_file", crash)
        handler.drop_layer_top(1)
        with pytest.raises(OSError, match="disk full"):
            handler.save_checkpoint(prefix)
        assert (tmp_path / "model.safetensors").read_bytes() == before
        assert sorted(os.listdir(tmp_path)) == ["model.json", "model.safetensors"]

    def test_visualize_net(self, tmp_path, monkeypatch):
        handler = ModelHandler(Residual())
        digraph = handler.visualize_net()
        source = digraph.source
        assert "stem\\nConv2d" in source and "add()" in source and "stem -> branch" in source
        assert "fc -> output" in source
        hooks = ModelHandler(DataDependent()).visualize_net()
        assert "not traced" in hooks.source and "late" in hooks.source
        if base_handler.shutil.which("dot"):
            handler.visualize_net(str(tmp_path / "graph"), format="svg")
            assert (tmp_path / "graph.svg").exists()
        monkeypatch.setattr(base_handler.shutil, "which", lambda name: None)
        with pytest.raises(MissingDependencyError, match="apt-get install graphviz"):
            handler.visualize_net(str(tmp_path / "graph"))


# ---------------------------------------------------------------------- real models (slow)
@pytest.mark.slow
@pytest.mark.assets
def test_efficientnet_lite0_torch(rng):
    zoo = pytest.importorskip("xfer.zoo")
    try:
        model = zoo.efficientnet_lite0("torch", image_size=64)
    except ImportError as error:
        pytest.skip(str(error))
    handler = ModelHandler(model)
    assert handler.tracing == "fx" and handler.layer_names[:2] == ["_conv_stem", "_bn0"]
    assert handler.layer_names[-3:] == ["_avg_pooling", "_dropout", "_fc"]
    assert "_swish#1" in handler.layer_names
    x = rng.uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    features, _ = handler.get_layer_output(x, ["_avg_pooling", "_fc"])
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        pooled = model.extract_features(torch.from_numpy(x)).mean((2, 3))
    np.testing.assert_allclose(features["_fc"], logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(features["_avg_pooling"], pooled.numpy(), atol=1e-4)
    handler.drop_layer_top(2)
    handler.add_layer_top([nn.Linear(1280, 5)])
    assert handler.get_layer_output(x, ["linear"])[0]["linear"].shape == (2, 5)
    module = handler.get_module(fixed_layers=handler.layer_names[:-1])
    assert [n for n, p in module.named_parameters() if p.requires_grad] == ["linear.weight", "linear.bias"]
    assert len(frozen_batchnorm_layers(module)) == len(handler.get_layer_names_matching_type("batchnorm"))


@pytest.mark.slow
@pytest.mark.assets
def test_minilm_sentences():
    zoo = pytest.importorskip("xfer.zoo")
    try:
        model = zoo.minilm(max_length=32)
    except ImportError as error:
        pytest.skip(str(error))
    handler = ModelHandler(model)
    assert handler.tracing == "hooks" and handler.layer_names[-1] == "output"
    texts = ["A cat sits on the mat.", "Stocks fell sharply.", "Hello"]
    features, _ = handler.get_layer_output(texts, ["output"], batch_size=2)
    np.testing.assert_allclose(features["output"], model.encode(texts), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(features["output"], axis=1), 1, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="its output size depends on the batch"):
        handler.get_layer_output(texts, ["encoder.layer.0.output.dense"], batch_size=2)
