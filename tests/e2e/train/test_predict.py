"""Evaluation and prediction outputs with label names, through ``llamafactory-cli train`` as users run it."""

import json
import os
import shutil

from tests.helpers import base_config, read_json, run_cli


NAMES = ["left", "right", "up", "down"]


def test_label_names_metrics_and_predictions(tiny_model, motion_data, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(motion_data, data_dir)
    info = read_json(data_dir / "dataset_info.json")
    info["motion_train"]["label_names"] = NAMES
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    train = read_json(data_dir / "motion_train.json")
    for example in train:  # labels given as class names are mapped through the names
        example["action_label"] = NAMES[example["action_label"]]
    (data_dir / "motion_train.json").write_text(json.dumps(train))

    output_dir = tmp_path / "train"
    run_cli(base_config(tiny_model, str(data_dir), str(output_dir), max_steps=2), tmp_path)
    assert read_json(output_dir / "action_decoder_config.json")["label_names"] == NAMES

    predict_dir = tmp_path / "predict"
    config = base_config(tiny_model, str(data_dir), str(predict_dir), eval_dataset="motion_test")
    run_cli(config, tmp_path, "do_train=false", "do_predict=true", f"adapter_name_or_path={output_dir}")

    with open(predict_dir / "predictions.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    test_examples = read_json(data_dir / "motion_test.json")
    assert len(records) == len(test_examples)
    for index, (record, example) in enumerate(zip(records, test_examples)):
        assert record["index"] == index and record["label"] == example["action_label"]
        assert record["videos"][0].endswith(example["videos"][0])
        assert record["label_name"] == NAMES[record["label"]] and record["name"] == NAMES[record["predicted"]]
        probabilities = [entry["probability"] for entry in record["classes"]]
        assert len(record["classes"]) == 4 and probabilities == sorted(probabilities, reverse=True)
        assert record["classes"][0]["class"] == record["predicted"] and record["classes"][0]["name"] == record["name"]
        assert abs(sum(probabilities) - 1) < 1e-4  # 4 classes: the top-4 is every class

    metrics = read_json(predict_dir / "predict_results.json")
    correct = sum(record["label"] == record["predicted"] for record in records)
    assert metrics["predict_accuracy"] == correct / len(records)
    for key in ("predict_macro_f1", "predict_top3_accuracy", "predict_precision_left", "predict_recall_down"):
        assert 0 <= metrics[key] <= 1, key

    confusion = read_json(predict_dir / "confusion_matrix.json")
    assert confusion["labels"] == NAMES
    assert sum(map(sum, confusion["matrix"])) == len(records)
    assert sum(confusion["matrix"][i][i] for i in range(4)) == correct
    assert os.path.getsize(predict_dir / "confusion_matrix.png") > 0
