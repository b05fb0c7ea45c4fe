"""``import xfer`` itself: light (heavy packages load on first use), and NumPy 2 refused with the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["mxnet", "torch", "gpytorch", "sklearn", "skimage", "matplotlib", "PIL", "tokenizers",
         "efficientnet_lite_pytorch", "safetensors"]  # fmt: skip


def run_python(code: str, *paths: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, [*paths, ROOT])))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


def test_import_xfer_is_light_and_its_submodules_load_on_first_use():
    result = run_python(
        "import sys, xfer\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "import mxnet  # works after import xfer, as before: the NumPy alias MXNet needs is set\n"
        "print(xfer.zoo.efficientnet_lite0.__module__, xfer.datasets.load_digits.__name__,\n"
        "      xfer.files.ImageFolder.__name__, xfer.metrics.accuracy.__name__,\n"
        "      xfer.LrRepurposer.__name__, 'load' in dir(xfer), 'zoo' in dir(xfer))\n"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[]", f"import xfer imported {lines[0]}"
    assert lines[1] == "xfer.zoo.efficientnet load_digits ImageFolder accuracy LrRepurposer True True"


def test_xfer_load_finds_the_builtin_heads_without_importing_them_first(tmp_path):
    result = run_python(
        "import numpy as np\n"
        "from xfer.repurposers import LrRepurposer\n"
        "x = np.r_[np.zeros((5, 2)), np.ones((5, 2))]; y = [0] * 5 + [1] * 5\n"
        f"LrRepurposer(None, None).fit(x, y).save({str(tmp_path / 'm')!r})\n"
    )
    assert result.returncode == 0, result.stderr
    for code in ("import xfer; print(type(xfer.load({p!r})).__name__)",
                 "from xfer.serialization import load; print(type(load({p!r})).__name__)"):  # fmt: skip
        loaded = run_python(code.format(p=str(tmp_path / "m")))
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout.strip() == "LrRepurposer"


def test_numpy_2_is_refused_at_import_with_the_fix(tmp_path):
    fake = tmp_path / "numpy"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '2.1.0'\n")
    result = run_python("import xfer", tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: xfer needs NumPy < 2 (MXNet 1.9.1 is built against NumPy 1.x)")
    assert "NumPy 2.1.0 is installed" in last and "pip install 'numpy>=1.26,<2'" in last
    assert "pip install -c requirements/constraints.txt PACKAGE" in last


def test_the_constraints_file_keeps_numpy_1_and_setup_and_readme_use_it():
    constraints = (ROOT / "requirements" / "constraints.txt").read_text()
    assert "numpy>=1.26,<2" in constraints.splitlines()
    assert "-c requirements/constraints.txt -e" in (ROOT / "scripts" / "setup.sh").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "pip install -c requirements/constraints.txt" in readme
    assert "export PIP_CONSTRAINT=$PWD/requirements/constraints.txt" in readme


def test_every_public_name_is_exported_lazily():
    import xfer

    assert set(xfer.__all__) == {"__version__", *xfer._EXPORTS}
    for name in xfer.__all__:
        assert getattr(xfer, name) is not None
