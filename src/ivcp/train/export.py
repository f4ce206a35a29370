"""``llamafactory-cli export`` for action classifiers: one self-contained folder.

LLaMA-Factory's own export runs unchanged (dtype, shards, hub upload, tokenizer, processor, Modelfile); only its
tokenizer and model loading are swapped for the call (by ``ivcp.integration``, where every patch lives): the tokenizer gains ``<ACTION>``, and the model it
receives is the backbone with LoRA merged and the learned ``<ACTION>`` embedding written into its embedding table.
The head is then written into the folder in the layout vLLM serves (:mod:`.vllm_export`) when it can be, else as
``action_decoder.safetensors`` next to the merged model.
"""

from collections.abc import Callable
from typing import Any

import torch
from llamafactory.hparams import read_args
from omegaconf import OmegaConf
from peft import PeftModel

from ..constants import ACTION_STAGE
from ..hparams.flags import flags_to_dotlist
from ..log import get_logger
from ..model import ActionClassificationModel, add_action_token, load_action_model
from ..model.head_config import head_arguments, load_head_config
from ..model.loader import find_head_directory
from .vllm_export import write_vllm_export


logger = get_logger(__name__)


def action_export_args(args: dict[str, Any] | list[str] | None) -> dict[str, Any] | None:
    r"""The export arguments completed from the head's config, or None when this is not an action classifier."""
    args = read_args(args)
    if not isinstance(args, dict):  # command-line flags
        args = OmegaConf.to_container(OmegaConf.from_dotlist(flags_to_dotlist(args)))

    adapters = args.get("adapter_name_or_path")
    if isinstance(adapters, str):  # LLaMA-Factory's comma-separated form
        adapters = [path.strip() for path in adapters.split(",")]

    head_directory = find_head_directory(args.get("action_decoder_path"), adapters, args.get("model_name_or_path"))
    head_config = load_head_config(head_directory) if head_directory else None
    if args.get("stage") != ACTION_STAGE and head_config is None:
        return None

    if head_config is None:
        raise FileNotFoundError(
            f"No action head found in {adapters or args.get('model_name_or_path')}: export needs a trained action_cls run."
        )

    return {**head_arguments(head_config, args), "stage": ACTION_STAGE}  # the user's arguments win


def merged_backbone(model: ActionClassificationModel) -> torch.nn.Module:
    r"""LoRA merged into the base weights, and the learned ``<ACTION>`` row in the embedding table."""
    backbone = model.backbone.merge_and_unload() if isinstance(model.backbone, PeftModel) else model.backbone
    with torch.no_grad():
        embeddings = backbone.get_input_embeddings().weight
        embeddings[model.action_token_id] = model.action_embedding.to(embeddings.dtype)
    return backbone


class ActionExport:
    r"""The loaders LLaMA-Factory's export runs with for an action classifier (``integration`` swaps them in)."""

    def __init__(self, load_tokenizer: Callable) -> None:
        self._load_tokenizer = load_tokenizer
        self.model: ActionClassificationModel | None = None

    def load_tokenizer(self, model_args):
        tokenizer_module = self._load_tokenizer(model_args)
        add_action_token(tokenizer_module["tokenizer"])
        return tokenizer_module

    def load_model(self, tokenizer, model_args, finetuning_args, is_trainable=False, add_valuehead=False):
        self.tokenizer = tokenizer
        self.model = load_action_model(tokenizer, model_args, finetuning_args, is_trainable=False)
        return merged_backbone(self.model)

    def save_head(self, export_dir: str) -> None:
        r"""The folder vLLM serves when the head allows it (:mod:`.vllm_export`), else the head beside the model."""
        reason = write_vllm_export(export_dir, self.model, self.tokenizer)
        if reason is None:
            logger.info_rank0(f"Exported for vLLM: `vllm serve {export_dir} --runner pooling` serves it.")
            return

        logger.warning_rank0(f"vLLM cannot serve this export ({reason}); IVCP loads it.")
        self.model.action_decoder.save_pretrained(
            export_dir, action_embedding=self.model.action_embedding, extra_config=self.model.head_config()
        )
