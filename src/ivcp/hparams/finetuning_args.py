"""``FinetuningArguments`` with the ``action_cls`` stage and its options."""

from dataclasses import dataclass, field
from typing import Literal

from llamafactory.hparams import FinetuningArguments


ACTION_DECODER_TYPES = ("linear", "mlp")


@dataclass
class ActionFinetuningArguments(FinetuningArguments):
    stage: Literal["pt", "sft", "rm", "ppo", "dpo", "kto", "action_cls"] = field(
        default="sft",
        metadata={"help": "Which stage will be performed in training."},
    )
    num_action_classes: int = field(
        default=51,
        metadata={"help": "Number of action classes of the `action_cls` stage."},
    )
    action_decoder_type: str = field(
        default="linear",
        metadata={"help": "Head on the `<ACTION>` hidden state: `linear`, or `mlp` (two layers with GELU)."},
    )
    action_decoder_hidden_size: int | None = field(
        default=None,
        metadata={"help": "Hidden size of the `mlp` head; None means the model's hidden size."},
    )
    action_decoder_path: str | None = field(
        default=None,
        metadata={"help": "A folder holding `action_decoder.safetensors` to start the head from."},
    )
    action_label_names: str | None = field(
        default=None,
        metadata={
            "help": "A .json (list, or {id: name}) or .txt (one per line) file of class names. Default: a "
            "`label_names` entry of the dataset in dataset_info.json, else the names saved with the head."
        },
    )
    action_token_lr_scale: float = field(
        default=0.1,
        metadata={
            "help": "The `<ACTION>` embedding is trained with learning_rate * action_token_lr_scale; 0 freezes it."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        # YAML goes through HfArgumentParser.parse_dict, which checks no Literal: validate here.
        if self.stage != "action_cls":
            return

        if not isinstance(self.num_action_classes, int) or self.num_action_classes < 2:
            raise ValueError(f"`num_action_classes` must be an integer >= 2, got {self.num_action_classes!r}.")

        if self.action_decoder_type not in ACTION_DECODER_TYPES:
            raise ValueError(
                f"`action_decoder_type` must be one of {ACTION_DECODER_TYPES}, got {self.action_decoder_type!r}."
            )

        if self.action_decoder_hidden_size is not None and self.action_decoder_hidden_size < 1:
            raise ValueError(f"`action_decoder_hidden_size` must be positive, got {self.action_decoder_hidden_size}.")

        if self.action_token_lr_scale < 0:
            raise ValueError(f"`action_token_lr_scale` must be >= 0, got {self.action_token_lr_scale}.")
