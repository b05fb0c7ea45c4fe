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
    text = torch_backend.report(quick=True)
    assert "logistic regression unless named" in text and "over 2 random draws" in text
    assert "| 0.750 ± 0.014 (0.740-0.760) | 0.745 ± 0.021 (0.730-0.760) |" in text
    assert "MXNet within 0.01 (0.005)" in text
    assert "| MiniLM -> 20 Newsgroups (LR) | 160 | 300 | 0.630 ± 0.014 (0.620-0.640) |" in text
    assert "| MiniLM -> 20 Newsgroups (GP head) | 160 | 300 | 0.640 ± 0.014" in text
    assert "| 99.0 | 100.0 | 0.99 (0.95-1.02) | >= 0.95 |" in text


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
                  "runs": {1: {"seconds": 100.0, "count": 20_000, "load": "1.0 / 1.0"},
                           2: {"seconds": 55.0, "count": 20_000, "load": "1.0 / 1.0"}}}
    text = scale_out.report_rows(heads, extraction)
    assert "| LR | 2.0 | 40.0 | 2.00 (met) | 800 |" in text
    assert "| BNN | 10.0 | 400.0 | 4.00 (MISSED) |" in text
    assert "Speed-up 2 processes / 1: **1.82x** (target >= 1.6: met); features identical: True" in text
    assert "scale_out" in run.SECTIONS


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
    assert "worse: accuracy, NLL, collapse" in text
    ood = calibration.ood_report(quick=True)
    assert "| Fake images | 500 scikit-learn digits | " in ood
    assert "| 0.500 (0.50-0.50) |" in ood  # the constant head cannot tell anything apart


class _Uniform:
    def fit(self, x, y):
        import numpy as np

        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, x):
        import numpy as np

        return np.full((len(x), len(self.classes_)), 1.0 / len(self.classes_))
