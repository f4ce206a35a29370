"""``FinetuningArguments`` with the ``action_cls`` stage and its options."""

import os
from dataclasses import dataclass, field
from typing import Literal

from llamafactory.hparams import FinetuningArguments

from ..model.multi_label import PROBLEM_TYPES
from .serving_args import ActionServingArguments


ACTION_DECODER_TYPES = ("linear", "mlp")
EMBEDDING_ROWS = ("used", "all")


@dataclass
class ActionFinetuningArguments(FinetuningArguments, ActionServingArguments):
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
    action_decoder_bias: bool = field(
        default=True,
        metadata={
            "help": "false: the head's linear layers have no bias. vLLM's classifier layer has none, so "
            "`llamafactory-cli export` writes a folder vLLM serves only for a `linear` head trained with false."
        },
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
    action_token_own_clip: bool = field(
        default=True,
        metadata={
            "help": "Clip the `<ACTION>` embedding's gradient to max_grad_norm on its own, outside the global norm of "
            "the other parameters: its gradient is the model's largest and would set every parameter's clipping factor "
            "(one process and DDP; DeepSpeed and FSDP clip inside their engines, the row in the global norm)."
        },
    )
    action_embedding_rows: str = field(
        default="used",
        metadata={
            "help": "When the token embedding trains: `used` trains only the rows of the tokens in the training set "
            "(the table frozen, the rows written back into it on save), where that is exactly the same as training "
            "the whole table (AdamW, weight_decay 0, one process or DDP, no streaming; else the whole table, with a "
            "log line saying why); `all` always trains the whole table."
        },
    )
    action_problem_type: str = field(
        default="single_label",
        metadata={
            "help": "`single_label` (one class per example, softmax + cross-entropy) or `multi_label` (`action_label` "
            "is a list of classes, possibly empty; sigmoid + binary cross-entropy)."
        },
    )
    action_threshold: float = field(
        default=0.5,
        metadata={"help": "Multi-label: a class is predicted when its sigmoid probability is >= this threshold."},
    )
    action_class_weights: str | None = field(
        default=None,
        metadata={
            "help": "Per-class loss weights: `balanced` (inverse class frequency over the training set), a list by "
            "class id (`1,2,0.5`), or a .json file of a list or of {class name: weight}."
        },
    )
    action_loss: str = field(
        default="cross_entropy",
        metadata={"help": "The classification loss: `cross_entropy` or `focal`."},
    )
    action_focal_gamma: float = field(
        default=2.0,
        metadata={"help": "The focusing parameter gamma of the focal loss (0 is cross-entropy)."},
    )
    action_decoder_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout on the `<ACTION>` hidden state before the head."},
    )
    action_hidden_layer: int = field(
        default=-1,
        metadata={
            "help": "Classify the `<ACTION>` hidden state after this LLM layer (0-based; negative counts from the "
            "last, -1 = the last). The layers after it are dropped from the model and never run."
        },
    )
    action_test_clips: int = field(
        default=1,
        metadata={
            "help": "Evaluate / predict each video as this many contiguous clips of equal length, each with the whole "
            "frame budget (video_fps, video_maxlen), their logits combined per video (`action_clip_combine`) before "
            "the metrics and predictions.jsonl. N clips cost N forward passes per video. 1: the whole video at once."
        },
    )
    action_clip_combine: str = field(
        default="mean",
        metadata={
            "help": "How the clips of `action_test_clips` make a video's answer: `mean` of their probabilities, mean "
            "of their `logits`, or each class's `max` probability (a short action seen in one clip)."
        },
    )
    action_train_sampling: str = field(
        default="uniform",
        metadata={
            "help": "Which frames training sees: `uniform` (evenly spaced, every epoch the same) or `random_segment` "
            "(TSN: the clip cut into as many segments as frames, one frame at a random place in each, drawn again "
            "every epoch from the seed). Evaluation and prediction always sample uniformly."
        },
    )

    action_frame_cache: bool = field(
        default=True,
        metadata={
            "help": "Keep the sampled frames of every video on disk, so that later epochs and runs decode none again "
            "(invalidated when the file or a video setting changes)."
        },
    )
    action_frame_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the frame cache. Default: `ivcp_frames` in `cache_dir`, else in HF datasets' cache."
        },
    )
    action_frame_cache_max_gb: float = field(
        default=20.0,
        metadata={
            "help": "Bound of the frame cache in GB: past it, the least recently used entries of earlier runs are "
            "removed, and a run that fills it alone decodes the rest of its videos every epoch."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        ActionServingArguments.__post_init__(self)
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

        if self.action_embedding_rows not in EMBEDDING_ROWS:
            raise ValueError(
                f"`action_embedding_rows` must be one of {EMBEDDING_ROWS}, got {self.action_embedding_rows!r}."
            )

        if self.action_problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"`action_problem_type` must be one of {PROBLEM_TYPES}, got {self.action_problem_type!r}."
            )

        if not self.action_frame_cache_max_gb > 0:
            raise ValueError(
                f"`action_frame_cache_max_gb` must be > 0, got {self.action_frame_cache_max_gb}: to turn the cache "
                "off, set `action_frame_cache: false`."
            )

        if not 0.0 < self.action_threshold < 1.0:
            raise ValueError(f"`action_threshold` must be a probability in (0, 1), got {self.action_threshold}.")
        self._check_objective_args()
        self._check_sampling_args()

    def _check_sampling_args(self) -> None:
        from ..data.clips import TRAIN_SAMPLINGS
        from ..model.decoding import CLIP_COMBINATIONS
        from ..model.timeline import clip_windows

        try:
            clip_windows(1.0, self.action_test_clips)
        except ValueError as err:
            raise ValueError(f"`action_test_clips`: {err}") from err

        if self.action_clip_combine not in CLIP_COMBINATIONS:
            raise ValueError(
                f"`action_clip_combine` must be one of {CLIP_COMBINATIONS}, got {self.action_clip_combine!r}."
            )

        if self.action_train_sampling not in TRAIN_SAMPLINGS:
            raise ValueError(
                f"`action_train_sampling` must be one of {TRAIN_SAMPLINGS}, got {self.action_train_sampling!r}."
            )

    def _check_objective_args(self) -> None:
        from ..model.loss import (
            BALANCED,
            CLASS_WEIGHTS_FORMS,
            ActionLossConfig,
            parse_class_weights,
            read_class_weights_spec,
        )

        self.action_class_weights = read_class_weights_spec(self.action_class_weights)
        weights = self.action_class_weights
        if isinstance(weights, (list, tuple)):  # names and file contents are checked once the label names are known
            parse_class_weights(weights, self.num_action_classes)
        elif isinstance(weights, str) and weights != BALANCED and not os.path.isfile(weights):
            raise FileNotFoundError(f"`action_class_weights` file {weights} does not exist: fix the path.")
        elif weights is not None and not isinstance(weights, (str, dict)):
            raise TypeError(f"`action_class_weights` must be {CLASS_WEIGHTS_FORMS}, got {weights!r}.")

        ActionLossConfig(loss=self.action_loss, focal_gamma=self.action_focal_gamma)  # checks both
        if not 0.0 <= self.action_decoder_dropout < 1.0:
            raise ValueError(f"`action_decoder_dropout` must be in [0, 1), got {self.action_decoder_dropout}.")

        if isinstance(self.action_hidden_layer, bool) or not isinstance(self.action_hidden_layer, int):
            raise TypeError(f"`action_hidden_layer` must be an integer layer index, got {self.action_hidden_layer!r}.")
