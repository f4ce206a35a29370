"""Logits -> results: one rule for ``predictions.jsonl``, ``ActionClassifier``, the API, the web UI and the metrics.

All of them decode here, so they can never disagree.

The result of one row (JSON-ready; ``name`` is the class id as a string when the run has no class names)::

    single_label: {"predicted": 3, "name": "jump",
                   "classes": [{"class": 3, "name": "jump", "probability": 0.91}, ...]}   # softmax top-k
    multi_label:  {"predicted": [0, 2], "names": ["red", "blue"],
                   "classes": [{"class": 0, "name": "red", "probability": 0.97}, ...]}   # sigmoid >= threshold
    non-finite:   {"error": "...", "error_kind": "non_finite"}                             # NaN / inf logits

``classes`` is always most probable first; a multi-label row may choose no class (``[]``). A row whose logits are
not all finite (an fp16 overflow on a GPU, say) is that row's error, never an exception or a ``NaN`` in JSON.
"""

from collections.abc import Sequence
from typing import Any

import torch

from .multi_label import MULTI_LABEL


NON_FINITE = "non_finite"
NON_FINITE_MESSAGE = (
    "the model's logits for this input are not finite (NaN or inf, e.g. an fp16 overflow): run the model in bf16 or "
    "fp32 (`infer_dtype: bfloat16`)"
)


def class_names(num_classes: int, label_names: Sequence[str] | None) -> list[str]:
    r"""The class names, or the class ids as strings when the run has none."""
    return list(label_names) if label_names else [str(i) for i in range(num_classes)]


def probabilities(logits: torch.Tensor, problem_type: str) -> torch.Tensor:
    r"""Per class, in fp32: softmax over the classes (single-label), an independent sigmoid each (multi-label)."""
    logits = logits.float()
    return logits.sigmoid() if problem_type == MULTI_LABEL else logits.softmax(dim=-1)


def chosen(probabilities: torch.Tensor, threshold: float) -> torch.Tensor:
    r"""Multi-label: which classes are predicted (probability at or above ``threshold``)."""
    return probabilities >= threshold


CLIP_COMBINATIONS = ("mean", "logits", "max")  # how the clips of one video make its answer (`action_clip_combine`)


def combine_clips(logits: torch.Tensor, problem_type: str, how: str = "mean") -> torch.Tensor:
    r"""One row of logits for the clips of one video (``logits`` ``[clips, classes]``), to decode like any row.

    ``mean`` averages the clips' probabilities (the usual multi-clip test), ``logits`` their logits, ``max`` takes
    each class's highest probability (a single-label head renormalizes it). A combined probability is returned as
    the logit that gives it back (``log p`` under softmax, ``logit p`` under sigmoid), so :func:`decode` stays the
    one rule; a clip with non-finite logits makes the whole row non-finite, so the video gets decode's error.
    """
    if how not in CLIP_COMBINATIONS:
        raise ValueError(f"the clips' combination must be one of {CLIP_COMBINATIONS}, got {how!r}.")
    if not finite_rows(logits).all():
        return torch.full(logits.shape[-1:], float("nan"))
    if how == "logits":
        return logits.float().mean(dim=0)

    clips = probabilities(logits, problem_type)
    combined = clips.mean(dim=0) if how == "mean" else clips.amax(dim=0)
    if problem_type == MULTI_LABEL:
        return torch.logit(combined.double(), eps=1e-12).float()
    return combined.double().clamp_min(1e-300).log().float()


def finite_rows(logits: torch.Tensor) -> torch.Tensor:
    r"""Per row, whether every logit is finite: the rows that can be decoded."""
    return torch.isfinite(logits).all(dim=-1)


def decode(
    logits: torch.Tensor,
    problem_type: str,
    threshold: float = 0.5,
    names: Sequence[str] | None = None,
    top_k: int = 5,
) -> list[dict[str, Any]]:
    r"""One result per row of ``logits`` ``[rows, classes]`` (see the module docstring for the shape).

    ``top_k`` applies to single-label heads; a multi-label head returns every class at or above ``threshold``.
    """
    names = class_names(logits.size(-1), names)
    rows = probabilities(logits, problem_type)
    return [
        _decode_row(row, problem_type, threshold, names, top_k) if finite else non_finite_result()
        for row, finite in zip(rows, finite_rows(logits).tolist())
    ]


def non_finite_result() -> dict[str, str]:
    return {"error": NON_FINITE_MESSAGE, "error_kind": NON_FINITE}


def _decode_row(
    row: torch.Tensor, problem_type: str, threshold: float, names: list[str], top_k: int
) -> dict[str, Any]:
    if problem_type == MULTI_LABEL:
        order = [c for c in row.argsort(descending=True, stable=True).tolist() if chosen(row[c], threshold)]
    else:
        order = row.topk(min(top_k, row.numel())).indices.tolist()

    values = row.tolist()
    classes = [{"class": c, "name": names[c], "probability": values[c]} for c in order]
    if problem_type == MULTI_LABEL:
        return {"predicted": order, "names": [names[c] for c in order], "classes": classes}

    return {"predicted": order[0], "name": names[order[0]], "classes": classes}
