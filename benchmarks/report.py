"""Figures with targets, their Markdown cells, the JSON beside ``docs/benchmarks.md`` and
``--compare``.

A section returns Markdown, or a :class:`Section` (Markdown plus its :class:`Figure` list): the
figures go to ``docs/benchmarks.json`` so a later run can be compared with this one. Every figure
says whether it was measured in this run or quoted from elsewhere, and, when it has a target,
whether the target is met.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MET = "✓ met"
MISSED = "✗ MISSED"

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


@dataclass
class Figure:
    """One number of a section.

    ``key`` is stable across runs (``--compare`` matches on it); ``target`` is ``(operator,
    bound)`` such as ``("<=", 0.2)``; ``better`` is ``"higher"`` or ``"lower"`` (or ``None`` when
    neither, e.g. a count); ``source`` is ``"measured"`` (in this run) or ``"quoted"``.
    """

    key: str
    value: float | None
    unit: str = ""
    better: str | None = None
    target: tuple[str, float] | None = None
    source: str = "measured"
    note: str = ""

    def __post_init__(self) -> None:
        if self.target is not None:
            self.target = (str(self.target[0]), float(self.target[1]))
            if self.target[0] not in _OPERATORS:
                raise ValueError(f"Unknown target operator {self.target[0]!r}: use one of {list(_OPERATORS)}.")
        if self.source not in ("measured", "quoted"):
            raise ValueError(f"source must be 'measured' or 'quoted', got {self.source!r}.")
        if self.value is not None:
            self.value = float(self.value)

    @property
    def met(self) -> bool | None:
        """Whether the target holds; ``None`` without a target or a value."""
        if self.target is None or self.value is None or math.isnan(self.value):
            return None
        op, bound = self.target
        return _OPERATORS[op](self.value, bound)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = list(self.target) if self.target else None
        data["met"] = self.met
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figure:
        known = {name: data.get(name) for name in ("key", "value", "unit", "better", "target", "source", "note")}
        known["unit"] = known["unit"] or ""
        known["source"] = known["source"] or "measured"
        known["note"] = known["note"] or ""
        return cls(**known)


@dataclass
class Section:
    """What a section returns: its Markdown and the figures behind it."""

    markdown: str
    figures: list[Figure] = field(default_factory=list)


def mean_of(rows: list[dict], key: str) -> float:
    """Mean of ``row[key]`` over the rows that have it (NaN if none)."""
    values = [row[key] for row in rows if row.get(key) is not None]
    return float(sum(values) / len(values)) if values else float("nan")


def median_of(rows: list[dict], key: str) -> float:
    """Median of ``row[key]`` over the rows that have it (NaN if none)."""
    values = sorted(row[key] for row in rows if row.get(key) is not None)
    if not values:
        return float("nan")
    middle = len(values) // 2
    return float(values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2)


def mark(met: bool | None) -> str:
    """``✓ met``, ``✗ MISSED`` or nothing."""
    return "" if met is None else (MET if met else MISSED)


def target_text(target: tuple[str, float] | None, digits: int = 2) -> str:
    if target is None:
        return ""
    op, bound = target
    return f"{op.replace('<=', '≤').replace('>=', '≥')} {bound:.{digits}f}"


def cell(figure: Figure, digits: int = 2) -> str:
    """A figure for a table: ``0.12 (target ≤ 0.20, ✓ met)``, or just ``0.12``; quoted ones say so."""
    if figure.value is None or math.isnan(figure.value):
        return "n/a"
    text = f"{figure.value:.{digits}f}"
    if figure.source == "quoted":
        text += " (quoted)"
    if figure.target is not None:
        text += f" ({target_text(figure.target, digits)}: {mark(figure.met)})"
    return text


def summary_lines(figures: Iterable[Figure]) -> list[str]:
    """A line per missed target (or one line saying every target was met)."""
    with_targets = [f for f in figures if f.met is not None]
    missed = [f for f in with_targets if not f.met]
    if not with_targets:
        return []
    if not missed:
        return [f"Targets: all {len(with_targets)} met."]
    return [f"Targets: {len(with_targets) - len(missed)} of {len(with_targets)} met; missed:"] + [
        f"- `{f.key}` = {f.value:.3g} (target {target_text(f.target, 3)})" for f in missed
    ]


def read_json(path: Path) -> dict[str, Any]:
    """A benchmarks JSON (``{"sections": {name: {..., "figures": [...]}}}``), or an empty one."""
    if not path.is_file():
        return {"sections": {}}
    data = json.loads(path.read_text())
    data.setdefault("sections", {})
    return data


def figures_of(data: dict[str, Any]) -> dict[str, Figure]:
    """Every figure of a benchmarks JSON by its key."""
    figures: dict[str, Figure] = {}
    for section in data.get("sections", {}).values():
        for item in section.get("figures", []):
            figure = Figure.from_json(item)
            figures[figure.key] = figure
    return figures


def _change(old: Figure | None, new: Figure | None) -> tuple[str, str]:
    """(relative change, verdict) of ``new`` against ``old``."""
    if old is None or new is None or old.value is None or new.value is None:
        return "", "added" if old is None else ("removed" if new is None else "")
    if old.value == new.value:
        return "0%", ""
    if old.value == 0:
        return "", ""
    change = new.value / old.value - 1.0
    better = new.better or old.better
    verdict = ""
    if better is not None and abs(change) >= 0.05:  # under 5%: noise on a shared machine
        verdict = "better" if (change > 0) == (better == "higher") else "worse"
    return f"{change:+.0%}", verdict


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """A Markdown table of every figure of ``old`` and ``new``: values, change, target status."""
    old_figures, new_figures = figures_of(old), figures_of(new)
    keys = list(new_figures) + [key for key in old_figures if key not in new_figures]
    lines = [
        "| figure | old | new | change | verdict | target | old status | new status |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]

    def value(figure: Figure | None) -> str:
        if figure is None or figure.value is None:
            return ""
        return f"{figure.value:.4g}" + (" (quoted)" if figure.source == "quoted" else "")

    for key in keys:
        before, after = old_figures.get(key), new_figures.get(key)
        change, verdict = _change(before, after)
        target = (after or before).target  # type: ignore[union-attr]
        lines.append(
            f"| `{key}` | {value(before)} | {value(after)} | {change} | {verdict} | "
            f"{target_text(target, 3)} | {mark(before.met if before else None)} | "
            f"{mark(after.met if after else None)} |"
        )
    changed_status = [
        key for key in keys
        if key in old_figures and key in new_figures and old_figures[key].met != new_figures[key].met
    ]  # fmt: skip
    if changed_status:
        lines += ["", "Target status changed: " + ", ".join(f"`{key}`" for key in changed_status) + "."]
    return "\n".join(lines)


#: The figures the README quotes: (label, this package's key, baseline's key, ratio key, digits,
#: CPU-time ratio key).
README_ROWS = (
    *(
        (f"{head} head, first fit in a fresh process (s)", f"heads.{head}.first_fit_s",
         f"heads.{head}.xfer_first_fit_s", f"heads.{head}.first_fit_ratio", 2,
         f"heads.{head}.first_fit_cpu_ratio")
        for head in ("LR", "SVM", "GP", "BNN")
    ),
    *(
        (f"{head} head, test accuracy", f"heads.{head}.accuracy", f"heads.{head}.xfer_accuracy", None, 3, None)
        for head in ("LR", "SVM", "GP", "BNN")
    ),
    *(
        (f"{job}, ms per epoch (baseline: `Module.fit`)", f"fine_tune.{job}.ms_per_epoch",
         f"fine_tune.{job}.module_ms_per_epoch", f"fine_tune.{job}.per_epoch_ratio", 1,
         f"fine_tune.{job}.per_epoch_cpu_ratio")
        for job in ("fine-tune", "random-freeze")
    ),
    ("torch extraction beside a busy process, images/s (baseline: MXNet)",
     "threads.busy.torch_policy_images_per_s", "threads.busy.mxnet_images_per_s",
     "threads.busy.torch_policy_over_mxnet", 1, None),
)  # fmt: skip


def readme_summary(data: dict[str, Any]) -> str:
    """The README's table of measured figures, from a benchmarks JSON (``--readme`` prints it).

    Baselines are Xfer 1.1.0 unless the row names another; the status is the target's (on the
    ratio where there is one, else on the figure itself); the CPU-time ratio is the same span in
    process CPU time where the report has it. The line under the table names the
    commands, dates and load averages of the sections the figures come from.
    """
    figures = figures_of(data)
    lines = [
        "| measured | xfer | baseline | ratio | target | CPU-time ratio |",
        "|---|---:|---:|---:|---|---:|",
    ]
    sections: list[str] = []
    for label, key, baseline_key, ratio_key, digits, cpu_key in README_ROWS:
        if key not in figures:
            continue
        sections.append(key.split(".")[0])
        ours, baseline = figures[key], figures.get(baseline_key)
        judged = figures[ratio_key] if ratio_key else ours
        ratio = f"{judged.value:.3g}" if ratio_key and judged.value is not None else ""
        status = f"{target_text(judged.target, 3)}: {mark(judged.met)}" if judged.target else ""
        base = f"{baseline.value:.{digits}f}" if baseline is not None and baseline.value is not None else ""
        cpu = figures.get(cpu_key) if cpu_key else None
        cpu_text = f"{cpu.value:.2f}" if cpu is not None and cpu.value is not None else ""
        lines.append(f"| {label} | {ours.value:.{digits}f} | {base} | {ratio} | {status} | {cpu_text} |")
    runs = []
    for name in dict.fromkeys(sections):
        section = data["sections"][name]
        low, high = section["load_average"]
        runs.append(f"`{section['command']}` ({section['date']}, load average {low}-{high})")
    return "\n".join(lines + ["", "Measured by " + "; ".join(runs) + "."])
