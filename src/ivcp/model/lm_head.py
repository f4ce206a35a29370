"""Keep an untied, unused ``lm_head`` out of memory: map it from the checkpoint file instead of holding a copy.

``action_cls`` never computes vocabulary logits (``backbone.final_hidden_states`` hands ``lm_head`` an empty
sequence) and freezes an untied ``lm_head``, so its weights stay exactly as loaded. With Qwen2-VL's 151,936
vocabulary rows that is 148 MiB at hidden size 256 in fp32 (890 MiB for the 2B model in bf16) held for nothing.
The weight's storage is swapped for a copy-on-write memory map of the same bytes in the checkpoint's safetensors
file: nothing is resident until something reads it (saving a full model or an export reads it back unchanged),
and a write (e.g. DDP broadcasting module states) copies only the pages it touches, never the file.
"""

import json
import os
import struct

import numpy as np
import torch
from torch import nn
from transformers.integrations import is_deepspeed_zero3_enabled

from ..log import get_logger


logger = get_logger(__name__)

SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _checkpoint_file(model_path: str, name: str) -> str | None:
    r"""The local safetensors file holding ``name`` (single file or sharded index), None when there is none."""
    index = os.path.join(model_path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shard = json.load(f).get("weight_map", {}).get(name)
        return os.path.join(model_path, shard) if shard else None

    single = os.path.join(model_path, "model.safetensors")
    return single if os.path.isfile(single) else None


def _mapped_tensor(path: str, name: str) -> torch.Tensor | None:
    r"""``name`` in the safetensors file ``path`` as a copy-on-write memory map, None if absent or not mappable."""
    with open(path, "rb") as f:
        header_size = struct.unpack("<Q", f.read(8))[0]
        entry = json.loads(f.read(header_size)).get(name)

    dtype = SAFETENSORS_DTYPES.get(entry["dtype"]) if entry else None
    if dtype is None:
        return None

    begin, end = entry["data_offsets"]
    offset = 8 + header_size + begin
    if offset % dtype.itemsize or end <= begin:
        return None

    data = np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=(end - begin,))
    return torch.from_numpy(data).view(dtype).view(entry["shape"])


def map_unused_lm_head(model: nn.Module, model_path: str | None) -> bool:
    r"""Back ``model``'s untied, frozen CPU ``lm_head`` weight by its bytes in ``model_path``; True when it did.

    Left as loaded when the head is tied, trainable, on an accelerator, quantized, partitioned (ZeRO-3), resized,
    cast to another dtype than the file's, or when the file's values differ from the loaded ones.
    """
    lm_head = model.get_output_embeddings()
    weight = getattr(lm_head, "weight", None)
    if (
        model_path is None
        or not os.path.isdir(model_path)
        or type(weight) is not nn.Parameter
        or weight is model.get_input_embeddings().weight
        or weight.requires_grad
        or weight.device.type != "cpu"
        or is_deepspeed_zero3_enabled()
    ):
        return False

    name = next((name for name, param in model.named_parameters() if param is weight), None)
    path = _checkpoint_file(model_path, name) if name else None
    mapped = _mapped_tensor(path, name) if path else None
    if mapped is None or mapped.shape != weight.shape or mapped.dtype != weight.dtype:
        return False

    # the first and last rows, not all: reading the whole map would make it resident
    if not (torch.equal(mapped[0], weight[0]) and torch.equal(mapped[-1], weight[-1])):
        return False

    weight.data = mapped
    size = weight.numel() * weight.element_size() / 2**20
    logger.info_rank0(f"The unused lm_head ({size:.0f} MiB) is read from {path} when needed, not held in memory.")
    return True
