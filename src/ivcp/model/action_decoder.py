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


ACTION_TOKEN = "<ACTION>"
HEAD_WEIGHTS_NAME = "action_decoder.safetensors"
HEAD_CONFIG_NAME = "action_decoder_config.json"
ACTION_EMBEDDING_KEY = "action_embedding"


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
            self.net = nn.Linear(hidden_size, num_classes)
        elif decoder_type == "mlp":
            self.net = nn.Sequential(
                nn.Linear(hidden_size, self.decoder_hidden_size),
                nn.GELU(),
                nn.Linear(self.decoder_hidden_size, num_classes),
            )
        else:
            raise ValueError(f"Unknown action decoder type {decoder_type!r}: use `linear` or `mlp`.")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        return self.net(self.dropout(hidden_states.to(dtype)))

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

        tensors = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
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

        self.load_state_dict(tensors)
        return action_embedding


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
