"""Read every example the way training will and report what would stop or skew a run, before any GPU hour is spent.

The examples go through LLaMA-Factory's loader and IVCP's converter, then through the same checks as training
(:class:`ActionDatasetProcessor`): conversation, ``<ACTION>`` placement, label, every video decoded, token length.
Unlike training, a bad example does not stop the check: all of them are counted and listed.
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from ..model.multi_label import multi_hot
from .context import ActionDataConfig, ActionDataError, MediaSupportError, describe_example, loading_action_data
from .converter import INDEX_FIELD, SOURCE_FIELD
from .processor import ActionDatasetProcessor


if TYPE_CHECKING:
    from datasets import Dataset
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments


SHOWN_PER_KIND = 3


@dataclass
class DataReport:
    num_classes: int
    cutoff_len: int
    label_names: list[str] | None = None
    multi_label: bool = False
    examples: Counter = field(default_factory=Counter)  # dataset name -> examples
    labels: Counter = field(default_factory=Counter)  # class id -> examples with a valid label
    labels_per_example: Counter = field(default_factory=Counter)  # multi-label: label count -> examples
    lengths: list[int] = field(default_factory=list)  # tokens up to <ACTION> of every example that encodes
    problems: list[dict[str, str]] = field(default_factory=list)  # {"dataset", "kind", "message"}
    bad_examples: int = 0

    def add(self, dataset_name: str, checked: "Dataset") -> None:
        self.examples[dataset_name] += len(checked)
        for target, valid in zip(checked["target"], checked["label_valid"]):
            if valid:
                self.labels.update(label for label, present in enumerate(target) if present)
                self.labels_per_example[sum(target)] += 1
        self.lengths += [length for length in checked["length"] if length >= 0]
        for kinds, messages in zip(checked["problem_kinds"], checked["problems"]):
            self.bad_examples += bool(kinds)
            self.problems += [{"dataset": dataset_name, "kind": k, "message": m} for k, m in zip(kinds, messages)]

    def _name(self, label: int) -> str:
        return f"{label:>5} {self.label_names[label]}" if self.label_names else f"{label:>5}"

    def format(self) -> str:
        total = sum(self.examples.values())
        lines = [f"{total:,} examples: " + ", ".join(f"{name} {count:,}" for name, count in self.examples.items())]
        lines.append(f"Examples per class ({self.num_classes} classes):")
        labelled = max(1, sum(self.labels.values()))
        for label in range(self.num_classes):
            count = self.labels[label]
            share = count / labelled
            lines.append(f"{self._name(label)[:44]:<44} {count:>8,}  {'#' * round(40 * share)}")

        empty = [self._name(label).strip() for label in range(self.num_classes) if self.labels[label] == 0]
        if empty:
            more = " ..." if len(empty) > 20 else ""
            lines.append(f"  {len(empty)} classes have no example: {', '.join(empty[:20])}{more}")

        if self.multi_label:
            lines.append(
                "Labels per example: "
                + ", ".join(f"{count}: {n:,}" for count, n in sorted(self.labels_per_example.items()))
            )

        if self.lengths:
            p50, p95 = np.percentile(self.lengths, [50, 95])
            over = sum(length > self.cutoff_len for length in self.lengths)
            lines.append(
                f"Tokens up to <ACTION>: min {min(self.lengths):,}, median {p50:,.0f}, 95% {p95:,.0f}, "
                f"max {max(self.lengths):,}; {over:,} over cutoff_len={self.cutoff_len:,}"
            )

        if not self.problems:
            lines.append("No problems: every example can be trained on.")
            return "\n".join(lines)

        lines.append(f"{self.bad_examples:,} of {total:,} examples cannot be used for action_cls:")
        by_kind = Counter(problem["kind"] for problem in self.problems)
        for kind, count in by_kind.most_common():
            lines.append(f"  {kind}: {count:,}")
            shown = [problem["message"] for problem in self.problems if problem["kind"] == kind][:SHOWN_PER_KIND]
            lines += [f"    {message}" for message in shown]

        return "\n".join(lines)

    def write_problems(self, path: str) -> None:
        r"""One JSON line per problem, for datasets too large to read the summary's samples."""
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(problem, ensure_ascii=False) + "\n" for problem in self.problems)


def _inspect(example: dict[str, Any], processor: ActionDatasetProcessor) -> dict[str, Any]:
    r"""Multi-hot classes, token length and every problem of one aligned example (length -1 where unknown).

    The classes are multi-hot (never an empty list) so that Arrow types the column the same in every batch.
    """
    where = describe_example(example[SOURCE_FIELD], example[INDEX_FIELD])
    result = {
        "target": [0] * processor.num_classes,
        "label_valid": False,
        "length": -1,
        "problem_kinds": [],
        "problems": [],
    }
    try:
        labels = processor.parse_label(example, where)
        result["target"] = multi_hot(labels if processor.multi_label else [labels], processor.num_classes)
        result["label_valid"] = True
    except ActionDataError as err:
        result["problem_kinds"].append(err.kind)
        result["problems"].append(str(err))

    try:
        input_ids = processor.tokenize(example, where)
        result["length"] = len(input_ids)
        processor.check_length(input_ids, where)
    except MediaSupportError:
        raise
    except ActionDataError as err:
        result["problem_kinds"].append(err.kind)
        result["problems"].append(str(err))

    return result


def check_action_data(
    datasets: dict[str, "Dataset"], processor: ActionDatasetProcessor, num_workers: int | None = None
) -> DataReport:
    r"""Inspect aligned ``datasets`` (name -> dataset) with a progress bar per dataset; never stops at a bad one."""
    report = DataReport(
        processor.num_classes, processor.data_args.cutoff_len, processor.label_names, processor.multi_label
    )
    for name, dataset in datasets.items():
        checked = dataset.map(
            partial(_inspect, processor=processor),
            remove_columns=dataset.column_names,
            num_proc=num_workers,
            load_from_cache_file=False,
            desc=f"Checking {name}",
        )
        report.add(name, checked)

    return report


def load_aligned_datasets(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    config: ActionDataConfig,
    stage: str,
) -> dict[str, "Dataset"]:
    r"""The train and eval datasets, each by name, converted the way training converts them (not yet tokenized)."""
    from llamafactory.data.loader import _get_merged_dataset

    datasets = {}
    with loading_action_data(config):
        for names in (data_args.dataset, data_args.eval_dataset):
            loaded = _get_merged_dataset(names, model_args, data_args, training_args, stage, return_dict=True)
            datasets.update(loaded or {})

    return datasets
