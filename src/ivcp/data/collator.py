"""Batch ``action_cls`` features with LLaMA-Factory's multimodal collator and add the class labels."""

from dataclasses import dataclass
from typing import Any

import torch
from llamafactory.data.collator import MultiModalDataCollatorForSeq2Seq
from llamafactory.extras.constants import IGNORE_INDEX

from .clips import CLIP_FIELD, RANDOM_SEGMENT, UNIFORM, WINDOWS_FIELD, drawn, windowed


@dataclass
class ActionDataCollator(MultiModalDataCollatorForSeq2Seq):
    r"""Give it the backbone as ``model``: it needs ``get_rope_index`` for Qwen2-VL's 3D positions.

    The features carry no token ``labels``, but the parent pads them into a fake audio clip for templates with an
    audio token (Qwen2.5-Omni), so each feature gets ignored ones, dropped again from the batch.

    An evaluation row of a multi-clip run names its clip's windows (:mod:`ivcp.data.clips`); the training collator of
    a ``random_segment`` run (``train_sampling``) draws each video's frames from ``sampling_seed`` and ``epoch``.
    """

    train_sampling: str = UNIFORM
    sampling_seed: int = 0
    epoch: int = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        labels = [feature.pop("action_labels", None) for feature in features]
        for feature in features:
            feature["labels"] = [IGNORE_INDEX] * len(feature["input_ids"])
            feature.pop(CLIP_FIELD, None)
            bounds = feature.pop(WINDOWS_FIELD, None)
            if bounds:
                feature["videos"] = windowed(feature["videos"], bounds)
            if self.train_sampling == RANDOM_SEGMENT and feature.get("videos"):
                feature["videos"] = drawn(feature["videos"], self.sampling_seed, self.epoch)

        batch = super().__call__(features)
        batch.pop("labels")
        if all(label is not None for label in labels):  # absent at inference
            batch["action_labels"] = torch.tensor(labels, dtype=torch.long)
        return batch
