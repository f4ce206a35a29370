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


def _zero12_fp32_master(optimizer: Any, param: torch.nn.Parameter) -> torch.Tensor | None:
    r"""``param``'s fp32 master weights under ZeRO-1/2, read where ``param`` lies in its group's flat buffer.

    DeepSpeed 0.19.8's ``safe_get_full_fp32_param`` read another tensor for the head's weight (a bf16 ZeRO-2 run
    saved a slice of a LoRA B matrix as the head). The module's 16-bit weights are views of ``bit16_groups_flat``,
    split into equal partitions; each rank's ``single_partition_of_fp32_groups`` is the fp32 copy of its partition.
    None when ``param`` is in no flat buffer (not a ZeRO-1/2 optimizer).
    """
    import deepspeed.comm as dist  # type: ignore

    groups = zip(
        optimizer.bit16_groups_flat,
        optimizer.parallel_partitioned_bit16_groups,
        optimizer.single_partition_of_fp32_groups,
        optimizer.real_dp_process_group,
    )
    for flat, partitions, master, group in groups:
        start = (param.data_ptr() - flat.data_ptr()) // flat.element_size()
        if not 0 <= start < flat.numel():
            continue

        mine = partitions[dist.get_rank(group=group)]
        mine_start = (mine.data_ptr() - flat.data_ptr()) // flat.element_size()
        low, high = max(start, mine_start), min(start + param.numel(), mine_start + mine.numel())
        full = torch.zeros(param.numel(), dtype=torch.float32, device=param.device)
        if low < high:
            full[low - start : high - start] = master[low - mine_start : high - mine_start].to(param.device)
        dist.all_reduce(full, group=group)  # every element is on exactly one rank
        return full.view(param.shape)

    return None


def fp32_head_state(engine: Any, model: "ActionClassificationModel") -> dict[str, torch.Tensor]:
    r"""The head and the ``<ACTION>`` row as the optimizer holds them (fp32, full), on the CPU."""
    import deepspeed  # type: ignore  # only DeepSpeed runs come here
    from deepspeed.utils import safe_get_full_fp32_param  # type: ignore

    zero12 = hasattr(engine.optimizer, "bit16_groups_flat")  # not ZeRO-3, nor stage 0's bf16 optimizer
    state = {}
    for name, param in model.named_parameters():
        if not name.startswith(HEAD_PREFIXES):
            continue

        # an fp32 module weight is what the optimizer stepped (no separate master copy to read)
        full = None
        if param.requires_grad and param.dtype != torch.float32:
            full = _zero12_fp32_master(engine.optimizer, param) if zero12 else safe_get_full_fp32_param(param)
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
