"""``ivcp check-data``: check a dataset for ``action_cls`` with the settings of the training run that will use it.

The settings come from a training YAML (only the model, data and action_* keys matter) and/or flags; the data goes
through LLaMA-Factory's loader, IVCP's converter and the training checks (:mod:`ivcp.data.check`).
"""

import tempfile
from typing import Any

from llamafactory.hparams import DataArguments, ModelArguments
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from .constants import ACTION_STAGE
from .data import ActionDataConfig, ActionDatasetProcessor
from .data.check import DataReport, check_action_data, load_aligned_datasets
from .data.label_names import check_label_names, find_label_names
from .hparams import ActionFinetuningArguments
from .hparams.checks import check_action_cls_args
from .model import load_action_tokenizer
from .model.loader import find_head
from .model.multi_label import MULTI_LABEL
from .stage_patches import register_stage as register


def check_data(config: dict[str, Any], num_workers: int | None = None) -> DataReport:
    r"""Check every example of ``config``'s ``dataset`` and ``eval_dataset``.

    Unlike training, ``num_action_classes`` defaults to the number of label names when the data has names.
    """
    register()
    parser = HfArgumentParser((ModelArguments, DataArguments, ActionFinetuningArguments))
    model_args, data_args, finetuning_args = parser.parse_dict(
        {**config, "stage": ACTION_STAGE}, allow_extra_keys=True
    )
    if not data_args.dataset and not data_args.eval_dataset:
        raise ValueError(
            "Name the data to check: `dataset` (and/or `eval_dataset`), as registered in dataset_info.json."
        )

    check_action_cls_args(model_args, data_args, finetuning_args)
    names, origin = find_label_names(data_args, finetuning_args, find_head(model_args, finetuning_args))
    if names is not None and "num_action_classes" not in config:
        finetuning_args.num_action_classes = len(names)
    check_label_names(names, finetuning_args.num_action_classes, origin)

    tokenizer_module, template = load_action_tokenizer(model_args, data_args)
    data_config = ActionDataConfig(
        finetuning_args.num_action_classes,
        label_names=tuple(names) if names else None,
        multi_label=finetuning_args.action_problem_type == MULTI_LABEL,
    )
    with tempfile.TemporaryDirectory() as output_dir:
        loader_args = Seq2SeqTrainingArguments(output_dir=output_dir, seed=config.get("seed", 42), report_to="none")
        datasets = load_aligned_datasets(model_args, data_args, loader_args, data_config, ACTION_STAGE)

    processor = ActionDatasetProcessor(
        template=template,
        data_args=data_args,
        num_classes=data_config.num_classes,
        label_names=data_config.label_names,
        multi_label=data_config.multi_label,
        **tokenizer_module,
    )
    return check_action_data(datasets, processor, num_workers)
