"""Long videos in the trainer: multi-clip evaluation (``action_test_clips``) and training draws (``random_segment``)."""

import json

import pytest

from ivcp.inference import ActionClassifier
from tests.helpers import base_config, read_json, run_cli


def _records(output_dir) -> list[dict]:
    with open(output_dir / "predictions.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _probabilities(result: dict) -> list[float]:
    return [entry["probability"] for entry in sorted(result["classes"], key=lambda entry: entry["class"])]


def test_multi_clip_eval_equals_action_classifier(tiny_model, motion_data, trained, tmp_path):
    r"""The trainer's 3-clip answers (eval and predict) are ``ActionClassifier.predict(test_clips=3)``'s, per video.

    ``max`` (not the default) shows the combination reaches the trainer; the combinations are tested in test_long_videos.
    """
    combine = "max"
    adapter, one_clip = trained
    output_dir = tmp_path / "out"
    config = base_config(
        tiny_model,
        motion_data,
        str(output_dir),
        do_train=False,
        do_eval=True,
        do_predict=True,
        eval_dataset="motion_test",
        adapter_name_or_path=str(adapter),
        action_test_clips=3,
        action_clip_combine=combine,
        per_device_eval_batch_size=4,  # -> 3: one video's clips per batch
    )
    run_cli(config, tmp_path)

    records = _records(output_dir)
    tests = read_json(f"{motion_data}/motion_test.json")
    assert len(records) == len(tests) == len(one_clip)  # one line per video, not per clip
    assert [record["videos"][0] for record in records] == [record["videos"][0] for record in one_clip]

    classifier = ActionClassifier.from_pretrained(tiny_model, adapter=str(adapter))
    videos = [record["videos"][0] for record in records]
    expected = classifier.predict(videos, test_clips=3, combine=combine, top_k=4)
    for record, result in zip(records, expected):
        assert record["predicted"] == result["predicted"]
        assert _probabilities(record) == pytest.approx(_probabilities(result), abs=1e-5)

    single = classifier.predict(videos, top_k=4)
    assert any(_probabilities(r) != pytest.approx(_probabilities(s), abs=1e-3) for r, s in zip(records, single))
    for record, result in zip(one_clip, single):  # the default (one clip) is the single-clip answer
        assert _probabilities(record) == pytest.approx(_probabilities(result), abs=1e-5)

    correct = sum(record["predicted"] == record["label"] for record in records) / len(records)
    assert read_json(output_dir / "eval_results.json")["eval_accuracy"] == pytest.approx(correct)
    assert read_json(output_dir / "predict_results.json")["predict_accuracy"] == pytest.approx(correct)


def test_random_segment_training_keeps_evaluation_uniform(tiny_model, motion_data, tmp_path):
    r"""Training draws its frames (token counts still agree); predictions after it are the uniform ones."""
    output_dir = tmp_path / "out"
    config = base_config(
        tiny_model,
        motion_data,
        str(output_dir),
        per_device_train_batch_size=8,
        max_steps=4,  # two epochs of the 16 training clips: the second draws other frames
        save_steps=4,
        action_train_sampling="random_segment",
        video_maxlen=4,  # 4 of the 8 frames: each epoch draws others
        eval_dataset="motion_test",
        do_predict=True,
    )
    run_cli(config, tmp_path)

    records = _records(output_dir)
    classifier = ActionClassifier.from_pretrained(tiny_model, adapter=str(output_dir))
    expected = classifier.predict([record["videos"][0] for record in records], top_k=4)
    for record, result in zip(records, expected):
        assert _probabilities(record) == pytest.approx(_probabilities(result), abs=1e-5)
