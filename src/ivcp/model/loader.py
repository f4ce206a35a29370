"""Build the trainable ``ActionClassificationModel`` on top of LLaMA-Factory's model loading."""

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from accelerate.utils import align_module_device
from llamafactory.data import get_template_and_fix_tokenizer
from llamafactory.model import load_model, load_tokenizer
from llamafactory.model.model_utils.embedding import resize_embedding_layer
from peft import PeftModel
from transformers.integrations import is_deepspeed_zero3_enabled

from ..data.video_plugin import with_video_reader
from ..log import get_logger
from .action_decoder import ACTION_TOKEN, ActionDecoder, has_head
from .action_model import ActionClassificationModel
from .backbone import check_poolable, router_aux_loss_coef
from .bnb_notice import quiet_optional_cpu_kernel_notice
from .head_config import check_head_config, load_head_config, run_options, saved_arguments
from .loss import ActionLoss, ActionLossConfig
from .video_processor import action_processor


if TYPE_CHECKING:
    from llamafactory.data.template import Template
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.model.loader import TokenizerModule
    from transformers import PreTrainedTokenizer

    from ..hparams import ActionFinetuningArguments


logger = get_logger(__name__)


def add_action_token(tokenizer: "PreTrainedTokenizer") -> int:
    r"""Register ``<ACTION>`` as a special token (so it is never split) and return its id."""
    tokenizer.add_tokens([ACTION_TOKEN], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(ACTION_TOKEN)
    if tokenizer.encode(ACTION_TOKEN, add_special_tokens=False) != [token_id]:
        raise ValueError(f"The tokenizer splits {ACTION_TOKEN}: remove `split_special_tokens: true`.")

    return token_id


def load_tokenizer_explained(model_args: "ModelArguments") -> "TokenizerModule":
    r"""LLaMA-Factory's ``load_tokenizer``, whose "Failed to load tokenizer." hides why: the cause and the setting."""
    try:
        return load_tokenizer(model_args)
    except OSError as err:
        cause = str(err.__cause__ or err).split("\n")[0]
        raise OSError(
            f"Cannot load the tokenizer and processor of model_name_or_path={model_args.model_name_or_path!r}: "
            f"{cause} Set `model_name_or_path` (`--model`) to a local model folder, or download the model once online."
        ) from err


def load_action_tokenizer(
    model_args: "ModelArguments", data_args: "DataArguments"
) -> tuple["TokenizerModule", "Template"]:
    r"""LLaMA-Factory's tokenizer and processor with ``<ACTION>`` registered, and the fixed chat template.

    The template's mm_plugin reads videos with IVCP's reader, so token counting and the collator share one decision.
    """
    tokenizer_module = load_tokenizer_explained(model_args)
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
    embeddings = backbone.get_input_embeddings()
    # gathered under ZeRO-3; loaded for the moment when a device_map offloaded it
    with _gathered(embeddings.weight), align_module_device(embeddings), torch.no_grad():
        if embeddings.weight.is_meta:  # offloaded inside a dispatched block: only inference gets here, and it
            return torch.zeros(embeddings.embedding_dim)  # loads the row saved with the head over this

        return embeddings.weight[:num_tokens].float().mean(dim=0).cpu()


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


def find_head(
    model_args: "ModelArguments", finetuning_args: "ActionFinetuningArguments"
) -> tuple[str | None, dict | None]:
    r"""The run's head folder (:func:`find_head_directory`) and its saved config, either None when there is none."""
    head_directory = find_head_directory(
        finetuning_args.action_decoder_path, model_args.adapter_name_or_path, model_args.model_name_or_path
    )
    return head_directory, load_head_config(head_directory) if head_directory else None


def load_action_model(
    tokenizer: "PreTrainedTokenizer",
    model_args: "ModelArguments",
    finetuning_args: "ActionFinetuningArguments",
    is_trainable: bool,
    label_names: list[str] | None = None,
    data_args: "DataArguments | None" = None,
    loss_config: ActionLossConfig | None = None,
) -> ActionClassificationModel:
    r"""Load the backbone the LLaMA-Factory way (LoRA / freeze / full) and put the action head on it.

    The model is built once, with its loss (``loss_config``, else the objective saved with the head) and the saved
    options (``head_config.HEAD_OPTIONS``) of this run's arguments; without ``data_args`` (export), the data settings
    are those saved with the head.
    """
    action_token_id = tokenizer.convert_tokens_to_ids(ACTION_TOKEN)
    num_real_tokens = min(action_token_id, len(tokenizer))
    quiet_optional_cpu_kernel_notice()  # PEFT imports bitsandbytes while loading
    backbone = load_model(tokenizer, model_args, finetuning_args, is_trainable)
    check_poolable(backbone.get_base_model() if isinstance(backbone, PeftModel) else backbone)
    resize_embedding_layer(backbone, tokenizer)  # no-op when the table has spare rows (Qwen2-VL has ~280)
    _freeze_untied_lm_head(backbone)

    head_directory, head_config = find_head(model_args, finetuning_args)
    if head_directory is None and not is_trainable:
        raise ValueError(
            "No trained action head found: pass the adapter of an action_cls run as `adapter_name_or_path`, "
            "or its output_dir as `action_decoder_path`."
        )

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
        options={**saved_arguments(head_config or {}), **run_options(model_args, data_args, finetuning_args)},
        loss_fn=ActionLoss(
            loss_config or ActionLossConfig.from_head_config(head_config), finetuning_args.action_problem_type
        ),
    )
    if head_directory is not None:
        check_head_config(head_directory, head_config, model.head_config())
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
