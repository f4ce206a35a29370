"""A second synthetic motion data set, independent of :mod:`.motion_videos`: a disc moving diagonally.

Four classes (up-left, up-right, down-left, down-right); another frame size (48), speeds (4-6 pixels a frame on
each axis), shape (a disc, not a square), a static distractor square and a gradient background.
The disc wraps around the frame edges and starts anywhere, so a single frame carries no class information: learning
it shows that a recipe's seed stability is not a property of one generator (``benchmarks/learning_parity.py``).
"""

import os
from typing import TYPE_CHECKING

import numpy as np

from .. import DEFAULT_PROMPT
from ..datasets.writer import register_datasets, to_example, write_examples
from .motion_videos import write_clip


if TYPE_CHECKING:
    from numpy.random import Generator


DIAGONALS = ("up-left", "up-right", "down-left", "down-right")
_STEPS = {"up-left": (-1, -1), "up-right": (-1, 1), "down-left": (1, -1), "down-right": (1, 1)}  # (row, column)


def _render_frames(diagonal: str, rng: "Generator", num_frames: int, size: int) -> np.ndarray:
    r"""Frames (num_frames, size, size, 3), uint8: a disc moving along ``diagonal`` past a static square."""
    radius = float(rng.uniform(7.0, 11.0))
    speed = int(rng.integers(4, 7))  # pixels per frame on each axis
    colour = rng.integers(150, 256, size=3)
    top, bottom = rng.integers(0, 70, size=3), rng.integers(0, 70, size=3)
    background = top + (bottom - top) * np.linspace(0.0, 1.0, size)[:, None, None]  # a vertical gradient
    noise_std = float(rng.uniform(0.0, 15.0))
    side = int(rng.integers(6, 12))
    square_at = rng.integers(0, size - side, size=2)
    square_colour = rng.integers(80, 200, size=3)
    start = rng.uniform(0, size, size=2)
    step = np.array(_STEPS[diagonal]) * speed
    rows, cols = np.mgrid[0:size, 0:size]

    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = background + rng.normal(0.0, noise_std, size=(size, size, 3))
        frame[square_at[0] : square_at[0] + side, square_at[1] : square_at[1] + side] = square_colour
        centre = start + step * t
        d_row = (rows - centre[0] + size / 2) % size - size / 2  # distances on the torus: the disc wraps around
        d_col = (cols - centre[1] + size / 2) % size - size / 2
        frame[d_row**2 + d_col**2 <= radius**2] = colour
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)

    return frames


def make_diagonal_dataset(
    out_dir: str,
    num_train_per_class: int,
    num_test_per_class: int,
    seed: int = 0,
    prompt: str = DEFAULT_PROMPT,
    name: str = "diagonal",
    num_frames: int = 8,
    size: int = 48,
) -> dict[str, str]:
    r"""Write train and test clips, their sharegpt files and ``dataset_info.json`` under ``out_dir``.

    Like :func:`.motion_videos.make_motion_dataset`: paths relative to ``out_dir``, ``action_label`` indexes
    :data:`DIAGONALS`; returns ``{name}_train`` and ``{name}_test`` mapped to their JSON files.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    files = {}
    for split, num_per_class in (("train", num_train_per_class), ("test", num_test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(len(DIAGONALS)), num_per_class))
        examples = []
        for index, label in enumerate(labels.tolist()):
            video = f"videos/{name}_{split}_{index:05d}.mp4"
            write_clip(os.path.join(out_dir, video), _render_frames(DIAGONALS[label], rng, num_frames, size))
            examples.append(to_example(video, label, list(DIAGONALS), prompt))
        files[f"{name}_{split}"] = write_examples(out_dir, f"{name}_{split}", examples)

    register_datasets(out_dir, {dataset_name: {} for dataset_name in files})
    return files
