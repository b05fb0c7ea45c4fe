"""Let a plain ``import mxnet`` work on NumPy >= 1.24 once xfer is installed.

MXNet 1.9.1 refers to ``np.bool``, which NumPy removed in 1.24 (NumPy 2 has it again, as
``np.bool_``). A script that imports MXNet before xfer would die inside MXNet. Installing xfer
puts ``xfer-mxnet-numpy-alias.pth`` into site-packages; Python runs its one line at start-up, and
that line is this file's source. It adds a finder that does nothing until the first
``import mxnet``: then it sets ``numpy.bool = numpy.bool_`` (only when NumPy lacks ``bool``),
removes itself, and lets the normal import of MXNet go on. No other import is touched.

This module must stay self-contained (only the standard library, no ``from xfer ...``): the
build copies its source into the ``.pth`` line (see ``setup.py``).
"""

import sys


class _MXNetNumpyAlias:
    """Meta-path finder acting once, on the first ``import mxnet``."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "mxnet":
            if cls in sys.meta_path:
                sys.meta_path.remove(cls)
            import numpy

            if "bool" not in vars(numpy):  # hasattr() would trigger NumPy's FutureWarning
                numpy.bool = numpy.bool_
        return None  # never imports anything itself


# Once per interpreter, however many copies of the .pth site processes (a venv's lib64 -> lib
# symlink makes site read the same site-packages twice; each read defines a new class).
if "mxnet" not in sys.modules and not any(
    getattr(finder, "__name__", "") == "_MXNetNumpyAlias" for finder in sys.meta_path
):
    sys.meta_path.insert(0, _MXNetNumpyAlias)
