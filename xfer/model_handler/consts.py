"""Constants of the ModelHandler (Xfer's ``xfer.model_handler.consts``)."""

from __future__ import annotations

from enum import Enum

# Keys and values of MXNet's symbol JSON (``ModelHandler._get_symbol_dict``), under Xfer's names.
OPERATION = "op"
NO_OP = "null"
LAYER_NAME = "name"
NAME = "name"
NODES = "nodes"
ATTRIBUTES = "attrs"
INPUTS = "inputs"
ARG_NODES = "arg_nodes"
NODE_PTR = "node_row_ptr"
HEADS = "heads"
DATA = "data"
OUTPUT = "_output"


class LayerType(str, Enum):
    """MXNet operator names of common layer types.

    A ``str`` enum: ``LayerType.CONVOLUTION == "Convolution"``, and every method taking a layer
    type accepts the enum or the plain string (case-insensitive).
    """

    FULLYCONNECTED = "FullyConnected"
    CONVOLUTION = "Convolution"
    POOLING = "Pooling"
    ACTIVATION = "Activation"
    BATCHNORM = "BatchNorm"
    DROPOUT = "Dropout"
    FLATTEN = "Flatten"
    SOFTMAXOUTPUT = "SoftmaxOutput"
    RELU = "relu"
    CONCAT = "Concat"
    ELEMWISE_ADD = "elemwise_add"
    PLUS = "_Plus"
    SVMOUTPUT = "SVMOutput"
    LRN = "LRN"
    DATA = "Data"
    MEAN = "mean"
    EMBEDDING = "Embedding"

    def __str__(self) -> str:
        return self.value


# Operators whose output is a loss/output layer: nothing can be added above them.
OUTPUT_LAYER_TYPES = frozenset(
    {
        "SoftmaxOutput",
        "LinearRegressionOutput",
        "LogisticRegressionOutput",
        "MAERegressionOutput",
        "SVMOutput",
        "MakeLoss",
    }
)

# Substrings a new layer's name may not contain (they would be mistaken for parameter or
# output names of another layer). Same list as Xfer.
FORBIDDEN_NAME_PARTS = (
    "_output",
    "_label",
    "_weight",
    "_bias",
    "_moving_mean",
    "_moving_var",
    "_gamma",
    "_beta",
)
