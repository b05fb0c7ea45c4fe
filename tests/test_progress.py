"""One ``verbose`` convention; progress bars that log lines do not break; no warnings at source."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import xfer
from xfer._mxnet import mx
from xfer._progress import check_verbose
from xfer.exceptions import InvalidArgumentError
from xfer.model_handler import ModelHandler
from xfer.testing import make_blob_features

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", [False, True, 0, 1, 2, np.int64(1)])
def test_verbose_takes_bools_and_non_negative_ints(value):
    assert check_verbose(value) == int(value)


@pytest.mark.parametrize("value", [-1, 1.5, "yes", None])
def test_verbose_refuses_other_values(value):
    with pytest.raises(InvalidArgumentError, match=r"verbose must be a bool or a non-negative int"):
        check_verbose(value)


HEADS = [
    lambda v: xfer.LrRepurposer(None, None, verbose=v),
    lambda v: xfer.SvmRepurposer(None, None, verbose=v),
    lambda v: xfer.GpRepurposer(None, None, verbose=v, max_function_evaluations=5),
    lambda v: xfer.BnnRepurposer(None, None, verbose=v, num_epochs=3),
]


@pytest.mark.parametrize("make", HEADS, ids=["lr", "svm", "gp", "bnn"])
def test_every_head_takes_the_same_verbose_values(make):
    features, labels = make_blob_features(n_per_class=6)
    for value in (0, False, 1, True, 2):
        make(value).fit(features, labels)
    with pytest.raises(InvalidArgumentError, match="verbose must be a bool or a non-negative int"):
        make(-1).fit(features, labels)


def test_fine_tuners_take_the_same_verbose_values(tiny_symbol_model):
    x = np.random.default_rng(0).normal(size=(8, 1, 6, 6)).astype(np.float32)
    y = np.array([0, 1] * 4)
    tuner = xfer.NeuralNetworkFineTuneRepurposer(tiny_symbol_model, "flatten", 2, num_epochs=1,
                                                 batch_size=4, verbose=-1)  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="verbose must be a bool or a non-negative int"):
        tuner.fit(x, y)
    tuner.set_params(verbose=2).fit(x, y)


def test_bars_only_when_verbose(tiny_symbol_model, capsys):
    x = np.zeros((10, 1, 6, 6), np.float32)
    handler = ModelHandler(tiny_symbol_model)
    handler.get_layer_output(x, ["fc1"], verbose=0)
    assert capsys.readouterr().err == ""
    handler.get_layer_output(x, ["fc1"], verbose=1)
    assert "Extracting features: 100%" in capsys.readouterr().err


def test_log_lines_do_not_break_an_open_bar(capsys):
    """With logging configured, every BNN epoch line starts a line of its own above the bar."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # capsys's stderr
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        features, labels = make_blob_features(n_per_class=5)
        xfer.BnnRepurposer(None, None, verbose=1, num_epochs=4).fit(features, labels)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    err = capsys.readouterr().err
    epoch_lines = [line for line in err.split("\n") if "xfer.repurposers.bnn:epoch" in line]
    assert len(epoch_lines) == 4
    for line in epoch_lines:  # a bar is redrawn with \r: the log text must follow no bar text
        assert line.split("\r")[-1].startswith("INFO:xfer.repurposers.bnn:epoch"), repr(line)
    assert root.handlers == [h for h in root.handlers if h is not handler]  # restored


def test_bnn_logs_every_epoch_whatever_verbose(caplog):
    features, labels = make_blob_features(n_per_class=5)
    with caplog.at_level(logging.INFO, logger="xfer.repurposers.bnn"):
        xfer.BnnRepurposer(None, None, verbose=0, num_epochs=3).fit(features, labels)
    assert sum(r.message.startswith("epoch ") for r in caplog.records) == 3


def test_no_ipywidgets_means_plain_text_bars(monkeypatch):
    import importlib.util

    from tqdm.std import tqdm

    import xfer._progress as progress

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert progress._tqdm_class() is tqdm  # tqdm.auto would warn "IProgress not found" in Jupyter


def test_tqdm_auto_is_used_nowhere_else():
    users = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "xfer").rglob("*.py")
        if "tqdm.auto" in path.read_text() and path.name != "_progress.py"
    ]
    assert users == []


def test_get_module_then_fit_binds_and_initialises_once(tiny_symbol_model, caplog):
    """Xfer's flow get_module -> Module.fit gives no 'Already bound' / 'already initialized'."""
    x = np.random.default_rng(0).normal(size=(8, 1, 6, 6)).astype(np.float32)
    iterator = mx.io.NDArrayIter(x, np.array([0, 1, 2, 0] * 2, np.float32), batch_size=4,
                                 label_name="softmax_label")  # fmt: skip
    module = ModelHandler(tiny_symbol_model).get_module(iterator, random_layers=["fc1"])
    before = {k: v.asnumpy().copy() for k, v in module.get_params()[0].items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.DEBUG):
            module.fit(iterator, num_epoch=1, optimizer="sgd")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
    assert not [r for r in caplog.records if r.name == "root"]  # MXNet's lines go to xfer.mxnet
    after = module.get_params()[0]
    assert any(not np.array_equal(before[k], after[k].asnumpy()) for k in before)  # it trained
    # Other shapes still rebind, as MXNet would (with its own warning, to the xfer logger).
    bigger = mx.io.NDArrayIter(np.zeros((8, 1, 6, 6), np.float32), np.zeros(8, np.float32),
                               batch_size=8, label_name="softmax_label")  # fmt: skip
    module.bind(bigger.provide_data, bigger.provide_label, force_rebind=True)
    assert module.data_shapes[0].shape == (8, 1, 6, 6)
