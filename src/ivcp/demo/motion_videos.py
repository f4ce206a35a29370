"""A synthetic 4-class motion-direction video data set (real H.264 mp4 files) in LLaMA-Factory's sharegpt format.

Each clip shows a bright square of random colour and size on a noisy background, moving steadily left, right, up
or down. The square wraps around the frame edges (toroidal motion) and starts at a uniformly random position, so
every single frame has the same distribution in every class: only the motion over time tells the classes apart.
"""

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ..constants import DEFAULT_PROMPT
from ..datasets.writer import register_datasets, sft_example, to_example, write_examples


if TYPE_CHECKING:
    from numpy.random import Generator


DIRECTIONS = ("left", "right", "up", "down")
_MOTION_PHRASES = {"left": "to the left", "right": "to the right", "up": "upwards", "down": "downwards"}
VIDEO_QA = (  # (question, answer template) pairs of the video QA demo
    ("<video>Which way does the square move?", "It moves {motion}."),
    (
        "<video>Describe what happens in this video.",
        "A bright square slides steadily {motion} over a noisy background.",
    ),
    ("<video>Does the square move {other}?", "No, it moves {motion}."),
)
_STEPS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (row, column) per frame


def render_motion_frames(direction: str, rng: "Generator", num_frames: int, size: int) -> np.ndarray:
    r"""Frames of shape (num_frames, size, size, 3), uint8, of a square moving in ``direction``."""
    square = int(rng.integers(12, 21))
    speed = int(rng.integers(3, 6))  # pixels per frame
    colour = rng.integers(160, 256, size=3)
    background = rng.integers(0, 64, size=3)
    noise_std = float(rng.uniform(0.0, 20.0))
    start_row, start_col = (int(value) for value in rng.integers(0, size, size=2))
    step_row, step_col = _STEPS[direction]

    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = background + rng.normal(0.0, noise_std, size=(size, size, 3))
        rows = (start_row + step_row * speed * t + np.arange(square)) % size
        cols = (start_col + step_col * speed * t + np.arange(square)) % size
        frame[np.ix_(rows, cols)] = colour
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)

    return frames


def write_motion_clip(
    path: str, direction: str, rng: "Generator", num_frames: int = 8, size: int = 64, fps: int = 8
) -> None:
    r"""Write an H.264 (yuv420p) mp4 of a random bright square moving steadily in ``direction``."""
    if direction not in _STEPS:
        raise ValueError(f"Unknown direction {direction!r}: use one of {DIRECTIONS}.")

    write_clip(path, render_motion_frames(direction, rng, num_frames, size), fps)


def write_clip(path: str, frames: np.ndarray, fps: int = 8) -> None:
    r"""Write ``frames`` (num_frames, size, size, 3), uint8 RGB, as an H.264 (yuv420p) mp4."""
    import av

    size = frames.shape[1]
    if size % 2 != 0:
        raise ValueError("yuv420p needs an even frame size.")

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = size
        stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "medium", "threads": "1", "bframes": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)

        for packet in stream.encode():
            container.mux(packet)


def _write_split(
    out_dir: str, video_dir: str, split: str, num_per_class: int, rng: "Generator", prompt: str
) -> list[dict[str, object]]:
    r"""Write ``num_per_class`` clips per direction, in a shuffled class order, and return their examples."""
    labels = np.repeat(np.arange(len(DIRECTIONS)), num_per_class)
    rng.shuffle(labels)
    examples = []
    for index, label in enumerate(labels.tolist()):
        direction = DIRECTIONS[label]
        video = f"{video_dir}/{split}_{index:05d}.mp4"
        write_motion_clip(os.path.join(out_dir, video), direction, rng)
        examples.append(to_example(video, label, list(DIRECTIONS), prompt))

    return examples


def make_motion_dataset(
    out_dir: str,
    num_train_per_class: int,
    num_test_per_class: int,
    seed: int = 0,
    prompt: str = DEFAULT_PROMPT,
    name: str = "motion",
    video_dir: str = "videos",
) -> dict[str, str]:
    r"""Write train and test clips, their sharegpt files and ``dataset_info.json`` under ``out_dir``.

    Video paths in the JSON files are relative to ``out_dir`` (use it as both ``dataset_dir`` and ``media_dir``).
    ``action_label`` is the index of the direction in :data:`DIRECTIONS`.

    Returns:
        The data set names (``{name}_train``, ``{name}_test``) mapped to their JSON files.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, video_dir), exist_ok=True)
    files = {}
    for split, num_per_class in (("train", num_train_per_class), ("test", num_test_per_class)):
        examples = _write_split(out_dir, video_dir, split, num_per_class, rng, prompt)
        files[f"{name}_{split}"] = write_examples(out_dir, f"{name}_{split}", examples)

    register_datasets(out_dir, {dataset_name: {} for dataset_name in files})  # keeps the other datasets
    return files


def motion_stage_config(model_dir: str, data_dir: str, output_dir: str, **overrides: Any) -> dict[str, Any]:
    r"""The ``action_cls`` arguments that train ``model_dir`` (a tiny Qwen2-VL) on ``motion_train`` in ``data_dir``.

    What the tests and benchmarks share; each adds its own recipe (finetuning type, steps, learning rate) on top.
    """
    return {
        "model_name_or_path": model_dir,
        "stage": "action_cls",
        "do_train": True,
        "dataset": "motion_train",
        "dataset_dir": data_dir,
        "media_dir": data_dir,
        "template": "qwen2_vl",
        "cutoff_len": 1024,
        "video_fps": 8,
        "output_dir": output_dir,
        "num_action_classes": len(DIRECTIONS),
        "report_to": "none",
        **overrides,
    }


def write_video_qa_demo(out_dir: str, action_examples: list[dict], name: str = "mllm_video_demo") -> str:
    r"""A small video QA set (``sft``) on clips of ``action_examples``: one question per clip, cycling the questions.

    Registered as ``name`` in ``out_dir``/dataset_info.json, like LLaMA-Factory's ``mllm_video_demo``.
    """
    examples = []
    for index, action_example in enumerate(action_examples):
        direction = DIRECTIONS[action_example["action_label"]]
        other = DIRECTIONS[(action_example["action_label"] + 1) % len(DIRECTIONS)]
        question, answer = VIDEO_QA[index % len(VIDEO_QA)]
        phrases = {"motion": _MOTION_PHRASES[direction], "other": _MOTION_PHRASES[other]}
        examples.append(sft_example(action_example["videos"][0], question.format(**phrases), answer.format(**phrases)))

    path = write_examples(out_dir, name, examples)
    register_datasets(out_dir, {name: {}})
    return path
