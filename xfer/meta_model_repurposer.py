"""Xfer's module path for the meta-model base classes (``from xfer.meta_model_repurposer import MetaModelData``)."""

from xfer.repurposers.meta_model import MetaModelData, MetaModelRepurposer

__all__ = ["MetaModelData", "MetaModelRepurposer"]
