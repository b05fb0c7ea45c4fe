"""A script that does ``import mxnet`` before ``import xfer`` works once xfer is installed.

MXNet 1.9.1 uses ``np.bool`` (gone from NumPy 1.24-1.26). Installing xfer adds a ``.pth`` file
whose line sets the alias on the first ``import mxnet``. These tests build the regular and the
editable wheel (as pip does), check that both carry the file at the root of site-packages, and
run fresh interpreters with it.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PTH_NAME = "xfer-mxnet-numpy-alias.pth"


def _run(
    code: str, *site_dirs: Path, isolated: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; the .pth files of ``site_dirs`` are processed first.

    ``isolated`` (the default) starts it with ``-S``: this environment's site-packages are on
    ``sys.path`` but their .pth files are not run, so the copy of the hook that installing xfer
    put there does not mix into the test. ``isolated=False`` starts Python as a user's script is.
    """
    prologue = "import sys, site\n"
    if isolated:
        # -S also skips the venv's own paths: take this process's (their .pth files unread).
        prologue += f"sys.path.extend({site.getsitepackages()!r})\n"
    prologue += "".join(f"site.addsitedir({str(d)!r})\n" for d in site_dirs)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *(["-S"] if isolated else []), "-c", prologue + code],
        capture_output=True,
        text=True,
        cwd=kwargs.get("cwd", "/"),
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """The regular and the editable wheel of this checkout, built by setuptools as pip would."""
    root = tmp_path_factory.mktemp("build")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "xfer", source / "xfer", ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "from setuptools import build_meta as b\n"
        f"print(b.build_wheel({str(root / 'wheel')!r}))\n"
        f"print(b.build_editable({str(root / 'editable')!r}))\n"
    )
    result = _run(script, isolated=False, cwd=str(source))
    assert result.returncode == 0, result.stderr[-3000:]
    return {
        "wheel": next((root / "wheel").glob("*.whl")),
        "editable": next((root / "editable").glob("*.whl")),
    }


def _pth_from(wheel: Path, target: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        assert PTH_NAME in archive.namelist(), f"{wheel.name} lacks {PTH_NAME} at its root"
        target.mkdir(parents=True, exist_ok=True)
        (target / PTH_NAME).write_bytes(archive.read(PTH_NAME))
    return target


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_plain_import_mxnet_works_with_the_installed_pth(wheels, kind, tmp_path):
    site_dir = _pth_from(wheels[kind], tmp_path / "site-packages")
    assert (site_dir / PTH_NAME).read_text(encoding="utf-8") == _expected_line()
    result = _run(
        "import mxnet as mx, numpy as np\n"
        "assert np.bool is np.bool_\n"
        "print(mx.nd.ones((2,)).sum().asscalar())",
        site_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "2.0"


@pytest.mark.slow
def test_without_the_pth_a_plain_import_mxnet_fails_on_this_numpy(tmp_path):
    # The failure the hook exists for; if NumPy ever has np.bool again, the hook is a no-op.
    if _run("import numpy; assert 'bool' not in vars(numpy)").returncode != 0:
        pytest.skip("this NumPy has np.bool: MXNet imports without help")
    result = _run("import mxnet")
    assert result.returncode != 0
    assert "bool" in result.stderr


def _expected_line() -> str:
    """One line: the source of xfer/_mxnet_import_hook.py, executed in a namespace of its own."""
    source = (REPO / "xfer" / "_mxnet_import_hook.py").read_text(encoding="utf-8")
    return f"import sys; exec({source!r}, {{'__name__': '_xfer_mxnet_numpy_alias'}})\n"


def test_hook_touches_nothing_until_mxnet_is_imported(tmp_path):
    (tmp_path / PTH_NAME).write_text(_expected_line(), encoding="utf-8")
    result = _run(
        "import sys\n"
        "assert 'numpy' not in sys.modules, 'the hook imported numpy at start-up'\n"
        "hooks = [f for f in sys.meta_path if getattr(f, '__name__', '') == '_MXNetNumpyAlias']\n"
        "assert len(hooks) == 1, sys.meta_path\n"
        "import json, collections  # other imports pass through\n"
        "assert 'numpy' not in sys.modules\n"
        "print('ok')",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]



def test_hook_is_installed_once_however_often_site_reads_the_pth(tmp_path):
    # A venv whose lib64 is a symlink to lib makes site process the same .pth twice.
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        directory.mkdir()
        (directory / PTH_NAME).write_text(_expected_line(), encoding="utf-8")
    result = _run(
        "hooks = [f for f in sys.meta_path if getattr(f, '__name__', '') == '_MXNetNumpyAlias']\n"
        "assert len(hooks) == 1, sys.meta_path\n"
        "import mxnet\n"
        "assert not any(getattr(f, '__name__', '') == '_MXNetNumpyAlias' for f in sys.meta_path)\n"
        "print('ok')",
        first,
        second,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_installed_xfer_lets_a_script_import_mxnet_first():
    # What a user's script does in this environment, after pip installed xfer.
    if not any((Path(p) / PTH_NAME).is_file() for p in site.getsitepackages()):
        pytest.skip(f"{PTH_NAME} is not installed here: run bash scripts/setup.sh (pip install -e .)")
    result = _run(
        "import mxnet as mx\n"
        "hooks = [f for f in sys.meta_path if getattr(f, '__name__', '') == '_MXNetNumpyAlias']\n"
        "assert hooks == [], sys.meta_path\n"
        "print(mx.nd.ones((3,)).sum().asscalar())",
        isolated=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "3.0"
