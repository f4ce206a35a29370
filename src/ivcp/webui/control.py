"""What the action_cls widgets of LLaMA Board compute: dataset lists, arguments, results, and try-it predictions."""

import json
import os
from typing import TYPE_CHECKING, Any

from llamafactory.extras.constants import PEFT_METHODS
from llamafactory.webui.common import get_save_dir, load_dataset_info

from ..constants import ACTION_STAGE
from ..model.head_config import head_arguments, load_head_config
from ..model.loader import find_head_directory
from .options import ACTION_OPTIONS, option_arguments


if TYPE_CHECKING:
    from collections.abc import Callable

    from matplotlib.figure import Figure


ACTION_LABEL_COLUMN = "action_label"
GENERATION_ARGS = ("predict_with_generate", "max_new_tokens", "top_p", "temperature")
RESULT_METRICS = ("accuracy", "macro_f1")  # and top<k>_accuracy, whose k depends on the class count


def _first_record(path: str) -> dict[str, Any] | None:
    r"""The first example of a local .json / .jsonl dataset file (None for other formats or unreadable files)."""
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                line = f.readline()
                return json.loads(line) if line.strip() else None

            if path.endswith(".json"):
                records = json.load(f)
                return records[0] if isinstance(records, list) and records else None
    except (OSError, json.JSONDecodeError):
        return None

    return None


def has_action_labels(attr: dict[str, Any], dataset_dir: str) -> bool:
    r"""A dataset_info.json entry whose examples carry an action label (declared, or found in the first example)."""
    if "label_names" in attr or ACTION_LABEL_COLUMN in attr.get("columns", {}):
        return True

    if "file_name" not in attr:
        return False

    record = _first_record(os.path.join(dataset_dir, attr["file_name"]))
    return isinstance(record, dict) and ACTION_LABEL_COLUMN in record


def list_action_datasets(dataset_dir: str) -> list[str]:
    r"""The datasets of ``dataset_dir`` that the action_cls stage can train on."""
    return [name for name, attr in load_dataset_info(dataset_dir).items() if has_action_labels(attr, dataset_dir)]


def action_train_args(get: "Callable[[str], Any]") -> dict[str, Any]:
    r"""The action_cls options of the Train tab as training arguments."""
    return option_arguments({option.name: get(f"train.{option.name}") for option in ACTION_OPTIONS})


def checkpoint_head(args: dict[str, Any]) -> str | None:
    r"""The folder holding the action head among the checkpoints chosen in the top bar, if any."""
    adapters = args.get("adapter_name_or_path")
    return find_head_directory(None, adapters.split(",") if adapters else None, args["model_name_or_path"])


def action_eval_args(args: dict[str, Any]) -> dict[str, Any] | None:
    r"""LLaMA Board's evaluation arguments turned into an action_cls evaluation when the checkpoint holds a head.

    The head's class count, decoder and preprocessing (template, cutoff_len, video settings) are those it was
    trained with: LLaMA Board sends every form field, touched or not, so they are defaults, not the user's explicit
    choices (the precedence rule of :mod:`ivcp.model.head_config`). Generation settings do not apply to a classifier.
    """
    head_directory = checkpoint_head(args)
    head_config = load_head_config(head_directory) if head_directory else None
    if head_config is None:
        return None

    action_args = {key: value for key, value in args.items() if key not in GENERATION_ARGS}
    action_args.update(stage=ACTION_STAGE, **head_arguments(head_config, {}))
    return {key: value for key, value in action_args.items() if value is not None}


def _is_result_metric(key: str) -> bool:
    name = key.split("_", 1)[-1]  # without the eval_ / predict_ prefix
    return name in RESULT_METRICS or (name.startswith("top") and name.endswith("_accuracy"))


def load_action_results(output_path: str) -> tuple[str, str | None] | None:
    r"""Accuracy, top-k accuracy and macro-F1 of an action_cls evaluation as Markdown, and its confusion matrix."""
    results_path = os.path.join(output_path, "all_results.json")
    if not os.path.isfile(results_path):
        return None

    with open(results_path, encoding="utf-8") as f:
        results = json.load(f)

    rows = [f"| {key} | {value:.4f} |" for key, value in results.items() if _is_result_metric(key)]
    if not rows:
        return None

    matrix_path = os.path.join(output_path, "confusion_matrix.png")
    table = "\n".join(["| metric | value |", "| --- | --- |", *rows])
    return table, matrix_path if os.path.isfile(matrix_path) else None


def checkpoint_location(
    model_name: str, model_path: str, finetuning_type: str, checkpoint_path: str | list[str] | None
) -> tuple[str, str | None]:
    r"""(model path, comma-joined adapter paths) of the checkpoint chosen in the top bar, as LLaMA Board's runner."""
    if not checkpoint_path:
        return model_path, None

    if finetuning_type in PEFT_METHODS:
        return model_path, ",".join(get_save_dir(model_name, finetuning_type, adapter) for adapter in checkpoint_path)

    return get_save_dir(model_name, finetuning_type, checkpoint_path), None


def probability_chart(top_k: list[dict[str, Any]]) -> "Figure":
    r"""A horizontal bar chart of the top classes, the most likely on top."""
    from matplotlib.figure import Figure

    labels = [item.get("name", str(item["class"])) for item in top_k][::-1]
    probabilities = [item["probability"] for item in top_k][::-1]
    figure = Figure(figsize=(6, 0.5 * len(labels) + 1.2), tight_layout=True)
    axes = figure.add_subplot()
    bars = axes.barh(labels, probabilities, color="#4c72b0")
    axes.bar_label(bars, labels=[f"{p:.1%}" for p in probabilities], padding=3)
    axes.set_xlim(0, 1.15)
    axes.set_xlabel("probability")
    return figure


def timeline_chart(result: dict[str, Any]) -> "Figure":
    r"""Each shown class's probability at the centre of every window, the merged segments shaded in its colour."""
    from matplotlib.figure import Figure

    timeline = result["timeline"]
    centres = [(window["start"] + window["end"]) / 2 for window in timeline["windows"]]
    figure = Figure(figsize=(7, 3.2), tight_layout=True)
    axes = figure.add_subplot()
    colours = {}
    for item in result["classes"]:
        line = [window["probabilities"][item["class"]] for window in timeline["windows"]]
        (drawn,) = axes.plot(centres, line, marker="o", label=item.get("name", str(item["class"])))
        colours[item["class"]] = drawn.get_color()
    for segment in timeline["segments"]:
        axes.axvspan(segment["start"], segment["end"], color=colours.get(segment["class"], "grey"), alpha=0.12)
    axes.set_xlim(0, timeline["windows"][-1]["end"])
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("seconds (window centres)")
    axes.set_ylabel("probability")
    axes.legend(loc="upper right", fontsize="small")
    return figure


def segments_markdown(segments: list[dict[str, Any]], title: str) -> str:
    r"""The timeline's merged segments in time order: when, which class, its mean probability."""
    rows = [f"| {s['start']:.2f} s – {s['end']:.2f} s | {s['label']} | {s['score']:.2%} |" for s in segments]
    return "\n".join([f"**{title}**", "", "| time | class | score |", "| --- | --- | --- |", *rows])


def result_markdown(classes: list[dict[str, Any]], title: str) -> str:
    r"""The top class, then every shown class with its probability."""
    rows = [f"| {item['class']} | {item.get('name', '')} | {item['probability']:.2%} |" for item in classes]
    top = f"{classes[0].get('name', classes[0]['class'])}** ({classes[0]['probability']:.2%})" if classes else "-**"
    return "\n".join([f"**{title}: {top}", "", "| class | name | probability |", "| --- | --- | --- |", *rows])


def sampled_frames(video: str, video_fps: float, video_maxlen: int) -> list[tuple[Any, str]]:
    r"""The frames the classifier saw (the training reader's choice), each captioned with its index and time."""
    from ..data.video_reader import plan_video, read_frames

    plan = plan_video(video, video_fps, video_maxlen)
    captions = [f"#{index} {time:.2f} s" for index, time in zip(plan.sample_indices, plan.timestamps)]
    return list(zip(read_frames(plan), captions))
