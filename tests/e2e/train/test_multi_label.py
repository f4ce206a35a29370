"""Multi-label action_cls (`action_problem_type: multi_label`): data checks, loss, metrics, training and inference."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from ivcp.cli import main
from ivcp.data import ActionDataError
from ivcp.demo.object_videos import COLOURS, PROMPT, make_object_dataset
from ivcp.inference import ActionClassifier
from ivcp.model.decoding import decode
from ivcp.model.head_config import load_head_config
from ivcp.model.loss import ActionLoss, ActionLossConfig
from ivcp.model.multi_label import balanced_pos_weight, multi_hot
from ivcp.train.action_cls.metric import multi_label_metrics
from tests.helpers import action_example, base_config, load_examples, read_json, run_cli


def _logits(probabilities: list[list[float]]) -> np.ndarray:
    p = np.array(probabilities)
    return np.log(p / (1 - p))


def test_multi_label_metrics_match_a_hand_computed_case():
    targets = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    logits = _logits([[0.9, 0.2, 0.6, 0.1], [0.3, 0.8, 0.1, 0.1], [0.7, 0.4, 0.55, 0.1], [0.1, 0.6, 0.2, 0.1]])
    metrics = multi_label_metrics(logits, targets, threshold=0.5, label_names=["walk", "run", "jump", "swim"])
    # AP: walk ranks its two positives first -> 1; run: positive, negative, positive -> 1/2 * 1 + 1/2 * 2/3 = 5/6;
    # jump's one positive is ranked first -> 1; swim has no positive: AP undefined, left out of mAP
    assert metrics["ap_walk"] == pytest.approx(1.0) and metrics["ap_jump"] == pytest.approx(1.0)
    assert metrics["ap_run"] == pytest.approx(5 / 6) and "ap_swim" not in metrics
    assert metrics["mAP"] == pytest.approx((1 + 5 / 6 + 1) / 3)
    # at 0.5: walk TP 2; run TP 1, FP 1, FN 1; jump TP 1, FP 1; swim nothing -> micro F1 = 2*4 / (2*4 + 2 + 1)
    assert metrics["micro_f1"] == pytest.approx(8 / 11)
    assert metrics["macro_f1"] == pytest.approx((1 + 1 / 2 + 2 / 3 + 0) / 4)
    assert metrics["subset_accuracy"] == pytest.approx(2 / 4)  # rows 0 and 1 exactly right
    # another threshold decodes differently: at 0.65 run's 0.6 false positive goes, jump's 0.6 true positive too
    assert multi_label_metrics(logits, targets, threshold=0.65)["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 0 + 2))


def test_loss_targets_decoding_and_balanced_positive_weights():
    assert multi_hot([0, 2], 4) == [1, 0, 1, 0] and multi_hot([], 3) == [0, 0, 0]
    logits, targets = torch.tensor([[2.0, -1.0], [0.5, 0.0]]), torch.tensor([[1, 0], [0, 1]])
    p = torch.sigmoid(logits)
    by_hand = -(torch.log(p[0, 0]) + torch.log(1 - p[0, 1]) + torch.log(1 - p[1, 0]) + torch.log(p[1, 1])) / 4
    assert ActionLoss(problem_type="multi_label")(logits, targets).item() == pytest.approx(by_hand.item())
    weighted = -(3 * torch.log(p[0, 0]) + torch.log(1 - p[0, 1]) + torch.log(1 - p[1, 0]) + torch.log(p[1, 1])) / 4
    positive_weights = ActionLoss(ActionLossConfig(class_weights=[3.0, 1.0]), "multi_label")
    assert positive_weights(logits, targets).item() == pytest.approx(weighted.item())

    train = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    # negatives / positives: 1/3, 3/1; the class without a positive keeps 1
    np.testing.assert_allclose(balanced_pos_weight(train), [1 / 3, 3.0, 1.0])
    sklearn_weights = compute_class_weight("balanced", classes=np.array([0, 1]), y=train[:, 1])
    assert balanced_pos_weight(train)[1] == pytest.approx(sklearn_weights[1] / sklearn_weights[0])

    rows = decode(torch.tensor([[0.0, 3.0, 1.0], [-2.0, -1.0, -3.0]]), "multi_label", 0.5, ["a", "b", "c"])
    assert rows[0]["names"] == ["b", "c", "a"] and rows[0]["predicted"] == [1, 2, 0]  # p(0.0) = 0.5 is kept
    assert rows[1] == {"predicted": [], "names": [], "classes": []}
    assert rows[0]["classes"][0]["probability"] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())


def test_multi_label_examples_load_as_multi_hot_targets(tiny_model, motion_data, tmp_path):
    examples = [action_example(label=[0, 3]), action_example(label=[]), action_example(label=[2])]
    dataset, _ = load_examples(tiny_model, motion_data, tmp_path, examples, action_problem_type="multi_label")
    assert dataset["train_dataset"]["action_labels"] == [[1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]]


@pytest.mark.parametrize(
    "labels, overrides, fragments",
    [
        ([[0], [0, 5]], {}, ["`action_label` 5, outside [0, 4)", "`num_action_classes: 6`"]),
        ([[0], [1, 1]], {}, ["lists class(es) [1] more than once"]),
        ([["left"], ["left", "sideways"]], {"names": True}, ["'sideways', which is not one of the 4 label names"]),
    ],
    ids=["out-of-range", "repeated", "unknown-name"],
)
def test_bad_multi_label_example_is_rejected(tiny_model, motion_data, tmp_path, labels, overrides, fragments):
    if overrides.pop("names", False):
        (tmp_path / "names.json").write_text(json.dumps(["left", "right", "up", "down"]))
        overrides["action_label_names"] = str(tmp_path / "names.json")

    with pytest.raises(ActionDataError) as err:
        examples = [action_example(label=label) for label in labels]
        load_examples(tiny_model, motion_data, tmp_path, examples, action_problem_type="multi_label", **overrides)

    message = str(err.value)
    assert "example 1 of case.json" in message and "example 0 " not in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "labels, problem_type, fragment",
    [
        ([0, 2], "multi_label", "`action_label` 2, a single class, but this run is multi-label"),
        ([[0], [1, 2]], "single_label", "`action_label` [1, 2], a list of classes (multi-label data)"),
    ],
    ids=["single-label-data-in-multi-label-run", "multi-label-data-in-single-label-run"],
)
def test_data_of_the_other_problem_type_is_rejected(tiny_model, motion_data, tmp_path, labels, problem_type, fragment):
    with pytest.raises(ActionDataError) as err:
        examples = [action_example(label=label) for label in labels]
        load_examples(tiny_model, motion_data, tmp_path, examples, action_problem_type=problem_type)

    message = str(err.value)
    assert "2 example(s) cannot be used" in message and f"example 1 of case.json has {fragment}" in message, message
    other = "single_label" if problem_type == "multi_label" else "multi_label"
    assert f"`action_problem_type: {other}`" in message, message


def test_label_column_mixing_lists_and_single_classes_is_explained(tiny_model, motion_data, tmp_path):
    with pytest.raises(ActionDataError) as err:
        examples = [action_example(label=[0, 1]), action_example(label=2)]
        load_examples(tiny_model, motion_data, tmp_path, examples, action_problem_type="multi_label")

    assert "case.json" in str(err.value) and "use lists in the whole file for multi-label data" in str(err.value)


@pytest.fixture(scope="module")
def objects_run(tiny_model, tmp_path_factory):
    r"""Train vision tower + projector + head (LLM frozen) on clips holding one or two of 4 coloured objects."""
    work_dir = tmp_path_factory.mktemp("multi_label")
    data_dir = work_dir / "data"
    make_object_dataset(str(data_dir), num_train=64, num_test=32, seed=3)
    config = base_config(
        tiny_model,
        str(data_dir),
        str(work_dir / "out"),
        dataset="objects_train",
        eval_dataset="objects_test",
        num_action_classes=len(COLOURS),
        action_problem_type="multi_label",
        action_threshold=0.4,
        finetuning_type="full",
        freeze_vision_tower=False,
        freeze_multi_modal_projector=False,
        freeze_language_model=True,
        video_fps=2,
        per_device_train_batch_size=8,
        learning_rate=3.0e-3,
        num_train_epochs=16,
        max_steps=-1,
        lr_scheduler_type="cosine",
        warmup_ratio=0.05,
        max_grad_norm=1.0,
        disable_gradient_checkpointing=True,
        save_strategy="no",
        logging_steps=8,
        do_predict=True,
        per_device_eval_batch_size=16,
    )
    run_cli(config, work_dir)
    return data_dir, work_dir / "out"


def test_multi_label_training_beats_any_single_label_classifier(objects_run):
    r"""One run: data seed 3, training seed 42. Not a lucky pair: this fixture's recipe passed every assert below with
    data seeds 1-8 (training seed 42) and training seeds 1-3 (data seed 3), 11 runs of 11 (mAP 0.993-1.000, micro-F1
    0.958-1.000 against 0.8, subset accuracy 0.875-1.000 against 0.5), run once by hand when this was written.
    """
    data_dir, output_dir = objects_run
    metrics = read_json(output_dir / "predict_results.json")
    label_counts = np.array([len(example["action_label"]) for example in read_json(data_dir / "objects_test.json")])
    # a single-label classifier names one class per clip: even always right, it misses every second object
    single_label_micro_f1 = 2 * len(label_counts) / (len(label_counts) + label_counts.sum())  # TP=N, FN=L-N, FP=0
    single_label_subset_accuracy = np.mean(label_counts == 1)
    assert (single_label_micro_f1, single_label_subset_accuracy) == (pytest.approx(0.8), 0.5)
    assert metrics["predict_mAP"] >= 0.9, metrics
    assert metrics["predict_micro_f1"] > single_label_micro_f1, metrics
    assert metrics["predict_subset_accuracy"] > single_label_subset_accuracy, metrics


def test_predictions_list_the_classes_above_the_threshold(objects_run):
    _, output_dir = objects_run
    records = [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 32 and any(len(record["predicted"]) == 2 for record in records)
    for record in records:
        probabilities = [entry["probability"] for entry in record["classes"]]
        assert record["predicted"] == [entry["class"] for entry in record["classes"]]
        assert all(p >= 0.4 for p in probabilities) and probabilities == sorted(probabilities, reverse=True)
        assert record["label_names"] == [list(COLOURS)[c] for c in record["label"]]
        assert record["names"] == [entry["name"] for entry in record["classes"]]

    assert (output_dir / "average_precision.png").stat().st_size > 0
    assert not (output_dir / "confusion_matrix.png").exists()
    summary = read_json(output_dir / "average_precision.json")
    assert summary["mAP"] == pytest.approx(read_json(output_dir / "predict_results.json")["predict_mAP"])
    assert set(summary["average_precision"]) == set(COLOURS)


def test_classifier_equals_the_trainer_and_keeps_the_heads_rule(tiny_model, objects_run, tmp_path, capsys):
    _, output_dir = objects_run
    head_config = load_head_config(str(output_dir))
    assert (head_config["problem_type"], head_config["threshold"]) == ("multi_label", 0.4)

    records = [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text().splitlines()]
    videos = [record["videos"][0] for record in records]
    classifier = ActionClassifier.from_pretrained(str(output_dir))  # full fine-tuning: the folder is the model
    results = classifier.predict(videos, prompt=PROMPT, batch_size=5)  # the data's prompt, other batching
    for result, record in zip(results, records):
        assert result["predicted"] == record["predicted"] and result["names"] == record["names"]
        for ours, theirs in zip(result["classes"], record["classes"]):
            assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-5)

    with pytest.raises(SystemExit) as exit_info:  # `ivcp classify` exits 1 when a file failed, 0 here
        main(
            ["classify", videos[1], "--model", str(output_dir), "--prompt", PROMPT]
            + ["--output", str(tmp_path / "p.jsonl")]
        )
    assert exit_info.value.code == 0
    line = json.loads((tmp_path / "p.jsonl").read_text())
    assert line["predicted"] == records[1]["predicted"] and "name" not in line

    strict = ActionClassifier.from_pretrained(str(output_dir), action_threshold=0.9).predict(videos[:8], prompt=PROMPT)
    for result, record in zip(strict, records):
        assert result["predicted"] == [entry["class"] for entry in record["classes"] if entry["probability"] >= 0.9]

    with pytest.raises(ValueError, match="problem_type=multi_label, but this run has single_label"):
        ActionClassifier.from_pretrained(str(output_dir), action_problem_type="single_label")


def test_check_data_counts_labels_per_example(tiny_model, objects_run, capsys):
    data_dir, _ = objects_run
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["check-data", "--dataset", "objects_train", "--dataset_dir", str(data_dir), "--model", tiny_model]
            + ["--template", "qwen2_vl", "--action_problem_type", "multi_label", "--set", "video_fps=2"]
        )

    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert "Labels per example: 1: 32, 2: 32" in out, out
    counts = {line.split()[1]: int(line.split()[2]) for line in out.splitlines() if line.split()[1:2] == ["red"]}
    examples = read_json(Path(data_dir) / "objects_train.json")
    assert counts == {"red": sum("red" in example["action_label"] for example in examples)}
