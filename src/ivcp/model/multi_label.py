"""Multi-label classification (``action_problem_type: multi_label``): multi-hot targets, BCE, decoding.

A clip may show any number of the classes (none included), so every class is an independent yes/no decision: the
head's logits go through a sigmoid each, the loss is binary cross-entropy against a multi-hot target, and a class is
predicted when its probability reaches ``action_threshold``. Training, metrics, ``predictions.jsonl`` and inference
all decode through :mod:`ivcp.model.decoding`, so they can never disagree on the rule.
"""

from collections.abc import Sequence

import numpy as np


SINGLE_LABEL = "single_label"
MULTI_LABEL = "multi_label"
PROBLEM_TYPES = (SINGLE_LABEL, MULTI_LABEL)


def multi_hot(classes: Sequence[int], num_classes: int) -> list[int]:
    r"""``[0, 2]`` with 4 classes -> ``[1, 0, 1, 0]`` (a plain list, so Arrow stores it as one list column)."""
    target = [0] * num_classes
    for label in classes:
        target[label] = 1

    return target


def balanced_pos_weight(targets: np.ndarray) -> np.ndarray:
    r"""Per-class positive weights ``negatives / positives`` from the multi-hot training targets ``[N, C]``.

    This is scikit-learn's ``compute_class_weight("balanced")`` applied to each class's own yes/no problem: it gives
    positives ``N / (2 * positives)`` and negatives ``N / (2 * negatives)``; BCE's ``pos_weight`` scales the
    positive term only, so the equivalent weight is the ratio of the two, ``negatives / positives``. A class with no
    positive (nothing to weight) or no negative example gets 1.
    """
    targets = np.asarray(targets, dtype=np.float64)
    positives = targets.sum(axis=0)
    negatives = targets.shape[0] - positives
    weights = np.ones(targets.shape[1])
    defined = (positives > 0) & (negatives > 0)
    weights[defined] = negatives[defined] / positives[defined]
    return weights
