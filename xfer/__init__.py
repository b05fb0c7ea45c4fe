"""xfer: transfer learning for pretrained MXNet and PyTorch networks."""

from xfer._version import __version__

__all__ = ["__version__"]
