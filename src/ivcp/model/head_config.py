"""The head's saved options (``action_decoder_config.json``): one schema, so a new option is one line here.

Training writes it; evaluation, inference, ``ivcp classify``, the API, export and the web UI read it.

Precedence, the same for every entry point (:func:`head_arguments`):

- an option the user does not give takes the value the head was trained with;
- an option the user gives explicitly wins, with a warning when it differs from the saved value (another
  ``action_threshold``, ``video_fps`` or ``cutoff_len`` is a legitimate choice at inference);
- except the options the head's weights or decoding are built for (``fixed``: the class count, the decoder type, the
  problem type, the classified layer, the hidden size): the loader refuses another value, naming the saved one
  (:func:`check_head_config`).

LLaMA Board's Evaluate tab sends every form field whether the user touched it or not, so its fields are defaults
(the saved values win over them), not explicit choices.
"""

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..log import get_logger


logger = get_logger(__name__)

HEAD_CONFIG_NAME = "action_decoder_config.json"
PREPROCESSING = "preprocessing"


@dataclass(frozen=True)
class HeadOption:
    r"""One saved option: the run's argument, its key in the config, and whether the head is built for its value."""

    argument: str | None  # the training / inference argument (None: not an argument, e.g. the backbone's size)
    key: str  # the key in action_decoder_config.json (under "preprocessing" when ``preprocessing``)
    fixed: bool = False  # the head's weights or decoding depend on it: another value is refused
    preprocessing: bool = False  # a data setting inference must reuse, saved under "preprocessing"


HEAD_OPTIONS: tuple[HeadOption, ...] = (
    HeadOption("num_action_classes", "num_classes", fixed=True),
    HeadOption(None, "hidden_size", fixed=True),
    HeadOption("action_decoder_type", "decoder_type", fixed=True),
    HeadOption("action_decoder_bias", "bias", fixed=True),
    HeadOption("action_problem_type", "problem_type", fixed=True),
    HeadOption("action_hidden_layer", "hidden_layer", fixed=True),
    HeadOption("action_decoder_hidden_size", "decoder_hidden_size"),  # its weight shapes are checked at load
    HeadOption("action_threshold", "threshold"),
    HeadOption("action_decoder_dropout", "dropout"),
    *(
        HeadOption(name, name, preprocessing=True)
        for name in (
            "template",
            "cutoff_len",
            "image_max_pixels",
            "image_min_pixels",
            "video_max_pixels",
            "video_min_pixels",
            "video_fps",
            "video_maxlen",
        )
    ),
)


def load_head_config(load_directory: str) -> dict[str, Any] | None:
    r"""The saved config in ``load_directory`` (written with the head by ``ActionDecoder.save_pretrained``), or None."""
    path = os.path.join(load_directory, HEAD_CONFIG_NAME)
    if not os.path.isfile(path):
        return None

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): restore it from the training output.") from err


def save_head_config(save_directory: str, config: Mapping[str, Any]) -> None:
    r"""Write ``config`` as the head's config atomically (a crash never leaves half a file)."""
    atomic_write(
        os.path.join(save_directory, HEAD_CONFIG_NAME),
        lambda path: _write_text(path, json.dumps(dict(config), indent=2, ensure_ascii=False) + "\n"),
    )


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    r"""``write`` a temporary file beside ``path``, then move it in place: readers see the old file or the new."""
    tmp_path = f"{path}.tmp.{os.getpid()}"
    write(tmp_path)
    os.replace(tmp_path, path)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _section(config: Mapping[str, Any], option: HeadOption) -> Mapping[str, Any]:
    return config.get(PREPROCESSING) or {} if option.preprocessing else config


def saved_value(config: Mapping[str, Any] | None, option: HeadOption) -> Any:
    r"""The option's saved value; None when the head was saved before the option existed (its default applies)."""
    return _section(config or {}, option).get(option.key)


def run_options(*arguments: Any) -> dict[str, Any]:
    r"""Each option's value in the run's argument objects (model, data, finetuning arguments), by argument name."""
    values = {}
    for option in HEAD_OPTIONS:
        for source in arguments:
            if option.argument is not None and hasattr(source, option.argument):
                values[option.argument] = getattr(source, option.argument)
                break

    return values


def to_config(options: Mapping[str, Any]) -> dict[str, Any]:
    r"""Options by argument name (the run's resolved values) as the saved config's keys; absent ones are left out."""
    config: dict[str, Any] = {}
    for option in HEAD_OPTIONS:
        name = option.argument or option.key
        if name in options:
            (config.setdefault(PREPROCESSING, {}) if option.preprocessing else config)[option.key] = options[name]

    return config


def saved_arguments(config: Mapping[str, Any]) -> dict[str, Any]:
    r"""The saved options as the arguments that rebuild the head and its preprocessing (missing keys left out)."""
    values = {option.argument: saved_value(config, option) for option in HEAD_OPTIONS if option.argument}
    return {argument: value for argument, value in values.items() if value is not None}


def head_arguments(config: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    r"""``given`` (the user's explicit arguments) completed with the head's saved options, by the module's rule."""
    saved = saved_arguments(config)
    fixed = {option.argument for option in HEAD_OPTIONS if option.fixed}
    for argument, value in given.items():
        if argument in saved and argument not in fixed and value is not None and value != saved[argument]:
            logger.warning_rank0(
                f"`{argument}: {value}` is given; the head was trained with {saved[argument]}: using {value}."
            )

    return {**saved, **{argument: value for argument, value in given.items() if value is not None}}


def check_head_config(directory: str, saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    r"""Refuse a head whose fixed options differ from the model built for this run, naming the setting to change."""
    for option in HEAD_OPTIONS:
        if not option.fixed:
            continue

        value, wanted = saved_value(saved, option), current.get(option.key)
        if value is not None and wanted is not None and value != wanted:
            fix = f"set `{option.argument}: {value}`" if option.argument else "use a head trained on this model"
            raise ValueError(
                f"The action head in {directory} has {option.key}={value}, but this run has {wanted}: {fix}."
            )
