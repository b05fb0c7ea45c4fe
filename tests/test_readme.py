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
