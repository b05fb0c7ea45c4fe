"""ModelHandler for MXNet symbolic graphs (``mx.sym.Symbol`` + parameters)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from xfer import serialization
from xfer._mxnet import MODULE_LOGGER, mx
from xfer.context import devices_from_function, to_mxnet
from xfer.data import as_batches, data_descs
from xfer.exceptions import (
    InvalidArgumentError,
    InvalidTypeError,
    ModelArchitectureError,
    ModelError,
    ModelFileNotFoundError,
    SerializationError,
    layer_not_found,
)
from xfer.model_handler.base import (
    ModelHandler,
    check_pooling,
    pool_spatial,
    register_backend,
    render_digraph,
)
from xfer.model_handler.consts import FORBIDDEN_NAME_PARTS, OUTPUT_LAYER_TYPES, LayerType
from xfer.serialization import atomic_write

logger = logging.getLogger("xfer.model_handler.mxnet")

_PARAMETER_SUFFIXES = ("_weight", "_bias", "_gamma", "_beta", "_moving_mean", "_moving_var")
_XAVIER = dict(rnd_type="gaussian", factor_type="in", magnitude=2)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return next((line for line in text if line.strip() and "Traceback" not in line), str(error))


class _Graph:
    """A parsed view of a symbol's JSON: nodes, heads and the index of each name."""

    def __init__(self, symbol: Any):
        self.json = json.loads(symbol.tojson())
        self.nodes: list[dict] = self.json["nodes"]
        self.heads: list[list[int]] = self.json["heads"]
        self.index = {node["name"]: i for i, node in enumerate(self.nodes)}

    def is_layer(self, i: int) -> bool:
        return self.nodes[i]["op"] != "null"

    def layer_inputs(self, i: int) -> list[list[int]]:
        return [inp for inp in self.nodes[i]["inputs"] if self.is_layer(inp[0])]

    def consumers(self, i: int) -> list[int]:
        return [j for j, node in enumerate(self.nodes) if any(inp[0] == i for inp in node["inputs"])]

    def rebuilt(self, removed: set[int]) -> Any:
        """A new symbol without the ``removed`` nodes (inputs must already avoid them)."""
        keep = [i for i in range(len(self.nodes)) if i not in removed]
        new_index = {old: new for new, old in enumerate(keep)}
        nodes = []
        for old in keep:
            node = dict(self.nodes[old])
            node["inputs"] = [[new_index[i], k, v] for i, k, v in node["inputs"]]
            nodes.append(node)
        graph = {
            "nodes": nodes,
            "arg_nodes": [i for i, node in enumerate(nodes) if node["op"] == "null"],
            "heads": [[new_index[i], k, v] for i, k, v in self.heads],
            "attrs": self.json.get("attrs", {}),
        }
        return mx.sym.load_json(json.dumps(graph))


@register_backend
class MXNetModelHandler(ModelHandler):
    """Inspect, edit and read features from an MXNet symbolic network.

    Parameters
    ----------
    module : mx.mod.Module, tuple, mx.gluon.HybridBlock or ModelHandler
        The source network: a Module (bound, or loaded with ``Module.load``), a
        ``(symbol, arg_params, aux_params)`` tuple, a ``(checkpoint_prefix, epoch)`` tuple, a
        hybridised and initialised Gluon block, or another ModelHandler (copied).
    context_function : callable, default=mx.cpu
        Xfer's device function; with ``num_devices`` it gives the default devices. Any context
        accepted by :func:`xfer.context.resolve_context` works too (``"gpu:0"``).
    num_devices : int, default=1
        Number of devices made with ``context_function``.
    data_name : str, default='data'
        Name of the network's input variable.

    Attributes
    ----------
    symbol : mx.sym.Symbol
        The (edited) graph.
    arg_params, aux_params : dict of str to mx.nd.NDArray
        Parameters of the graph; parameters of newly added layers are absent until trained.
    layer_type_dict : OrderedDict
        Layer name to operator name, in graph order.
    devices : list of mx.Context
        The default devices.

    Examples
    --------
    >>> mh = ModelHandler(module)                                  # doctest: +SKIP
    >>> mh.drop_layer_top(2)                                       # doctest: +SKIP
    >>> mh.add_layer_top([mx.sym.FullyConnected(num_hidden=5, name="fc_new"),
    ...                   mx.sym.SoftmaxOutput(name="softmax")])   # doctest: +SKIP
    >>> features, labels = mh.get_layer_output(images, ["fc1"])    # doctest: +SKIP
    """

    backend = "mxnet"

    def __init__(
        self,
        module: Any,
        context_function: Any = mx.cpu,
        num_devices: int = 1,
        data_name: str = "data",
        *,
        arg_params: dict | None = None,
        aux_params: dict | None = None,
    ):
        if not isinstance(data_name, str):
            raise InvalidTypeError(f"data_name must be a string, got {data_name!r}.")
        self.context_function = context_function
        self.num_devices = num_devices
        self.devices = to_mxnet(devices_from_function(context_function, num_devices))
        self.data_name = data_name
        self.input_shape: tuple | None = None
        self._frozen: set[str] = set()
        symbol, args, auxs = self._read_model(module, arg_params, aux_params)
        self.symbol = symbol
        self.arg_params = dict(args)
        self.aux_params = dict(auxs)
        if data_name not in symbol.list_arguments():
            raise ModelError(
                f"The model has no input named {data_name!r}; its inputs and parameters are "
                f"{symbol.list_arguments()[:10]}. Pass data_name=... with the name of its input."
            )
        self._check_parameter_consistency()

    # ------------------------------------------------------------------ construction
    @classmethod
    def accepts(cls, model: Any) -> bool:
        """Whether ``model`` is an MXNet model this backend reads.

        Parameters
        ----------
        model : object
            What was passed to ``ModelHandler(...)``.

        Returns
        -------
        bool
        """
        if isinstance(model, (mx.mod.Module, mx.sym.Symbol, mx.gluon.HybridBlock)):
            return True
        if isinstance(model, tuple) and model:
            if isinstance(model[0], mx.sym.Symbol):
                return True
            return len(model) == 2 and isinstance(model[0], (str, Path)) and isinstance(model[1], int)
        return False

    def _read_model(self, module: Any, arg_params: dict | None, aux_params: dict | None):
        if isinstance(module, MXNetModelHandler):
            self._frozen = set(module._frozen)
            self.input_shape = module.input_shape
            return module.symbol, module.arg_params, module.aux_params
        if isinstance(module, mx.mod.Module):
            if module.binded and module.params_initialized:
                args, auxs = module.get_params()
            elif getattr(module, "_arg_params", None) is not None:  # Module.load(...), not bound
                args, auxs = module._arg_params, module._aux_params or {}
            else:
                # As in Xfer: a graph without weights can be inspected and edited; reading
                # features from it (or training it) says which parameters have no values.
                args, auxs = {}, {}
            if module.binded:
                for desc in module.data_shapes:
                    if desc.name == self.data_name:
                        self.input_shape = tuple(desc.shape[1:])
            return module.symbol, args, auxs
        if isinstance(module, mx.gluon.HybridBlock):
            return self._read_gluon(module)
        if isinstance(module, mx.sym.Symbol):
            return module, arg_params or {}, aux_params or {}
        if isinstance(module, tuple) and module and isinstance(module[0], mx.sym.Symbol):
            if len(module) not in (2, 3):
                raise InvalidArgumentError(
                    "A model tuple must be (symbol, arg_params) or (symbol, arg_params, aux_params)."
                )
            args = module[1] or {}
            auxs = module[2] if len(module) == 3 and module[2] is not None else {}
            return module[0], args, auxs
        if isinstance(module, tuple) and len(module) == 2:
            symbol, args, auxs = _load_checkpoint_files(str(module[0]), module[1])
            return symbol, args, auxs
        raise InvalidTypeError(f"Cannot read an MXNet model from {type(module).__name__}.")

    def _read_gluon(self, block: Any):
        symbol = block(mx.sym.var(self.data_name))
        if isinstance(symbol, (list, tuple)):
            symbol = mx.sym.Group(list(symbol))
        params = {p.name: p for p in block.collect_params().values()}
        args, auxs = {}, {}
        try:
            for name in symbol.list_arguments():
                if name in params:
                    args[name] = params[name].data().copy()
            for name in symbol.list_auxiliary_states():
                if name in params:
                    auxs[name] = params[name].data().copy()
        except mx.gluon.parameter.DeferredInitializationError as error:
            raise ModelError(
                "The Gluon block's parameters are not initialised yet: call block.initialize() and "
                "run one forward pass (block(x)) before building a ModelHandler."
            ) from error
        return symbol, args, auxs

    @classmethod
    def checkpoint_files(cls, prefix: Any, epoch: int = 0) -> list[str]:
        """``<prefix>-symbol.json`` and ``<prefix>-<epoch:04d>.params``.

        Parameters
        ----------
        prefix : str or path-like
        epoch : int, default=0

        Returns
        -------
        list of str
        """
        return [f"{prefix}-symbol.json", f"{prefix}-{int(epoch):04d}.params"]

    @classmethod
    def open_checkpoint(
        cls, prefix: Any, epoch: int = 0, model: Any = None, **kwargs: Any
    ) -> MXNetModelHandler | None:
        """The MXNet checkpoint at ``prefix`` when its symbol file exists and no ``model`` is given.

        Parameters
        ----------
        prefix : str or path-like
        epoch : int, default=0
        model : object, optional
        **kwargs
            Passed to :meth:`load_checkpoint`.

        Returns
        -------
        ModelHandler or None
        """
        if model is not None or not Path(cls.checkpoint_files(prefix, epoch)[0]).is_file():
            return None
        return cls.load_checkpoint(prefix, epoch, **kwargs)

    @classmethod
    def load_checkpoint(cls, prefix: str, epoch: int = 0, **kwargs: Any) -> MXNetModelHandler:
        """Load ``<prefix>-symbol.json`` and ``<prefix>-<epoch:04d>.params``.

        Parameters
        ----------
        prefix : str
            Path prefix of the checkpoint.
        epoch : int, default=0
            Epoch number of the parameter file.
        **kwargs
            Passed to the constructor (``context_function``, ``num_devices``...).

        Returns
        -------
        MXNetModelHandler

        Raises
        ------
        ModelFileNotFoundError
            A file is missing.
        SerializationError
            A file is corrupt, or its parameters do not fit its graph.
        """
        return cls((str(prefix), int(epoch)), **kwargs)

    # ------------------------------------------------------------------ inspection
    @property
    def layer_names(self) -> list[str]:
        """Names of the layers (operator nodes), in graph order, output layer included."""
        graph = _Graph(self.symbol)
        return [node["name"] for i, node in enumerate(graph.nodes) if graph.is_layer(i)]

    @property
    def layer_type_dict(self) -> OrderedDict:
        """Layer name to operator name (``'Convolution'``), in graph order."""
        graph = _Graph(self.symbol)
        return OrderedDict((n["name"], n["op"]) for i, n in enumerate(graph.nodes) if graph.is_layer(i))

    def _get_layer_type_dict(self) -> OrderedDict:
        """:attr:`layer_type_dict` (Xfer's private helper of the same name)."""
        return self.layer_type_dict

    @staticmethod
    def _get_symbol_dict(symbol: Any) -> dict:
        """The graph of ``symbol`` as MXNet's JSON dictionary (Xfer's private helper)."""
        return json.loads(symbol.tojson())

    def _check_layer_names(self, layer_names: Any, argument: str = "layer_names") -> list[str]:
        if isinstance(layer_names, str) or not isinstance(layer_names, (list, tuple)):
            raise InvalidTypeError(
                f"{argument} must be a list of layer names, got {layer_names!r}; for one layer "
                f"pass [{layer_names!r}]." if isinstance(layer_names, str) else
                f"{argument} must be a list of layer names, got {type(layer_names).__name__}."
            )
        known = self.layer_type_dict
        for name in layer_names:
            if name not in known:
                raise layer_not_found(name, known)
        return list(layer_names)

    def get_layer_type(self, layer_name: str) -> str:
        """Operator name of a layer (``'Convolution'``).

        Parameters
        ----------
        layer_name : str
            A layer of the model.

        Returns
        -------
        str

        Raises
        ------
        LayerNotFoundError
            Unknown layer (a ``ValueError``); the message lists the closest names.
        """
        types = self.layer_type_dict
        if layer_name not in types:
            raise layer_not_found(layer_name, types)
        return types[layer_name]

    def get_layer_names_matching_type(self, layer_type: str | LayerType) -> list[str]:
        """Names of the layers whose operator is ``layer_type`` (case-insensitive).

        Parameters
        ----------
        layer_type : str or LayerType
            An operator name (``"Convolution"``, ``"fullyconnected"``) or a :class:`LayerType`.

        Returns
        -------
        list of str
            In graph order.
        """
        wanted = str(layer_type.value if isinstance(layer_type, LayerType) else layer_type).lower()
        return [name for name, op in self.layer_type_dict.items() if op.lower() == wanted]

    def get_layer_parameters(self, layer_names: list[str]) -> list[str]:
        """Names of the parameters (arguments and auxiliary states) of exactly these layers.

        Matching is by graph structure, never by name prefix: ``['conv1']`` does not return the
        parameters of ``conv10``. A layer that is not in the graph (for instance one removed by
        ``drop_layer_bottom``) has no parameters: it contributes none, with a logged warning,
        as in Xfer.

        Parameters
        ----------
        layer_names : list of str
            Layers of the model.

        Returns
        -------
        list of str
            Parameter names (``conv1_weight``, ``bn1_moving_mean``...), in graph order.

        Raises
        ------
        InvalidTypeError
            ``layer_names`` is not a list (a single name must be given as ``[name]``).
        """
        graph = _Graph(self.symbol)
        names: list[str] = []
        for layer in self._present_layers(layer_names):
            for inp in graph.nodes[graph.index[layer]]["inputs"]:
                node = graph.nodes[inp[0]]
                if node["op"] == "null" and node["name"] != self.data_name and not node["name"].endswith("_label"):
                    if node["name"] not in names:
                        names.append(node["name"])
        return names

    # ------------------------------------------------------------------ editing
    def _check_count(self, num_layers: Any, argument: str) -> int:
        if isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
            raise InvalidArgumentError(f"{argument} must be a positive integer, got {num_layers!r}.")
        return int(num_layers)

    def _single_head(self, graph: _Graph) -> int:
        if len(graph.heads) != 1:
            names = [graph.nodes[h[0]]["name"] for h in graph.heads]
            raise ModelArchitectureError(
                f"The model has {len(names)} outputs ({names}); layers can only be dropped from or "
                "added to a model with one output. Pick one with update_sym(symbol.get_internals()"
                "['<layer>_output'])."
            )
        return graph.heads[0][0]

    def drop_layer_top(self, num_layers_to_drop: int = 1) -> None:
        """Remove the ``num_layers_to_drop`` layers nearest the output.

        Parameters
        ----------
        num_layers_to_drop : int, default=1
            How many layers.

        Raises
        ------
        ModelArchitectureError
            The model has several outputs, or a layer to drop has several input layers (the new
            output would be ambiguous).
        ModelError
            Dropping as many layers as the model has, or more.
        """
        count = self._check_count(num_layers_to_drop, "num_layers_to_drop")
        available = len(self.layer_names)
        if count >= available:
            raise ModelError(
                f"Cannot drop {count} layer(s) from the top of a model with {available} layers: at "
                f"most {available - 1} can be dropped."
            )
        symbol = self.symbol
        for _ in range(count):
            graph = _Graph(symbol)
            top = self._single_head(graph)
            inputs = graph.layer_inputs(top)
            name = graph.nodes[top]["name"]
            if len(inputs) != 1:
                sources = [graph.nodes[i[0]]["name"] for i in inputs]
                raise ModelArchitectureError(
                    f"Cannot drop layer {name!r}: it has {len(inputs)} input layers ({sources}), so "
                    "the new output would be ambiguous. Choose the new output explicitly with "
                    "update_sym(handler.symbol.get_internals()['<layer>_output'])."
                )
            symbol = _node_output(symbol, graph.nodes[inputs[0][0]]["name"], inputs[0][1])
        self.update_sym(symbol)

    def drop_layer_bottom(self, num_layers_to_drop: int = 1) -> None:
        """Remove the ``num_layers_to_drop`` layers nearest the input; the next layer reads the input.

        Parameters
        ----------
        num_layers_to_drop : int, default=1
            How many layers.

        Raises
        ------
        ModelArchitectureError
            The input feeds several layers, or the layer to drop feeds a layer that also reads
            other layers (a branch).
        ModelError
            Dropping as many layers as the model has, or more.
        """
        count = self._check_count(num_layers_to_drop, "num_layers_to_drop")
        available = len(self.layer_names)
        if count >= available:
            raise ModelError(
                f"Cannot drop {count} layer(s) from the bottom of a model with {available} layers: "
                f"at most {available - 1} can be dropped."
            )
        symbol = self.symbol
        for _ in range(count):
            graph = _Graph(symbol)
            data = graph.index[self.data_name]
            readers = [j for j in graph.consumers(data) if graph.is_layer(j)]
            if len(readers) != 1:
                names = [graph.nodes[j]["name"] for j in readers]
                raise ModelArchitectureError(
                    f"The input {self.data_name!r} feeds {len(readers)} layers ({names}): the bottom "
                    "layer is ambiguous, so it cannot be dropped."
                )
            bottom = readers[0]
            name = graph.nodes[bottom]["name"]
            for j in graph.consumers(bottom):
                for inp in graph.nodes[j]["inputs"]:
                    if inp[0] == bottom:
                        if inp[1] != 0:
                            raise ModelArchitectureError(
                                f"Cannot drop layer {name!r}: layer {graph.nodes[j]['name']!r} reads "
                                f"its output {inp[1]}, which the input cannot replace."
                            )
                        inp[0], inp[2] = data, 0
            own_params = {
                inp[0] for inp in graph.nodes[bottom]["inputs"]
                if inp[0] != data and not graph.is_layer(inp[0]) and len(graph.consumers(inp[0])) == 1
            }
            symbol = graph.rebuilt({bottom} | own_params)
        self.update_sym(symbol)

    def _free_input(self, layer: Any, position: int) -> str:
        if not isinstance(layer, mx.sym.Symbol):
            raise InvalidTypeError(
                f"Layer {position} of the list is a {type(layer).__name__}, not an mx.sym.Symbol: "
                "build layers like mx.sym.FullyConnected(num_hidden=10, name='fc_new')."
            )
        if len(layer.list_outputs()) != 1:
            raise InvalidArgumentError(f"Layer {position} of the list has several outputs; add one-output layers.")
        candidates = [
            a for a in layer.list_arguments()
            if not a.endswith(_PARAMETER_SUFFIXES) and not a.endswith("_label")
        ]
        if len(candidates) != 1:
            raise InvalidArgumentError(
                f"Layer {position} of the list must have exactly one free input, but it has "
                f"{candidates}. Create it without connecting it, e.g. mx.sym.Activation("
                "act_type='relu', name='relu_new')."
            )
        return candidates[0]

    def _check_new_layers(self, layer_list: Any) -> list:
        if isinstance(layer_list, mx.sym.Symbol):  # one layer, as Xfer also accepts
            layer_list = [layer_list]
        if not isinstance(layer_list, (list, tuple)):
            raise InvalidTypeError(
                "layer_list must be a list of unconnected mx.sym layers, e.g. "
                "[mx.sym.FullyConnected(num_hidden=10, name='fc_new')]."
            )
        if not layer_list:
            raise InvalidArgumentError("layer_list is empty: give at least one layer to add.")
        seen: set[str] = set()
        for position, layer in enumerate(layer_list):
            self._free_input(layer, position)
            graph = _Graph(layer)
            for i, node in enumerate(graph.nodes):
                if graph.is_layer(i):
                    self._validate_layer_name(node["name"], seen)
                    seen.add(node["name"])
        return list(layer_list)

    def _validate_layer_name(self, name: str, taken: Iterable[str] = ()) -> None:
        """Raise ``ValueError`` for a new layer's name that is taken (by a layer, a parameter or
        the input of the model, or in ``taken``) or holds a reserved part such as ``_weight``
        (Xfer's private helper of the same name)."""
        bad = [part for part in FORBIDDEN_NAME_PARTS if part in name]
        if bad:
            raise InvalidArgumentError(
                f"Layer name {name!r} contains {bad[0]!r}, which is reserved for parameter "
                "and output names; rename the layer."
            )
        existing = set(self.layer_names) | set(self.symbol.list_arguments()) | set(
            self.symbol.list_auxiliary_states()
        )
        if name in existing or name in set(taken):
            raise InvalidArgumentError(
                f"A layer named {name!r} already exists in the model; give the new layer a "
                "unique name."
            )

    def add_layer_top(self, layer_list: list) -> None:
        """Stack unconnected ``mx.sym`` layers (a list, or one layer) on the output, in list order.

        Parameters
        ----------
        layer_list : list of mx.sym.Symbol or mx.sym.Symbol
            Layers built without their data input (``mx.sym.FullyConnected(num_hidden=5,
            name="fc_new")``); the first reads the model's output.

        Raises
        ------
        ModelError
            The model ends in an output layer (``SoftmaxOutput``...): drop it first.
        InvalidArgumentError
            A new layer's name clashes with the model or contains a reserved part.
        """
        graph = _Graph(self.symbol)
        top = graph.nodes[self._single_head(graph)]
        if top["op"] in OUTPUT_LAYER_TYPES:
            raise ModelError(
                f"The model ends in the output layer {top['name']!r} ({top['op']}); nothing can be "
                "added above it. Drop it first with drop_layer_top()."
            )
        layers = self._check_new_layers(layer_list)
        symbol = self.symbol
        for position, layer in enumerate(layers):
            symbol = layer(**{self._free_input(layer, position): symbol})
        self.update_sym(symbol)

    def add_layer_bottom(self, layer_list: list) -> None:
        """Insert unconnected ``mx.sym`` layers (a list, or one layer) between the input and the
        first layer, in list order.

        The first layer of the list reads the input; the model's old first layer reads the last.

        Parameters
        ----------
        layer_list : list of mx.sym.Symbol or mx.sym.Symbol
            Layers built without their data input.

        Raises
        ------
        ModelArchitectureError, InvalidArgumentError
            The model's input feeds several layers, or a new name clashes with the model.
        """
        layers = self._check_new_layers(layer_list)
        chain = mx.sym.var(self.data_name)
        for position, layer in enumerate(layers):
            chain = layer(**{self._free_input(layer, position): chain})
        self.update_sym(self.symbol(**{self.data_name: chain}))

    def update_sym(self, new_symbol: Any) -> None:
        """Replace the graph; parameters the new graph does not use are dropped.

        Parameters
        ----------
        new_symbol : mx.sym.Symbol
            The new graph.

        Raises
        ------
        InvalidTypeError
            ``new_symbol`` is not a symbol.
        """
        if not isinstance(new_symbol, mx.sym.Symbol):
            raise InvalidTypeError(f"new_symbol must be an mx.sym.Symbol, got {type(new_symbol).__name__}.")
        arguments = set(new_symbol.list_arguments())
        auxiliary = set(new_symbol.list_auxiliary_states())
        self.symbol = new_symbol
        self.arg_params = {k: v for k, v in self.arg_params.items() if k in arguments}
        self.aux_params = {k: v for k, v in self.aux_params.items() if k in auxiliary}
        self._frozen &= set(self.layer_names)

    # ------------------------------------------------------------------ parameters
    def _parameter_shapes(self) -> dict[str, tuple]:
        shapes = {k: tuple(v.shape) for k, v in self.arg_params.items()}
        shapes.update({k: tuple(v.shape) for k, v in self.aux_params.items()})
        return shapes

    def _check_parameter_consistency(self) -> None:
        """Parameters must fit the graph (each other's shapes); extra names are refused."""
        known = set(self.symbol.list_arguments()) | set(self.symbol.list_auxiliary_states())
        extra = sorted((set(self.arg_params) | set(self.aux_params)) - known)
        if extra:
            logger.debug("Ignoring parameters not used by the graph: %s", extra[:10])
            self.arg_params = {k: v for k, v in self.arg_params.items() if k in known}
            self.aux_params = {k: v for k, v in self.aux_params.items() if k in known}
        shapes = self._parameter_shapes()
        if self.input_shape is not None:
            try:
                self.symbol.infer_shape(**{self.data_name: (1, *self.input_shape)}, **shapes)
            except mx.base.MXNetError as error:
                raise SerializationError(
                    "The parameters do not fit the graph (a parameter shape mismatch): "
                    f"{_first_line(error)}. Load parameters saved with this graph."
                ) from None
            return
        problems = _declared_shape_problems(_Graph(self.symbol), shapes)
        if problems:
            raise SerializationError(
                "The parameters do not fit the graph (a parameter shape mismatch): "
                + "; ".join(problems[:5]) + ". Load parameters saved with this graph."
            )

    def _check_shapes_for_input(
        self, symbol: Any, data_shape: tuple, missing_ok: bool = False, ignore: Any = ()
    ) -> dict:
        # ``ignore``: parameters about to be re-initialised, whose stored values do not matter
        known = (set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())) - set(ignore)
        stored = {k: v for k, v in self._parameter_shapes().items() if k in known}
        try:
            # MXNet's infer_shape prints its arguments to stdout on failure; the error says enough.
            with contextlib.redirect_stdout(io.StringIO()):
                arg_shapes, out_shapes, aux_shapes = symbol.infer_shape(**{self.data_name: data_shape}, **stored)
        except mx.base.MXNetError as error:
            given, built = tuple(data_shape[1:]), self.input_shape
            hint = ""
            if built is not None and len(given) + 1 == len(built) and given == tuple(built[1:]):
                hint = " The channel axis is missing: give images as N x C x H x W."
            elif built is not None and len(given) == len(built) and given == (*built[1:], built[0]):
                hint = " The channel axis is last: give images as N x C x H x W (np.moveaxis(x, -1, 1))."
            raise InvalidArgumentError(
                f"Input of shape {given} per example does not fit the model: "
                f"{_first_line(error)}"
                + (f". The model was built for inputs of shape {built}." if built else ".")
                + hint
            ) from None
        expected = dict(zip(symbol.list_arguments(), arg_shapes))
        expected.update(zip(symbol.list_auxiliary_states(), aux_shapes))
        have = {k: v for k, v in self._parameter_shapes().items() if k not in set(ignore)}
        mismatched = [
            f"{name}: stored {have[name]}, graph needs {shape}"
            for name, shape in expected.items()
            if name in have and tuple(have[name]) != tuple(shape)
        ]
        if mismatched:
            raise SerializationError(
                "Parameter shape mismatch: " + "; ".join(mismatched[:5])
                + ". The parameters do not belong to this graph or this input shape."
            )
        missing = [
            name for name in expected
            if name not in have and name != self.data_name and not name.endswith("_label")
        ]
        if missing and not missing_ok:
            raise ModelError(
                f"Parameters {missing[:5]} have no values (layers added and not trained yet). Train "
                "the model first (get_module(...).fit(...)), then update the handler from it."
            )
        return dict(zip(symbol.list_outputs(), out_shapes))

    # ------------------------------------------------------------------ features
    def get_layer_output(
        self,
        data_iterator: Any,
        layer_names: list[str],
        context: Any = None,
        batch_size: int | None = None,
        verbose: bool = False,
        pooling: str | None = None,
    ) -> tuple[OrderedDict, np.ndarray | None]:
        """Outputs of the given layers for every example, flattened per example.

        One graph, pruned after the deepest requested layer, is bound once per call; batches
        stream through it into preallocated arrays and padding is removed.

        Parameters
        ----------
        data_iterator : numpy.ndarray or mx.io.DataIter
            Examples along the first axis (``N x C x H x W`` for a CNN), or an iterator (reset
            first; labels optional). Xfer's name, kept for its keyword calls.
        layer_names : list of str
            Layers to read, returned in this order.
        context : str, mx.Context or list, optional
            Devices for this call (default: the handler's ``devices``); a list splits each batch.
        batch_size : int, optional
            Batch size for array data (default 64).
        verbose : bool or int, default=False
            Show a progress bar.
        pooling : {None, 'avg'}, default=None
            ``'avg'`` averages each feature map over its spatial axes before flattening
            (``N x C x H x W -> N x C``, batch by batch, so large maps are never stored);
            dense outputs are unchanged. None keeps every value (Xfer's behaviour).

        Returns
        -------
        features : OrderedDict of str to numpy.ndarray
            ``N x D_layer`` float32 array per layer.
        labels : numpy.ndarray or None
            The iterator's labels, or None when the data has none. Labels that are all whole
            numbers (class indices; MXNet iterators carry them as float32) come back as int64, as
            in Xfer; others unchanged (Xfer truncated them).

        Raises
        ------
        LayerNotFoundError
            Unknown layer name.
        InvalidTypeError, InvalidArgumentError
            Unreadable data, or data whose shape does not fit the model.
        DeviceUnavailableError
            A GPU context on a machine or MXNet build without one.
        """
        layer_names = self._check_layer_names(layer_names)
        if not layer_names:
            raise InvalidArgumentError("layer_names is empty: give at least one layer.")
        check_pooling(pooling)
        contexts = to_mxnet(context, default=self.devices)
        batches = as_batches(data_iterator, batch_size=batch_size)
        if batches.batch_size < len(contexts):
            raise InvalidArgumentError(
                f"A batch of {batches.batch_size} cannot be split over {len(contexts)} devices: use a "
                "larger batch_size or fewer devices."
            )
        data_shape = (batches.batch_size, *batches.sample_shape)
        module = self._inference_module(layer_names, data_shape, contexts)
        # Parameters are copied in on every call: the handler's arg_params may have changed.
        module.set_params(self.arg_params, self.aux_params, allow_missing=False, allow_extra=True)

        results: list[np.ndarray] | None = None
        chunks: list[list[np.ndarray]] = [[] for _ in layer_names]
        labels: list[np.ndarray] = []
        filled = 0
        progress = _progress(batches, verbose, "Extracting features")
        for batch in progress:
            module.forward(mx.io.DataBatch(data=[mx.nd.array(batch.data)], label=None), is_train=False)
            values = [pool_spatial(out.asnumpy(), pooling) for out in module.get_outputs()]
            valid = batch.num_valid
            if batches.num_examples is not None:
                if results is None:
                    results = [
                        np.empty((batches.num_examples, int(np.prod(v.shape[1:]))), dtype=np.float32)
                        for v in values
                    ]
                for target, value in zip(results, values):
                    target[filled : filled + valid] = value[:valid].reshape(valid, -1)
            else:
                for chunk, value in zip(chunks, values):
                    chunk.append(value[:valid].reshape(valid, -1).astype(np.float32, copy=False))
            if batch.labels is not None:
                labels.append(batch.labels)
            filled += valid
        if results is None:
            results = [np.concatenate(chunk) if chunk else np.empty((0, 0), np.float32) for chunk in chunks]
        else:
            results = [r[:filled] for r in results]
        self.input_shape = tuple(batches.sample_shape)
        label_array = np.concatenate(labels) if labels and batches.has_labels else None
        return OrderedDict(zip(layer_names, results)), _whole_numbers_as_int(label_array)

    def _inference_module(self, layer_names: list[str], data_shape: tuple, contexts: list) -> Any:
        """A Module of the graph pruned to ``layer_names``, bound for inference.

        The last one is kept: binding (and MKLDNN's first-run set-up of a new executor) costs as
        much as a few batches, and users extract train and test features with the same call.
        """
        key = (self.symbol.tojson(), tuple(layer_names), data_shape, tuple(str(c) for c in contexts))
        cached = getattr(self, "_bound_inference", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        outputs = mx.sym.Group([_node_output(self.symbol, name) for name in layer_names])
        self._check_shapes_for_input(outputs, data_shape)
        label_names = [a for a in outputs.list_arguments() if a.endswith("_label")]
        module = mx.mod.Module(outputs, data_names=[self.data_name], label_names=label_names, context=contexts,
                               logger=MODULE_LOGGER)
        label_shapes = None
        if label_names:
            arg_shapes, _, _ = outputs.infer_shape(**{self.data_name: data_shape})
            shapes = dict(zip(outputs.list_arguments(), arg_shapes))
            label_shapes = [(name, shapes[name]) for name in label_names]
        # MXNet 1.9.1's MKLDNN subgraph fusion (conv+bn+relu, fc+relu) returns wrong values for a
        # fused layer that is also read as an output, so it is off when several layers are read.
        with _subgraph_fusion_disabled(len(layer_names) > 1):
            module.bind(data_shapes=[(self.data_name, data_shape)], label_shapes=label_shapes, for_training=False)
        self._bound_inference = (key, module)
        return module

    # ------------------------------------------------------------------ training module
    def get_module(
        self,
        iterator: Any,
        fixed_layer_parameters: list[str] | None = None,
        random_layer_parameters: list[str] | None = None,
        *,
        fixed_layers: list[str] | None = None,
        random_layers: list[str] | None = None,
        context: Any = None,
        initializer: Any = None,
    ) -> Any:
        """A bound, initialised ``mx.mod.Module`` of the graph, ready to train.

        Parameters
        ----------
        iterator : mx.io.DataIter
            Gives the data and label shapes.
        fixed_layer_parameters, random_layer_parameters : list of str, optional
            Xfer's spelling: parameter names to keep fixed / to re-initialise. Names the model
            does not have are ignored with a logged warning, as in Xfer.
        fixed_layers, random_layers : list of str, optional
            The same by layer name. Layers frozen with :meth:`freeze` are fixed too. Fixed
            BatchNorm layers use their stored statistics and never update them.
        context : optional
            Devices to train on (default: the handler's ``devices``); a list trains data-parallel.
        initializer : mx.init.Initializer, optional
            For new and re-initialised parameters (default: Xavier, gaussian, in, magnitude 2).

        Returns
        -------
        mx.mod.Module
            Bound to the iterator's shapes and initialised; ``module.fit(iterator, ...)`` trains
            it without binding or initialising again.

        Raises
        ------
        InvalidTypeError
            ``iterator`` is not an ``mx.io.DataIter``.
        """
        if not isinstance(iterator, mx.io.DataIter):
            raise InvalidTypeError(
                f"get_module needs an mx.io.DataIter for the data and label shapes, got "
                f"{type(iterator).__name__}; wrap arrays with mx.io.NDArrayIter(data, label, batch_size)."
            )
        known = set(self.symbol.list_arguments()) | set(self.symbol.list_auxiliary_states())
        fixed_layer_parameters = self._prune_parameters(fixed_layer_parameters, "fixed_layer_parameters", known)
        random_layer_parameters = self._prune_parameters(random_layer_parameters, "random_layer_parameters", known)
        fixed_layer_set = set(self._frozen) | set(self._check_layer_names(fixed_layers or [], "fixed_layers"))
        fixed = set(fixed_layer_parameters or []) | set(self.get_layer_parameters(sorted(fixed_layer_set)))
        random = set(random_layer_parameters or []) | set(
            self.get_layer_parameters(self._check_layer_names(random_layers or [], "random_layers"))
        )
        fixed -= random
        # In the order given (Xfer's), then the parameters of fixed layers in graph order.
        ordered = list(dict.fromkeys([*(fixed_layer_parameters or []), *self.symbol.list_arguments()]))
        fixed_bn = [name for name in fixed_layer_set if self.layer_type_dict[name] == "BatchNorm"]
        fixed_bn += [
            layer for layer in self.get_layer_names_matching_type("BatchNorm")
            if layer not in fixed_bn and set(self.get_layer_parameters([layer])) <= fixed
            and self.get_layer_parameters([layer])
        ]
        symbol = _with_global_stats(self.symbol, fixed_bn)
        arguments = set(symbol.list_arguments())
        data_shapes = data_descs(iterator.provide_data)
        label_shapes = data_descs(iterator.provide_label) or None
        label_names = [desc.name for desc in label_shapes or []]
        module = ReadyModule(
            symbol,
            data_names=[desc.name for desc in data_shapes],
            label_names=label_names,
            context=to_mxnet(context, default=self.devices),
            fixed_param_names=[name for name in ordered if name in fixed and name in arguments],
            logger=MODULE_LOGGER,
        )
        for desc in data_shapes:  # a shape the graph cannot take: a clear error, not MXNet's
            if desc.name == self.data_name:
                self._check_shapes_for_input(
                    symbol, tuple(desc.shape), missing_ok=True, ignore=random
                )
        module.bind(data_shapes=data_shapes, label_shapes=label_shapes)
        module.init_params(
            initializer=initializer or mx.init.Xavier(**_XAVIER),
            arg_params={k: v for k, v in self.arg_params.items() if k not in random},
            aux_params={k: v for k, v in self.aux_params.items() if k not in random},
            allow_missing=True,
            force_init=True,
        )
        return module

    # ------------------------------------------------------------------ save, show
    def save_checkpoint(self, prefix: str, epoch: int = 0) -> None:
        """Write ``<prefix>-symbol.json`` and ``<prefix>-<epoch:04d>.params`` (MXNet's format).

        Both files go into place together (:func:`xfer.serialization.saving`): interrupted at
        any moment, the prefix keeps the old checkpoint or gets the new one, never a mix.

        Parameters
        ----------
        prefix : str
            Path prefix of the files.
        epoch : int, default=0
            Epoch number in the parameter file's name.

        Raises
        ------
        ModelSaveError
            The folder cannot be created or written.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or not 0 <= epoch <= 9999:
            raise InvalidArgumentError(f"epoch must be an integer in 0..9999, got {epoch!r}.")
        prefix = os.fspath(serialization.save_prefix(prefix))
        params = {f"arg:{k}": v for k, v in self.arg_params.items()}
        params.update({f"aux:{k}": v for k, v in self.aux_params.items()})
        with serialization.saving(Path(prefix).parent):
            atomic_write(f"{prefix}-{int(epoch):04d}.params", lambda p: mx.nd.save(p, params))
            self.save_symbol(prefix)

    def save_symbol(self, model_name: str) -> None:
        """Write the graph to ``<model_name>-symbol.json`` (atomically).

        Parameters
        ----------
        model_name : str
            Path prefix of the file.
        """
        atomic_write(f"{model_name}-symbol.json", self.symbol.save)

    def visualize_net(self, filename: str | None = None, format: str = "pdf") -> Any:
        """The graph as a ``graphviz.Digraph``; with ``filename``, also rendered to a file.

        Parameters
        ----------
        filename : str, optional
            Render to this file (needs graphviz's ``dot`` program).
        format : str, default="pdf"
            File format (``"pdf"``, ``"svg"``, ``"png"``...).

        Returns
        -------
        graphviz.Digraph

        Raises
        ------
        MissingDependencyError
            ``filename`` was given and graphviz's ``dot`` program is not installed.
        """
        shape = {self.data_name: (1, *self.input_shape)} if self.input_shape else None
        try:
            digraph = mx.viz.plot_network(self.symbol, shape=shape, hide_weights=True, save_format=format)
        except mx.base.MXNetError:
            digraph = mx.viz.plot_network(self.symbol, hide_weights=True, save_format=format)
        if filename is not None:
            render_digraph(digraph, filename)
        return digraph

    def __repr__(self) -> str:
        layers = self.layer_names
        return f"MXNetModelHandler({len(layers)} layers: {layers[0]} ... {layers[-1]})"


# ---------------------------------------------------------------------- helpers
class ReadyModule(mx.mod.Module):
    """The ``mx.mod.Module`` :meth:`MXNetModelHandler.get_module` returns: bound and initialised.

    ``Module.fit`` binds and initialises again; on a module that is already bound to the same
    shapes and initialised, those calls are no-ops here instead of MXNet's "Already bound" and
    "Parameters already initialized" warnings. Anything else (other shapes, ``force_rebind``,
    ``force_init``, new parameters) goes to MXNet as usual.
    """

    def bind(self, data_shapes: Any, label_shapes: Any = None, for_training: bool = True,
             inputs_need_grad: bool = False, force_rebind: bool = False, shared_module: Any = None,
             grad_req: str = "write") -> None:  # fmt: skip
        if (
            self.binded
            and not force_rebind
            and for_training == self.for_training
            and inputs_need_grad == self.inputs_need_grad
            and _shapes(data_shapes) == _shapes(self.data_shapes)
            and _shapes(label_shapes) == _shapes(self.label_shapes)
        ):
            return
        super().bind(data_shapes, label_shapes, for_training, inputs_need_grad, force_rebind,
                     shared_module, grad_req)  # fmt: skip

    def init_params(self, initializer: Any = None, arg_params: Any = None, aux_params: Any = None,
                    allow_missing: bool = False, force_init: bool = False,
                    allow_extra: bool = False) -> None:  # fmt: skip
        if self.params_initialized and not force_init and arg_params is None and aux_params is None:
            return
        if initializer is None:
            initializer = mx.init.Uniform(0.01)  # MXNet's own default
        super().init_params(initializer, arg_params, aux_params, allow_missing, force_init,
                            allow_extra)  # fmt: skip


def _shapes(descs: Any) -> list[tuple[str, tuple]] | None:
    if not descs:
        return None
    return [(d[0], tuple(d[1])) if isinstance(d, (tuple, list)) else (d.name, tuple(d.shape))
            for d in descs]  # fmt: skip


def _whole_numbers_as_int(labels: np.ndarray | None) -> np.ndarray | None:
    """``labels`` as int64 when every value is a whole number (Xfer's ``labels.astype(int)``)."""
    if labels is None or labels.dtype.kind not in "f":
        return labels
    if labels.size and not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        return labels
    return labels.astype(np.int64)


def _node_output(symbol: Any, name: str, index: int = 0) -> Any:
    internals = symbol.get_internals()
    outputs = internals.list_outputs()
    for candidate in ([f"{name}_output"] if index == 0 else []) + [f"{name}_output{index}"]:
        if candidate in outputs:
            return internals[outputs.index(candidate)]
    raise ModelError(f"Layer {name!r} has no output {index} to read.")


def _declared_shape_problems(graph: _Graph, shapes: dict[str, tuple]) -> list[str]:
    """Parameter shapes that contradict their layer's declared sizes (checkable without input)."""
    problems = []
    for node in graph.nodes:
        attrs = node.get("attrs", {})
        params = [graph.nodes[i]["name"] for i, _, _ in node["inputs"] if graph.nodes[i]["op"] == "null"]
        declared: dict[str, int] = {}
        if node["op"] == "FullyConnected" and "num_hidden" in attrs:
            declared = {"_weight": int(attrs["num_hidden"]), "_bias": int(attrs["num_hidden"])}
        elif node["op"] in ("Convolution", "Deconvolution") and "num_filter" in attrs:
            declared = {"_bias": int(attrs["num_filter"])}
            if node["op"] == "Convolution":
                declared["_weight"] = int(attrs["num_filter"])
        for name in params:
            for suffix, size in declared.items():
                if name.endswith(suffix) and name in shapes and shapes[name][0] != size:
                    problems.append(
                        f"{name} has shape {shapes[name]} but layer {node['name']!r} declares {size} outputs"
                    )
        if node["op"] == "BatchNorm":
            sizes = {shapes[name] for name in params if name in shapes}
            if len(sizes) > 1:
                problems.append(f"the parameters of BatchNorm layer {node['name']!r} have shapes {sorted(sizes)}")
    return problems


def _with_global_stats(symbol: Any, batchnorm_layers: Iterable[str]) -> Any:
    layers = set(batchnorm_layers)
    if not layers:
        return symbol
    graph = _Graph(symbol)
    for node in graph.nodes:
        if node["name"] in layers:
            node.setdefault("attrs", {})["use_global_stats"] = "True"
    return mx.sym.load_json(json.dumps(graph.json))


@contextlib.contextmanager
def _subgraph_fusion_disabled(disabled: bool = True):
    """Bind with ``MXNET_SUBGRAPH_BACKEND=NONE`` (read by MXNet at bind time), without its log line."""
    if not disabled:
        yield
        return
    previous = os.environ.get("MXNET_SUBGRAPH_BACKEND")
    os.environ["MXNET_SUBGRAPH_BACKEND"] = "NONE"
    saved_stderr = None
    try:
        sys.stderr.flush()
        saved_stderr = os.dup(2)
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)  # MXNet logs "...=NONE is detected" from C++ on each bind
    except OSError:
        saved_stderr = None
    try:
        yield
    finally:
        if saved_stderr is not None:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
        if previous is None:
            os.environ.pop("MXNET_SUBGRAPH_BACKEND", None)
        else:
            os.environ["MXNET_SUBGRAPH_BACKEND"] = previous


def _progress(iterable: Any, verbose: Any, description: str) -> Any:
    from xfer._progress import progress_bar

    return progress_bar(iterable, verbose=verbose, desc=description, unit="batch")


def _load_checkpoint_files(prefix: str, epoch: int) -> tuple[Any, dict, dict]:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
        raise InvalidTypeError(f"epoch must be an integer, got {epoch!r}.")
    symbol_file = f"{prefix}-symbol.json"
    params_file = f"{prefix}-{int(epoch):04d}.params"
    with serialization.reading(Path(prefix).parent):
        paths = [serialization.resolve(path) for path in (symbol_file, params_file)]
        for path, resolved in zip((symbol_file, params_file), paths):
            if not resolved.is_file():
                raise ModelFileNotFoundError(
                    f"Model file {path!r} does not exist: check the prefix {prefix!r} and epoch {epoch}."
                )
        try:
            # Strict JSON first: MXNet's own parser aborts the process on some malformed files.
            graph = serialization.read_json_file(symbol_file, "The symbol file")
            if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
                raise SerializationError("it has no list of 'nodes'")
            symbol = mx.sym.load_json(json.dumps(graph))
        except SerializationError as error:
            raise SerializationError(f"{symbol_file!r} is not a valid MXNet symbol file: {error}") from None
        except mx.base.MXNetError as error:
            raise SerializationError(f"{symbol_file!r} is not a valid MXNet symbol file: {_first_line(error)}") from None
        try:
            saved = mx.nd.load_frombuffer(paths[1].read_bytes())
        except (mx.base.MXNetError, OSError, ValueError) as error:  # ValueError: undecodable names
            raise SerializationError(
                f"{params_file!r} is not a valid MXNet parameter file (corrupt or truncated): {_first_line(error)}"
            ) from None
    if not isinstance(saved, dict):
        raise SerializationError(f"{params_file!r} holds unnamed arrays, not named parameters.")
    args, auxs = {}, {}
    for key, value in saved.items():
        kind, _, name = key.partition(":")
        if kind == "arg":
            args[name] = value
        elif kind == "aux":
            auxs[name] = value
        else:
            raise SerializationError(f"{params_file!r} has a parameter {key!r} without 'arg:'/'aux:' prefix.")
    return symbol, args, auxs


__all__ = ["MXNetModelHandler"]
