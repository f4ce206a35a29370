"""Read every video once while preprocessing, so a bad file fails before training instead of at step 10,000.

The check reads each file with the same reader, at the same settings, as the token counting and the collator
(:mod:`ivcp.data.video_reader`): it plans the samples from the demuxed stream (rejecting a truncated file) and
decodes exactly the sampled frames the collator will decode. The result is cached with the rest of the
preprocessing (``overwrite_cache: false``), and within a process per file, so it is paid once per dataset.
"""

import os
from functools import lru_cache
from typing import Any

from .context import ActionDataError, located
from .video_reader import VideoPlan, VideoReadError, clear_plan_cache, decode_frames, plan_video


@lru_cache(maxsize=65536)  # datasets with many questions per video (VideoEspresso) decode each file once
def _decode_samples(plan: VideoPlan) -> None:
    decode_frames(plan)  # what the collator decodes; converting it would prove nothing more


def clear_read_caches() -> None:
    r"""Forget which files this process planned and checked: the next check reads each file again."""
    clear_plan_cache()
    _decode_samples.cache_clear()


def check_video(
    video: Any, where: str | None, media_dir: str | None, video_fps: float, video_maxlen: int, decode: bool = True
) -> None:
    r"""Raise an :class:`ActionDataError` naming ``where`` and the file if the collator could not read ``video``.

    ``where`` and ``media_dir`` are those of a dataset example; inference passes None for both (its paths are the
    caller's own, never joined with a ``media_dir``). With ``decode=False`` (inference, which decodes in the
    collator anyway) the samples are planned, not decoded.
    """
    if not isinstance(video, str):  # a list of frames or an array: nothing to probe
        return

    if not os.path.isfile(video):
        fix = "fix the path"
        if media_dir is not None:
            fix += f" in the dataset, or `media_dir` (now {media_dir!r}), the folder relative paths are looked up in"
        raise ActionDataError(located(where, f"video {video!r} does not exist: {fix}."), kind="video missing")

    try:
        plan = plan_video(video, video_fps, video_maxlen)
        if decode:
            _decode_samples(plan)
    except VideoReadError as err:
        raise ActionDataError(located(where, str(err)), kind=err.kind) from err
