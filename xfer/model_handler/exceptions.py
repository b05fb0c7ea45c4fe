"""Xfer-compatible location of the ModelHandler exceptions."""

from xfer.exceptions import ModelArchitectureError, ModelError

__all__ = ["ModelError", "ModelArchitectureError"]
