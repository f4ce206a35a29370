"""Build the trainable ``ActionClassificationModel`` on top of LLaMA-Factory's model loading."""

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from llamafactory.data import get_template_and_fix_tokenizer
from llamafactory.extras import logging
from llamafactory.model import load_model, load_tokenizer
from llamafactory.model.model_utils.embedding import resize_embedding_layer
from peft import PeftModel
from transformers.integrations import is_deepspeed_zero3_enabled

from ..data.video_plugin import with_video_reader
from ..integration import action_processor
from .action_decoder import ACTION_TOKEN, ActionDecoder, has_head, load_head_config
from .action_model import ActionClassificationModel
from .backbone import check_poolable, router_aux_loss_coef
from .loss import ActionLoss, ActionLossConfig


if TYPE_CHECKING:
    from llamafactory.data.template import Template
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.model.loader import TokenizerModule
    from transformers import PreTrainedTokenizer

    from ..hparams import ActionFinetuningArguments


logger = logging.get_logger(__name__)


def add_action_token(tokenizer: "PreTrainedTokenizer") -> int:
    r"""Register ``<ACTION>`` as a special token (so it is never split) and return its id."""
    tokenizer.add_tokens([ACTION_TOKEN], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(ACTION_TOKEN)
    if tokenizer.encode(ACTION_TOKEN, add_special_tokens=False) != [token_id]:
        raise ValueError(f"The tokenizer splits {ACTION_TOKEN}: remove `split_special_tokens: true`.")

    return token_id


def load_action_tokenizer(
    model_args: "ModelArguments", data_args: "DataArguments"
) -> tuple["TokenizerModule", "Template"]:
    r"""LLaMA-Factory's tokenizer and processor with ``<ACTION>`` registered, and the fixed chat template.

    The template's mm_plugin reads videos with IVCP's reader, so token counting and the collator share one decision.
    """
    tokenizer_module = load_tokenizer(model_args)
    add_action_token(tokenizer_module["tokenizer"])
    tokenizer_module["processor"] = action_processor(tokenizer_module["processor"])
    return tokenizer_module, with_video_reader(
        get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    )


def _gathered(*params: torch.nn.Parameter):
    r"""Gather ZeRO-3 partitioned parameters for reading; a no-op otherwise."""
    if is_deepspeed_zero3_enabled():
        import deepspeed  # type: ignore

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)

    return nullcontext()


def _initial_action_embedding(backbone: torch.nn.Module, num_tokens: int) -> torch.Tensor:
    r"""The mean of the real token embeddings: a neutral start that lies on the embedding manifold."""
    weight = backbone.get_input_embeddings().weight
    with _gathered(weight), torch.no_grad():
        return weight[:num_tokens].float().mean(dim=0).cpu()


def _freeze_untied_lm_head(backbone: torch.nn.Module) -> None:
    r"""The head never uses lm_head; an untied trainable lm_head would get no gradient (DDP trips on it)."""
    output_embeddings = backbone.get_output_embeddings()
    if output_embeddings is not None and output_embeddings.weight is not backbone.get_input_embeddings().weight:
        output_embeddings.weight.requires_grad_(False)


def find_head_directory(
    action_decoder_path: str | None, adapter_paths: list[str] | None, model_path: str | None
) -> str | None:
    r"""Where the head is: ``action_decoder_path``, else the last adapter holding one, else the model folder."""
    if action_decoder_path is not None:
        if not has_head(action_decoder_path):
            raise FileNotFoundError(
                f"`action_decoder_path` {action_decoder_path} holds no action_decoder.safetensors: "
                "point it at the output_dir (or a checkpoint) of an action_cls run."
            )

        return action_decoder_path

    for candidate in (adapter_paths or [])[::-1] + [model_path]:
        if has_head(candidate):
            return candidate

    return None


def load_action_model(
    tokenizer: "PreTrainedTokenizer",
    model_args: "ModelArguments",
    finetuning_args: "ActionFinetuningArguments",
    is_trainable: bool,
    label_names: list[str] | None = None,
) -> ActionClassificationModel:
    r"""Load the backbone the LLaMA-Factory way (LoRA / freeze / full) and put the action head on it."""
    action_token_id = tokenizer.convert_tokens_to_ids(ACTION_TOKEN)
    num_real_tokens = min(action_token_id, len(tokenizer))
    backbone = load_model(tokenizer, model_args, finetuning_args, is_trainable)
    check_poolable(backbone.get_base_model() if isinstance(backbone, PeftModel) else backbone)
    resize_embedding_layer(backbone, tokenizer)  # no-op when the table has spare rows (Qwen2-VL has ~280)
    _freeze_untied_lm_head(backbone)

    head_directory = find_head_directory(
        finetuning_args.action_decoder_path, model_args.adapter_name_or_path, model_args.model_name_or_path
    )
    if head_directory is None and not is_trainable:
        raise ValueError(
            "No trained action head found: pass the adapter of an action_cls run as `adapter_name_or_path`, "
            "or its output_dir as `action_decoder_path`."
        )

    head_config = load_head_config(head_directory) if head_directory else None
    if head_config is not None and label_names is None:
        label_names = head_config.get("label_names")

    hidden_size = backbone.get_input_embeddings().embedding_dim
    decoder = ActionDecoder(
        hidden_size=hidden_size,
        num_classes=finetuning_args.num_action_classes,
        decoder_type=finetuning_args.action_decoder_type,
        decoder_hidden_size=finetuning_args.action_decoder_hidden_size,
        dropout=finetuning_args.action_decoder_dropout,
        bias=finetuning_args.action_decoder_bias,
    )
    model = ActionClassificationModel(
        backbone=backbone,
        action_decoder=decoder,
        action_token_id=action_token_id,
        action_embedding=_initial_action_embedding(backbone, num_real_tokens),
        label_names=label_names,
        router_aux_loss_coef=router_aux_loss_coef(backbone, model_args.moe_aux_loss_coef) if is_trainable else None,
        problem_type=finetuning_args.action_problem_type,
        threshold=finetuning_args.action_threshold,
    )
    model.preprocessing = (head_config or {}).get("preprocessing", {})
    model.loss_fn = ActionLoss(ActionLossConfig.from_head_config(head_config))  # a training run sets its own
    if head_directory is not None:
        _check_head_config(head_directory, head_config, model)
        model.load_head(head_directory)
        logger.info_rank0(f"Loaded the action head from {head_directory}.")

    if is_trainable and finetuning_args.action_token_lr_scale == 0:
        # frozen, not merely lr 0: its gradient would still enter the clipping norm of every other parameter
        model.action_embedding.requires_grad_(False)
        logger.info_rank0(f"action_token_lr_scale is 0: the {ACTION_TOKEN} embedding is frozen.")

    if not is_trainable:
        model.requires_grad_(False)
        model.eval()

    return model


def _check_head_config(directory: str, config: dict | None, model: ActionClassificationModel) -> None:
    if config is None:
        return

    saved_layer = config.get("hidden_layer")
    if saved_layer is not None and model.hidden_layer is not None and saved_layer != model.hidden_layer:
        raise ValueError(
            f"The action head in {directory} classifies LLM layer {saved_layer}, but this run uses layer "
            f"{model.hidden_layer}: set `action_hidden_layer: {saved_layer}`."
        )

    wanted_values = {**model.action_decoder.get_config(), "problem_type": model.problem_type}
    for key, option in (
        ("num_classes", "num_action_classes"),
        ("hidden_size", None),
        ("decoder_type", "action_decoder_type"),
        ("problem_type", "action_problem_type"),
        ("bias", "action_decoder_bias"),
    ):
        saved, wanted = config.get(key), wanted_values[key]
        if saved is not None and saved != wanted:
            fix = f"set `{option}: {saved}`" if option else "use a head trained on this model"
            raise ValueError(f"The action head in {directory} has {key}={saved}, but this run has {wanted}: {fix}.")
