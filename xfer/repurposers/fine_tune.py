"""The two fine-tuning repurposers of Xfer: cut-and-fine-tune, and random-freeze.

Both are backend-neutral: the cut, the new head and the output layer types come from the
training backend of the source model (:mod:`xfer.fine_tuning.backend`).
"""

from __future__ import annotations

import logging
from typing import Any

from xfer._arguments import check_int
from xfer.exceptions import InvalidArgumentError, InvalidTypeError, ModelError, layer_not_found
from xfer.fine_tuning.backend import training_backend
from xfer.repurposers.neural_network import (
    NeuralNetworkRepurposer,
    TargetNetwork,
    _check_layer_list,
)
from xfer.serialization import register_repurposer

logger = logging.getLogger("xfer.repurposers.fine_tune")

#: Names of the layers added on top (Xfer's names, so scripts that look them up keep working).
FINE_TUNE_FC_NAME = "fc_from_fine_tune_repurposer"
RANDOM_FREEZE_FC_NAME = "new_fully_connected_layer"


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
        Number of target classes. None takes it from the labels. More than the distinct training
        labels (Xfer's use) means the labels are class indices ``0..target_class_count-1``: the
        network gets that many outputs, and ``classes_`` lists them all.
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
        *args: Any,
        **options: Any,
    ):
        super().__init__(source_model, *args, **options)
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
        backend = training_backend(handler)
        if types[name] in backend.output_layer_types:
            raise ModelError(
                f"transfer_layer_name {name!r} is the output layer ({types[name]}); choose a layer "
                "below it, e.g. the input of the source network's classifier."
            )
        backend.cut(handler, name)
        new_layers = backend.add_head(handler, FINE_TUNE_FC_NAME, output_name, num_classes)
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
        Number of target classes (None: from the labels; more than the distinct labels: they are
        class indices, as for the fine-tune repurposer).
    fixed_layers : list of str
        Layers whose parameters stay exactly as in the source model (matched by exact name:
        ``['conv1']`` never freezes ``conv10``). Frozen BatchNorm layers keep their statistics.
    random_layers : list of str
        Layers re-initialised (Xavier) before training. Layers of either list that
        ``num_layers_to_drop`` removes are ignored, with a logged warning (as in Xfer).
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
        *args: Any,
        **options: Any,
    ):
        super().__init__(source_model, *args, **options)
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
        check_int("num_layers_to_drop", drop, minimum=0)
        layers_before = handler.layer_names
        if drop:
            handler.drop_layer_top(drop)
        kept = set(handler.layer_names)
        dropped = [layer for layer in fixed_layers + random_layers if layer not in kept]
        if dropped:  # Xfer ignores them too: they are not in the target network
            logger.warning(
                "Layers %s are among the %d top layers dropped by num_layers_to_drop (the model's "
                "layers are %s), so they are neither fixed nor re-initialised.",
                dropped, drop, layers_before,
            )  # fmt: skip
            fixed_layers = [layer for layer in fixed_layers if layer in kept]
            random_layers = [layer for layer in random_layers if layer in kept]
        backend = training_backend(handler)
        top = handler.layer_type_dict[handler.layer_names[-1]]
        if top in backend.output_layer_types:
            raise ModelError(
                f"After dropping {drop} layer(s) the model still ends in an output layer ({top}); "
                "increase num_layers_to_drop."
            )
        fixed = handler.get_layer_parameters(fixed_layers) if fixed_layers else []
        random = handler.get_layer_parameters(random_layers) if random_layers else []
        new_layers = backend.add_head(handler, RANDOM_FREEZE_FC_NAME, output_name, num_classes)
        return TargetNetwork(
            handler,
            output_layer=new_layers[-1],
            new_layers=new_layers,
            fixed_parameters=list(fixed),
            random_parameters=list(random),
        )


__all__ = ["NeuralNetworkFineTuneRepurposer", "NeuralNetworkRandomFreezeRepurposer"]
