"""How ``ivcp classify`` cuts each video: whole, into ``--test_clips`` combined clips, or into timeline windows.

The cutting and the joining are :class:`ActionClassifier`'s own (``split_clips`` / ``join_clips``,
``split_timeline`` / ``join_timeline``), so a row here equals what ``predict(test_clips=N)`` or ``timeline()`` returns
for the video. The runner splits and prepares in its decode workers and joins after the model.
"""

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..data.context import ActionDataError
from ..data.video_reader import VideoWindow
from ..model.decoding import CLIP_COMBINATIONS
from ..model.timeline import clip_windows, timeline_windows


if TYPE_CHECKING:
    import torch

    from ..inference import ActionClassifier

Layout = list["int | list[tuple[float, float]] | ActionDataError"]  # per video: clips, windows or its error


@dataclass(frozen=True)
class ClipSettings:
    test_clips: int = 1
    clip_combine: str = "mean"
    window: float | None = None  # seconds: a timeline instead of one answer
    stride: float | None = None
    segment_threshold: float | None = None

    def check(self) -> "ClipSettings":
        r"""Fail on settings that cannot work before any model is loaded or video read."""
        clip_windows(1.0, self.test_clips)
        if self.clip_combine not in CLIP_COMBINATIONS:
            raise ValueError(f"--clip_combine must be one of {CLIP_COMBINATIONS}, got {self.clip_combine!r}.")
        if self.window is None:
            if self.stride is not None or self.segment_threshold is not None:
                raise ValueError("--stride and --segment_threshold shape a timeline: give --window SECONDS too.")
            return self
        if self.test_clips > 1:
            raise ValueError("give --test_clips or --window, not both: a timeline classifies each window once.")
        timeline_windows(1.0, self.window, self.stride)
        if self.segment_threshold is not None and not 0 <= self.segment_threshold <= 1:
            raise ValueError(f"--segment_threshold is a probability in [0, 1], got {self.segment_threshold}.")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def videos_per_batch(self, batch_size: int) -> int:
        r"""Videos prepared together: ``batch_size`` clips' worth; a timeline's video alone (its windows unknown)."""
        return 1 if self.window is not None else max(1, batch_size // self.test_clips)

    def split(self, classifier: "ActionClassifier", videos: list[str]) -> tuple[list["str | VideoWindow"], Layout]:
        r"""What the model classifies for ``videos`` (the videos, their clips or windows) and the per-video layout."""
        if self.window is not None:
            return classifier.split_timeline(videos, self.window, self.stride)
        if self.test_clips > 1:
            return classifier.split_clips(videos, self.test_clips)
        return list(videos), [1] * len(videos)

    def prepare(
        self, classifier: "ActionClassifier", videos: list[str], prompts: list[str], batch_size: int
    ) -> tuple[Layout, list[tuple[float, float] | None], Iterator[tuple[dict[str, Any] | None, list[Any]]]]:
        r"""Split ``videos`` (this reads their lengths); (layout, each piece's span, its batches prepared one by one).

        Batches hold at most ``batch_size`` pieces, so a long video's timeline never holds all its frames at once.
        """
        clips, layout = self.split(classifier, videos)
        counts = [0 if isinstance(entry, ActionDataError) else _count(entry) for entry in layout]
        clip_prompts = [prompt for prompt, count in zip(prompts, counts) for _ in range(count)]
        spans = [(clip.start, clip.end) if isinstance(clip, VideoWindow) else None for clip in clips]
        batches = (
            classifier.prepare(clips[start : start + batch_size], clip_prompts[start : start + batch_size])
            for start in range(0, len(clips), batch_size)
        )
        return layout, spans, batches

    def join(
        self,
        classifier: "ActionClassifier",
        videos: list[str],
        layout: Layout,
        spans: list[tuple[float, float] | None],
        rows: list["torch.Tensor | ActionDataError"],
        top_k: int,
    ) -> list[dict[str, Any]]:
        r"""One result per video from the rows of its pieces; multi-clip results say which clips they combined."""
        if self.window is not None:
            return classifier.join_timeline(videos, layout, rows, top_k, self.segment_threshold)
        if self.test_clips == 1:
            return [classifier.result(video, row, top_k) for video, row in zip(videos, rows)]

        results, spans = [], iter(spans)
        for video, entry, outcome in zip(videos, layout, classifier.join_clips(layout, rows, self.clip_combine)):
            result = classifier.result(video, outcome, top_k)
            clips = [next(spans) for _ in range(entry if isinstance(entry, int) else 0)]
            if "error" not in result:
                result["clip_combine"] = self.clip_combine
                result["clips"] = [{"start": start, "end": end} for start, end in clips]
            results.append(result)
        return results


def _count(entry: "int | list[tuple[float, float]]") -> int:
    return entry if isinstance(entry, int) else len(entry)
