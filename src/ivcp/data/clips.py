"""A dataset's videos as clips (multi-clip evaluation) or as random draws (training's ``random_segment``).

Both are paths that carry more than a path (:class:`~ivcp.data.video_reader.VideoWindow`,
:class:`~ivcp.data.video_reader.VideoDraw`), and Arrow keeps only the string. So an evaluation row keeps its clip's
windows in a column of its own (:data:`WINDOWS_FIELD`), which the collator turns back into windows; the processor
counted the row's tokens from the same windows, so the reader's plan is the one decision for both. Training draws
are made in the collator, from the seed and the epoch, as many frames as the uniform plan counted tokens for.
"""

import zlib
from collections.abc import Sequence
from typing import Any

from ..model.timeline import clip_windows
from .video_reader import VideoDraw, VideoWindow, plan_video


CLIP_FIELD = "action_clip"  # an evaluation row's clip number in its video; 0 starts the next video
WINDOWS_FIELD = "action_windows"  # per video of the row, [start, end] seconds of its clip
UNIFORM, RANDOM_SEGMENT = "uniform", "random_segment"
TRAIN_SAMPLINGS = (UNIFORM, RANDOM_SEGMENT)


def video_clips(video: str, video_fps: float, video_maxlen: int, clips: int) -> list[VideoWindow]:
    r"""``clips`` contiguous windows of equal length covering ``video`` (its duration by the reader's plan)."""
    duration = plan_video(video, video_fps, video_maxlen).duration
    return [VideoWindow(video, start, end) for start, end in clip_windows(duration, clips)]


def window_bounds(videos: Sequence[Any]) -> list[list[float]]:
    r"""What :data:`WINDOWS_FIELD` stores for a row's videos (all of them windows)."""
    return [[video.start, video.end] for video in videos]


def windowed(videos: Sequence[Any], bounds: Sequence[Sequence[float]]) -> list[Any]:
    r"""The row's videos as the windows :func:`window_bounds` stored (back from Arrow's plain strings)."""
    if len(bounds) != len(videos):
        raise ValueError(f"an evaluation row has {len(videos)} video(s) but {len(bounds)} clip window(s).")
    return [VideoWindow(video, start, end) for video, (start, end) in zip(videos, bounds)]


def clip_groups(clip_numbers: Sequence[int]) -> list[int]:
    r"""The number of consecutive rows of each video, from the rows' clip numbers (0 starts a video)."""
    sizes: list[int] = []
    for number in clip_numbers:
        if number == 0 or not sizes:
            sizes.append(0)
        sizes[-1] += 1
    return sizes


def draw_seed(seed: int, epoch: int, video: str) -> int:
    r"""The seed of ``video``'s draw in ``epoch``: stable across processes and runs (no salted ``hash``)."""
    return zlib.crc32(f"{seed}:{epoch}:{video}".encode())


def drawn(videos: Sequence[Any], seed: int, epoch: int) -> list[Any]:
    r"""The row's video files as :class:`VideoDraw` for this epoch (frame lists and arrays stay as they are)."""
    return [VideoDraw(video, draw_seed(seed, epoch, video)) if isinstance(video, str) else video for video in videos]
