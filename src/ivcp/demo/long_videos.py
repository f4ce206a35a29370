"""Generated long videos in which the action is short: the motion of :mod:`.motion_videos` fills only a small part.

Each clip holds a bright square on a noisy background; for ``event_fraction`` of the clip, at a random place, the
square moves steadily in one direction (the class), and before and after it stands still (the frame at the start
and end of the motion, with fresh noise in every frame). No single frame tells the classes apart, and a model that
samples a few frames over the whole clip sees the motion in few or none of them: what multi-clip testing and the
timeline are for. The true interval of the motion is written with each example (``event``: start, end seconds).

:func:`write_two_action_clips` writes videos in which one motion follows another, with each motion alone beside
them: what a timeline must split in two, in order.
"""

import os
from typing import TYPE_CHECKING

import numpy as np

from ..constants import DEFAULT_PROMPT
from ..datasets.writer import register_datasets, to_example, write_examples
from .motion_videos import DIRECTIONS, render_motion_frames, write_clip


if TYPE_CHECKING:
    from numpy.random import Generator


def render_long_motion(
    direction: str, rng: "Generator", num_frames: int = 80, event_fraction: float = 0.1, size: int = 64
) -> tuple[np.ndarray, tuple[int, int]]:
    r"""Frames (num_frames, size, size, 3) uint8 and the [first, last + 1) frames of the motion."""
    event = max(2, round(num_frames * event_fraction))
    if event > num_frames:
        raise ValueError(f"the motion ({event} frames) does not fit in {num_frames} frames.")

    start = int(rng.integers(0, num_frames - event + 1))
    motion = render_motion_frames(direction, rng, event, size)
    held = np.concatenate(
        [np.repeat(motion[:1], start, 0), motion, np.repeat(motion[-1:], num_frames - start - event, 0)]
    )
    noise = rng.normal(0.0, 6.0, size=held.shape)
    noise[start : start + event] = 0.0  # the motion's frames have their own noise
    return np.clip(held + noise, 0, 255).astype(np.uint8), (start, start + event)


TWO_ACTION_PAIRS = (("right", "up"), ("left", "down"), ("up", "left"), ("down", "right"))


def write_two_action_clips(
    out_dir: str,
    pairs: tuple[tuple[str, str], ...] = TWO_ACTION_PAIRS,
    seed: int = 7,
    frames_each: int = 8,
    fps: int = 8,
    size: int = 64,
) -> list[tuple[str, str, str]]:
    r"""Per pair of motions, (first alone, second alone, first then second) mp4 paths under ``out_dir``.

    Each motion lasts ``frames_each / fps`` seconds, so in the joined clip the second starts exactly there.
    """
    rng = np.random.default_rng(seed)
    clips = []
    for i, (first, second) in enumerate(pairs):
        a, b = (
            render_motion_frames(first, rng, frames_each, size),
            render_motion_frames(second, rng, frames_each, size),
        )
        paths = tuple(os.path.join(out_dir, f"{i}_{name}.mp4") for name in ("a", "b", "ab"))
        for path, frames in zip(paths, (a, b, np.concatenate([a, b]))):
            write_clip(path, frames, fps)
        clips.append(paths)
    return clips


def make_long_motion_dataset(
    out_dir: str,
    num_per_class: int,
    seed: int = 0,
    num_frames: int = 80,
    event_fraction: float = 0.1,
    fps: int = 8,
    name: str = "long_motion",
    prompt: str = DEFAULT_PROMPT,
) -> str:
    r"""Write ``num_per_class`` long clips per direction and their sharegpt file ``{name}`` under ``out_dir``.

    Each example also holds ``event``: the seconds [start, end) of the motion. Returns the JSON file.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(DIRECTIONS)), num_per_class)
    rng.shuffle(labels)
    examples = []
    for index, label in enumerate(labels.tolist()):
        video = f"{name}/{index:05d}.mp4"
        frames, (first, stop) = render_long_motion(DIRECTIONS[label], rng, num_frames, event_fraction)
        write_clip(os.path.join(out_dir, video), frames, fps)
        examples.append({**to_example(video, label, list(DIRECTIONS), prompt), "event": [first / fps, stop / fps]})

    path = write_examples(out_dir, name, examples)
    register_datasets(out_dir, {name: {}})
    return path
