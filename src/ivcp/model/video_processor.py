"""The multimodal processor the ``action_cls`` stage hands LLaMA-Factory, its video processor callable as 0.9.5 calls it.

A wrapper of one object, not a patch of LLaMA-Factory: sft keeps upstream's behaviour.
"""

import copy
from typing import Any


class _VideosOnlyProcessor:
    r"""A transformers video processor that drops the ``images=None`` LLaMA-Factory 0.9.5 passes it.

    ``MMPluginMixin._get_mm_inputs`` calls ``video_processor(images=None, videos=...)`` whenever the processor's
    ``preprocess`` takes ``videos``; transformers 5.6's dedicated video processors (LLaVA-NeXT-Video, Video-LLaVA)
    reject the keyword (``VideosKwargs.__init__() got an unexpected keyword argument 'images'``).
    """

    def __init__(self, video_processor: Any) -> None:
        self._video_processor = video_processor

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_video_processor":  # pickling looks these up before __dict__ is set
            raise AttributeError(name)

        return getattr(self._video_processor, name)

    def __call__(self, *args: Any, images: Any = None, **kwargs: Any) -> Any:
        if images is not None:
            raise ValueError("A transformers video processor takes videos only.")

        return self._video_processor(*args, **kwargs)


class _ActionProcessor:
    r"""The multimodal processor the action_cls stage hands LLaMA-Factory: the same, its video processor wrapped."""

    def __init__(self, processor: Any) -> None:
        self._processor = processor
        self.video_processor = _VideosOnlyProcessor(processor.video_processor)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_processor":
            raise AttributeError(name)

        return getattr(self._processor, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_processor", "video_processor"):
            object.__setattr__(self, name, value)
        else:  # LLaMA-Factory sets preprocessing settings (video_fps, ...) on the processor
            setattr(self._processor, name, value)

    def __copy__(self) -> "_ActionProcessor":
        r"""A copy with its own settings (``ActionClassifier.with_video_settings`` copies, then sets ``video_fps``)."""
        return _ActionProcessor(copy.copy(self._processor))


def action_processor(processor: Any) -> Any:
    r"""``processor``, with its video processor made callable the way LLaMA-Factory 0.9.5 calls it (action_cls only).

    Only transformers' dedicated video processors (``BaseVideoProcessor``) are wrapped, and the wrapper only drops
    ``images=None``; every other processor is returned as is. sft keeps upstream's behaviour.
    """
    from transformers.video_processing_utils import BaseVideoProcessor

    video_processor = getattr(processor, "video_processor", None)
    if isinstance(processor, _ActionProcessor) or not isinstance(video_processor, BaseVideoProcessor):
        return processor

    return _ActionProcessor(processor)
