"""The tutorials run top to bottom, print their key figures and are stored with matching outputs;
the documentation site builds.

Each notebook in ``docs/tutorials`` is executed with nbclient in a fresh ``python3`` kernel of
this interpreter, in a temporary working directory (``scripts/tutorials.py``, which also
regenerates the stored notebooks). The executed notebook is compared in kind with the stored one:
the same cells, figures where figures were, no errors. The Sphinx site is built with warnings as
errors and with the notebooks *not* executed by Sphinx (``nb_execution_mode = "off"``): it shows
the stored outputs.

Set ``XFER_EXECUTED_NOTEBOOKS=<folder>`` to keep the executed notebooks (with outputs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = DOCS / "tutorials"
sys.path.insert(0, str(ROOT / "scripts"))
import tutorials  # noqa: E402  (scripts/tutorials.py: runs and stores the notebooks)

sys.path.pop(0)

# Lines every notebook must print (regular expressions over the text of all its outputs).
NUMBER = r"\d+\.\d+"
KEY_LINES: dict[str, list[str]] = {
    "00_your_images": [
        r"ImageFolder\('photos', 60 images, 4 classes\)",
        rf"test accuracy {NUMBER}, NLL {NUMBER}, ECE {NUMBER} on 12 images",
        r"the loaded model predicts the same: True",
        r"DataFileError: photos/Bag/download\.jpg: is not an image Pillow can read",
        r"photos/Bag/download\.jpg: is not an image",
        r"Fitted GpRepurposer on 48 images of 4 classes",
        rf"accuracy {NUMBER}, NLL {NUMBER}, ECE {NUMBER} on 12 examples; report in clothes_report",
        rf"command line: accuracy {NUMBER}, NLL {NUMBER}, ECE {NUMBER} on 12 held-out images",
    ],
    "01_overview": [
        rf"ImageNet model: mean top-1 probability {NUMBER}",
        rf"^LR\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$",
        rf"^GP\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$",
        rf"held-out class: LR {NUMBER} vs GP {NUMBER}",
        r"the loaded GP predicts the same: True",
    ],
    "02_model_handler": [
        r"conv1 .*Convolution",
        r"parameters of conv1: \['conv1_weight', 'conv1_bias'\]",
        r"frozen: \['conv1', 'bn1'",
        rf"best layer: \w+ \(accuracy {NUMBER}\)",
        rf"^raw pixels\s+{NUMBER}",
    ],
    "03_text_transfer": [
        rf"MiniLM \+ LR accuracy {NUMBER}",
        rf"TF-IDF \+ LR accuracy {NUMBER}",
        rf"^8 per topic: MiniLM \+ LR {NUMBER}, TF-IDF \+ LR {NUMBER}",
        rf"source CNN: trained on \d+ posts of 13 groups in \d+ s, source test accuracy {NUMBER}",
        r"text CNN layers: \['embed', 'conv', 'relu', 'pool', 'flatten', 'dropout', 'fc'\]",
        rf"^CNN features \+ LR\s+accuracy {NUMBER}",
        rf"^CNN features \+ GP\s+accuracy {NUMBER}",
        rf"^fine-tuned CNN\s+accuracy {NUMBER}",
        rf"^CNN from scratch\s+accuracy {NUMBER}",
        rf"repurposed {NUMBER} vs from scratch {NUMBER} \(Xfer's demo: 0\.589 vs about 0\.5\)",
    ],
    "04_uncertainty": [
        rf"^LR\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
        rf"^SVM\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
        rf"^GP\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
        rf"^BNN\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
    ],
    "05_fine_tuning": [
        rf"Xfer defaults \(sgd, lr 0\.001, 5 epochs\), fine-tune: test accuracy {NUMBER}",
        r"phases: 10 x head, \d+ x full; best epoch \d+",
        rf"two-phase fine-tune: test accuracy {NUMBER}",
        rf"^two phases\s+validation loss {NUMBER}, test accuracy {NUMBER}",
        rf"random freeze: test accuracy {NUMBER}",
        rf"20 trials in {NUMBER} s; best learning rate {NUMBER}",
        rf"before search \(lr 0\.0100\): test accuracy {NUMBER}",
        rf"after search \(lr {NUMBER}\): test accuracy {NUMBER}",
        r"the loaded repurposer predicts the same: True",
    ],
    "06_own_repurposer": [
        rf"kNN accuracy {NUMBER}",
        r"registered as 'tutorial\.KnnRepurposer'",
        r"the loaded kNN head predicts the same: True",
        rf"MLP head accuracy {NUMBER}",
        r"the loaded MLP head predicts the same: True",
    ],
    "07_pytorch": [
        r"134 layers, read through 'fx'",
        r"_blocks\.3\._depthwise_conv\s+Conv2dStaticSamePadding",
        rf"ImageNet classifier on Fashion-MNIST: mean top-1 probability {NUMBER}",
        rf"^LR\s+{NUMBER}\s+{NUMBER}$",
        rf"^GP\s+{NUMBER}\s+{NUMBER}$",
        r"largest feature difference, torch vs MXNet: \d\.\de-0[4-9]",
        rf"LR: MXNet ({NUMBER}) vs torch \1, same predictions",
        rf"GP: MXNet ({NUMBER}) vs torch \1, same predictions",
        rf"fine-tuned torch EfficientNet: test accuracy {NUMBER}",
        r"the loaded fine-tuned network predicts the same: True",
    ],
    "08_transferability": [
        r"candidate layers: \['_swish', ",
        rf"Fashion-MNIST: Kendall's tau of LogME vs held-out accuracy -?{NUMBER}; LogME picks",
        rf"faces: Kendall's tau of LogME vs held-out accuracy -?{NUMBER}; LogME picks",
        rf"AutoRepurposer chose \['[\w.#]+'\] with the (lr|svm) head: test accuracy {NUMBER}",
        rf"LR on _avg_pooling \(the README's default\): test accuracy {NUMBER}",
        rf"EfficientNet-Lite1: LogME -?{NUMBER}, held-out accuracy of an LR head {NUMBER}",
        r"LogME picks EfficientNet-Lite[01]; the more accurate model is EfficientNet-Lite[01]",
    ],
}
# Notebooks whose point is a figure: at least this many images in their outputs.
MIN_FIGURES = {
    "00_your_images": 4,
    "01_overview": 3,
    "02_model_handler": 2,
    "03_text_transfer": 2,
    "04_uncertainty": 2,
    "05_fine_tuning": 3,
    "07_pytorch": 1,
    "08_transferability": 2,
}


def _notebooks() -> list[str]:
    return tutorials.notebook_names()


def test_every_notebook_has_key_lines():
    missing = [name for name in _notebooks() if name not in KEY_LINES]
    assert not missing, f"add the key output lines of {missing} to KEY_LINES"


def _output_text(notebook) -> tuple[str, int]:
    texts: list[str] = []
    images = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                texts.append(output.get("text", ""))
            elif output.get("output_type") in ("execute_result", "display_data"):
                data = output.get("data", {})
                texts.append(data.get("text/plain", ""))
                images += any(key.startswith("image/") for key in data)
    return "".join(texts), images


@pytest.mark.slow
@pytest.mark.assets
@pytest.mark.parametrize("name", _notebooks())
def test_notebook_executes(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernelspec runs `python`: make it this interpreter, and make `import xfer` this checkout.
    for variable, value in tutorials.kernel_environment().items():
        monkeypatch.setenv(variable, value)

    notebook, seconds = tutorials.execute(name, tmp_path)  # CellExecutionError on any error
    print(f"{name}: executed in {seconds:.1f} s")

    keep = os.environ.get("XFER_EXECUTED_NOTEBOOKS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, Path(keep) / f"{name}.ipynb")

    text, images = _output_text(notebook)
    assert "Traceback" not in text
    for pattern in KEY_LINES[name]:
        assert re.search(pattern, text, flags=re.M), f"{name} did not print {pattern!r}:\n{text}"
    assert images >= MIN_FIGURES.get(name, 0), f"{name} shows {images} figures"
    # The stored notebook shows what its code produces (in kind): regenerate it when not.
    problems = tutorials.differences(tutorials.read(name), notebook)
    assert not problems, (
        f"The stored {name}.ipynb no longer matches what its code produces: "
        + "; ".join(problems)
        + f". Store it again with its outputs: {tutorials.REGENERATE.format(name=name)}"
    )


# Every script in examples/ runs, with small arguments where it has them (the full-size runs are
# what the notebooks above execute).
EXAMPLE_ARGS: dict[str, list[str]] = {
    "demo": ["--image-size", "32", "--labels-per-class", "3", "--test-per-class", "3"],
    "overview": ["--image-size", "32", "--labels-per-class", "3"],
    "model_handler": [],
    "uncertainty": ["--image-size", "32", "--labels-per-class", "3", "--test-per-class", "3",
                    "--bnn-epochs", "5"],
    "text_transfer": ["--corpus", "reuters-r8", "--labels-per-class", "2", "--test-per-class", "2",
                      "--max-length", "32"],
    "own_repurposer": [],
    "fine_tuning": ["--labels-per-class", "10", "--trials", "3"],
    "pytorch_backend": ["--image-size", "32", "--labels-per-class", "3", "--test-per-class", "3"],
    "transferability": ["--image-size", "32", "--labels-per-class", "3", "--test-per-class", "3",
                        "--max-layers", "3"],
}  # fmt: skip


def _examples() -> list[str]:
    return sorted(path.stem for path in (ROOT / "examples").glob("*.py"))


def test_every_example_has_arguments():
    missing = [name for name in _examples() if name not in EXAMPLE_ARGS]
    assert not missing, f"add {missing} to EXAMPLE_ARGS"


@pytest.mark.slow
@pytest.mark.assets
@pytest.mark.parametrize("name", _examples())
def test_example_runs(name, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), *EXAMPLE_ARGS[name]],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sphinx_site_builds(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    pytest.importorskip("pydata_sphinx_theme")
    pytest.importorskip("numpydoc")
    env = dict(os.environ, XFER_DOCS_EXECUTE="off", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    html = tmp_path / "html"
    for page in [
        "index.html",
        "tutorials/index.html",
        "api/repurposers.html",
        "api/model_handler.html",
    ]:
        assert (html / page).is_file(), f"{page} was not built"
    for name in _notebooks():
        assert (html / "tutorials" / f"{name}.html").is_file(), (
            f"tutorial {name} is not on the site"
        )
    # The API pages really document the code (autodoc imported it).
    assert "GpRepurposer" in (html / "api" / "repurposers.html").read_text()
    assert "get_layer_output" in (html / "api" / "model_handler.html").read_text()
