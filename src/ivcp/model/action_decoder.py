"""The classification head on the ``<ACTION>`` hidden state, and its files.

The head is saved as ``action_decoder.safetensors`` (decoder weights, plus the learned ``<ACTION>`` embedding
under ``action_embedding``) and ``action_decoder_config.json``. Both load without LLaMA-Factory:
``safetensors.torch.load_file`` and ``json.load`` are enough.
"""

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn import functional as F


ACTION_TOKEN = "<ACTION>"
HEAD_WEIGHTS_NAME = "action_decoder.safetensors"
HEAD_CONFIG_NAME = "action_decoder_config.json"
ACTION_EMBEDDING_KEY = "action_embedding"


class Float32Linear(nn.Linear):
    r"""A linear layer that computes in fp32 whatever dtype its weights were cast to (DeepSpeed casts them to bf16).

    A subclass rather than a functional call, so ZeRO-3's per-module hooks still gather its weights.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        bias = self.bias.float() if self.bias is not None else None
        return F.linear(inputs.float(), self.weight.float(), bias)


class ActionDecoder(nn.Module):
    r"""Maps the hidden state at ``<ACTION>`` to class logits: ``linear``, or a 2-layer ``mlp`` with GELU.

    ``dropout`` applies to the hidden state before the head (outside ``net``, so the weight names never change).
    """

    def __init__(
        self,
        hidden_size: int,
        num_classes: int,
        decoder_type: str = "linear",
        decoder_hidden_size: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.decoder_type = decoder_type
        self.decoder_hidden_size = decoder_hidden_size or hidden_size
        if decoder_type == "linear":
            self.net = Float32Linear(hidden_size, num_classes)
        elif decoder_type == "mlp":
            self.net = nn.Sequential(
                Float32Linear(hidden_size, self.decoder_hidden_size),
                nn.GELU(),
                Float32Linear(self.decoder_hidden_size, num_classes),
            )
        else:
            raise ValueError(f"Unknown action decoder type {decoder_type!r}: use `linear` or `mlp`.")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        r"""fp32 logits on every route: autocast off, the hidden state moved to the head's device and upcast."""
        device = next(self.net.parameters()).device
        with torch.autocast(device.type, enabled=False):
            return self.net(self.dropout(hidden_states.to(device, torch.float32)))

    def get_config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "num_classes": self.num_classes,
            "decoder_type": self.decoder_type,
            "decoder_hidden_size": self.decoder_hidden_size,
            "dropout": self.dropout.p,
        }

    def save_pretrained(
        self,
        save_directory: str,
        action_embedding: torch.Tensor | None = None,
        extra_config: dict[str, Any] | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        r"""Write the head's weights and config atomically (a crash never leaves a half-written head)."""
        os.makedirs(save_directory, exist_ok=True)
        tensors = dict(state_dict if state_dict is not None else self.state_dict())
        if action_embedding is not None:
            tensors[ACTION_EMBEDDING_KEY] = action_embedding

        # fp32 whatever the strategy computed in (callers under DeepSpeed hand in the optimizer's fp32 weights)
        tensors = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in tensors.items()}
        config = {**self.get_config(), **(extra_config or {})}
        _atomic_write(os.path.join(save_directory, HEAD_WEIGHTS_NAME), lambda path: save_file(tensors, path))
        _atomic_write(
            os.path.join(save_directory, HEAD_CONFIG_NAME),
            lambda path: _write_text(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n"),
        )

    def load_pretrained(self, load_directory: str) -> torch.Tensor | None:
        r"""Load the head from ``load_directory``; return the saved ``<ACTION>`` embedding if there is one."""
        tensors = load_head_tensors(load_directory)
        action_embedding = tensors.pop(ACTION_EMBEDDING_KEY, None)
        expected = self.state_dict()
        path = os.path.join(load_directory, HEAD_WEIGHTS_NAME)
        if set(tensors) != set(expected):
            raise ValueError(
                f"{path} holds a head with weights {sorted(tensors)}, but a `{self.decoder_type}` head needs "
                f"{sorted(expected)}: set `action_decoder_type` to the type the head was trained with."
            )

        for key, value in tensors.items():
            if value.shape != expected[key].shape:
                raise ValueError(
                    f"{path} does not fit: {key} has shape {tuple(value.shape)}, expected "
                    f"{tuple(expected[key].shape)} for hidden size {self.hidden_size}, {self.num_classes} classes and "
                    f"decoder hidden size {self.decoder_hidden_size}. Set `num_action_classes` / "
                    "`action_decoder_hidden_size` to the head's values or use a head trained for this model."
                )

        parameters = dict(self.named_parameters())
        for key, value in tensors.items():
            copy_full_tensor(parameters[key], value)
        return action_embedding


def copy_full_tensor(param: torch.Tensor, value: torch.Tensor) -> None:
    r"""Copy a full saved tensor into ``param``, also when FSDP2 has sharded it (a DTensor: each rank keeps its shard)."""
    with torch.no_grad():
        if isinstance(param, DTensor):  # every rank read the whole file: no communication needed
            value = distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None)
        param.copy_(value)


def load_head_tensors(load_directory: str) -> dict[str, torch.Tensor]:
    path = os.path.join(load_directory, HEAD_WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No action head found: {path} does not exist.")

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is corrupt or not a safetensors file ({err}): restore it or retrain.") from err


def has_head(directory: str | None) -> bool:
    return directory is not None and os.path.isfile(os.path.join(directory, HEAD_WEIGHTS_NAME))


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _atomic_write(path: str, write) -> None:
    tmp_path = f"{path}.tmp.{os.getpid()}"
    write(tmp_path)
    os.replace(tmp_path, path)
