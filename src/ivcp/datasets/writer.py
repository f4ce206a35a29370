"""Write converted examples, class names and their dataset_info.json entries."""

import json
import os
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Split:
    r"""One converted split: (video path, class id) pairs, and what had to be skipped, by reason."""

    items: list[tuple[str, int]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def sft_example(video: str, prompt: str, response: str) -> dict:
    r"""One sharegpt example: a user turn (holding ``<video>``) and the assistant's reply."""
    return {
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": response}],
        "videos": [video],
    }


def to_example(video: str, label: int, names: list[str], prompt: str) -> dict:
    return {**sft_example(video, prompt, names[label]), "action_label": label}


def write_examples(out_dir: str, dataset_name: str, examples: list[dict]) -> str:
    r"""Write ``<dataset_name>.json`` under ``out_dir`` and return its path."""
    path = os.path.join(out_dir, f"{dataset_name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(examples, f, ensure_ascii=False, indent=2)
    return path


def register_datasets(out_dir: str, entries: dict[str, dict]) -> None:
    r"""Add sharegpt ``entries`` (name -> extra keys) to ``out_dir``/dataset_info.json, keeping the other datasets."""
    info_path = os.path.join(out_dir, "dataset_info.json")
    info = {}
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)

    for dataset_name, extra in entries.items():
        info[dataset_name] = {
            "file_name": f"{dataset_name}.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "videos": "videos"},
            **extra,
        }

    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(info, f, ensure_ascii=False, indent=2)


def check_prompt(prompt: str) -> None:
    r"""Fail before writing anything if ``<ACTION>`` could not see the whole video."""
    if "<ACTION>" not in prompt or "<video>" not in prompt or prompt.index("<video>") > prompt.rindex("<ACTION>"):
        raise ValueError(f"The prompt {prompt!r} must hold <video> and, after it, <ACTION>.")


def write_label_names(out_dir: str, name: str, names: list[str]) -> str:
    r"""Write ``<name>_label_names.json`` under ``out_dir`` and return its file name (for ``label_names``)."""
    names_file = f"{name}_label_names.json"
    with open(os.path.join(out_dir, names_file), "w", encoding="utf-8") as f:
        json.dump(names, f, ensure_ascii=False, indent=2)
    return names_file


def write_dataset(out_dir: str, name: str, names: list[str], splits: dict[str, Split], prompt: str) -> dict[str, str]:
    r"""Write ``<name>_<split>.json`` and ``<name>_label_names.json``, register them; return name -> file."""
    check_prompt(prompt)
    os.makedirs(out_dir, exist_ok=True)
    names_file = write_label_names(out_dir, name, names)

    files = {}
    for split, converted in splits.items():
        dataset_name = f"{name}_{split}"
        examples = [to_example(video, label, names, prompt) for video, label in converted.items]
        files[dataset_name] = write_examples(out_dir, dataset_name, examples)
        per_class = Counter(label for _, label in converted.items)
        print(f"{dataset_name}: {len(converted.items)} examples, {len(per_class)} classes -> {files[dataset_name]}")
        for reason, count in sorted(converted.skipped.items()):
            print(f"  skipped {count} entries: {reason}")

    register_datasets(out_dir, {dataset_name: {"label_names": names_file} for dataset_name in files})
    return files
