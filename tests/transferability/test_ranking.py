"""Ranking layers and models: one pass per model, both backends, best layer first."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xfer._mxnet import mx
from xfer.exceptions import InvalidArgumentError, InvalidTypeError
from xfer.model_handler import ModelHandler
from xfer.transferability import (
    ModelCandidate,
    candidate_layers,
    leep,
    logme,
    nce,
    rank_layers,
    rank_models,
)


def signal_task(seed=0, n_per_class=25):
    """Inputs whose first 3 columns carry the class and last 3 are noise."""
    rng = np.random.RandomState(seed)
    labels = np.repeat([0, 1, 2], n_per_class)
    signal = 2.5 * np.eye(3)[labels] + 0.5 * rng.normal(size=(labels.size, 3))
    return np.c_[signal, rng.normal(size=(labels.size, 3))].astype(np.float32), labels


NOISE_ONLY = np.diag([0, 0, 0, 1, 1, 1]).astype(np.float32)


def mxnet_chain():
    """data -> fc_all (identity: keeps the signal) -> fc_noise (keeps only noise) -> softmax."""
    net = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=6, name="fc_all")
    net = mx.sym.FullyConnected(net, num_hidden=6, name="fc_noise")
    net = mx.sym.FullyConnected(net, num_hidden=4, name="fc_out")
    net = mx.sym.SoftmaxOutput(net, name="softmax")
    args = {
        "fc_all_weight": mx.nd.array(np.eye(6)), "fc_all_bias": mx.nd.zeros(6),
        "fc_noise_weight": mx.nd.array(NOISE_ONLY), "fc_noise_bias": mx.nd.zeros(6),
        "fc_out_weight": mx.nd.array(np.random.RandomState(0).normal(size=(4, 6))),
        "fc_out_bias": mx.nd.zeros(4),
    }  # fmt: skip
    return net, args, {}


def torch_chain():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(6))
        model[1].weight.copy_(torch.from_numpy(NOISE_ONLY))
        for layer in model:
            layer.bias.zero_()
    return model.eval()


BACKENDS = [(mxnet_chain, ["fc_noise", "fc_all"], "fc_all"), (torch_chain, ["1", "0"], "0")]


@pytest.mark.parametrize("make, layers, informative", BACKENDS, ids=["mxnet", "torch"])
def test_rank_layers_reads_once_and_puts_the_informative_layer_first(make, layers, informative,
                                                                     monkeypatch):  # fmt: skip
    X, y = signal_task()
    handler = ModelHandler(make())
    calls = []
    original = type(handler).get_layer_output

    def counting(self, *args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs["layer_names"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(handler), "get_layer_output", counting)
    ranking = rank_layers(handler, X, y, layers, scores=["logme", "h_score"], keep_features=True)
    assert calls == [layers]  # one pass for every layer
    assert [row["layer"] for row in ranking.rows] == [informative, layers[0]]
    assert ranking.best["layer"] == informative
    assert ranking.column("logme") == sorted(ranking.column("logme"), reverse=True)
    best = ranking.rows[0]
    assert best["logme"] == pytest.approx(logme(ranking.features[("model", informative)], y))
    assert best["n_features"] == 6 and best["score_seconds"] >= 0
    assert best["extraction_seconds"] == ranking.rows[1]["extraction_seconds"] > 0
    text = str(ranking)
    assert informative in text and "logme" in text and "75 examples" in text


def test_rank_models_scores_outputs_with_leep_and_nce_in_the_same_pass():
    X, y = signal_task(seed=1)
    ranking = rank_models(
        {
            "mxnet": ModelCandidate(mxnet_chain(), ["fc_all"], output_layer="softmax"),
            "torch": ModelCandidate(torch_chain(), ["1"], output_layer="2",
                                    preprocess=lambda data: data * 1.0),  # fmt: skip
        },
        X, y, scores=["logme", "leep", "nce"],
    )  # fmt: skip
    assert [(row["model"], row["layer"]) for row in ranking.rows] == [("mxnet", "fc_all"), ("torch", "1")]
    mxnet_row, torch_row = ranking.rows
    probabilities, _ = ModelHandler(mxnet_chain()).get_layer_output(X, ["softmax"])
    assert mxnet_row["leep"] == pytest.approx(leep(probabilities["softmax"], y), rel=1e-5)
    logits = ModelHandler(torch_chain()).get_layer_output(X, ["2"])[0]["2"]
    assert torch_row["nce"] == pytest.approx(nce(logits.argmax(1), y))
    assert "model" in str(ranking).splitlines()[0]
    records = ranking.to_records()
    assert records[0]["model"] == "mxnet" and isinstance(records[0]["leep"], float)


def test_scores_that_do_not_apply_are_nan_and_sort_last():
    X, y = signal_task(seed=2)
    ranking = rank_models(
        {"no_output": ModelCandidate(torch_chain(), ["0"]),
         "with_output": ModelCandidate(torch_chain(), ["1"], output_layer="2")},
        X, y, scores=["leep", "logme"],
    )  # fmt: skip
    assert ranking.rows[0]["model"] == "with_output"
    assert math.isnan(ranking.rows[1]["leep"]) and ranking.to_records()[1]["leep"] is None


def test_labels_from_an_iterator():
    X, y = signal_task(seed=3)
    iterator = mx.io.NDArrayIter(X, y.astype(np.float32), batch_size=10)
    ranking = rank_layers(mxnet_chain(), iterator, layer_names=["fc_all", "fc_noise"])
    assert ranking.best["layer"] == "fc_all" and ranking.n_examples == len(y)


def test_candidate_layers_spread_over_depth_and_skip_the_softmax():
    data = mx.sym.var("data")
    net = data
    for i in range(6):
        net = mx.sym.FullyConnected(net, num_hidden=4, name=f"fc{i}")
        net = mx.sym.Activation(net, act_type="relu", name=f"relu{i}")
    net = mx.sym.SoftmaxOutput(net, name="softmax")
    handler = ModelHandler((net, {}, {}))
    assert candidate_layers(handler, max_layers=3) == ["fc0", "fc3", "relu5"]
    assert len(candidate_layers(handler)) == 8 and "softmax" not in candidate_layers(handler, 20)
    assert candidate_layers(torch_chain()) == ["0", "1", "2"]


def test_candidate_layers_keep_the_deepest_pooling_layer():
    # A CNN's pooled features sit just below its classifier: even steps would skip them.
    net = mx.sym.var("data")
    for i in range(8):
        net = mx.sym.Convolution(net, num_filter=2, kernel=(1, 1), name=f"conv{i}")
        net = mx.sym.Activation(net, act_type="relu", name=f"relu{i}")
    net = mx.sym.Pooling(net, global_pool=True, kernel=(1, 1), pool_type="avg", name="pool")
    net = mx.sym.FullyConnected(mx.sym.flatten(net, name="flat"), num_hidden=3, name="fc")
    handler = ModelHandler((mx.sym.SoftmaxOutput(net, name="softmax"), {}, {}))
    for max_layers in (2, 3, 4, 8):
        layers = candidate_layers(handler, max_layers=max_layers)
        assert len(layers) == max_layers, layers
        assert layers[-1] == "fc" and "pool" in layers, layers
        assert layers == sorted(layers, key=handler.layer_names.index)
    assert candidate_layers(handler, max_layers=1) == ["fc"]
    assert candidate_layers(handler, max_layers=4) == ["relu0", "relu3", "pool", "fc"]


def test_ranking_errors():
    X, y = signal_task()
    with pytest.raises(InvalidArgumentError, match="Unknown transferability score 'gbc'"):
        rank_layers(torch_chain(), X, y, ["0"], scores=["gbc"])
    with pytest.raises(InvalidArgumentError, match="output_layer"):
        rank_layers(torch_chain(), X, y, ["0"], scores="leep")
    with pytest.raises(InvalidArgumentError, match="need labels"):
        rank_layers(torch_chain(), X, None, ["0"])
    with pytest.raises(InvalidArgumentError, match="non-empty list"):
        rank_layers(torch_chain(), X, y, "0")
    with pytest.raises(InvalidTypeError, match="non-empty dict"):
        rank_models([torch_chain()], X, y)
    with pytest.raises(InvalidArgumentError, match="max_layers"):
        candidate_layers(torch_chain(), max_layers=0)
