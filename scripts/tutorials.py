"""Execute the tutorial notebooks, and store them with their outputs.

    python scripts/tutorials.py                  # re-run every notebook, store it with outputs
    python scripts/tutorials.py 00_your_images   # only these (names without .ipynb)
    python scripts/tutorials.py --check          # run, compare with the stored ones, write nothing

(``bash scripts/tutorials.sh`` does the same inside the project's ``.venv``.) Each notebook runs
top to bottom in a fresh ``python3`` kernel of this interpreter, in a temporary folder, as the
test suite runs it (``tests/test_docs.py`` uses :func:`execute` and :func:`differences` from
here). Stored notebooks keep their outputs so that a repository page or a fresh Jupyter shows
their figures without running them; the tests fail when a stored notebook no longer matches what
its code produces in kind (cells, figures where figures were, no errors).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
CELL_TIMEOUT_S = 300
REGENERATE = "bash scripts/tutorials.sh {name}"


def notebook_names() -> list[str]:
    """The tutorials, in order (``docs/tutorials/NN_*.ipynb``)."""
    return sorted(path.stem for path in TUTORIALS.glob("[0-9]*.ipynb"))


def kernel_environment() -> dict[str, str]:
    """Environment of the kernel: this interpreter's ``python`` and this checkout's ``xfer``."""
    return {
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }


def read(name: str) -> Any:
    """The stored notebook ``name``."""
    import nbformat

    return nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)


def execute(name: str, workdir: str | Path) -> tuple[Any, float]:
    """Run the stored notebook ``name`` top to bottom in ``workdir``; returns it and the seconds.

    Raises ``nbclient.exceptions.CellExecutionError`` (with the cell and its traceback) when a
    cell fails. The caller sets the kernel's environment (:func:`kernel_environment`).
    """
    import nbclient

    notebook = read(name)
    for cell in notebook.cells:  # the stored outputs must not leak into the new ones
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    start = time.perf_counter()
    client.execute()
    return notebook, time.perf_counter() - start


def output_kinds(cell: Any) -> list[str]:
    """What a code cell shows, in kind: printed text, figures, rich results, errors."""
    kinds = set()
    for output in cell.get("outputs", []):
        kind = output.get("output_type")
        if kind == "stream":
            kinds.add(f"stream:{output.get('name')}")
        elif kind in ("execute_result", "display_data"):
            data = output.get("data", {})
            kinds.add("figure" if any(k.startswith("image/") for k in data) else "result")
        else:
            kinds.add(kind)
    return sorted(kinds)


def differences(stored: Any, executed: Any) -> list[str]:
    """How the stored notebook differs in kind from a fresh execution of its code (empty: none).

    Compared: the cells (types and sources), and for every code cell the kinds of its outputs
    (stdout text, figures, rich results). Error outputs in the stored notebook, and code cells
    stored without the outputs their code produces, are differences too. Text on stderr (warnings,
    progress) is not compared: it may vary from run to run.
    """
    problems = []
    stored_cells = [(c.cell_type, c.source) for c in stored.cells]
    executed_cells = [(c.cell_type, c.source) for c in executed.cells]
    if stored_cells != executed_cells:
        return ["its cells differ from the ones that ran (was it edited while running?)"]
    for index, (old, new) in enumerate(zip(stored.cells, executed.cells)):
        if old.cell_type != "code":
            continue
        if any(o.get("output_type") == "error" for o in old.get("outputs", [])):
            problems.append(f"cell {index} is stored with an error output")
        want = [k for k in output_kinds(new) if k != "stream:stderr"]
        have = [k for k in output_kinds(old) if k != "stream:stderr"]
        if want != have:
            problems.append(f"cell {index} is stored showing {have or 'nothing'}, but its code "
                            f"now shows {want or 'nothing'}")  # fmt: skip
    return problems


def store(name: str, executed: Any) -> None:
    """Write an executed notebook over the stored one (outputs kept, run metadata dropped)."""
    import nbformat

    notebook = copy.deepcopy(executed)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(notebook, TUTORIALS / f"{name}.ipynb")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the stored notebooks; write nothing")  # fmt: skip
    args = parser.parse_args(argv)
    names = args.names or notebook_names()
    unknown = sorted(set(names) - set(notebook_names()))
    if unknown:
        parser.error(f"no tutorial {', '.join(unknown)} (have: {', '.join(notebook_names())})")
    os.environ.update(kernel_environment())
    failed = 0
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"xfer-{name}-") as workdir:
            executed, seconds = execute(name, workdir)
        problems = differences(read(name), executed)
        if args.check:
            status = "up to date" if not problems else "STALE: " + "; ".join(problems)
            failed += bool(problems)
        else:
            store(name, executed)
            status = "stored with outputs"
        print(f"{name}: ran in {seconds:.0f} s; {status}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
