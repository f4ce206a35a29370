"""The one decoding rule (``ivcp.model.decoding``): its result shape, and non-finite rows as per-row errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from ivcp.model.decoding import decode
from ivcp.train.action_cls.metric import ComputeActionMetrics


def test_single_label_rows_are_the_softmax_top_k_with_names():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    rows = decode(logits, "single_label", top_k=2)
    probabilities = logits.softmax(dim=-1)
    assert rows[0]["predicted"] == 1 and rows[0]["name"] == "1"  # no class names: the ids as names
    assert [entry["class"] for entry in rows[0]["classes"]] == [1, 2]
    assert rows[0]["classes"][0]["probability"] == pytest.approx(probabilities[0, 1].item())
    assert decode(logits, "single_label", names=["a", "b", "c"], top_k=9)[1]["classes"][0]["name"] == "a"


def test_a_non_finite_row_is_its_own_error_and_the_others_decode():
    logits = torch.tensor([[0.0, 2.0, 1.0], [float("nan"), 0.0, 0.0], [float("inf"), 0.0, 0.0]])
    for problem_type in ("single_label", "multi_label"):
        rows = decode(logits, problem_type, 0.6, top_k=2)
        assert rows[0]["predicted"] in (1, [1, 2])
        assert [row.get("error_kind") for row in rows[1:]] == ["non_finite", "non_finite"]
        json.dumps(rows, allow_nan=False)


def test_metrics_leave_out_non_finite_rows_and_say_how_many(caplog):
    logits = np.array([[3.0, 0.0], [0.0, 3.0], [np.nan, 0.0]])
    labels = np.array([0, 1, 1])
    metrics = ComputeActionMetrics(num_classes=2)(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics["accuracy"] == 1.0
    assert "1 of 3 evaluation examples have non-finite logits" in caplog.text

    targets = np.array([[1, 0], [0, 1], [1, 1]])
    multi = ComputeActionMetrics(num_classes=2, problem_type="multi_label", threshold=0.6)
    assert multi(EvalPrediction(predictions=logits, label_ids=targets))["subset_accuracy"] == 1.0


def test_ivcp_info_lines_print_like_llamafactorys():
    code = (
        "from llamafactory.extras.logging import get_logger as lf; from ivcp.log import get_logger;"
        "get_logger('ivcp.inference').info('ivcp line'); lf('llamafactory.x').info('upstream line')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert any(line.startswith("[INFO|") and "ivcp.inference" in line and "ivcp line" in line for line in lines)
    assert any("upstream line" in line for line in lines)
