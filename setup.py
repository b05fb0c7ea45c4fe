"""Build hook: also install ``xfer-mxnet-numpy-alias.pth`` (see ``xfer/_mxnet_import_hook.py``).

Everything else is configured in ``pyproject.toml``. The ``.pth`` file goes to the root of
site-packages in a regular wheel (through ``build_lib``) and in an editable install (setuptools
writes an editable wheel from its ``install_lib`` directory, where the file is also copied).
"""

from __future__ import annotations

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "xfer-mxnet-numpy-alias.pth"
HOOK_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xfer", "_mxnet_import_hook.py")


def pth_line() -> str:
    """The one line Python runs at start-up: the hook's source, executed in its own namespace."""
    with open(HOOK_SOURCE, encoding="utf-8") as f:
        source = f.read()
    return f"import sys; exec({source!r}, {{'__name__': '_xfer_mxnet_numpy_alias'}})\n"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        targets = [self.build_lib]
        if self.editable_mode:  # the editable wheel is written from install_lib, not build_lib
            targets.append(self.get_finalized_command("install").install_lib)
        for directory in targets:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, PTH_NAME), "w", encoding="utf-8") as f:
                f.write(pth_line())

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH_NAME)]


setup(cmdclass={"build_py": BuildPyWithPth})
