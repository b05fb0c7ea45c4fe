"""Smoke test of the benchmark harness (no timing assertions: machines here are shared)."""

from __future__ import annotations

import pytest

from benchmarks import feature_extraction, run


@pytest.mark.slow
def test_harness_writes_a_report(tmp_path, monkeypatch):
    tiny = feature_extraction.speed(image_sizes=(32,), batch_sizes=(8,), count=16, repeats=1)
    monkeypatch.setitem(run.SECTIONS, "extraction", lambda quick: feature_extraction.report_rows(tiny, []))
    output = tmp_path / "benchmarks.md"
    assert run.main(["--quick", "--only", "extraction", "--output", str(output)]) == 0
    text = output.read_text()
    assert "by `python -m benchmarks.run --quick --only extraction`" in text
    assert "## extraction" in text and "| 32 | 8 |" in text


def test_a_failing_section_is_reported_and_fails_the_run(tmp_path, monkeypatch):
    def broken(quick):
        raise RuntimeError("section exploded")

    monkeypatch.setitem(run.SECTIONS, "heads", broken)
    output = tmp_path / "benchmarks.md"
    assert run.main(["--only", "heads", "--output", str(output)]) == 1
    assert "Section failed" in output.read_text() and "section exploded" in output.read_text()


def test_update_replaces_only_the_sections_run(tmp_path, monkeypatch):
    monkeypatch.setitem(run.SECTIONS, "heads", lambda quick: "heads table v1")
    monkeypatch.setitem(run.SECTIONS, "scale", lambda quick: "scale table v1")
    output = tmp_path / "benchmarks.md"
    assert run.main(["--only", "heads", "--only", "scale", "--output", str(output)]) == 0
    monkeypatch.setitem(run.SECTIONS, "scale", lambda quick: "scale table v2")
    assert run.main(["--only", "scale", "--update", "--output", str(output)]) == 0
    text = output.read_text()
    assert "heads table v1" in text and "scale table v2" in text and "scale table v1" not in text
    assert text.index("## heads") < text.index("## scale")
    assert "`python -m benchmarks.run --only scale --update`" in text
