"""What to classify: videos given as arguments, a list file, a glob, a JSONL/CSV manifest or a registered dataset.

Every source becomes a list of :class:`Item` in one deterministic order (the order of the output file), so that all
ranks and shards of a run, and every rerun of it, agree on which video is which without talking to each other.
"""

import csv
import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Item:
    video: str  # as listed: the key of its output row, so a rerun finds it
    prompt: str  # the whole user turn, with <video> and <ACTION>
    extra: dict[str, Any] = field(default_factory=dict)  # manifest columns, carried into the output row


@dataclass
class Inputs:
    items: list[Item]
    duplicates: int  # videos listed more than once: classified once, under their first listing


def list_inputs(
    prompt: str,
    videos: list[str] = (),
    video_list: str | None = None,
    pattern: str | None = None,
    manifest: str | None = None,
    video_column: str = "video",
    dataset: str | None = None,
    dataset_dir: str = "data",
    media_dir: str | None = None,
) -> Inputs:
    r"""Every listed video once, in listing order: arguments, then the list file, glob, manifest and dataset."""
    items = [Item(video, prompt) for video in videos]
    if video_list:
        items += [Item(video, prompt) for video in _read_lines(video_list)]
    if pattern:
        matched = sorted(path for path in glob.glob(pattern, recursive=True) if os.path.isfile(path))
        if not matched:
            raise ValueError(f"--glob {pattern!r} matches no file: quote it so the shell does not expand it.")
        items += [Item(path, prompt) for path in matched]
    if manifest:
        items += [Item(row.pop(video_column), prompt, row) for row in _read_manifest(manifest, video_column)]
    if dataset:
        items += _read_dataset(dataset, dataset_dir, media_dir or dataset_dir)

    unique: dict[str, Item] = {}
    for item in items:
        unique.setdefault(item.video, item)

    return Inputs(list(unique.values()), len(items) - len(unique))


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _read_manifest(path: str, video_column: str) -> list[dict[str, Any]]:
    r"""The rows of a ``.csv`` or ``.jsonl``/``.json`` manifest; every row must name its video."""
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith(".csv"):
            rows = list(csv.DictReader(f))
        elif path.endswith(".json"):
            rows = json.load(f)
        else:
            rows = []
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path} line {number} is not JSON ({err}).") from err

    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get(video_column), str) or not row[video_column]:
            raise ValueError(
                f"{path} row {number} has no {video_column!r} path: every row needs one (or set --video_column)."
            )

    return rows


def _read_dataset(name: str, dataset_dir: str, media_dir: str) -> list[Item]:
    r"""A dataset registered in ``dataset_dir/dataset_info.json``, labelled or not, with each example's own prompt.

    Paths resolve against ``media_dir`` as in training; the prompt is the first user turn (it holds ``<video>`` and
    ``<ACTION>``, as the stage requires), so the model reads what it read in training.
    """
    from llamafactory.data.parser import get_dataset_list

    (attr,) = get_dataset_list([name], dataset_dir)
    path = os.path.join(dataset_dir, attr.dataset_name)
    if attr.load_from != "file" or not os.path.isfile(path):
        raise ValueError(
            f"dataset {name!r} is not a local JSON/JSONL file under {dataset_dir}: list its videos instead."
        )
    if not attr.videos:
        raise ValueError(f"dataset {name!r} has no `videos` column in {dataset_dir}/dataset_info.json.")

    with open(path, encoding="utf-8") as f:
        examples = json.load(f) if path.endswith(".json") else [json.loads(line) for line in f if line.strip()]

    items = []
    for i, example in enumerate(examples):
        videos = example.get(attr.videos) or []
        if len(videos) != 1:
            raise ValueError(f"dataset {name!r} example {i} has {len(videos)} videos: the classifier takes one each.")
        video = videos[0] if os.path.isabs(videos[0]) else os.path.join(media_dir, videos[0])
        items.append(Item(video, _user_turn(example, attr, f"dataset {name!r} example {i}")))

    return items


def _user_turn(example: dict[str, Any], attr: Any, where: str) -> str:
    if attr.formatting == "sharegpt":
        for message in example.get(attr.messages) or []:
            if message.get(attr.role_tag) == attr.user_tag:
                return message[attr.content_tag]
        raise ValueError(f"{where} has no user turn.")

    return "\n".join(part for part in (example.get(attr.prompt), example.get(attr.query)) if part)
