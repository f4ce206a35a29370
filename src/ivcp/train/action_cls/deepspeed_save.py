"""What an action_cls run saves under DeepSpeed: the head and ``<ACTION>`` row in fp32, the adapter, never a dummy.

HF Trainer's adapter-only shortcuts (ZeRO-3's frozen-excluding gather, ``exclude_frozen_parameters``) check for a
``PeftModel``, which the backbone + head wrapper is not; with ``stage3_gather_16bit_weights_on_model_save: false``
HF hands ``_save`` an empty state dict; and DeepSpeed casts the whole module to bf16/fp16, so the module's copy of the
head is a rounded one. Everything here is collective: every rank calls it.
"""

from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from peft import PeftModel


if TYPE_CHECKING:
    from collections.abc import Iterator

    from ...model import ActionClassificationModel

HEAD_PREFIXES = ("action_decoder.", "action_embedding")


def saves_adapter_only(model: "ActionClassificationModel") -> bool:
    r"""A LoRA run: its checkpoints need the adapter, the head and the row, not the frozen base."""
    return isinstance(model.backbone, PeftModel)


def fp32_head_state(model: "ActionClassificationModel") -> dict[str, torch.Tensor]:
    r"""The head and the ``<ACTION>`` row as the optimizer holds them (fp32, full), on the CPU."""
    import deepspeed  # type: ignore  # only DeepSpeed runs come here
    from deepspeed.utils import safe_get_full_fp32_param  # type: ignore

    state = {}
    for name, param in model.named_parameters():
        if not name.startswith(HEAD_PREFIXES):
            continue

        # an fp32 module weight is what the optimizer stepped (no separate master copy to read)
        mixed = param.requires_grad and param.dtype != torch.float32
        full = safe_get_full_fp32_param(param) if mixed else None
        if full is None:  # frozen (action_token_lr_scale: 0), fp32, or no mixed-precision copy: the module's weights
            with deepspeed.zero.GatheredParameters([param]):
                full = param.detach().clone()
        state[name] = full.detach().to("cpu", torch.float32)

    return state


def weights_left_to_deepspeed(engine: Any, model: "ActionClassificationModel") -> bool:
    r"""Full tuning under ZeRO-3 without the 16-bit gather: the model's weights stay in DeepSpeed's checkpoint.

    ``zero_to_fp32.py`` recovers them, as HF Trainer leaves them; the head is still saved.
    """
    zero3 = engine.zero_optimization_partition_weights()
    return zero3 and not saves_adapter_only(model) and not engine.zero_gather_16bit_weights_on_model_save()


def backbone_state(engine: Any, model: "ActionClassificationModel") -> dict[str, torch.Tensor]:
    r"""The backbone's weights for ``save_pretrained`` on the main process (ZeRO-3 returns None on the others).

    A LoRA run gathers only the trainable weights under ZeRO-3 (HF does this for a ``PeftModel`` only).
    """
    if weights_left_to_deepspeed(engine, model):
        return {}

    if not engine.zero_optimization_partition_weights():
        return model.state_dict()

    state = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=saves_adapter_only(model))
    return state if state is not None else {}


@contextmanager
def frozen_base_excluded(engine: Any, model: "ActionClassificationModel") -> "Iterator[None]":
    r"""Within it, ``engine.save_checkpoint`` leaves out the frozen base of a LoRA run (HF asks only a PeftModel)."""
    if not saves_adapter_only(model):
        yield
        return

    engine.save_checkpoint = partial(type(engine).save_checkpoint, engine, exclude_frozen_parameters=True)
    try:
        yield
    finally:
        del engine.save_checkpoint  # the class's method again
