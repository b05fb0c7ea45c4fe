"""The two fine-tuning repurposers of Xfer: cut-and-fine-tune, and random-freeze."""

from __future__ import annotations

from typing import Any

from xfer._mxnet import mx
from xfer.exceptions import InvalidArgumentError, InvalidTypeError, ModelError, layer_not_found
from xfer.model_handler.consts import OUTPUT_LAYER_TYPES
from xfer.repurposers.neural_network import (
    NeuralNetworkRepurposer,
    TargetNetwork,
    _check_layer_list,
    free_output_name,
    layer_output_symbol,
)
from xfer.serialization import register_repurposer

#: Names of the layers added on top (Xfer's names, so scripts that look them up keep working).
FINE_TUNE_FC_NAME = "fc_from_fine_tune_repurposer"
RANDOM_FREEZE_FC_NAME = "new_fully_connected_layer"


#: Layer types that make a torch network's output probabilities (not a place to cut).
TORCH_OUTPUT_TYPES = frozenset({"Softmax", "LogSoftmax", "Softmin"})


def _is_torch(handler: Any) -> bool:
    return getattr(handler, "backend", "mxnet") == "torch"


def _free_torch_name(handler: Any, preferred: str) -> str:
    """``preferred`` or, when the network already uses it, ``preferred_1``, ``preferred_2``..."""
    model = handler.model
    taken = {name.split("#")[0] for name in handler.layer_names}
    taken |= {name for name, _ in model.named_modules()} | set(dir(model))
    candidate, number = preferred, 1
    while candidate in taken:
        candidate, number = f"{preferred}_{number}", number + 1
    return candidate


def _new_torch_head(handler: Any, fc_name: str, num_classes: int) -> list[str]:
    """Add ``Flatten`` + ``Linear(num_classes)`` (logits) on top of a torch network.

    The input size of the new ``Linear`` is read by running one zero example of
    ``handler.input_shape`` (the training examples' shape, set by the repurposer) through the
    network.
    """
    import numpy as np
    from torch import nn

    if handler.input_shape is None:
        raise ModelError("The shape of the training examples is needed to size the new layer.")
    top = handler.layer_names[-1]
    sample = np.zeros((1, *handler.input_shape), dtype=np.float32)
    features, _ = handler.get_layer_output(sample, [top], context="cpu")
    flatten_name = _free_torch_name(handler, f"{fc_name}_flatten")
    fc_name = _free_torch_name(handler, fc_name)
    handler.add_layer_top(
        [
            (flatten_name, nn.Flatten()),
            (fc_name, nn.Linear(int(features[top].shape[1]), int(num_classes))),
        ]
    )
    return [flatten_name, fc_name]


def _new_head(handler: Any, fc_name: str, output_name: str, num_classes: int) -> list[str]:
    if _is_torch(handler):
        return _new_torch_head(handler, fc_name, num_classes)
    fc_name = free_output_name(handler, fc_name)
    output_name = free_output_name(handler, output_name)
    handler.add_layer_top(
        [
            mx.sym.FullyConnected(num_hidden=int(num_classes), name=fc_name),
            mx.sym.SoftmaxOutput(name=output_name),
        ]
    )
    return [fc_name, output_name]


def _cut_torch(handler: Any, layer_name: str) -> None:
    """Drop the layers of a torch network above ``layer_name`` (its output becomes the top)."""
    names = handler.layer_names
    above = [n for n in names[names.index(layer_name) + 1 :] if n != "output"]
    if above:
        handler.drop_layer_top(len(above))
    if handler.layer_names[-1] != layer_name:
        following = [n for n in names[names.index(layer_name) + 1 :] if n != "output"][:1]
        hint = f" (for example {following[0]!r})" if following else ""
        raise ModelError(
            f"Cutting the network at {layer_name!r} leaves {handler.layer_names[-1]!r} on top: the "
            "layers above it are not a single chain of modules (a function call such as flatten "
            "between layers cannot be cut off). Cut at a later module that every path to the "
            f"output goes through{hint}."
        )


@register_repurposer(key="xfer.NeuralNetworkFineTuneRepurposer")
class NeuralNetworkFineTuneRepurposer(NeuralNetworkRepurposer):
    """Keep the source network up to ``transfer_layer_name``, add a new classifier, fine-tune.

    The target network is the source network from its input up to and including
    ``transfer_layer_name``, then ``FullyConnected(n_classes)`` and ``SoftmaxOutput``. Every layer
    is trained (transferred layers at ``transferred_lr_mult`` times the rate), or, with
    ``head_epochs``, first the new layer alone and then everything.

    Parameters
    ----------
    source_model : mx.mod.Module, torch.nn.Module, ModelHandler or (symbol, arg_params, aux_params)
        The pretrained network. For a torch network the new head is ``Flatten`` + ``Linear``
        (logits) and layer names are module names (``"relu2"``, ``"features.3"``).
    transfer_layer_name : str
        Last layer kept from the source network (e.g. the layer before its classifier).
    target_class_count : int or None
        Number of target classes; must equal the number of distinct training labels. None takes
        it from the labels.
    context_function, num_devices, batch_size, num_epochs, optimizer, optimizer_params
        As in Xfer (see :class:`~xfer.repurposers.neural_network.NeuralNetworkRepurposer`).
    **keyword-only options
        ``validation_fraction``, ``early_stopping_patience``, ``lr_schedule``,
        ``transferred_lr_mult``, ``head_epochs``, ``unfreeze_lr_factor``, ``freeze_batchnorm``,
        ``kvstore``, ``checkpoint_dir``, ``random_state``, ``verbose``: see the base class.

    Examples
    --------
    >>> rep = NeuralNetworkFineTuneRepurposer(source, "relu2", None, optimizer="adam",
    ...                                       optimizer_params={"learning_rate": 0.01},
    ...                                       head_epochs=3, num_epochs=5, random_state=0)  # doctest: +SKIP
    >>> rep.fit(X_train, y_train, validation_data=(X_val, y_val))                         # doctest: +SKIP
    >>> rep.plot_history()                                                                 # doctest: +SKIP
    """

    def __init__(
        self,
        source_model: Any,
        transfer_layer_name: str,
        target_class_count: int | None,
        context_function: Any = mx.cpu,
        num_devices: int = 1,
        batch_size: int = 64,
        num_epochs: int = 5,
        optimizer: str = "sgd",
        optimizer_params: dict | None = None,
        *,
        validation_fraction: float | None = None,
        early_stopping_patience: int | None = None,
        lr_schedule: Any = None,
        transferred_lr_mult: float = 1.0,
        head_epochs: int | None = None,
        unfreeze_lr_factor: float = 0.1,
        freeze_batchnorm: bool = False,
        kvstore: str = "device",
        checkpoint_dir: str | None = None,
        random_state: int | None = None,
        verbose: bool = False,
    ):
        super().__init__(
            source_model,
            context_function,
            num_devices,
            batch_size,
            num_epochs,
            optimizer,
            optimizer_params,
            validation_fraction=validation_fraction,
            early_stopping_patience=early_stopping_patience,
            lr_schedule=lr_schedule,
            transferred_lr_mult=transferred_lr_mult,
            head_epochs=head_epochs,
            unfreeze_lr_factor=unfreeze_lr_factor,
            freeze_batchnorm=freeze_batchnorm,
            kvstore=kvstore,
            checkpoint_dir=checkpoint_dir,
            random_state=random_state,
            verbose=verbose,
        )
        self.transfer_layer_name = transfer_layer_name
        self.target_class_count = target_class_count

    def _create_target_network(
        self, handler: Any, output_name: str, num_classes: int
    ) -> TargetNetwork:
        name = self.transfer_layer_name
        if not isinstance(name, str):
            raise InvalidTypeError(f"transfer_layer_name must be a layer name (str), got {name!r}.")
        types = handler.layer_type_dict
        if name not in types:
            raise layer_not_found(name, types)
        if types[name] in OUTPUT_LAYER_TYPES or (
            _is_torch(handler) and types[name] in TORCH_OUTPUT_TYPES
        ):
            raise ModelError(
                f"transfer_layer_name {name!r} is the output layer ({types[name]}); choose a layer "
                "below it, e.g. the input of the source network's classifier."
            )
        if _is_torch(handler):
            _cut_torch(handler, name)
        else:
            handler.update_sym(layer_output_symbol(handler.symbol, name))
        new_layers = _new_head(handler, FINE_TUNE_FC_NAME, output_name, num_classes)
        return TargetNetwork(handler, output_layer=new_layers[-1], new_layers=new_layers)


@register_repurposer(key="xfer.NeuralNetworkRandomFreezeRepurposer")
class NeuralNetworkRandomFreezeRepurposer(NeuralNetworkRepurposer):
    """Drop the top layers, add a new classifier, freeze some layers and re-initialise others.

    Parameters
    ----------
    source_model : mx.mod.Module, torch.nn.Module, ModelHandler or (symbol, arg_params, aux_params)
        The pretrained network. For a torch network the new head is ``Flatten`` + ``Linear``
        (logits) and layer names are module names (``"relu2"``, ``"features.3"``).
    target_class_count : int or None
        Number of target classes (None: from the labels).
    fixed_layers : list of str
        Layers whose parameters stay exactly as in the source model (matched by exact name:
        ``['conv1']`` never freezes ``conv10``). Frozen BatchNorm layers keep their statistics.
    random_layers : list of str
        Layers re-initialised (Xavier) before training.
    num_layers_to_drop : int, default=2
        Layers removed from the top before the new ``FullyConnected`` + ``SoftmaxOutput``.
    context_function, num_devices, batch_size, num_epochs, optimizer, optimizer_params
        As in Xfer.
    **keyword-only options
        See :class:`~xfer.repurposers.neural_network.NeuralNetworkRepurposer`.
    """

    def __init__(
        self,
        source_model: Any,
        target_class_count: int | None,
        fixed_layers: list[str],
        random_layers: list[str],
        num_layers_to_drop: int = 2,
        context_function: Any = mx.cpu,
        num_devices: int = 1,
        batch_size: int = 64,
        num_epochs: int = 5,
        optimizer: str = "sgd",
        optimizer_params: dict | None = None,
        *,
        validation_fraction: float | None = None,
        early_stopping_patience: int | None = None,
        lr_schedule: Any = None,
        transferred_lr_mult: float = 1.0,
        head_epochs: int | None = None,
        unfreeze_lr_factor: float = 0.1,
        freeze_batchnorm: bool = False,
        kvstore: str = "device",
        checkpoint_dir: str | None = None,
        random_state: int | None = None,
        verbose: bool = False,
    ):
        super().__init__(
            source_model,
            context_function,
            num_devices,
            batch_size,
            num_epochs,
            optimizer,
            optimizer_params,
            validation_fraction=validation_fraction,
            early_stopping_patience=early_stopping_patience,
            lr_schedule=lr_schedule,
            transferred_lr_mult=transferred_lr_mult,
            head_epochs=head_epochs,
            unfreeze_lr_factor=unfreeze_lr_factor,
            freeze_batchnorm=freeze_batchnorm,
            kvstore=kvstore,
            checkpoint_dir=checkpoint_dir,
            random_state=random_state,
            verbose=verbose,
        )
        self.target_class_count = target_class_count
        self.fixed_layers = fixed_layers
        self.random_layers = random_layers
        self.num_layers_to_drop = num_layers_to_drop

    def _create_target_network(
        self, handler: Any, output_name: str, num_classes: int
    ) -> TargetNetwork:
        fixed_layers = _check_layer_list("fixed_layers", self.fixed_layers, handler)
        random_layers = _check_layer_list("random_layers", self.random_layers, handler)
        both = sorted(set(fixed_layers) & set(random_layers))
        if both:
            raise InvalidArgumentError(
                f"Layers {both} are in both fixed_layers and random_layers: a layer is either kept "
                "fixed or re-initialised."
            )
        drop = self.num_layers_to_drop
        if isinstance(drop, bool) or not isinstance(drop, int) or drop < 0:
            raise InvalidArgumentError(f"num_layers_to_drop must be an integer >= 0, got {drop!r}.")
        layers_before = handler.layer_names
        if drop:
            handler.drop_layer_top(drop)
        kept = set(handler.layer_names)
        dropped = [layer for layer in fixed_layers + random_layers if layer not in kept]
        if dropped:
            raise InvalidArgumentError(
                f"Layers {dropped} are among the {drop} top layers dropped by num_layers_to_drop "
                f"(the model's layers are {layers_before}); they cannot be fixed or re-initialised."
            )
        top = handler.layer_type_dict[handler.layer_names[-1]]
        if top in OUTPUT_LAYER_TYPES or (_is_torch(handler) and top in TORCH_OUTPUT_TYPES):
            raise ModelError(
                f"After dropping {drop} layer(s) the model still ends in an output layer ({top}); "
                "increase num_layers_to_drop."
            )
        fixed = handler.get_layer_parameters(fixed_layers) if fixed_layers else []
        random = handler.get_layer_parameters(random_layers) if random_layers else []
        new_layers = _new_head(handler, RANDOM_FREEZE_FC_NAME, output_name, num_classes)
        return TargetNetwork(
            handler,
            output_layer=new_layers[-1],
            new_layers=new_layers,
            fixed_parameters=list(fixed),
            random_parameters=list(random),
        )


__all__ = ["NeuralNetworkFineTuneRepurposer", "NeuralNetworkRandomFreezeRepurposer"]
