"""``import xfer`` itself: light (heavy packages load on first use), and NumPy 2 refused with the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "[]", f"import xfer imported {result.stdout}"
    import xfer  # in this process: the attributes resolve on first use

    assert xfer.zoo.efficientnet_lite0.__module__ == "xfer.zoo.efficientnet"
    assert xfer.datasets.load_digits.__name__ == "load_digits"
    assert xfer.files.ImageFolder.__name__ == "ImageFolder"
    assert xfer.LrRepurposer.__name__ == "LrRepurposer"
    assert {"load", "zoo", "datasets"} <= set(dir(xfer))
    with pytest.raises(AttributeError, match="module 'xfer' has no attribute 'nothing'"):
        xfer.nothing  # noqa: B018


def test_loading_finds_the_builtin_heads_without_importing_them_first(tmp_path):
    import numpy as np

    from xfer.repurposers import LrRepurposer

    x = np.r_[np.zeros((5, 2)), np.ones((5, 2))]
    LrRepurposer(None, None).fit(x, [0] * 5 + [1] * 5).save(tmp_path / "m")
    loaded = run_python(  # a fresh interpreter: nothing registered the heads yet
        "import sys\n"
        "from xfer.serialization import load\n"
        "print('xfer.repurposers' in sys.modules)\n"
        f"print(type(load({str(tmp_path / 'm')!r})).__name__)\n"
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["False", "LrRepurposer"]


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
