"""The benchmark harness on canned figures, and a tiny smoke run (no timing assertions: the
machines here are shared; Xfer 1.1.0 is never installed by the tests)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from benchmarks import feature_extraction, report, run, xfer_env
from benchmarks.report import Figure, Section


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


def test_update_keeps_what_another_run_wrote_while_this_one_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "machine_description", lambda: "test machine")
    output = tmp_path / "benchmarks.md"
    monkeypatch.setitem(run.SECTIONS, "heads", lambda quick: Section("heads v1", [Figure("heads.x", 1.0)]))
    monkeypatch.setitem(run.SECTIONS, "scale", lambda quick: Section("scale v1", [Figure("scale.y", 1.0)]))
    assert run.main(["--only", "heads", "--only", "scale", "--output", str(output)]) == 0

    def slow_scale(quick):  # meanwhile, another process updates the heads section
        monkeypatch.setitem(run.SECTIONS, "heads", lambda quick: Section("heads v2", [Figure("heads.x", 2.0)]))
        assert run.main(["--only", "heads", "--update", "--output", str(output)]) == 0
        return Section("scale v2", [Figure("scale.y", 3.0)])

    monkeypatch.setitem(run.SECTIONS, "scale", slow_scale)
    assert run.main(["--only", "scale", "--update", "--output", str(output)]) == 0
    text = output.read_text()
    assert "heads v2" in text and "scale v2" in text and "heads v1" not in text
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert data["sections"]["heads"]["figures"][0]["value"] == 2.0
    assert data["sections"]["scale"]["figures"][0]["value"] == 3.0


def test_torch_report_tables_from_measurements(monkeypatch):
    """The torch section's tables, with the (minutes-long) measurements replaced by fixed figures."""
    torch_backend = pytest.importorskip("benchmarks.torch_backend")
    summary = torch_backend._summary
    monkeypatch.setattr(
        torch_backend, "image_transfer",
        lambda size, count, seeds: {
            "image_size": size, "test_count": count, "train_count": 100, "seeds": seeds,
            "torch": summary([0.74, 0.76]), "mxnet": summary([0.73, 0.76]), "raw_pixels": summary([0.7, 0.71]),
        },
    )  # fmt: skip
    monkeypatch.setattr(
        torch_backend, "text_transfer",
        lambda count, seeds: {
            "train_count": 160, "test_count": count, "seeds": seeds, "minilm": summary([0.62, 0.64]),
            "minilm_gp": summary([0.63, 0.65]), "tfidf": summary([0.5, 0.52]), "seconds": 1.0,
        },
    )  # fmt: skip
    monkeypatch.setattr(
        torch_backend, "throughput",
        lambda repeats: {"image_size": 96, "batch_size": 32, "threads": 2, "plain": 100.0, "ours": 99.0,
                         "ratio": 0.99, "ratio_range": (0.95, 1.02)},
    )  # fmt: skip
    section = torch_backend.report(quick=True)
    text = section.markdown
    assert "logistic regression unless named" in text and "over 2 random draws" in text
    assert "| 0.750 ± 0.014 (0.740-0.760) | 0.745 ± 0.021 (0.730-0.760) |" in text
    assert "torch 0.750 (≥ 0.730: ✓ met); MXNet within 0.01: 0.005 (≤ 0.010: ✓ met) |" in text
    assert "| MiniLM -> 20 Newsgroups (LR) | 160 | 300 | 0.630 ± 0.014 (0.620-0.640) |" in text
    assert "| 0.630 (≥ 0.630: ✓ met) |" in text
    assert "| MiniLM -> 20 Newsgroups (GP head) | 160 | 300 | 0.640 ± 0.014" in text
    assert "| 99.0 | 100.0 | 0.99 (≥ 0.95: ✓ met) (range 0.95-1.02) |" in text
    assert {f.key for f in section.figures} >= {"torch.fashion_mnist_96px.torch_accuracy", "torch.minilm_20ng.lr_accuracy"}


@pytest.mark.slow
def test_calibration_scale_report_runs_every_head(monkeypatch):
    """The at-scale calibration section on small synthetic features instead of 12,000 extracted images."""
    import numpy as np

    calibration = pytest.importorskip("benchmarks.calibration")
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 2, (3, 8))
    y_train, y_test = np.repeat(np.arange(3), 20), np.repeat(np.arange(3), 10)
    x_train = (centres[y_train] + rng.normal(0, 1, (60, 8))).astype(np.float32)
    x_test = (centres[y_test] + rng.normal(0, 1, (30, 8))).astype(np.float32)
    monkeypatch.setattr(calibration, "features", lambda per_class, test_count: (x_train, y_train, x_test, y_test))
    text = calibration.scale_report(quick=True)
    assert "60 x 8 labelled, 30 test" in text
    for head in ("LR (baseline)", "GP", "GP, sparse learning rate 0.01", "BNN", "Laplace"):
        assert f"| {head} | " in text
    assert "| 1.00 |" in text  # LR's NLL over itself


def test_scale_out_report_marks_targets():
    """The scale_out section's tables from fixed figures: time per row and memory against their
    targets, the speed-up and the identity of the features."""
    from benchmarks import scale_out

    heads = [
        {"head": "LR", "memory": {"seconds": 2.0, "peak_mb": 700, "accuracy": 0.9, "rows": 10_000},
         "shards": {"seconds": 40.0, "peak_mb": 800, "accuracy": 0.91, "rows": 100_000}, "load": "0.5 / 0.6"},
        {"head": "BNN", "memory": {"seconds": 10.0, "peak_mb": 700, "accuracy": 0.9, "rows": 10_000},
         "shards": {"seconds": 400.0, "peak_mb": 900, "accuracy": 0.9, "rows": 100_000}, "load": "0.5 / 0.6"},
    ]
    extraction = {"count": 20_000, "identical": True, "max_difference": 0.0,
                  "runs": {1: {"seconds": 100.0, "cpu_seconds": 98.0, "count": 20_000, "load": "1.0 / 1.0"},
                           2: {"seconds": 55.0, "cpu_seconds": 105.0, "count": 20_000, "load": "1.0 / 1.0"}}}
    section = scale_out.report_rows(heads, extraction)
    text = section.markdown
    assert "| LR | 2.0 | 40.0 | 2.00 (≤ 3.00: ✓ met) | 800 (< 2048: ✓ met) |" in text
    assert "| BNN | 10.0 | 400.0 | 4.00 (≤ 3.00: ✗ MISSED) |" in text
    assert "Speed-up of 2 processes over 1: 1.82 (≥ 1.60: ✓ met); features identical: True" in text
    assert "| 2 x 1 | 55.0 | 363.6 | 105.0 | 1.0 / 1.0 |" in text
    assert "spent 7.0 s more CPU time than the single process" in text
    assert "(the started process's imports and model, 7% of the work): on 2 idle cores its speed-up is at most 1.87x" in text
    figures = {figure.key: figure for figure in section.figures}
    assert figures["scale_out.bnn.time_per_row_ratio"].met is False
    assert figures["scale_out.extraction.identical_features"].met is True
    assert "scale_out" in run.SECTIONS and "scale_out_extraction" in run.SECTIONS


def test_scale_out_heads_option_fits_only_the_heads_named(monkeypatch, capsys):
    """``--heads BNN`` fits the BNN alone (at the sizes --quick picks); no option fits all three;
    an unknown head is refused by the parser."""
    from benchmarks import scale_out

    calls = []

    def fake_heads(rows, memory_rows, names=scale_out.HEADS):
        calls.append((rows, memory_rows, names))
        return [{"head": name, "memory": {"seconds": 1.0, "peak_mb": 300, "accuracy": 0.9, "rows": memory_rows},
                 "shards": {"seconds": 5.0, "peak_mb": 400, "accuracy": 0.9, "rows": rows}, "load": "0.1 / 0.1"}
                for name in names]

    monkeypatch.setattr(scale_out, "heads", fake_heads)
    monkeypatch.setattr(scale_out, "extraction", lambda count: pytest.fail("extraction was not asked for"))
    scale_out.main(["--quick", "--only", "heads", "--heads", "BNN"])
    assert calls == [(20_000, 2_000, ("BNN",))]
    out = capsys.readouterr().out
    assert "| BNN | 1.0 | 5.0 |" in out and "| LR |" not in out
    scale_out.main(["--only", "heads", "--heads", "LR", "--heads", "GP"])
    assert calls[-1] == (100_000, 10_000, ("LR", "GP"))
    scale_out.main(["--only", "heads"])
    assert calls[-1][2] == ("LR", "GP", "BNN")
    with pytest.raises(SystemExit):
        scale_out.main(["--heads", "SVM"])
    assert "invalid choice: 'SVM'" in capsys.readouterr().err


def test_few_shot_and_ood_tables_on_synthetic_tasks(monkeypatch):
    """The calibration and ood sections: draws, metrics, verdicts and OOD AUROC on tiny fake tasks."""
    import numpy as np

    calibration = pytest.importorskip("benchmarks.calibration")
    uncertainty_tasks = pytest.importorskip("benchmarks.uncertainty_tasks")
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 6))
    pool_y, test_y = np.repeat(np.arange(3), 8), np.repeat(np.arange(3), 10)
    fake = uncertainty_tasks.TaskData(
        centres[pool_y] + rng.normal(0, 1, (24, 6)), pool_y,
        centres[test_y] + rng.normal(0, 1, (30, 6)), test_y, ["a", "b", "c"],
        {"digits": rng.normal(0, 20, (12, 6))},
    )  # fmt: skip
    tasks = {"fashion": uncertainty_tasks.Task("Fake images", 4, 8, 10, ("digits",))}
    monkeypatch.setattr(uncertainty_tasks, "TASKS", tasks)
    monkeypatch.setattr(uncertainty_tasks, "task_data", lambda name, task=None: fake)
    import xfer

    heads = {
        "LR": lambda seed: xfer.LrRepurposer(None, None),
        "Laplace": lambda seed: xfer.LaplaceRepurposer(None, None),
        "Uniform": lambda seed: _Uniform(),
    }
    monkeypatch.setattr(calibration, "few_shot_heads", lambda: heads)
    monkeypatch.setattr(calibration, "_RESULTS", {})
    text = calibration.report(quick=True)
    assert "Mean over 2 random draws" in text
    assert "| Fake images, 4/class | LR | " in text and "| baseline |" in text
    assert "| Fake images, 4/class | Uniform | 0.333 (0.333-0.333) | 1.099 |" in text
    assert "✗ MISSED: accuracy, NLL, collapse" in text
    ood = calibration.ood_report(quick=True)
    assert "| Fake images | 500 scikit-learn digits | " in ood
    assert "| 0.500 (0.50-0.50) |" in ood  # the constant head cannot tell anything apart
    epistemic = ood.split("epistemic part of `predict_uncertainty`")[1]
    assert "| task | OOD inputs | Laplace |" in epistemic  # LR's epistemic part is always 0
    auroc = float(epistemic.split("| Fake images | 500 scikit-learn digits | ")[1].split()[0])
    # The table's figure is the mean over the draws of the AUROC of minus the epistemic part,
    # recomputed here (on this task, whose OOD rows lie far along the classes' own directions,
    # every score of the head ranks them as more familiar than the test rows: below 0.5).
    expected = []
    for seed in range(2):
        x_train, y_train, x_test, _ = fake.draw(4, seed)
        head = xfer.LaplaceRepurposer(None, None).fit(x_train, y_train)
        expected.append(xfer.metrics.ood_auroc(
            -head.predict_uncertainty(x_test).epistemic,
            -head.predict_uncertainty(fake.ood["digits"]).epistemic,
        ))  # fmt: skip
    assert auroc == pytest.approx(np.mean(expected), abs=5e-4)
    assert "counted there" in ood  # the fits came from the calibration section above
    monkeypatch.setattr(calibration, "_RESULTS", {})
    assert "counted there" not in calibration.ood_report(quick=True)  # run alone: fitted here


class _Uniform:
    def fit(self, x, y):
        import numpy as np

        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, x):
        import numpy as np

        return np.full((len(x), len(self.classes_)), 1.0 / len(self.classes_))


# ---------------------------------------------------------------- figures, JSON and --compare


def test_figure_targets_are_marked_met_or_missed():
    assert Figure("a", 0.15, target=("<=", 0.2)).met is True
    assert Figure("a", 0.25, target=("<=", 0.2)).met is False
    assert Figure("a", 0.5, target=(">=", 0.5)).met is True
    assert Figure("a", 0.5).met is None and Figure("a", None, target=("<=", 1)).met is None
    assert report.cell(Figure("a", 0.15, target=("<=", 0.2))) == "0.15 (≤ 0.20: ✓ met)"
    assert report.cell(Figure("a", 0.25, target=("<=", 0.2))) == "0.25 (≤ 0.20: ✗ MISSED)"
    assert report.cell(Figure("a", 0.9, source="quoted"), 1) == "0.9 (quoted)"
    assert report.cell(Figure("a", float("nan"))) == "n/a"
    with pytest.raises(ValueError, match="Unknown target operator '=='"):
        Figure("a", 1.0, target=("==", 1.0))
    with pytest.raises(ValueError, match="source must be 'measured' or 'quoted'"):
        Figure("a", 1.0, source="remembered")


def test_summary_names_every_missed_target():
    figures = [Figure("x.fast", 0.1, target=("<=", 0.2)), Figure("x.slow", 0.3, target=("<=", 0.2)), Figure("n", 3)]
    lines = report.summary_lines(figures)
    assert lines[0] == "Targets: 1 of 2 met; missed:"
    assert lines[1] == "- `x.slow` = 0.3 (target ≤ 0.200)"
    assert report.summary_lines(figures[:1]) == ["Targets: all 1 met."]
    assert report.summary_lines([Figure("n", 3)]) == []


def test_figures_round_trip_through_json():
    figure = Figure("heads.GP.first_fit_ratio", 0.18, "x", "lower", ("<=", 0.2), "measured", "note")
    data = json.loads(json.dumps(figure.to_json()))
    assert data["met"] is True and data["target"] == ["<=", 0.2]
    assert Figure.from_json(data) == figure


def _data(**figures: Figure) -> dict:
    return {"sections": {"s": {"figures": [f.to_json() for f in figures.values()]}}}


def test_compare_shows_change_verdict_and_target_status():
    old = _data(
        a=Figure("a", 1.0, "x", "lower", ("<=", 0.5)), b=Figure("b", 100.0, better="higher"),
        c=Figure("c", 2.0, better="lower"), gone=Figure("gone", 1.0),
    )  # fmt: skip
    new = _data(
        a=Figure("a", 0.4, "x", "lower", ("<=", 0.5)), b=Figure("b", 80.0, better="higher"),
        c=Figure("c", 2.02, better="lower"), added=Figure("added", 3.0, source="quoted"),
    )  # fmt: skip
    text = report.compare(old, new)
    assert "| `a` | 1 | 0.4 | -60% | better | ≤ 0.500 | ✗ MISSED | ✓ met |" in text
    assert "| `b` | 100 | 80 | -20% | worse |" in text
    assert "| `c` | 2 | 2.02 | +1% |  |" in text, "under 5% is noise: no verdict"
    assert "| `added` |  | 3 (quoted) |  | added |" in text
    assert "| `gone` | 1 |  |  | removed |" in text
    assert "Target status changed: `a`." in text


def test_run_writes_json_beside_markdown_and_update_keeps_other_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "machine_description", lambda: "test machine")
    monkeypatch.setitem(
        run.SECTIONS, "heads", lambda quick: Section("heads table", [Figure("heads.x", 0.3, target=("<=", 0.2))])
    )
    monkeypatch.setitem(run.SECTIONS, "scale", lambda quick: "scale table (plain Markdown)")
    output = tmp_path / "benchmarks.md"
    assert run.main(["--only", "heads", "--only", "scale", "--output", str(output)]) == 0
    text = output.read_text()
    assert "heads table" in text and "Targets: 0 of 1 met; missed:" in text and "- `heads.x` = 0.3" in text
    assert "1-minute load average" in text and "`python -m benchmarks.run --only heads --only scale`" in text
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert data["machine"] == "test machine"
    assert data["sections"]["heads"]["figures"][0]["key"] == "heads.x"
    assert data["sections"]["heads"]["figures"][0]["met"] is False
    assert data["sections"]["scale"]["figures"] == [] and data["sections"]["scale"]["command"].endswith("scale")
    monkeypatch.setitem(run.SECTIONS, "scale", lambda quick: Section("scale v2", [Figure("scale.y", 1.0)]))
    assert run.main(["--only", "scale", "--update", "--output", str(output)]) == 0
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert [f["key"] for f in data["sections"]["heads"]["figures"]] == ["heads.x"]
    assert [f["key"] for f in data["sections"]["scale"]["figures"]] == ["scale.y"]


def test_compare_runs_against_an_old_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "machine_description", lambda: "test machine")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_data(x=Figure("heads.x", 0.3, "x", "lower", ("<=", 0.2)))))
    monkeypatch.setitem(run.SECTIONS, "heads", lambda quick: Section("t", [Figure("heads.x", 0.1, "x", "lower", ("<=", 0.2))]))
    output = tmp_path / "benchmarks.md"
    assert run.main(["--only", "heads", "--output", str(output), "--compare", str(old)]) == 0
    assert "| `heads.x` | 0.3 | 0.1 | -67% | better | ≤ 0.200 | ✗ MISSED | ✓ met |" in capsys.readouterr().out
    # Two files: nothing runs.
    monkeypatch.setitem(run.SECTIONS, "heads", lambda quick: pytest.fail("must not run"))
    assert run.main(["--compare", str(old), str(tmp_path / "benchmarks.json")]) == 0
    assert "Target status changed: `heads.x`." in capsys.readouterr().out


def test_compare_takes_one_or_two_files(tmp_path):
    with pytest.raises(SystemExit):
        run.main(["--compare", "a.json", "b.json", "c.json"])


# ------------------------------------------------------------------------ sections from canned rows


def _row(side, accuracy, first, warm, *, imports=1.0, nll=0.2, torch_imported=False):
    return {
        "side": side, "accuracy": accuracy, "first_fit_s": first, "warm_fit_s": warm, "import_s": imports,
        "first_fit_cpu_s": first, "warm_fit_cpu_s": warm, "predict_s": 0.01, "nll": nll, "ece": 0.05,
        "torch_imported": torch_imported, "after_mxnet_first_fit_s": first - imports / 2,
        "after_mxnet_first_fit_cpu_s": first - imports / 2,
    }  # fmt: skip


def test_heads_section_from_canned_measurements():
    from benchmarks import xfer_digits

    results = {
        ("LR", "ours"): [_row("ours", 0.94, 1.0, 0.2), _row("ours", 0.96, 1.2, 0.2)],
        ("LR", "xfer"): [_row("xfer", 0.93, 1.1, 0.3), _row("xfer", 0.93, 1.3, 0.3)],
        ("GP", "ours"): [_row("ours", 0.95, 3.0, 0.5, torch_imported=True)],
        ("GP", "xfer"): [_row("xfer", 0.90, 10.0, 9.0)],
    }
    section = xfer_digits.heads_section(results, [0, 1], 1, (0.968, 0.962))
    text = section.markdown
    assert "| LR | 0.950 (≥ 0.930: ✓ met) | 0.930 |" in text
    assert "| LR | 1.10 | 1.20 | 0.917 (≤ 1.000: ✓ met) | 0.20 | 0.30 | 0.67 |" in text
    # after import mxnet: medians (1.1 - 0.5) / (1.2 - 0.5), the same for CPU time
    assert text.rstrip().split("\n")[-2].endswith("| 0.86 / 0.86 |")
    figures = {figure.key: figure.value for figure in section.figures}
    assert figures["heads.GP.after_mxnet_first_fit_cpu_ratio"] == pytest.approx(2.5 / 9.5)
    assert "| GP | 3.00 | 10.00 | 0.300 (≤ 0.200: ✗ MISSED) |" in text and "| yes |" in text
    assert "| LR on raw pixels (reference) | 0.968 | scikit-learn: 0.962 |" in text
    assert "| SVM |" not in text and "| BNN |" not in text, "heads without measurements are left out"
    figures = {f.key: f for f in section.figures}
    assert figures["heads.GP.first_fit_ratio"].met is False and figures["heads.LR.accuracy"].met is True
    assert all(f.source == "measured" for f in section.figures)
    assert "floor" not in text


def test_heads_section_marks_targets_below_the_imports_floor():
    from benchmarks import xfer_digits

    results = {
        ("LR", "ours"): [_row("ours", 0.94, 1.0, 0.2)], ("LR", "xfer"): [_row("xfer", 0.93, 1.2, 0.3)],
        ("GP", "ours"): [_row("ours", 0.95, 3.0, 0.5, torch_imported=True)],
        ("GP", "xfer"): [_row("xfer", 0.90, 10.0, 9.0)],
    }  # fmt: skip
    floor = [{"mxnet_s": 0.5, "mxnet_cpu_s": 0.6, "floor_s": 2.5, "floor_cpu_s": 3.0}] * 3
    section = xfer_digits.heads_section(results, [0], 1, (0.968, 0.962), floor)
    figures = {f.key: f.value for f in section.figures}
    # Xfer's import mxnet: 0.5 s (wall and CPU) in its rows; torch after it: 2.0 s (CPU 2.4).
    # LR needs MXNet only: 0.5 / 1.2; GP MXNet and torch: (0.5 + 2.0) / 10 (CPU (0.5 + 2.4) / 10)
    assert figures["heads.LR.import_floor_ratio"] == pytest.approx(0.5 / 1.2)
    assert figures["heads.GP.import_floor_cpu_ratio"] == pytest.approx(0.29)
    text = section.markdown
    assert "| 0.417 / 0.417 |" in text and "| 0.250 / 0.290 |" in text
    assert "- GP: `import mxnet` + `import torch` alone is 0.250 of Xfer's first fit (0.290 in CPU time), above the target 0.200: infeasible" in text
    assert "`import mxnet` alone: 0.050 (0.050 in CPU time), below the target: `import torch`" in text
    assert "- LR" not in text, "LR's target is above its floor"
    results[("GP", "xfer")] = [_row("xfer", 0.90, 2.0, 1.8)]  # Xfer's MXNet import alone is above 1/5
    text = xfer_digits.heads_section(results, [0], 1, (0.968, 0.962), floor).markdown
    assert "`import mxnet` alone: 0.250 (0.250 in CPU time), above the target too." in text


def test_scale_section_from_canned_measurements():
    from benchmarks import xfer_digits

    results = {
        ("LR", "ours"): {"fit_s": 2.0, "predict_s": 0.02, "accuracy": 0.99, "peak_rss_mb": 700.0},
        ("LR", "xfer"): {"fit_s": 40.0, "predict_s": 0.05, "accuracy": 0.98, "peak_rss_mb": 650.0},
        ("GP", "ours"): {"fit_s": 70.0, "predict_s": 0.2, "accuracy": 0.99, "peak_rss_mb": 900.0},
        ("GP", "xfer"): {"timed_out": True, "timeout": 600},
    }
    section = xfer_digits.scale_section(results, 10_000, 1_280, 2_000, threads=1, timeout=600)
    text = section.markdown
    assert "| LR | 2.00 (≤ 15.00: ✓ met) | 40.00 | 0.050 | 0.020 (≤ 2.000: ✓ met) | 0.050 | 0.990 | 0.980 | 700 / 650 |" in text
    assert "| GP | 70.00 (≤ 60.00: ✗ MISSED) | > 600 (stopped) | < 0.117 |" in text
    figures = {f.key: f for f in section.figures}
    assert figures["scale.GP.xfer_fit_s"].value is None and figures["scale.LR.fit_ratio_to_xfer"].value == 0.05
    small = xfer_digits.scale_section(results, 2_000, 256, 500, threads=1, timeout=300)
    assert all(f.target is None for f in small.figures), "the targets are for the full size only"


def test_fine_tune_section_from_canned_measurements():
    from benchmarks import fine_tune

    def rows(side, accuracies, warm):
        return [{**_row(side, accuracies[0], 2.0, warm), "accuracies": accuracies}]

    results = {
        ("fine-tune", "ours"): rows("ours", [0.94, 0.96], 0.5),
        ("fine-tune", "xfer"): rows("xfer", [0.95, 0.97], 0.6),
        ("fine-tune", "module"): rows("module", [0.955, 0.955], 0.48),
        ("random-freeze", "ours"): rows("ours", [0.90, 0.90, 0.90], 0.5),
        ("random-freeze", "xfer"): rows("xfer", [0.95, 0.93, 0.94], 0.6),
        ("random-freeze", "module"): rows("module", [0.94, 0.94, 0.94], 0.3),
    }
    section = fine_tune.fine_tune_section(results, [0], 1)
    # Ours 0.950 +- 0.010 against Xfer's 0.960 +- 0.010: within 2 standard errors of the difference.
    assert (
        "| fine-tune | 0.950 ± 0.010 (2) (≥ 0.932: ✓ met) | 0.960 ± 0.010 | 0.955 ± 0.000 | 100.0 | 120.0 | "
        "96.0 | 1.04 (≤ 1.10: ✓ met) | 1.04 |" in section.markdown
    )
    assert "| random-freeze | 0.900 ± 0.000 (3) (≥ 0.928: ✗ MISSED) |" in section.markdown
    assert "1.67 (≤ 1.10: ✗ MISSED) | 1.67 |" in section.markdown
    figures = {f.key: f for f in section.figures}
    assert figures["fine_tune.fine-tune.accuracy"].met and not figures["fine_tune.random-freeze.accuracy"].met
    assert figures["fine_tune.fine-tune.per_epoch_cpu_ratio"].value == pytest.approx(0.5 / 0.48)


def test_threads_section_from_canned_measurements():
    from benchmarks import threads

    columns = {"mxnet": "MXNet", "torch_policy": "torch, xfer's policy", "torch_all_cores": "torch, 2 threads (no policy)"}
    rates = {
        "as is": {"mxnet": [30.0, 32.0], "torch_policy": [25.0, 27.0], "torch_all_cores": [28.0, 30.0]},
        "one busy process": {"mxnet": [20.0, 22.0], "torch_policy": [12.0, 12.0], "torch_all_cores": [2.0, 3.0]},
    }
    section = threads.threads_section({"count": 64, "repeats": 2, "cores": 2, "columns": columns, "rates": rates})
    assert "| one busy process | 21.0 (20.0-22.0) | 12.0 (12.0-12.0) | 2.5 (2.0-3.0) | 0.57 (≥ 0.50: ✓ met) |" in (
        section.markdown
    )
    assert "| as is | 31.0 (30.0-32.0) | 26.0 (25.0-27.0) | 29.0 (28.0-30.0) | 0.84 |" in section.markdown
    assert {f.key for f in section.figures} >= {"threads.busy.torch_policy_over_mxnet", "threads.busy.mxnet_images_per_s"}


# ----------------------------------------------------------------------- the Xfer side, isolated


def test_xfer_runs_isolated_with_the_same_thread_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("XFER_BENCHMARK_CACHE", str(tmp_path))
    venv = tmp_path / "xfer-1.1.0"
    (venv / "bin").mkdir(parents=True)
    (venv / "xfer-benchmark-requirements.json").write_text(json.dumps(list(xfer_env.XFER_REQUIREMENTS)))
    command = xfer_env.xfer_command(xfer_env.ROOT / "benchmarks" / "digits_child.py", "xfer", "LR")
    assert command[:2] == [str(venv / "bin" / "python"), "-I"], "-I: no PYTHONPATH, so import xfer is Xfer's"
    environment = xfer_env.thread_environment(1, {"PATH": "/bin"})
    assert {name: environment[name] for name in xfer_env.THREAD_VARIABLES} == dict.fromkeys(xfer_env.THREAD_VARIABLES, "1")
    assert xfer_env.ours_environment({"PYTHONPATH": "/x"})["PYTHONPATH"].split(":") == [str(xfer_env.ROOT), "/x"]


def test_our_side_runs_on_compiled_bytecode_like_an_installed_package(tmp_path, monkeypatch):
    # pip compiles an installed package (Xfer's environment has its caches); under
    # PYTHONDONTWRITEBYTECODE this checkout would be compiled from source in every fresh process
    (tmp_path / "xfer" / "repurposers").mkdir(parents=True)
    (tmp_path / "xfer" / "repurposers" / "head.py").write_text("VALUE = 1\n")
    monkeypatch.setattr(xfer_env, "ROOT", tmp_path)
    xfer_env.compile_ours.cache_clear()
    try:
        assert xfer_env.ours_command(tmp_path / "child.py")[1:] == [str(tmp_path / "child.py")]
    finally:
        xfer_env.compile_ours.cache_clear()
    assert [p.name.split(".")[0] for p in (tmp_path / "xfer" / "repurposers" / "__pycache__").glob("*.pyc")] == ["head"]


def test_a_failing_child_reports_its_error(tmp_path):
    script = tmp_path / "child.py"
    script.write_text("import sys\nsys.exit('child went wrong')\n")
    with pytest.raises(RuntimeError, match="failed \\(exit 1\\):\n.*child went wrong"):
        xfer_env.run_json([sys.executable, str(script)], {"PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_digits_child_smoke_run_on_this_package(tmp_path):
    """The fresh-process child on a tiny task (1 source epoch, one seed), this package's side only."""
    from benchmarks import fine_tune, xfer_digits

    task = xfer_digits.prepare_task(tmp_path, [0], source_epochs=1)
    lr = xfer_digits.run_child("ours", "LR", task, 0, {"warm": False}, threads=1)
    assert 0.5 < lr["accuracy"] <= 1 and lr["first_fit_s"] >= lr["fit_s"] > 0 and lr["warm_fit_s"] is None
    assert lr["torch_imported"] is False, "an MXNet LR user does not pay for torch"
    assert np.isfinite(lr["nll"])
    options = {**fine_tune.OPTIONS, "epochs": 1, "repeats": 2}
    module = xfer_digits.run_child("module", "random-freeze", task, 0, options, threads=1)
    assert module["warm_fit_s"] > 0 and 0 <= module["accuracy"] <= 1
    assert len(module["warm_fit_s_all"]) == 2 and len(module["accuracies"]) == 3, "first fit + 2 warm fits"
    (floor,) = xfer_digits.measure_import_floor(1, threads=1)
    assert 0 < floor["mxnet_s"] < floor["floor_s"] and 0 < floor["mxnet_cpu_s"] < floor["floor_cpu_s"]


def test_transferability_report_marks_targets():
    """The transferability section from canned draws and a tiny run of its score-cost part."""
    from benchmarks import transferability

    layers = ["a", "b", "c", "_avg_pooling"]

    def draw(shift):
        rows = [
            {"layer": layer, "logme": i + shift, "h_score": -i, "accuracy": 0.5 + 0.1 * i}
            for i, layer in enumerate(layers)
        ]
        auto = {"lr": {"accuracy": 0.8, "layers": ["c"], "head": "lr"},
                "lr+svm": {"accuracy": 0.7, "layers": ["_avg_pooling"], "head": "svm"}}  # fmt: skip
        return {"rows": rows, "fixed": {"lr": 0.75, "svm": 0.72}, "auto": auto, "leep": -1.0, "nce": -0.5,
                "n_held_out": 30}

    summary = transferability.summarise({"name": "fashion", "layers": layers, "draws": [draw(0), draw(1)]})
    assert summary["tau_logme"] == pytest.approx(1.0) and summary["tau_h_score"] == pytest.approx(-1.0)
    assert summary["auto"] == {"lr": pytest.approx(0.8), "lr+svm": pytest.approx(0.7)}
    speed = transferability.speed(n_rows=200, n_features=16, n_classes=4, repeats=1)
    assert set(speed["seconds"]) == {"lr_fit", "logme", "h_score", "both", "gram_1_thread", "gram", "leep", "nce"}
    assert set(speed["cpu_seconds"]) == set(speed["seconds"])
    assert speed["lr_iterations"] >= 1 and speed["cores"] >= 1
    forward = {"count": 10, "layers": layers, "threads": 1, "plain": 1.0, "ours": 1.5, "ratio": 1.5, "ratios": [1.5]}
    section = transferability.report_rows([summary, {**summary, "name": "faces"}], speed, forward)
    figures = {figure.key: figure for figure in section.figures}
    assert figures["transferability.fashion.tau_logme"].met
    assert figures["transferability.faces.auto_lr_minus_best_fixed"].met
    assert not figures["transferability.faces.auto_lr_svm_minus_best_fixed"].met
    assert not figures["transferability.forward.rank_8_layers_over_forward"].met
    assert "| Fashion-MNIST | 30 | 1.00 (≥ 0.60: ✓ met) |" in section.markdown
    assert "| floor: float64 Gram `F^T F` alone, 1 BLAS thread |" in section.markdown


def test_transferability_noise_tells_real_disagreements_from_the_draws_noise():
    from benchmarks import transferability

    rng = np.random.RandomState(0)

    def draws(accuracies, logmes):
        return [{"rows": [{"accuracy": a, "logme": m + 0.01 * rng.normal(), "h_score": float(i)}
                          for i, (a, m) in enumerate(zip(accuracy_row, logmes))]}
                for accuracy_row in accuracies]  # fmt: skip

    # accuracy 0.5 < 0.6 < 0.7 < 0.8 with small noise; LogME swaps the last two layers
    clear_accuracy = [0.5, 0.6, 0.7, 0.8] + 0.01 * rng.normal(size=(30, 4))
    clear = transferability.noise(draws(clear_accuracy, [0, 1, 3, 2]), resamples=200)
    assert (clear["pairs"], clear["separable"], clear["draws_needed"]) == (6, 6, None)
    assert clear["truth_tau"] == pytest.approx(1.0)
    assert clear["discordant"]["logme"] == 1 and clear["beyond_noise"]["logme"] == [(2, 3)]
    assert clear["interval"]["logme"] == pytest.approx((4 / 6, 4 / 6))  # 5 concordant, 1 not
    assert clear["interval"]["h_score"] == pytest.approx((1.0, 1.0))
    # a ceiling: every layer's accuracy mean is the same (cyclic shifts of one draw's values), so
    # no pair separates however many draws, and no disagreement is beyond the noise
    flat_accuracy = [np.roll([0.97, 0.98, 0.99, 0.98], k) for k in range(4)] * 5
    flat = transferability.noise(draws(flat_accuracy, [0, 1, 3, 2]), resamples=200)
    assert flat["separable"] == 0 and flat["draws_needed"] == (np.inf, np.inf)
    assert flat["beyond_noise"] == {"logme": [], "h_score": []}
    low, high = flat["interval"]["logme"]
    assert low < 0 < high, "resamples of a flat truth order the layers at random"
    summary = {"name": "faces", "layers": ["a", "b", "c", "d"], "tau_logme": 0.2, "noise": flat}
    lines = "\n".join(transferability._noise_lines([summary], {"faces": "faces"}))
    assert "| faces | 20 |" in lines and "| 0 of 6 | ∞ (equal means), ∞ (equal means) |" in lines
    assert "the target 0.6 lies inside it" in lines and "within the noise of the draws" in lines
    assert "- faces (20 draws): tau LogME 0.20" in lines
    lines = "\n".join(transferability._noise_lines([{**summary, "noise_first": clear}], {"faces": "faces"}))
    assert "| faces | 30 |" in lines and "| faces | 20 |" in lines and lines.count("- faces") == 1
    lines = "\n".join(transferability._noise_lines([{**summary, "noise": clear}], {"faces": "faces"}))
    assert "beyond the noise (`c` vs `d`)" in lines and "lies outside it" in lines


def test_transferability_bootstrap_tau_is_scipys_kendall_tau_b():
    from scipy.stats import kendalltau

    from benchmarks import transferability

    rng = np.random.RandomState(3)
    a = rng.randint(0, 4, size=(50, 6)).astype(float)  # many ties
    b = rng.normal(size=(50, 6))
    b[::5, 2] = b[::5, 3]
    expected = [kendalltau(x, y).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(transferability._tau_rows(a, b), expected, rtol=1e-12)
    assert np.isnan(transferability._tau_rows(np.ones((1, 4)), b[:1, :4])[0])


@pytest.mark.slow
def test_transferability_draws_give_the_same_rows_in_worker_processes(monkeypatch):
    from benchmarks import transferability

    rng = np.random.RandomState(0)
    labels = np.repeat([0, 1, 2], 14)
    images = np.zeros((len(labels), 1))
    layers = {"a": 3, "_avg_pooling": 6, "_fc": 5}
    features = {name: rng.normal(size=(len(labels), width)) + labels[:, None] for name, width in layers.items()}
    monkeypatch.setattr(transferability, "_task_images", lambda name, quick: (images, labels, None, None))
    monkeypatch.setattr(transferability, "_pooled_features", lambda handler, x, wanted: features)
    serial = transferability.task_rows("faces", None, ["a", "_avg_pooling"], 3, True, auto_draws=1)
    parallel = transferability.task_rows("faces", None, ["a", "_avg_pooling"], 3, True, auto_draws=1, workers=2)
    assert serial == parallel
    assert ["auto" in draw for draw in serial["draws"]] == [True, False, False]
    assert serial["draws"][0]["n_held_out"] == len(labels) - 30


def test_transferability_summary_runs_auto_on_the_first_draws_and_reports_the_first_taus(monkeypatch):
    from benchmarks import transferability

    monkeypatch.setattr(transferability, "FIRST_DRAWS", 1)
    layers = ["a", "b", "c"]
    rows = lambda logmes: [{"layer": x, "logme": m, "h_score": m, "accuracy": 0.5 + 0.1 * i}  # noqa: E731
                           for i, (x, m) in enumerate(zip(layers, logmes))]  # fmt: skip
    auto = {label: {"accuracy": 0.9, "layers": ["c"], "head": "lr"} for label in ("lr", "lr+svm")}
    draws = [{"rows": rows([0, 1, 2]), "fixed": {"lr": 0.8, "svm": 0.7}, "auto": auto, "leep": -1, "nce": -1},
             {"rows": rows([2, 1, 0]), "leep": -1, "nce": -1},
             {"rows": rows([2, 1, 0]), "leep": -1, "nce": -1}]  # fmt: skip
    summary = transferability.summarise({"name": "faces", "layers": layers, "draws": draws})
    assert summary["n_draws"] == 3 and summary["n_auto_draws"] == 1 and summary["n_first_draws"] == 1
    assert summary["tau_logme_first"] == pytest.approx(1.0) and summary["tau_logme"] == pytest.approx(-1.0)
    assert summary["fixed"] == {"lr": 0.8, "svm": 0.7} and summary["auto"]["lr"] == 0.9


def test_transferability_floor_text_counts_the_work_from_the_measured_times():
    from benchmarks import transferability

    row = {"shape": (10_000, 1_000, 10), "lr_iterations": 10, "cores": 2,
           "seconds": {"lr_fit": 1.0, "gram": 0.3},
           "cpu_seconds": {"lr_fit": 2.0, "gram_1_thread": 0.5}}  # fmt: skip
    text = transferability._floor_text(row)
    # Gram: 10,000 * 1,000 * 1,001 / 2 = 5.0 G multiply-adds in 0.5 CPU s: 10.0 G/s; a tenth of
    # the fit's 2 CPU s (0.2 s) needs 25 G/s, 2.5 times that; the fit: 10 x 2 N D K = 10 x 0.2 G
    assert "= 5.0 G multiply-adds: 0.50 CPU s on one BLAS thread (10.0 G per CPU second)" in text
    assert "0.25x the LR fit's CPU time and, on the default threads, 0.30x its wall time" in text
    assert "ran 10 L-BFGS iterations" in text and "(2 N D K = 0.20 G multiply-adds), about 2.0 G" in text
    assert "(0.20 s) would need the product at 25 G multiply-adds per CPU second, 2.5 times" in text
    assert "floor" not in transferability._floor_text({**row, "cpu_seconds": {"lr_fit": 1.0}})
    assert "transferability" in run.SECTIONS


def test_readme_summary_quotes_figures_with_their_targets_and_commands():
    from benchmarks.report import readme_summary

    def figure(key, value, target=None):
        return Figure(key, value, target=target).to_json()

    data = {
        "sections": {
            "heads": {
                "command": "python -m benchmarks.run --only heads", "date": "2026-12-01", "load_average": [0.5, 0.9],
                "figures": [
                    figure("heads.GP.first_fit_s", 2.5), figure("heads.GP.xfer_first_fit_s", 10.0),
                    figure("heads.GP.first_fit_ratio", 0.25, ("<=", 0.2)), figure("heads.GP.first_fit_cpu_ratio", 0.3),
                    figure("heads.GP.accuracy", 0.95, (">=", 0.9)), figure("heads.GP.xfer_accuracy", 0.9),
                ],
            },
            "threads": {
                "command": "python -m benchmarks.run --quick --only threads", "date": "2026-12-02",
                "load_average": [1.0, 1.2],
                "figures": [
                    figure("threads.busy.torch_policy_images_per_s", 6.0),
                    figure("threads.busy.mxnet_images_per_s", 10.0),
                    figure("threads.busy.torch_policy_over_mxnet", 0.6, (">=", 0.5)),
                ],
            },
        }
    }  # fmt: skip
    text = readme_summary(data)
    assert "| GP head, first fit in a fresh process (s) | 2.50 | 10.00 | 0.25 | ≤ 0.200: ✗ MISSED | 0.30 |" in text
    assert "| GP head, test accuracy | 0.950 | 0.900 |  | ≥ 0.900: ✓ met |  |" in text
    assert "| torch extraction beside a busy process, images/s (baseline: MXNet) | 6.0 | 10.0 | 0.6 | ≥ 0.500: ✓ met |  |" in text
    assert "LR head" not in text, "figures the report does not have are left out"
    assert text.endswith(
        "Measured by `python -m benchmarks.run --only heads` (2026-12-01, load average 0.5-0.9); "
        "`python -m benchmarks.run --quick --only threads` (2026-12-02, load average 1.0-1.2)."
    )


def test_readme_quotes_the_report():
    """The README's benchmark figures are the report's (regenerate: python -m benchmarks.run --readme)."""
    from benchmarks.report import read_json, readme_summary

    data = read_json(xfer_env.ROOT / "docs" / "benchmarks.json")
    assert readme_summary(data) in (xfer_env.ROOT / "README.md").read_text()


def test_laplace_fit_section_reports_time_beside_lr(monkeypatch):
    """The laplace_fit section: both heads timed on the same features, the target only at full size."""
    import numpy as np

    calibration = pytest.importorskip("benchmarks.calibration")
    xfer_digits = pytest.importorskip("benchmarks.xfer_digits")
    rng = np.random.default_rng(0)
    monkeypatch.setattr(
        xfer_digits, "structured_features",
        lambda n, d, k: (rng.normal(size=(60, 8)) + np.repeat(np.eye(8)[:3] * 3, 20, axis=0), np.repeat(np.arange(3), 20)),
    )  # fmt: skip
    section = calibration.laplace_fit_report(quick=True, repeats=1)
    assert "| LR (baseline) | " in section.markdown and "| Laplace | " in section.markdown
    assert section.figures[0].key == "laplace_fit_s" and section.figures[0].target is None
    from benchmarks import run

    assert "laplace_fit" in run.SECTIONS


def test_calibration_verdict_compares_means_as_printed():
    """"No worse than LR" is judged on the 3 decimals the table shows, not on a 5th-decimal gap."""
    calibration = pytest.importorskip("benchmarks.calibration")
    lr = [{"accuracy": 0.85, "nll": 0.49905, "ece": 0.091, "collapsed": False}]
    same_model = [{"accuracy": 0.85, "nll": 0.49906, "ece": 0.091, "collapsed": False}]
    worse = [{"accuracy": 0.85, "nll": 0.5005, "ece": 0.0925, "collapsed": False}]
    assert calibration._verdict(same_model, lr) == calibration.MET
    assert calibration._verdict(worse, lr).endswith("MISSED: NLL, ECE")
