"""A video's timeline: which class when, from the probabilities of windows slid over it.

:func:`clip_windows` cuts a video into the clips of a multi-clip answer; :func:`timeline_windows` places the windows (``window`` seconds every ``stride`` seconds, the last one ending at the
video's end, so every moment is in some window); :func:`merge_segments` joins consecutive windows whose class is the
same into ``{start, end, label, score}`` segments. The probabilities come from :mod:`ivcp.model.decoding`.
"""

import itertools
from collections.abc import Sequence
from typing import Any

import torch

from .decoding import chosen, combine_clips, decode, finite_rows, non_finite_result, probabilities
from .multi_label import MULTI_LABEL


def clip_windows(duration: float, clips: int) -> list[tuple[float, float]]:
    r"""(start, end) seconds of ``clips`` contiguous clips of equal length from 0 to ``duration`` (no gap)."""
    if not isinstance(clips, int) or isinstance(clips, bool) or clips < 1:
        raise ValueError(f"the number of test clips must be a positive integer, got {clips!r}.")

    bounds = [duration * k / clips for k in range(clips)] + [duration]
    return list(itertools.pairwise(bounds))


def timeline_windows(duration: float, window: float, stride: float | None = None) -> list[tuple[float, float]]:
    r"""(start, end) seconds of each window; ``stride`` defaults to ``window`` (windows side by side)."""
    stride = window if stride is None else stride
    if not (window > 0 and stride > 0):
        raise ValueError(f"the timeline's window and stride must be positive seconds, got {window} and {stride}.")
    if window >= duration:
        return [(0.0, duration)]

    count = int((duration - window) // stride) + 1
    starts = [i * stride for i in range(count)]
    if starts[-1] + window < duration:  # the end of the video gets a window of its own
        starts.append(duration - window)
    return [(start, min(start + window, duration)) for start in starts]


def window_classes(probabilities: torch.Tensor, problem_type: str, threshold: float) -> list[list[int]]:
    r"""Per window, the classes it shows.

    That is its most probable class at or above ``threshold`` (single-label), or every class at or above it.
    """
    if problem_type == MULTI_LABEL:
        return [torch.nonzero(chosen(row, threshold)).flatten().tolist() for row in probabilities]

    best = probabilities.max(dim=-1)
    return [[c] if p >= threshold else [] for p, c in zip(best.values.tolist(), best.indices.tolist())]


def merge_segments(
    windows: Sequence[tuple[float, float]],
    probabilities: torch.Tensor,
    problem_type: str,
    threshold: float,
    names: Sequence[str],
) -> list[dict[str, Any]]:
    r"""Runs of consecutive windows showing the same class, as ``{start, end, label, class, score}`` in time order.

    ``score`` is the class's mean probability over the run's windows.
    """
    shown = window_classes(probabilities, problem_type, threshold)
    segments, open_runs = [], {}  # class -> first window of its current run
    for i in range(len(windows) + 1):
        now = set(shown[i]) if i < len(windows) else set()
        for c in [c for c in open_runs if c not in now]:
            first = open_runs.pop(c)
            score = probabilities[first:i, c].mean().item()
            segments.append(
                {"start": windows[first][0], "end": windows[i - 1][1], "label": names[c], "class": c, "score": score}
            )
        for c in now:
            open_runs.setdefault(c, i)
    return sorted(segments, key=lambda segment: (segment["start"], segment["class"]))


def timeline_result(
    windows: Sequence[tuple[float, float]],
    logits: torch.Tensor,
    problem_type: str,
    threshold: float,
    names: Sequence[str],
    top_k: int = 5,
    segment_threshold: float | None = None,
) -> dict[str, Any]:
    r"""The whole-video answer (the windows' mean probability, decoded) with a ``timeline`` of windows and segments.

    ``logits`` holds one row per window. ``segment_threshold`` defaults to the head's ``threshold`` for a multi-label
    head and to 0 (each window's most probable class) for a single-label one. Non-finite logits give decode's error.
    """
    if not finite_rows(logits).all():
        return non_finite_result()

    whole = decode(combine_clips(logits, problem_type, "mean")[None], problem_type, threshold, names, top_k)[0]
    if segment_threshold is None:
        segment_threshold = threshold if problem_type == MULTI_LABEL else 0.0
    rows = probabilities(logits, problem_type)
    return {
        **whole,
        "timeline": {
            "windows": [
                {"start": start, "end": end, "probabilities": row} for (start, end), row in zip(windows, rows.tolist())
            ],
            "segments": merge_segments(windows, rows, problem_type, segment_threshold, names),
        },
    }
