"""Metrics of the ``action_cls`` stage, computed from the Trainer's gathered logits."""

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score
from transformers import EvalPrediction


@dataclass
class ComputeActionMetrics:
    def __call__(self, eval_preds: EvalPrediction) -> dict[str, float]:
        logits = eval_preds.predictions[0] if isinstance(eval_preds.predictions, tuple) else eval_preds.predictions
        labels = eval_preds.label_ids
        predictions = np.asarray(logits).argmax(axis=-1)
        return {"accuracy": float(accuracy_score(labels, predictions))}
