"""Run every benchmark section and write ``docs/benchmarks.md``.

Each section measures xfer against its baseline in the same run (ratios, not absolute claims)
and returns a markdown table. The machine's description and the exact command go at the top.

Usage::

    python -m benchmarks.run                 # everything (tens of minutes on 2 cores)
    python -m benchmarks.run --quick         # a few minutes, smaller sizes, for development
    python -m benchmarks.run --only heads    # one section: heads, scale, extraction, fine_tune, torch, calibration, ood, calibration_scale, scale_out
    python -m benchmarks.run --output -      # print instead of writing docs/benchmarks.md
    python -m benchmarks.run --only extraction --update   # rerun one section, keep the others
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _heads(quick: bool) -> str:
    from benchmarks import xfer_digits

    return "### Heads on Xfer's digits task\n\n" + xfer_digits.digits_table(
        list(range(2 if quick else 5)), source_epochs=5 if quick else 10
    )


def _scale(quick: bool) -> str:
    from benchmarks import xfer_digits

    if quick:
        return "### Heads at scale (quick: 2,000 x 256)\n\n" + xfer_digits.scale_table(2_000, 256, 500)
    return "### Heads at scale (10,000 x 1,280, 10 classes)\n\n" + xfer_digits.scale_table(10_000, 1_280, 2_000)


def _extraction(quick: bool) -> str:
    from benchmarks import feature_extraction

    return feature_extraction.report(quick=quick)


def _optional(module_name: str, function: str) -> Callable[[bool], str]:
    """A section provided by a module that may not exist yet in this checkout."""

    def run(quick: bool) -> str:
        try:
            module = importlib.import_module(f"benchmarks.{module_name}")
        except ModuleNotFoundError:
            return f"_benchmarks/{module_name}.py is not present in this checkout._"
        return getattr(module, function)(quick=quick)

    return run


SECTIONS: dict[str, Callable[[bool], str]] = {
    "heads": _heads,
    "scale": _scale,
    "extraction": _extraction,
    "fine_tune": _optional("fine_tune", "report"),
    "torch": _optional("torch_backend", "report"),
    "calibration": _optional("calibration", "report"),
    "ood": _optional("calibration", "ood_report"),
    "calibration_scale": _optional("calibration", "scale_report"),
    "scale_out": _optional("scale_out", "report"),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="xfer benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"), help="file, or - for stdout")
    parser.add_argument(
        "--update", action="store_true", help="replace only the sections run in an existing --output file"
    )
    args = parser.parse_args(argv)
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "") + "".join(
        f" --only {name}" for name in args.only or []
    ) + (" --update" if args.update else "")
    parts = [
        "# Benchmarks",
        "",
        (
            f"Generated {datetime.date.today().isoformat()} by `{command}`"
            if not args.update
            else "Each section ends with the command and date that produced it"
        )
        + f", on: {machine_description()}.",
        "Timings are medians of repeated runs on a shared machine; ratios to the baseline measured in",
        "the same run are the figures to compare.",
    ]
    failed = False
    sections = _existing_sections(Path(args.output)) if args.update and args.output != "-" else {}
    for name in args.only or SECTIONS:
        start = time.perf_counter()
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        try:
            body = SECTIONS[name](args.quick)
        except Exception:  # a failing section is reported, the others still run
            failed = True
            body = f"Section failed:\n\n```\n{traceback.format_exc()}```"
        sections[name] = "\n".join(
            ["", body, "", f"_{time.perf_counter() - start:.0f} s, `{command}`, {datetime.date.today()}_"]
        )
    for name in SECTIONS:  # in the harness's order, whichever run wrote them
        if name in sections:
            parts += ["", f"## {name}", sections[name]]
    text = "\n".join(parts) + "\n"
    if args.output == "-":
        print(text)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"[benchmarks] wrote {args.output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
