"""LLaMA-Factory's speed options with ``stage: action_cls``: each applicable combination still trains.

Runs are in-process (``run_exp``, 2 steps) to fit the suite's budget. What the options do on this CPU stack:
- ``flash_attn``: ``sdpa`` and ``disabled`` (eager) are used as asked; ``fa2`` without the flash-attn package (never
  on CPU) is not refused: LLaMA-Factory logs "FlashAttention-2 is not installed." and keeps transformers' default,
  sdpa, exactly as for its own stages.
- gradient checkpointing (LLaMA-Factory's default) recomputes every decoder layer in the backward pass;
  ``disable_gradient_checkpointing: true`` turns that off.
- ``freeze_vision_tower: false`` puts LoRA on (or, for full tuning, trains) the vision blocks.
- ``enable_liger_kernel``: liger-kernel installs from PyPI, but its Triton kernels need a GPU (skipped on CPU).
- ``packing`` / ``neat_packing`` are refused with a message.
"""

import math

import pytest
import torch
from llamafactory.train.tuner import run_exp
from transformers import TrainerCallback
from transformers.utils import is_flash_attn_2_available

from tests.helpers import base_config, trainer_losses


class Probe(TrainerCallback):
    r"""What the trainer really got: attention kernels, checkpointing (layer calls per step), trainable weights."""

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        config = model.base_model.config
        self.attention = {config.text_config._attn_implementation, config.vision_config._attn_implementation}
        self.first_layer_calls = 0
        model.base_model.model.language_model.layers[0].register_forward_hook(self._count)
        self.initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        self.model = model

    def _count(self, *args) -> None:
        self.first_layer_calls += 1

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self.steps = state.global_step
        trained = dict(self.model.named_parameters())
        self.unchanged = [name for name, p in self.initial.items() if torch.equal(p, trained[name].detach())]


FA2_FALLBACK = "flash_attention_2" if is_flash_attn_2_available() else "sdpa"


@pytest.mark.parametrize(
    ("flash_attn", "checkpointing", "freeze_vision_tower", "finetuning_type", "attention"),
    [
        ("sdpa", True, True, "lora", "sdpa"),
        ("disabled", False, False, "lora", "eager"),
        ("fa2", True, False, "lora", FA2_FALLBACK),
        ("auto", False, True, "lora", "sdpa"),
        ("sdpa", True, False, "full", "sdpa"),
    ],
)
def test_speed_options_train(
    tiny_model, motion_data, tmp_path, flash_attn, checkpointing, freeze_vision_tower, finetuning_type, attention
):
    probe = Probe()
    config = base_config(
        tiny_model,
        motion_data,
        str(tmp_path / "out"),
        flash_attn=flash_attn,
        disable_gradient_checkpointing=not checkpointing,
        freeze_vision_tower=freeze_vision_tower,
        finetuning_type=finetuning_type,
        learning_rate=1e-4,
        max_steps=2,
        save_steps=100,
        plot_loss=False,
    )
    run_exp(config, callbacks=[probe])

    assert probe.attention == {attention}
    assert probe.first_layer_calls == probe.steps * (2 if checkpointing else 1)  # forward (+ recompute)
    vision_trainable = [name for name in probe.initial if ".visual." in name]
    assert bool(vision_trainable) != freeze_vision_tower
    assert probe.unchanged == []  # every trainable weight got a gradient and moved
    losses = trainer_losses(tmp_path / "out")
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="liger-kernel's kernels are Triton GPU kernels: on this CPU-only stack (liger-kernel 0.8.5, triton 3.8.0) "
    "the first patched op raises `RuntimeError: 0 active drivers ([]). There should only be one.`",
)
def test_liger_kernel_trains(tiny_model, motion_data, tmp_path):
    pytest.importorskip("liger_kernel", reason="liger-kernel is not installed (`pip install liger-kernel`)")
    run_exp(base_config(tiny_model, motion_data, str(tmp_path / "out"), enable_liger_kernel=True, max_steps=2))
    assert all(math.isfinite(loss) for loss in trainer_losses(tmp_path / "out"))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("packing", "`packing` mixes examples in one sequence, action_cls needs one per sequence"),
        ("neat_packing", "`neat_packing` cannot be set as True except SFT"),
    ],
)
def test_packing_is_refused(tiny_model, motion_data, tmp_path, option, message):
    with pytest.raises(ValueError, match=message):
        run_exp(base_config(tiny_model, motion_data, str(tmp_path / "out"), **{option: True}))
