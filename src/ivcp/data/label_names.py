"""Optional class names: from ``action_label_names`` (a file) or a ``label_names`` entry in dataset_info.json."""

import json
import os
from typing import Any


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
