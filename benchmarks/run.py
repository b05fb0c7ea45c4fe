"""Run the benchmark sections; write ``docs/benchmarks.md`` and ``docs/benchmarks.json``.

Each section measures xfer against its baseline in the same run (ratios, not absolute claims)
and returns Markdown, or a :class:`benchmarks.report.Section` (Markdown plus its figures, which
go to the JSON). Every section ends with the command, the date and the machine's load average
while it ran; the machine's description is at the top.

Usage::

    python -m benchmarks.run                 # everything (tens of minutes on 2 cores)
    python -m benchmarks.run --quick         # smaller sizes, for development
    python -m benchmarks.run --only heads    # one section (see --help for the names)
    python -m benchmarks.run --output -      # print instead of writing docs/benchmarks.md
    python -m benchmarks.run --only extraction --update   # rerun one section, keep the others
    python -m benchmarks.run --only heads --compare docs/benchmarks.json   # run, show the change
    python -m benchmarks.run --compare OLD.json NEW.json                  # compare, run nothing
    python -m benchmarks.run --readme       # the README's table from docs/benchmarks.json

Adding a section: write ``report(quick: bool) -> str | Section`` in ``benchmarks/<module>.py``
and add one line to :data:`SECTIONS`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.report import (
    MET,
    MISSED,
    Figure,
    Section,
    compare,
    read_json,
    readme_summary,
    summary_lines,
)

ROOT = Path(__file__).resolve().parent.parent


def _section(module_name: str, function: str = "report") -> Callable[[bool], str | Section]:
    """The section ``benchmarks.<module_name>.<function>(quick=...)`` (imported when it runs)."""

    def run(quick: bool) -> str | Section:
        try:
            module = importlib.import_module(f"benchmarks.{module_name}")
        except ModuleNotFoundError as error:
            if error.name != f"benchmarks.{module_name}":
                raise
            return f"_benchmarks/{module_name}.py is not present in this checkout._"
        return getattr(module, function)(quick=quick)

    return run


#: Section name -> what runs it, in the order of the report.
SECTIONS: dict[str, Callable[[bool], str | Section]] = {
    "heads": _section("xfer_digits", "heads_report"),
    "fine_tune": _section("fine_tune"),
    "threads": _section("threads"),
    "scale": _section("xfer_digits", "scale_report"),
    "extraction": _section("feature_extraction"),
    "torch": _section("torch_backend"),
    "calibration": _section("calibration"),
    "ood": _section("calibration", "ood_report"),
    "laplace_fit": _section("calibration", "laplace_fit_report"),
    "calibration_scale": _section("calibration", "scale_report"),
    "scale_out": _section("scale_out", "heads_report"),
    "scale_out_extraction": _section("scale_out", "extraction_report"),
    "transferability": _section("transferability"),
}


def _existing_sections(path: Path) -> dict[str, str]:
    """The ``## name`` sections of an earlier report (their bodies, verbatim)."""
    if not path.is_file():
        return {}
    chunks = path.read_text().split("\n## ")[1:]
    return {chunk.split("\n", 1)[0].strip(): chunk.split("\n", 1)[1].rstrip("\n") for chunk in chunks}


def machine_description() -> str:
    import numpy
    import torch

    from xfer._mxnet import mx

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{cpu}, {os.cpu_count()} cores, GPU: {gpu}; Python {platform.python_version()}, "
        f"NumPy {numpy.__version__}, MXNet {mx.__version__}, torch {torch.__version__}"
    )


def load_average() -> float | None:
    """The 1-minute load average (``None`` where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _command(args: argparse.Namespace) -> str:
    return (
        "python -m benchmarks.run"
        + (" --quick" if args.quick else "")
        + "".join(f" --only {name}" for name in args.only or [])
        + (" --update" if args.update else "")
    )


def _run_section(name: str, quick: bool) -> tuple[str, list[Figure], bool]:
    """(Markdown, figures, failed) of one section; a failing section is reported, not raised."""
    try:
        result = SECTIONS[name](quick)
    except Exception:
        return f"Section failed:\n\n```\n{traceback.format_exc()}```", [], True
    if isinstance(result, Section):
        return "\n".join([result.markdown, "", *summary_lines(result.figures)]).rstrip(), result.figures, False
    return result, [], False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="xfer benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument("--only", choices=list(SECTIONS), action="append", help="run only these sections")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"), help="file, or - for stdout")
    parser.add_argument("--json", help="where the figures go (default: --output with .json)")
    parser.add_argument(
        "--update", action="store_true", help="replace only the sections run in an existing --output file"
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="JSON",
        help="OLD.json: show the change of this run's figures; OLD.json NEW.json: compare, run nothing",
    )
    parser.add_argument(
        "--readme", action="store_true", help="print the README's table of figures from --json, run nothing"
    )
    args = parser.parse_args(argv)
    if args.compare and len(args.compare) > 2:
        parser.error("--compare takes OLD.json, or OLD.json NEW.json")
    if args.compare and len(args.compare) == 2:
        print(compare(read_json(Path(args.compare[0])), read_json(Path(args.compare[1]))))
        return 0

    if args.readme:
        print(readme_summary(read_json(Path(args.json or Path(args.output).with_suffix(".json")))))
        return 0
    command = _command(args)
    old = read_json(Path(args.compare[0])) if args.compare else None  # before this run overwrites it
    to_stdout = args.output == "-"
    json_path = Path(args.json) if args.json else (None if to_stdout else Path(args.output).with_suffix(".json"))
    today = datetime.date.today().isoformat()
    machine = machine_description()
    sections: dict[str, str] = {}  # this run's; merged into the files' only when writing
    data: dict = {"sections": {}}
    failed = False
    for name in args.only or SECTIONS:
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        load_before, start = load_average(), time.perf_counter()
        body, figures, section_failed = _run_section(name, args.quick)
        seconds, load_after = time.perf_counter() - start, load_average()
        failed |= section_failed
        sections[name] = "\n".join(
            [
                "",
                body,
                "",
                f"_{seconds:.0f} s, `{command}`, {today}; 1-minute load average {load_before} at the "
                f"start, {load_after} at the end (2 cores: above ~1.5 the machine was shared)._",
            ]
        )
        data["sections"][name] = {
            "command": command,
            "date": today,
            "seconds": round(seconds, 1),
            "load_average": [load_before, load_after],
            "failed": section_failed,
            "figures": [figure.to_json() for figure in figures],
        }
    if args.update:  # read now, not at the start: other sections may have changed meanwhile
        if not to_stdout:
            sections = {**_existing_sections(Path(args.output)), **sections}
        if json_path is not None:
            previous = read_json(json_path)
            data = {**previous, "sections": {**previous.get("sections", {}), **data["sections"]}}
    parts = [
        "# Benchmarks",
        "",
        (f"Generated {today} by `{command}`" if not args.update else "Each section ends with the command and date that produced it")
        + f", on: {machine}.",
        "Every baseline is measured in the same run as the figure beside it, with the same threads",
        "and timing scope, unless its cell says *quoted*; ratios are the figures to compare. Targets",
        f"are marked {MET} or {MISSED}. All figures are in `benchmarks.json` beside this file;",
        "`python -m benchmarks.run --compare OLD.json NEW.json` shows what changed.",
    ]
    for name in [*SECTIONS, *[s for s in sections if s not in SECTIONS]]:  # the registry's order
        if name in sections:
            parts += ["", f"## {name}", sections[name]]
    text = "\n".join(parts) + "\n"
    data.update({"machine": machine, "generated": today})
    if to_stdout:
        print(text)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"[benchmarks] wrote {args.output}", file=sys.stderr)
    if json_path is not None:
        json_path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print(f"[benchmarks] wrote {json_path}", file=sys.stderr)
    if old is not None:
        print(compare(old, data))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
