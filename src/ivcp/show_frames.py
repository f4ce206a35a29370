"""``ivcp show-frames``: which frames of each video the model sees, read by the same reader as training.

    ivcp show-frames clip.webm phone.mp4 --video_fps 2 --video_maxlen 16 --template qwen2_vl --json --sheet sheets/
    ivcp show-frames clip.avi examples/train_lora/qwen2vl_action_cls.yaml --sheet sheets/
    ivcp show-frames clip.mp4 --model Qwen/Qwen2-VL-2B-Instruct --template qwen2_vl --json
    ivcp show-frames long.mp4 --video_maxlen 8 --test_clips 4          # the frames of each of 4 clips
    ivcp show-frames long.mp4 --video_maxlen 8 --window 2 --stride 1   # of each timeline window

With a template (given, or from the training YAML) the frames are those its mm_plugin hands to the processor:
after resizing to ``video_max_pixels`` and the family's rules (Qwen2-VL repeats the last frame of an odd count).
With a model too (given, or the YAML's ``model_name_or_path``), its processor turns them into tokens and
``video_tokens`` says how many the video takes in the prompt (only the processor is loaded, not the weights).
"""

import argparse
import json
import math
import os
import sys
from typing import Any

import yaml


DEFAULTS = {  # LLaMA-Factory's defaults for video inputs (ModelArguments)
    "video_fps": 2.0,
    "video_maxlen": 128,
    "video_max_pixels": 256 * 256,
    "video_min_pixels": 16 * 16,
    "template": None,
    "model_name_or_path": None,
}


def add_parser(commands: Any) -> None:
    show = commands.add_parser(
        "show-frames",
        help="show which frames of each video the model sees",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("videos", nargs="+", help="video files, and optionally a training YAML to take settings from")
    show.add_argument("--template", default=None, help="LLaMA-Factory template (e.g. qwen2_vl): the family's rules")
    show.add_argument(
        "--model", dest="model_name_or_path", default=None, help="model whose processor counts the video tokens"
    )
    show.add_argument("--video_fps", type=float, default=None)
    show.add_argument("--video_maxlen", type=int, default=None)
    show.add_argument("--video_max_pixels", type=int, default=None)
    show.add_argument("--video_min_pixels", type=int, default=None)
    show.add_argument("--test_clips", type=int, default=1, help="show the frames of each of N clips (multi-clip)")
    show.add_argument("--window", type=float, default=None, help="show the frames of each timeline window (s)")
    show.add_argument("--stride", type=float, default=None, help="seconds between timeline windows (default: window)")
    show.add_argument("--json", action="store_true", help="print one JSON object per video per line")
    show.add_argument("--sheet", default=None, metavar="DIR", help="write a PNG contact sheet per video into DIR")


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    settings, videos = dict(DEFAULTS), []
    for path in args.videos:
        if path.endswith((".yaml", ".yml")):
            with open(path, encoding="utf-8") as f:
                config = yaml.safe_load(f) or {}
            settings.update({key: config[key] for key in DEFAULTS if config.get(key) is not None})
        else:
            videos.append(path)
    settings.update({key: getattr(args, key) for key in DEFAULTS if getattr(args, key) is not None})
    return settings, videos


def _plugin(template_name: str | None):
    if template_name is None:
        return None

    from llamafactory.data.template import TEMPLATES

    from .data.video_plugin import with_video_reader

    if template_name not in TEMPLATES:
        raise SystemExit(f"ivcp show-frames: unknown template {template_name!r}.")
    return with_video_reader(TEMPLATES[template_name]).mm_plugin


def _processor(settings: dict[str, Any]) -> Any:
    r"""The model's processor, set up by LLaMA-Factory with the video settings as training sets it up."""
    if settings["model_name_or_path"] is None:
        return None
    if settings["template"] is None:
        raise SystemExit("ivcp show-frames: --model needs --template (the family's rules for the frames).")

    from llamafactory.hparams import ModelArguments

    from .model.loader import load_tokenizer_explained

    keys = ("model_name_or_path", "video_fps", "video_maxlen", "video_max_pixels", "video_min_pixels")
    try:
        processor = load_tokenizer_explained(ModelArguments(**{key: settings[key] for key in keys}))["processor"]
    except OSError as err:  # offline and not cached, or not a model folder: one line, not a traceback
        raise SystemExit(f"ivcp show-frames: {err}") from err
    if processor is None:
        raise SystemExit(f"ivcp show-frames: {settings['model_name_or_path']!r} has no multimodal processor.")
    return processor


def _video_tokens(video: str, plugin: Any, processor: Any) -> int:
    r"""How many video tokens the plugin puts in the prompt for ``video``: what the model's sequence holds."""
    from llamafactory.extras.constants import VIDEO_PLACEHOLDER

    messages = [{"role": "user", "content": VIDEO_PLACEHOLDER}]
    return plugin.process_messages(messages, [], [video], [], processor)[0]["content"].count(plugin.video_token)


def describe(video: str, settings: dict[str, Any], plugin: Any, processor: Any = None) -> tuple[dict[str, Any], list]:
    r"""The reader's decision for ``video``, the frames as the processor gets them, and with a processor the tokens."""
    from .data.video_reader import plan_video, read_frames

    plan = plan_video(video, settings["video_fps"], settings["video_maxlen"])
    if plugin is None:
        frames = read_frames(plan)
    else:
        frames = plugin._regularize_videos(
            [video],
            image_max_pixels=settings["video_max_pixels"],
            image_min_pixels=settings["video_min_pixels"],
            video_fps=settings["video_fps"],
            video_maxlen=settings["video_maxlen"],
        )["videos"][0]
    info = plan.summary()
    info["frame_size"] = [frames[0].height, frames[0].width]
    info["frames_to_processor"] = len(frames)
    if processor is not None:
        info["video_tokens"] = _video_tokens(video, plugin, processor)
    return info, frames


def parts(video: str, settings: dict[str, Any], test_clips: int, window: float | None, stride: float | None) -> list:
    r"""``video`` itself, or its clips (``test_clips``) or timeline windows, as the classifier reads them."""
    from .data.video_reader import VideoWindow, plan_video
    from .model.timeline import clip_windows, timeline_windows

    if test_clips == 1 and window is None:
        return [video]
    duration = plan_video(video, settings["video_fps"], settings["video_maxlen"]).duration
    spans = clip_windows(duration, test_clips) if window is None else timeline_windows(duration, window, stride)
    return [VideoWindow(video, start, end) for start, end in spans]


def write_sheet(path: str, info: dict[str, Any], frames: list) -> None:
    r"""The frames in a grid, each titled with its index in the file and its time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(8, len(frames))
    rows = math.ceil(len(frames) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2 * rows + 0.4), squeeze=False)
    labels = list(zip(info["sampled_frames"], info["timestamps"]))
    for i, axis in enumerate(axes.flat):
        axis.axis("off")
        if i < len(frames):
            axis.imshow(frames[i])
            index, time = labels[min(i, len(labels) - 1)]
            axis.set_title(f"#{index}  {time:.2f} s" + (" (repeat)" if i >= len(labels) else ""), fontsize=8)
    figure.suptitle(
        f"{os.path.basename(info['video'])}: {len(labels)} of {info['frames_in_file']} frames, "
        f"{info['duration']:.2f} s, display rotation {info['rotation']} degrees counterclockwise",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _print(video: str, info: dict[str, Any], tokens: bool, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info), flush=True)
        return

    window = f" [{info['window'][0]:g} s, {info['window'][1]:g} s)" if "window" in info else ""
    print(
        f"{video}{window}: {len(info['sampled_frames'])} of {info['frames_in_file']} frames "
        f"{info['sampled_frames']} at {info['timestamps']} s, size {info['frame_size']}, "
        f"rotation {info['rotation']}" + (f", {info['video_tokens']} video tokens" if tokens else ""),
        flush=True,
    )


def show_frames(args: argparse.Namespace) -> int:
    from .data.video_reader import VideoReadError

    settings, videos = _settings(args)
    plugin, processor = _plugin(settings["template"]), _processor(settings)
    if args.sheet:
        os.makedirs(args.sheet, exist_ok=True)

    failed = 0
    for video in videos:
        try:
            for k, part in enumerate(parts(video, settings, args.test_clips, args.window, args.stride)):
                info, frames = describe(part, settings, plugin, processor)
                _print(video, info, processor is not None, args.json)
                if args.sheet:
                    suffix = f".part{k}" if "window" in info else ""
                    write_sheet(os.path.join(args.sheet, f"{os.path.basename(video)}{suffix}.png"), info, frames)
        except VideoReadError as err:
            failed += 1
            print(f"ivcp show-frames: {err}", file=sys.stderr)

    if failed:
        print(f"ivcp show-frames: {failed} of {len(videos)} videos cannot be read.", file=sys.stderr)
    return 1 if failed else 0
