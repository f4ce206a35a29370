"""Optional class names: from ``action_label_names`` (a file) or a ``label_names`` entry in dataset_info.json."""

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llamafactory.data.parser import get_dataset_list


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments

    from ..hparams import ActionFinetuningArguments


def read_label_names(source: Any, base_dir: str = ".") -> list[str]:
    r"""Names from a list, an ``{id: name}`` mapping, or a .json / .txt file (one name per line) holding either."""
    where = "label names"
    if isinstance(source, str):
        path = source if os.path.isabs(source) else os.path.join(base_dir, source)
        where = path
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Label-name file {path} does not exist: fix `action_label_names` / `label_names`."
            )

        with open(path, encoding="utf-8") as f:
            if path.endswith(".json"):
                source = json.load(f)
            else:
                source = [line.strip() for line in f if line.strip()]

    if isinstance(source, dict):
        try:
            by_id = {int(key): str(value) for key, value in source.items()}
        except ValueError as err:
            raise ValueError(f"{where}: the keys of a label-name mapping must be class ids ({err}).") from err

        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"{where}: the class ids must be 0..{len(by_id) - 1} without gaps, got {sorted(by_id)}.")

        source = [by_id[i] for i in range(len(by_id))]

    if not isinstance(source, list) or not all(isinstance(name, str) for name in source):
        raise ValueError(f"{where}: expected a list of class names or an {{id: name}} mapping.")

    if len(set(source)) != len(source):
        duplicates = sorted({name for name in source if source.count(name) > 1})
        raise ValueError(f"{where}: class names must be unique, {duplicates} repeat.")

    return source


def check_label_names(names: list[str] | None, num_classes: int, origin: str) -> None:
    if names is not None and len(names) != num_classes:
        raise ValueError(
            f"{origin} lists {len(names)} class names but num_action_classes={num_classes}: "
            f"set `num_action_classes: {len(names)}` or fix the names."
        )


def find_label_names(
    data_args: "DataArguments",
    finetuning_args: "ActionFinetuningArguments",
    head: tuple[str | None, Mapping[str, Any] | None],
) -> tuple[list[str] | None, str | None]:
    r"""Class names and where they come from: ``action_label_names``, the datasets' ``label_names``, the head.

    ``head`` is the head's folder and saved config (``ivcp.model.loader.find_head``), either None.
    """
    if finetuning_args.action_label_names is not None:
        return read_label_names(finetuning_args.action_label_names), finetuning_args.action_label_names

    dataset_names = (data_args.dataset or []) + (data_args.eval_dataset or [])
    for attr in get_dataset_list(dataset_names, data_args.dataset_dir) if dataset_names else []:
        if getattr(attr, "action_label_names", None) is not None:
            origin = f"`label_names` of {attr} in {data_args.dataset_dir}/dataset_info.json"
            return read_label_names(attr.action_label_names, base_dir=data_args.dataset_dir), origin

    head_directory, head_config = head
    return (head_config or {}).get("label_names"), f"the head config in {head_directory}"


def resolve_label_names(
    data_args: "DataArguments",
    finetuning_args: "ActionFinetuningArguments",
    head: tuple[str | None, Mapping[str, Any] | None],
) -> list[str] | None:
    r"""The class names, checked against ``num_action_classes``."""
    names, origin = find_label_names(data_args, finetuning_args, head)
    check_label_names(names, finetuning_args.num_action_classes, origin)
    return names
