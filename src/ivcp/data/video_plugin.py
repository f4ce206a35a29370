"""Give an ``action_cls`` template's mm_plugin IVCP's video reader, for token counting and the collator alike.

LLaMA-Factory's plugins read a video file in ``_regularize_videos`` (the collator, and token counting for most
families) and, for the Qwen-VL families, count tokens from ``_get_qwen_video_stream_metadata`` without decoding.
Both are overridden here from one :class:`~ivcp.data.video_reader.VideoPlan`, so the frames counted and the frames
fed can never differ. The frames go to the plugin as a list of images, so each family's own rules (Qwen2-VL's even
frame count, resizing to ``video_max_pixels``) still apply. Only the template returned by
:func:`with_video_reader` is changed; LLaMA-Factory's shared templates (and so the other stages) stay upstream's.
"""

import copy
import os
from functools import cache
from typing import TYPE_CHECKING, Any

from .video_reader import plan_video, read_plans


if TYPE_CHECKING:
    from llamafactory.data.template import Template

    from .frame_cache import FrameCache


def _is_file(video: Any) -> bool:
    return isinstance(video, (str, os.PathLike))


class VideoReaderMixin:
    r"""Put before a LLaMA-Factory plugin class: its video files are read by IVCP's reader.

    ``frame_cache``, set on the training collator's plugin only, returns the frames of a file read before instead
    of decoding it: the frames, not the tokens, are what it keeps, so token counting is untouched.
    """

    frame_cache: "FrameCache | None" = None

    def _regularize_videos(self, videos: list[Any], **kwargs) -> dict[str, list]:
        video_fps, video_maxlen = kwargs.get("video_fps", 2.0), kwargs.get("video_maxlen", 128)
        plans = {i: plan_video(video, video_fps, video_maxlen) for i, video in enumerate(videos) if _is_file(video)}
        max_pixels = kwargs.get("image_max_pixels")
        reader = read_plans if self.frame_cache is None else self.frame_cache.read_plans
        read = dict(zip(plans, reader(list(plans.values()), max_pixels)))  # a video's clips: one decode
        inputs = [read[i] if i in plans else video for i, video in enumerate(videos)]
        output = super()._regularize_videos(inputs, **kwargs)
        for i, plan in plans.items():  # the plugin took the frames for pre-sampled images: give it the real timing
            if "durations" in output:
                output["durations"][i] = plan.duration
            if "fps_per_video" in output:
                output["fps_per_video"][i] = len(plan.sample_indices) / plan.duration
            if "frames_indices" in output:
                output["frames_indices"][i] = [idx / plan.average_fps * video_fps for idx in plan.sample_indices]

        return output

    def _get_qwen_video_stream_metadata(self, video: Any, video_fps: float, video_maxlen: int) -> dict | None:
        if not _is_file(video):
            return None  # upstream also leaves other inputs to _regularize_videos

        plan = plan_video(video, video_fps, video_maxlen)
        height, width = plan.frame_size
        return {
            "width": width,
            "height": height,
            "average_fps": plan.average_fps,
            "sample_indices": list(plan.sample_indices),
        }


@cache
def _reader_class(plugin_class: type) -> type:
    return type(f"VideoReader{plugin_class.__name__}", (VideoReaderMixin, plugin_class), {})


def with_video_reader(template: "Template") -> "Template":
    r"""A copy of ``template`` whose mm_plugin reads videos with IVCP's reader (the original is left untouched)."""
    template = copy.copy(template)
    plugin = copy.copy(template.mm_plugin)
    if not isinstance(plugin, VideoReaderMixin):
        plugin.__class__ = _reader_class(type(plugin))
    template.mm_plugin = plugin
    return template
