"""Amazon Xfer 1.1.0 in its own cached virtual environment, driven through subprocesses.

Xfer is never imported into this package's environment (it is also called ``xfer``): the
runner installs it once into ``<cache>/xfer-1.1.0`` and runs scripts there with ``python -I``
(no ``PYTHONPATH``, no user site), exchanging arrays and results through files. The cache is
``$XFER_BENCHMARK_CACHE`` or ``~/.cache/xfer-benchmarks``; delete it to reinstall.

Thread settings for a measurement go through :func:`thread_environment`, the same variables for
both packages (and ``XFER_NUM_THREADS`` for this one's torch work).
"""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: What Xfer 1.1.0 needs on this stack (../shared/RUNNING_XFER.md): scikit-learn 1.5 still takes
#: ``LogisticRegression(multi_class=...)``, GPy is its GP backend, graphviz is MXNet's pin.
XFER_REQUIREMENTS = (
    "xfer-ml==1.1.0",
    "mxnet==1.9.1",
    "numpy==1.26.4",
    "scikit-learn==1.5.2",
    "GPy==1.13.2",
    "graphviz==0.8.4",
)

#: The variables that set a measurement's threads, for both packages.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MXNET_CPU_WORKER_NTHREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "XFER_NUM_THREADS",
)


def cache_dir() -> Path:
    """Where the Xfer environment and the shared task files live."""
    return Path(os.environ.get("XFER_BENCHMARK_CACHE") or Path.home() / ".cache" / "xfer-benchmarks")


def thread_environment(threads: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with every thread variable set to ``threads``."""
    environment = dict(os.environ if base is None else base)
    environment.update({name: str(threads) for name in THREAD_VARIABLES})
    return environment


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (two runs must not install into one folder at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def xfer_python(log=sys.stderr) -> Path:
    """The interpreter of the Xfer 1.1.0 environment, installed on first use (about 3 minutes).

    The environment counts as installed only once its stamp (the requirement list) is written,
    after ``import xfer`` worked there; an interrupted install is removed and redone.
    """
    venv = cache_dir() / "xfer-1.1.0"
    stamp = venv / "xfer-benchmark-requirements.json"
    python = venv / "bin" / "python"
    wanted = json.dumps(list(XFER_REQUIREMENTS))
    if stamp.is_file() and stamp.read_text() == wanted:
        return python
    with _locked(cache_dir() / "xfer-1.1.0.lock"):
        if stamp.is_file() and stamp.read_text() == wanted:  # another run installed it meanwhile
            return python
        if venv.exists():
            shutil.rmtree(venv)
        print(f"[benchmarks] installing Xfer 1.1.0 into {venv} (once) ...", file=log, flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *XFER_REQUIREMENTS],
            check=True,
            env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_CONSTRAINT")},
        )
        check = "import numpy as np; np.bool = np.bool_; import xfer; print(xfer.__version__)"
        version = subprocess.run(
            [str(python), "-I", "-c", check], check=True, capture_output=True, text=True
        ).stdout.strip()
        if version != "1.1.0":
            raise RuntimeError(f"The Xfer environment at {venv} imports xfer {version!r}, not 1.1.0.")
        stamp.write_text(wanted)
    return python


def run_json(
    command: Sequence[str], environment: Mapping[str, str], timeout: float | None = None
) -> dict[str, Any]:
    """Run ``command`` (a fresh process) and read the JSON object it writes to ``$BENCHMARK_RESULT``."""
    with tempfile.TemporaryDirectory(prefix="xfer-benchmark-") as folder:
        result = Path(folder) / "result.json"
        completed = subprocess.run(
            list(command),
            env={**environment, "BENCHMARK_RESULT": str(result)},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        if completed.returncode != 0 or not result.is_file():
            raise RuntimeError(
                f"{' '.join(command)} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}"
            )
        return json.loads(result.read_text())


def xfer_command(script: Path, *arguments: str) -> list[str]:
    """Run ``script`` under Xfer 1.1.0 in isolation: ``-I`` drops ``PYTHONPATH`` and the script's
    folder from ``sys.path``, so ``import xfer`` is Xfer's and nothing of this package loads."""
    return [str(xfer_python()), "-I", str(script), *arguments]


@functools.cache
def compile_ours() -> None:
    """Write this checkout's bytecode caches (``__pycache__``), once per run.

    ``pip install`` compiles an installed package's modules (Xfer's environment has its caches);
    a checkout on ``PYTHONPATH`` run with ``PYTHONDONTWRITEBYTECODE`` set would instead compile
    every module from source in every fresh process: about 0.1 s of CPU for a head's modules,
    a cost no installed copy has. Python reads existing caches whatever that variable says.
    """
    compileall.compile_dir(ROOT / "xfer", quiet=1)


def ours_command(script: Path, *arguments: str) -> list[str]:
    """Run ``script`` with this package (this checkout first on the path; see :func:`ours_environment`),
    its bytecode compiled as an installed package's is (:func:`compile_ours`)."""
    compile_ours()
    return [sys.executable, str(script), *arguments]


def ours_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment`` with this checkout first on ``PYTHONPATH`` (so ``import xfer`` is ours)."""
    path = environment.get("PYTHONPATH", "")
    return {**environment, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), path) if p)}
