"""Load an ``action_cls`` dataset through LLaMA-Factory's own ``get_dataset``."""

from typing import TYPE_CHECKING

from llamafactory.data import get_dataset

from ..constants import ACTION_STAGE
from ..model.multi_label import MULTI_LABEL
from .context import ActionDataConfig, loading_action_data


if TYPE_CHECKING:
    from llamafactory.data.data_utils import DatasetModule
    from llamafactory.data.template import Template
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import PreTrainedTokenizer, ProcessorMixin, Seq2SeqTrainingArguments

    from ..hparams import ActionFinetuningArguments


def get_action_dataset(
    template: "Template",
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "ActionFinetuningArguments",
    tokenizer: "PreTrainedTokenizer",
    processor: "ProcessorMixin | None" = None,
    label_names: list[str] | None = None,
) -> "DatasetModule":
    r"""Everything LLaMA-Factory's loader does (caching, splits, workers), with the action converter and processor."""
    config = ActionDataConfig(
        num_classes=finetuning_args.num_action_classes,
        label_names=tuple(label_names) if label_names else None,
        multi_label=finetuning_args.action_problem_type == MULTI_LABEL,
        test_clips=finetuning_args.action_test_clips,
    )
    with loading_action_data(config):
        return get_dataset(
            template, model_args, data_args, training_args, ACTION_STAGE, tokenizer=tokenizer, processor=processor
        )
