"""``action_hidden_layer``: classify the ``<ACTION>`` hidden state of an earlier LLM layer, computing nothing above it.

The decoder layers after the chosen one are deleted from the model right after it is loaded and before LoRA / freeze
tuning set it up (``ivcp.integration`` hooks LLaMA-Factory's ``init_adapter``), and the text config's layer count
follows. So the model simply has fewer layers: the forward runs the kept layers and then the LLM's final norm (the
head sees normalised features whatever the layer, as with the last one), LoRA targets and freeze's trainable layers
are chosen among the kept layers, and DeepSpeed ZeRO-3, FSDP and gradient checkpointing wrap, shard and re-run only
modules that exist. Nothing changes at forward time. Saved full models and exports hold the kept layers only.
"""

from torch import nn


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    r"""The LLM's decoder layers of a transformers model (composite VLMs included), or None if not found."""
    get_decoder = getattr(model, "get_decoder", None)
    layers = getattr(get_decoder(), "layers", None) if get_decoder is not None else None
    return layers if isinstance(layers, nn.ModuleList) else None


def resolve_hidden_layer(layer: int, num_layers: int) -> int:
    r"""The 0-based index of ``layer`` (negative counts from the last) in an LLM of ``num_layers`` layers."""
    if not -num_layers <= layer < num_layers:
        raise ValueError(
            f"`action_hidden_layer: {layer}` is out of range: the language model has {num_layers} layers, so use "
            f"0..{num_layers - 1}, or -1..-{num_layers} counting from the last."
        )

    return layer % num_layers


def keep_layers_up_to(model: nn.Module, layer: int) -> int:
    r"""Delete the decoder layers after ``layer`` (and update the layer count in the config); return ``layer``'s index."""
    layers = decoder_layers(model)
    if layers is None:
        raise ValueError(
            f"`action_hidden_layer` cannot find the decoder layers of {type(model).__name__} (no `get_decoder().layers`)"
            ": remove the option for this model."
        )

    index = resolve_hidden_layer(layer, len(layers))
    if index + 1 < len(layers):
        del layers[index + 1 :]
        configs = {id(config): config for config in (model.config.get_text_config(), model.get_decoder().config)}
        for config in configs.values():
            config.num_hidden_layers = index + 1
            if isinstance(getattr(config, "layer_types", None), list):
                config.layer_types = config.layer_types[: index + 1]

    return index
