"""Tokenize ``action_cls`` examples: encode with the template and mm_plugin, then cut right after ``<ACTION>``.

Under causal attention nothing after the last ``<ACTION>`` can change its hidden state, so the response tokens
are dead weight for the classification loss. Nothing is ever truncated blindly (that could cut video tokens):
an example that does not fit is rejected with a message that names it and says what to fix.
"""

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from llamafactory.data.processor.processor_utils import DatasetProcessor

from ..constants import DEFAULT_PROMPT
from ..model.action_decoder import ACTION_TOKEN
from ..model.multi_label import multi_hot
from .clips import CLIP_FIELD, WINDOWS_FIELD, video_clips, window_bounds
from .context import ActionDataError, MediaSupportError, describe_example, media_error
from .converter import INDEX_FIELD, LABEL_FIELD, SOURCE_FIELD
from .video_reader import VideoReadError
from .videos import check_video


MAX_REPORTED_PROBLEMS = 10


class LabelOutOfRangeError(ActionDataError):
    def __init__(self, label: int, message: str) -> None:
        super().__init__(message, kind="label out of range")
        self.label = label


def _class_id(value: Any, num_classes: int, where: str, label_names: tuple[str, ...] | None) -> int:
    r"""One class given as an id or, when names are known, a name -> its id (or an ActionDataError)."""
    if isinstance(value, str) and label_names:
        if value not in label_names:
            known = ", ".join(repr(name) for name in label_names[:10]) + (", ..." if len(label_names) > 10 else "")
            raise ActionDataError(
                f"{where} has `action_label` {value!r}, which is not one of the {len(label_names)} label names "
                f"({known}): fix the label or add the name to the label names.",
                kind="bad label",
            )
        return label_names.index(value)

    if isinstance(value, float) and value.is_integer():
        value = int(value)  # Arrow stores every label of a file as float once one of them is a float

    if isinstance(value, bool) or not isinstance(value, int):
        raise ActionDataError(
            f"{where} has `action_label` {value!r}, which is not an integer class id: use an integer in "
            f"[0, {num_classes})"
            + (", or give class names (`action_label_names`)." if isinstance(value, str) else "."),
            kind="bad label",
        )

    if not 0 <= value < num_classes:
        raise LabelOutOfRangeError(
            value,
            f"{where} has `action_label` {value}, outside [0, {num_classes}): fix the label, "
            f"or set `num_action_classes` to the number of classes of the data.",
        )

    return value


def parse_action_label(raw: str, num_classes: int, where: str, label_names: tuple[str, ...] | None = None) -> int:
    r"""Turn the stored JSON label (a class id, or a class name when names are known) into a class id."""
    value = json.loads(raw)
    if value is None:
        raise ActionDataError(
            f"{where} has no `action_label`: add the class id (an integer in [0, {num_classes})).", kind="bad label"
        )

    if isinstance(value, list):
        raise ActionDataError(
            f"{where} has `action_label` {value!r}, a list of classes (multi-label data), but this run is "
            "single-label: set `action_problem_type: multi_label`, or give each example one class id.",
            kind="bad label",
        )

    return _class_id(value, num_classes, where, label_names)


def parse_action_labels(
    raw: str, num_classes: int, where: str, label_names: tuple[str, ...] | None = None
) -> list[int]:
    r"""Multi-label: the stored JSON list of class ids or names (possibly empty) -> sorted class ids."""
    value = json.loads(raw)
    if value is None:
        raise ActionDataError(
            f"{where} has no `action_label`: add the list of its class ids (integers in [0, {num_classes})), or [] "
            "when no class is present.",
            kind="bad label",
        )

    if not isinstance(value, list):
        raise ActionDataError(
            f"{where} has `action_label` {value!r}, a single class, but this run is multi-label "
            f"(`action_problem_type: multi_label`): write it as a list, e.g. [{json.dumps(value)}], or set "
            "`action_problem_type: single_label`.",
            kind="bad label",
        )

    classes = [_class_id(item, num_classes, where, label_names) for item in value]
    if len(set(classes)) != len(classes):
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        raise ActionDataError(
            f"{where} has `action_label` {value!r}, which lists class(es) {repeated} more than once: list each "
            "class once.",
            kind="bad label",
        )

    return sorted(classes)


@dataclass
class ActionDatasetProcessor(DatasetProcessor):
    num_classes: int = 51
    label_names: tuple[str, ...] | None = None
    multi_label: bool = False  # `action_label` is a list of classes; the model gets multi-hot targets
    decode_videos: bool = True  # inference leaves the one decode to the collator
    dataset_media: bool = True  # media errors name the example and `media_dir`; inference's files are the caller's
    test_clips: int = 1  # evaluation: each example becomes this many rows, one per clip of its videos

    def _check_messages(self, messages: list[dict[str, str]], where: str) -> None:
        if len(messages) % 2 != 0 or len(messages) == 0:
            raise ActionDataError(
                f"{where} is not a valid conversation (turns must alternate user/assistant, starting with the user): "
                "fix its roles."
            )

        for message in messages:
            if message["role"] != "user" and ACTION_TOKEN in message["content"]:
                raise ActionDataError(
                    f"{where} has {ACTION_TOKEN} in a {message['role']} turn: move it to the user turn."
                )

        if not any(ACTION_TOKEN in message["content"] for message in messages if message["role"] == "user"):
            raise ActionDataError(
                f"{where} has no {ACTION_TOKEN} in its user turn: append it after the video, e.g. '{DEFAULT_PROMPT}'.",
                kind="no <ACTION>",
            )

    def _check_video_support(self) -> None:
        if self.template.mm_plugin.video_token is None:
            raise MediaSupportError(
                f"The data has videos, but template `{self.data_args.template}` takes none: use the template that fits "
                "the model (e.g. `qwen2_vl` for Qwen2-VL and Qwen2.5-VL)."
            )

        if getattr(self.processor, "video_processor", None) is None:
            raise MediaSupportError(
                "The data has videos, but the model has no video processor (AutoProcessor found none next to "
                "`model_name_or_path`): use a video LLM such as Qwen2-VL, whose folder holds its preprocessor configs."
            )

    def _video_settings(self) -> tuple[float, int]:
        return getattr(self.processor, "video_fps", 2.0), getattr(self.processor, "video_maxlen", 128)  # the plugin's

    def clip_examples(self, example: dict[str, Any], where: str) -> list[dict[str, Any]]:
        r"""The example once per clip (``test_clips``): clip k holds the k-th clip of each of its videos."""
        videos = example["_videos"] or []
        if self.test_clips == 1 or not videos:
            return [example]

        media_dir = self.data_args.media_dir if self.dataset_media else None
        per_video = []
        for video in videos:
            if not isinstance(video, str):
                raise ActionDataError(
                    f"{where} gives a video as frames, which cannot be cut into clips: give a file, or set "
                    "`action_test_clips: 1`.",
                    kind="video unreadable",
                )
            check_video(video, where, media_dir, *self._video_settings(), decode=False)  # a missing file's message
            try:
                per_video.append(video_clips(video, *self._video_settings(), self.test_clips))
            except VideoReadError as err:
                raise media_error(err, where, video) from err
        return [{**example, "_videos": list(clip)} for clip in zip(*per_video)]

    def tokenize(self, example: dict[str, Any], where: str) -> list[int]:
        r"""Check the conversation and its media, encode it, and cut it right after the last ``<ACTION>``."""
        prompt, response = example["_prompt"], example["_response"]
        self._check_messages(prompt + response, where)
        images, videos, audios = example["_images"] or [], example["_videos"] or [], example["_audios"] or []
        if videos:
            self._check_video_support()

        video_fps, video_maxlen = self._video_settings()
        media_where, media_dir = (where, self.data_args.media_dir) if self.dataset_media else (None, None)
        for video in videos:
            check_video(video, media_where, media_dir, video_fps, video_maxlen, decode=self.decode_videos)

        try:
            messages = self.template.mm_plugin.process_messages(
                prompt + response, images, videos, audios, self.processor
            )
            input_ids, _ = self.template.mm_plugin.process_token_ids(
                [], [], images, videos, audios, self.tokenizer, self.processor
            )
        except Exception as err:  # PyAV / PIL / plugin errors: say which example and which files, keep the kind
            raise media_error(err, media_where, videos + images) from err

        prompt_ids, _ = self.template.encode_oneturn(self.tokenizer, messages, example["_system"], example["_tools"])
        input_ids = input_ids + prompt_ids
        action_id = self.tokenizer.convert_tokens_to_ids(ACTION_TOKEN)
        action_position = max(i for i, token_id in enumerate(input_ids) if token_id == action_id)
        media_ids = {self.tokenizer.convert_tokens_to_ids(token) for token in self._media_tokens()}
        if any(token_id in media_ids for token_id in input_ids[action_position + 1 :]):
            raise ActionDataError(
                f"{where} puts {ACTION_TOKEN} before its video or image: the token must come after all media, "
                f"e.g. '{DEFAULT_PROMPT}'.",
                kind="<ACTION> before the media",
            )

        return input_ids[: action_position + 1]

    def check_length(self, input_ids: list[int], where: str) -> None:
        if len(input_ids) > self.data_args.cutoff_len:
            raise ActionDataError(
                f"{where} is {len(input_ids)} tokens long up to {ACTION_TOKEN}, more than cutoff_len="
                f"{self.data_args.cutoff_len}: raise `cutoff_len`, or lower `video_max_pixels`, `video_fps` or "
                "`video_maxlen` (truncating would cut video tokens).",
                kind="longer than cutoff_len",
            )

    def parse_label(self, example: dict[str, Any], where: str) -> int | list[int]:
        r"""The class id, or (multi-label) the sorted list of class ids, of one aligned example."""
        parse = parse_action_labels if self.multi_label else parse_action_label
        return parse(example[LABEL_FIELD], self.num_classes, where, self.label_names)

    def encode(self, example: dict[str, Any]) -> list[tuple[list[int], int | list[int], dict[str, Any]]]:
        r"""Per row (one, or one per clip): the input ids up to ``<ACTION>``, the target, and the row's example.

        The target is a class id, or (multi-label) a multi-hot list.
        """
        where = describe_example(example[SOURCE_FIELD], example[INDEX_FIELD])
        label = self.parse_label(example, where)
        if self.multi_label:
            label = multi_hot(label, self.num_classes)
        rows = []
        for clip in self.clip_examples(example, where):
            input_ids = self.tokenize(clip, where)
            self.check_length(input_ids, where)
            rows.append((input_ids, label, clip))
        return rows

    def _media_tokens(self) -> list[str]:
        plugin = self.template.mm_plugin
        return [token for token in (plugin.image_token, plugin.video_token, plugin.audio_token) if token]

    def preprocess_dataset(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        model_inputs = defaultdict(list)
        problems: list[str] = []
        labels_too_large: list[int] = []
        for i in range(len(examples["_prompt"])):
            example = {key: values[i] for key, values in examples.items()}
            try:
                rows = self.encode(example)
            except MediaSupportError:
                raise
            except ActionDataError as err:
                problems.append(str(err))
                if isinstance(err, LabelOutOfRangeError) and err.label >= self.num_classes:
                    labels_too_large.append(err.label)
                continue

            for clip_number, (input_ids, label, row) in enumerate(rows):
                model_inputs["input_ids"].append(input_ids)
                model_inputs["attention_mask"].append([1] * len(input_ids))
                model_inputs["action_labels"].append(label)
                model_inputs["images"].append(row["_images"])
                model_inputs["videos"].append(row["_videos"])
                model_inputs["audios"].append(row["_audios"])
                if self.test_clips > 1:  # Arrow keeps the path of a window only: its bounds go in a column
                    model_inputs[CLIP_FIELD].append(clip_number)
                    model_inputs[WINDOWS_FIELD].append(window_bounds(row["_videos"]) if row["_videos"] else [])

        if problems:
            shown = "\n  ".join(problems[:MAX_REPORTED_PROBLEMS])
            more = (
                f"\n  ... and {len(problems) - MAX_REPORTED_PROBLEMS} more"
                if len(problems) > MAX_REPORTED_PROBLEMS
                else ""
            )
            hint = ""
            if labels_too_large:
                hint = (
                    f"\nLabels go up to {max(labels_too_large)}, so the data has at least {max(labels_too_large) + 1} "
                    f"classes, but num_action_classes={self.num_classes}: set `num_action_classes: "
                    f"{max(labels_too_large) + 1}` (or more) if those labels are right."
                )
            raise ActionDataError(f"{len(problems)} example(s) cannot be used for action_cls:\n  {shown}{more}{hint}")

        return model_inputs

    def print_data_example(self, example: dict[str, Any]) -> None:
        print("input_ids:\n{}".format(example["input_ids"]))
        print("inputs:\n{}".format(self.tokenizer.decode(example["input_ids"], skip_special_tokens=False)))
        print("action_label:\n{}".format(example["action_labels"]))
