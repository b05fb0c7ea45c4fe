"""The README's runnable examples run as written (in a temporary directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def section_code(title: str) -> str:
    text = README.read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))


@pytest.mark.slow
@pytest.mark.assets
def test_ten_lines_and_same_code_pytorch_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(section_code("Ten lines"), "README: Ten lines", "exec"), namespace)
    assert namespace["proba"].shape == (200, 10)
    assert (namespace["same"].predict_proba(namespace["prepare"](namespace["test"].data)) == namespace["proba"]).all()
    exec(compile(section_code("Same code, PyTorch model"), "README: Same code", "exec"), namespace)
    scores = dict(line.split() for line in capsys.readouterr().out.strip().splitlines())
    assert set(scores) == {"mxnet", "torch"}
    assert abs(float(scores["mxnet"]) - float(scores["torch"])) <= 0.01


def section_commands(title: str) -> list[str]:
    """The commands of the first bash block of a README section (comments and continuations joined)."""
    text = README.read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


@pytest.mark.slow
@pytest.mark.assets
def test_two_cli_commands_from_a_folder_of_images_to_a_saved_model_and_a_report(tmp_path, monkeypatch):
    """The README's two commands, as written, on a folder of real images (Fashion-MNIST PNGs).

    They run through the command's entry point in this process (tests/test_cli.py runs the
    command as a subprocess).
    """
    import json

    from PIL import Image

    from xfer.cli import main
    from xfer.datasets import load_fashion_mnist

    images = load_fashion_mnist("test", n_per_class=5, random_state=0)
    for image, label in zip(images.data, images.labels):
        if label in ("Trouser", "Bag", "Sneaker"):
            folder = tmp_path / "photos" / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{len(list(folder.iterdir()))}.png")
    commands = section_commands("From a folder of images to a saved model: two commands")
    assert [c.split()[:2] for c in commands] == [["xfer", "fit"], ["xfer", "evaluate"]]
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert main(command.split()[1:]) == 0, command
    metrics = json.loads((tmp_path / "my_report" / "metrics.json").read_text())
    assert metrics["examples"] == 3 and metrics["accuracy"] >= 2 / 3
    for name in ("report.md", "confusion_matrix.png", "reliability_diagram.png", "predictions.csv"):
        assert (tmp_path / "my_report" / name).stat().st_size > 0
    assert (tmp_path / "my_model.json").is_file() and (tmp_path / "my_model.cli.json").is_file()


def test_tests_named_by_the_readme_exist():
    """Every test the README names as proof of a promise exists: ``tests/file.py::test_name``,
    or a bare ``test_name`` after such a reference (same file)."""
    text = README.read_text()
    root = README.parent
    references = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`(test_\w+)`", text)
    assert references
    current = None
    for path, name, bare in references:
        if path:
            current = root / path
            assert current.is_file(), path
        name = name or bare
        if name:
            assert current is not None and re.search(rf"def {name}\b", current.read_text()), (
                f"{name} is not in {current}"
            )
