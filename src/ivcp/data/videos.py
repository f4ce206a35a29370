"""Decode every video once while preprocessing, so a bad file fails before training instead of at step 10,000.

LLaMA-Factory's Qwen2-VL plugin counts video tokens from the container header alone; the frames are only decoded
by the collator, batch after batch. A file that is empty, truncated, not a video, or has no decodable frames would
pass preprocessing and crash a run hours in. The check below decodes the whole stream the way the collator will.
The result is cached with the rest of the preprocessing (``overwrite_cache: false``), so it is paid once per dataset.
"""

import os
from functools import lru_cache
from typing import Any

import av

from .context import ActionDataError


REENCODE_HINT = "re-encode it (e.g. `ffmpeg -i in.mp4 -c:v libx264 out.mp4`) or remove the example"


@lru_cache(maxsize=65536)  # datasets with many questions per video (VideoEspresso) decode each file once
def _count_decodable_frames(path: str, stamp: tuple[int, int]) -> tuple[int, int]:
    r"""(frames that decode, frames the header announces; 0 when unknown). Raises PyAV errors and StopIteration.

    ``stamp`` (size, mtime) keys the cache so that a file changed on disk is decoded again.
    """
    with av.open(path, "r") as container:
        stream = next(stream for stream in container.streams if stream.type == "video")
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream)), stream.frames


def check_video(video: Any, where: str, media_dir: str | None, decode: bool = True) -> None:
    r"""Raise an :class:`ActionDataError` naming ``where`` and the file if the collator could not read ``video``.

    With ``decode=False`` only the file's existence is checked.
    """
    if not isinstance(video, str):  # a list of frames or an array: nothing to probe
        return

    if not os.path.isfile(video):
        raise ActionDataError(
            f"{where} has video {video!r}, which does not exist (media_dir={media_dir!r}): fix the path; relative "
            "paths are looked up in `media_dir`.",
            kind="video missing",
        )

    if not decode:
        return

    try:
        status = os.stat(video)
        decoded, announced = _count_decodable_frames(video, (status.st_size, status.st_mtime_ns))
    except StopIteration:
        raise ActionDataError(
            f"{where} has {video!r}, which holds no video stream: {REENCODE_HINT}.", kind="video unreadable"
        )
    except (av.FFmpegError, OSError) as err:
        raise ActionDataError(
            f"{where} has {video!r}, which PyAV cannot read ({err}): {REENCODE_HINT}.", kind="video unreadable"
        ) from err

    if decoded == 0:
        raise ActionDataError(
            f"{where} has {video!r}, with no decodable frame: {REENCODE_HINT}.", kind="video unreadable"
        )

    if decoded < announced:
        raise ActionDataError(
            f"{where} has {video!r}, of which only {decoded} of the {announced} frames in its header decode (a "
            f"truncated or damaged file): {REENCODE_HINT}.",
            kind="video unreadable",
        )
