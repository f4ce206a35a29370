"""Where a model dispatched over several devices (``device_map``) computes, so the head and the batch go there.

Accelerate's hooks move each dispatched module's inputs to its execution device; an offloaded module's weights are
on the ``meta`` device until its forward, so the hook, not the weights, says where it runs.
"""

import torch
from torch import nn

from .layers import decoder_layers


def execution_device(module: nn.Module) -> torch.device:
    r"""The device ``module`` computes on: its accelerate hook's execution device, else its weights' device."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is not None:
        return torch.device(device)

    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device

    return torch.device("cpu")  # offloaded inside a dispatched block: that block's hook moves what it gets


def final_hidden_device(model: nn.Module) -> torch.device:
    r"""Where the final hidden state is computed: the last decoder layer (and the final norm after it)."""
    layers = decoder_layers(model)
    return execution_device(layers[-1] if layers else model.get_output_embeddings())
