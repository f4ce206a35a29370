"""How the stage reaches the last hidden state of every video LLM family, without vocabulary-size logits.

Families merge vision (and audio) features into the text sequence in different modules: most in the module named
by ``base_model_prefix`` (Qwen2-VL's ``model``), the Qwen2.5-Omni thinker in its CausalLM forward itself. The one
path they all share is the CausalLM forward, which ends with ``lm_head(hidden_states)`` on the final, normed hidden
states. So the stage runs that forward and bypasses ``lm_head``: a pre-hook keeps its input and hands it an empty
sequence, so no vocabulary logits are computed. The forward also returns what sft gets from it, e.g. the MoE
router auxiliary loss.
"""

from typing import Any

import torch
from torch import nn


# Families the stage cannot serve with LLaMA-Factory 0.9.5 and transformers 5.6: the cause and what to use instead.
UNSUPPORTED_FAMILIES = {
    "glm4v": (
        "LLaMA-Factory 0.9.5's glm4v plugin calls the video processor with arguments transformers 5.6 rejects "
        "(`images=None`, `VideoMetadata(total_frames=...)`) and its rope index then gets `image_grid_thw=None`"
    ),
    "glm4v_moe": "it shares the glm4v plugin, which fails with transformers 5.6 (see glm4v)",
    "glm46v": "it shares the glm4v plugin, which fails with transformers 5.6 (see glm4v)",
    "ernie4_5_vl_moe": (
        "LLaMA-Factory 0.9.5's ernie_vl plugin counts video tokens without the temporal merge, so the sequence "
        "does not match the vision features"
    ),
}
ALTERNATIVES = "Qwen3-VL, Qwen2.5-VL or InternVL (template qwen3_vl / qwen2_vl / intern_vl)"


class HiddenStateError(RuntimeError):
    r"""The backbone's forward did not hand ``lm_head`` the final hidden states of the whole sequence."""


def check_family(config: Any) -> None:
    r"""Stop before any data or weights are loaded for a family the stage cannot serve, naming cause and fix."""
    model_type = getattr(config, "model_type", None)
    if model_type in UNSUPPORTED_FAMILIES:
        raise ValueError(
            f"stage action_cls does not support the {model_type} family: {UNSUPPORTED_FAMILIES[model_type]}. "
            f"Use {ALTERNATIVES} instead."
        )


def check_poolable(model: nn.Module) -> None:
    r"""Fail at load time, naming the family, when the stage cannot take its hidden state at ``<ACTION>``."""
    check_family(model.config)
    model_type = getattr(model.config, "model_type", None)
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    hidden_size = model.get_input_embeddings().embedding_dim
    if not isinstance(lm_head, nn.Module) or getattr(lm_head, "in_features", hidden_size) != hidden_size:
        raise ValueError(
            f"stage action_cls cannot pool {type(model).__name__} ({model_type}): it takes the hidden state at "
            "<ACTION> from the input of the language-model head, and this model has no such head. Load a "
            f"generation model (…ForConditionalGeneration / …ForCausalLM), e.g. {ALTERNATIVES}."
        )


def router_aux_loss_coef(model: nn.Module, moe_aux_loss_coef: float | None) -> float | None:
    r"""The router loss weight for a mixture-of-experts backbone that asks for it, else None (no router loss).

    As for sft: ``moe_aux_loss_coef`` turns it on; a checkpoint whose config sets ``output_router_logits`` too.
    """
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not any(
        getattr(c, "num_experts", None) or getattr(c, "num_local_experts", None) for c in (config, text_config)
    ):
        return None

    if moe_aux_loss_coef:
        return moe_aux_loss_coef

    if getattr(text_config, "output_router_logits", False) or getattr(config, "output_router_logits", False):
        return getattr(text_config, "router_aux_loss_coef", None) or getattr(config, "router_aux_loss_coef", 0.001)

    return None


def final_hidden_states(
    model: nn.Module, input_ids: torch.Tensor, output_router_logits: bool = False, **inputs: Any
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Final hidden states ``(batch, seq, hidden)`` of the transformers model, and its router aux loss if asked.

    ``model`` is the transformers model (PEFT-wrapped or not: LoRA layers live inside it).
    """
    captured: list[torch.Tensor] = []

    def bypass_lm_head(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        captured.append(args[0])
        return (args[0][:, :0], *args[1:])  # an empty sequence: no vocabulary logits

    if output_router_logits:
        inputs["output_router_logits"] = True

    handle = model.get_output_embeddings().register_forward_pre_hook(bypass_lm_head)
    try:
        outputs = model(input_ids=input_ids, use_cache=False, return_dict=True, **inputs)
    finally:
        handle.remove()

    if len(captured) != 1 or captured[0].shape[:2] != input_ids.shape:
        shapes = [tuple(hidden.shape) for hidden in captured]
        raise HiddenStateError(
            f"{type(model).__name__} called its language-model head {len(captured)} time(s) with {shapes}, not once "
            f"with the hidden states of the whole sequence {tuple(input_ids.shape)}: action_cls cannot pool it."
        )

    return captured[0], getattr(outputs, "aux_loss", None)
