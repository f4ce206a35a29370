"""A synthetic multi-label video data set: each clip holds one or two of several coloured objects.

The classes are the colours; a clip's ``action_label`` is the list of the colours it shows (by name, with the names
registered as the datasets' ``label_names``). Half of the clips hold two objects, so a single-label classifier, which
names one class per clip, cannot be fully right on more than half of them.
"""

import os
from typing import TYPE_CHECKING

import numpy as np

from ..datasets.writer import register_datasets, sft_example, write_examples, write_label_names
from .motion_videos import write_clip


if TYPE_CHECKING:
    from numpy.random import Generator


PROMPT = "<video>Which coloured objects does the video show?<ACTION>"
COLOURS = {"red": (230, 40, 40), "green": (40, 210, 60), "blue": (50, 80, 240), "yellow": (235, 225, 50)}


def _render_objects(colours: list[str], rng: "Generator", num_frames: int, size: int) -> np.ndarray:
    r"""Frames of shape (num_frames, size, size, 3): one square per colour, each drifting in its own half."""
    background = rng.integers(0, 50, size=3)
    noise_std = float(rng.uniform(0.0, 12.0))
    halves = rng.permutation(2)  # left or right half of the frame for each object, so they never overlap
    objects = []
    for colour, half in zip(colours, halves):
        side = int(rng.integers(22, 30))
        row = int(rng.integers(0, size - side))
        col = int(half * size // 2 + rng.integers(0, size // 2 - side))
        step = rng.integers(-1, 2, size=2)  # a slow drift of at most one pixel per frame and axis
        objects.append((COLOURS[colour], side, row, col, step))

    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = background + rng.normal(0.0, noise_std, size=(size, size, 3))
        for colour, side, row, col, (step_row, step_col) in objects:
            top = int(np.clip(row + step_row * t, 0, size - side))
            left = int(np.clip(col + step_col * t, 0, size - side))
            frame[top : top + side, left : left + side] = colour
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)

    return frames


def make_object_dataset(
    out_dir: str,
    num_train: int,
    num_test: int,
    seed: int = 0,
    prompt: str = PROMPT,
    name: str = "objects",
    video_dir: str | None = None,
    num_frames: int = 8,
    size: int = 64,
) -> dict[str, str]:
    r"""Write ``{name}_train`` / ``{name}_test`` (clips, sharegpt files, label names) and register them.

    Every clip holds one object (even index) or two (odd index) of distinct colours, chosen at random. Video paths
    are relative to ``out_dir`` (use it as both ``dataset_dir`` and ``media_dir``); the clips go to ``video_dir``
    (default ``{name}_videos``).

    Returns:
        The data set names mapped to their JSON files.
    """
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    os.makedirs(out_dir, exist_ok=True)
    names_file = write_label_names(out_dir, name, names)
    files = {}
    for split, count in (("train", num_train), ("test", num_test)):
        examples = []
        for index in range(count):
            colours = [names[c] for c in sorted(rng.choice(len(names), size=1 + index % 2, replace=False))]
            video = f"{video_dir or name + '_videos'}/{split}_{index:05d}.mp4"
            write_clip(os.path.join(out_dir, video), _render_objects(colours, rng, num_frames, size))
            example = sft_example(video, prompt, " and ".join(colours))
            examples.append({**example, "action_label": colours})

        files[f"{name}_{split}"] = write_examples(out_dir, f"{name}_{split}", examples)

    register_datasets(out_dir, {dataset_name: {"label_names": names_file} for dataset_name in files})
    return files
