"""Metrics of the ``action_cls`` stage, computed from the Trainer's gathered logits with scikit-learn."""

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)
from transformers import EvalPrediction

from ...log import get_logger
from ...model.decoding import chosen, class_names, finite_rows, probabilities
from ...model.multi_label import MULTI_LABEL, SINGLE_LABEL


logger = get_logger(__name__)

TOP_K = 5


def top_k_for(num_classes: int) -> int | None:
    r"""Top-5 accuracy, or top-(classes - 1) when there are 5 classes or fewer (top-k with k >= classes is always 1)."""
    k = min(TOP_K, num_classes - 1)
    return k if k >= 2 else None


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, num_classes: int, label_names: list[str] | None = None
) -> dict[str, float]:
    r"""Accuracy, top-k accuracy, macro-F1 and per-class precision/recall: scalars, so every ``report_to`` sees them."""
    classes = list(range(num_classes))
    predictions = logits.argmax(axis=-1)
    metrics = {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=classes, average="macro", zero_division=0)),
    }
    k = top_k_for(num_classes)
    if k is not None:
        metrics[f"top{k}_accuracy"] = float(top_k_accuracy_score(labels, logits, k=k, labels=classes))

    precision, recall, _, _ = precision_recall_fscore_support(labels, predictions, labels=classes, zero_division=0)
    for name, class_precision, class_recall in zip(class_names(num_classes, label_names), precision, recall):
        metrics[f"precision_{name}"] = float(class_precision)
        metrics[f"recall_{name}"] = float(class_recall)

    return metrics


def average_precisions(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    r"""Average precision of each class (scikit-learn's), NaN for a class with no positive example (undefined)."""
    return np.array(
        [
            average_precision_score(targets[:, c], scores[:, c]) if targets[:, c].any() else np.nan
            for c in range(targets.shape[1])
        ]
    )


def multi_label_metrics(
    logits: np.ndarray, targets: np.ndarray, threshold: float, label_names: list[str] | None = None
) -> dict[str, float]:
    r"""mAP, micro/macro F1 and subset accuracy at ``threshold``, and ``ap_<class>``: scalars for every ``report_to``.

    mAP is the mean AP over the classes with at least one positive example (AP is undefined without one); those
    classes get no ``ap_<class>``. F1 and subset accuracy (the whole set of classes right) decode like inference.
    """
    targets = np.asarray(targets).astype(int)
    scores = probabilities(torch.as_tensor(logits), MULTI_LABEL)
    predictions = chosen(scores, threshold).numpy().astype(int)
    ap = average_precisions(targets, scores.numpy())
    metrics = {
        "mAP": float(np.nanmean(ap)) if not np.isnan(ap).all() else 0.0,
        "micro_f1": float(f1_score(targets, predictions, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(targets, predictions, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(targets, predictions)),
    }
    for name, class_ap in zip(class_names(targets.shape[1], label_names), ap):
        if not np.isnan(class_ap):
            metrics[f"ap_{name}"] = float(class_ap)

    return metrics


@dataclass
class ComputeActionMetrics:
    num_classes: int
    label_names: list[str] | None = None
    problem_type: str = SINGLE_LABEL
    threshold: float = 0.5

    def __call__(self, eval_preds: EvalPrediction) -> dict[str, float]:
        logits = eval_preds.predictions[0] if isinstance(eval_preds.predictions, tuple) else eval_preds.predictions
        logits, labels = np.asarray(logits), np.asarray(eval_preds.label_ids)
        finite = finite_rows(torch.as_tensor(logits)).numpy()
        if not finite.all():  # e.g. an fp16 overflow: such rows have no prediction to score
            logger.warning_rank0(
                f"{int((~finite).sum())} of {len(finite)} evaluation examples have non-finite logits (NaN or inf): "
                "the metrics leave them out."
            )
            logits, labels = logits[finite], labels[finite]
            if not finite.any():
                return {}

        if self.problem_type == MULTI_LABEL:
            return multi_label_metrics(logits, labels, self.threshold, self.label_names)

        return classification_metrics(logits, labels, self.num_classes, self.label_names)


def save_confusion_matrix(
    output_dir: str, labels: np.ndarray, predictions: np.ndarray, num_classes: int, label_names: list[str] | None
) -> np.ndarray:
    r"""Write ``confusion_matrix.json`` (rows: true class, columns: predicted) and ``confusion_matrix.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = class_names(num_classes, label_names)
    matrix = confusion_matrix(labels, predictions, labels=list(range(num_classes)))
    with open(os.path.join(output_dir, "confusion_matrix.json"), "w", encoding="utf-8") as f:
        json.dump({"labels": names, "matrix": matrix.tolist()}, f, ensure_ascii=False, indent=2)

    size = min(4 + 0.35 * num_classes, 40)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(num_classes), names, rotation=90)
    ax.set_yticks(range(num_classes), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if num_classes <= 30:
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(col, row, str(count), ha="center", va="center", color="black")
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "confusion_matrix.png"), dpi=100)
    plt.close(fig)
    return matrix


def save_average_precision(output_dir: str, targets: np.ndarray, scores: np.ndarray, label_names: list[str] | None):
    r"""Multi-label: write ``average_precision.json`` and a bar chart of each class's AP, ``average_precision.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_classes = targets.shape[1]
    names = class_names(num_classes, label_names)
    ap = average_precisions(np.asarray(targets).astype(int), scores)
    mean_ap = float(np.nanmean(ap)) if not np.isnan(ap).all() else 0.0
    with open(os.path.join(output_dir, "average_precision.json"), "w", encoding="utf-8") as f:
        per_class = {name: (None if np.isnan(value) else float(value)) for name, value in zip(names, ap)}
        json.dump({"mAP": mean_ap, "average_precision": per_class}, f, ensure_ascii=False, indent=2)

    fig, ax = plt.subplots(figsize=(min(4 + 0.3 * num_classes, 40), 4))
    ax.bar(range(num_classes), np.nan_to_num(ap), color="tab:blue")
    ax.axhline(mean_ap, color="tab:red", linestyle="--", label=f"mAP {mean_ap:.3f}")
    ax.set_xticks(range(num_classes), names, rotation=90)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("average precision")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "average_precision.png"), dpi=100)
    plt.close(fig)
