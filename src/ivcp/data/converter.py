"""Align raw examples with LLaMA-Factory's converters, keeping the class label and where each example came from."""

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from llamafactory.data.converter import DatasetConverter, get_dataset_converter

from .context import ActionDataConfig


if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset
    from llamafactory.data.parser import DatasetAttr
    from llamafactory.hparams import DataArguments
    from transformers import Seq2SeqTrainingArguments


LABEL_FIELD = "_action_label"
INDEX_FIELD = "_action_index"
SOURCE_FIELD = "_action_source"


@dataclass
class ActionDatasetConverter:
    r"""Wraps the dataset's own converter (sharegpt, openai, alpaca) and adds label, index and source.

    The label is kept as JSON text so that a bad value (a float, a name, a missing label) survives Arrow and is
    reported by the processor together with the example's index, instead of failing inside ``datasets``.
    """

    base: DatasetConverter
    label_column: str

    def _close_user_turn(self, example: dict[str, Any]) -> dict[str, Any]:
        r"""Accept a conversation that ends on the user turn: the response is never used by this stage."""
        attr = self.base.dataset_attr
        if attr.formatting not in ("sharegpt", "openai"):
            return example

        messages = example.get(attr.messages)
        if isinstance(messages, list) and messages and messages[-1].get(attr.role_tag) == attr.user_tag:
            example = dict(example)
            example[attr.messages] = messages + [{attr.role_tag: attr.assistant_tag, attr.content_tag: ""}]

        return example

    def __call__(self, example: dict[str, Any], index: int) -> dict[str, Any]:
        output = self.base(self._close_user_turn(example))
        output[LABEL_FIELD] = json.dumps(example.get(self.label_column))
        output[INDEX_FIELD] = index
        output[SOURCE_FIELD] = self.base.dataset_attr.dataset_name
        return output


def align_action_dataset(
    dataset: Union["Dataset", "IterableDataset"],
    dataset_attr: "DatasetAttr",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    config: ActionDataConfig,
) -> Union["Dataset", "IterableDataset"]:
    r"""The ``action_cls`` twin of ``llamafactory.data.converter.align_dataset`` (same caching and workers)."""
    label_column = getattr(dataset_attr, "action_label", None) or config.label_column
    converter = ActionDatasetConverter(
        get_dataset_converter(dataset_attr.formatting, dataset_attr, data_args), label_column
    )
    kwargs = {}
    if not data_args.streaming:
        kwargs = dict(
            num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=(not data_args.overwrite_cache) or (training_args.local_process_index != 0),
            desc="Converting format of dataset",
        )

    column_names = list(next(iter(dataset)).keys())
    return dataset.map(converter, with_indices=True, batched=False, remove_columns=column_names, **kwargs)
