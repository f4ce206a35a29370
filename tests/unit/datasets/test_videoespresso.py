"""The VideoEspresso converter on made-up released files, and the shipped samples through the real data paths."""

import json
import os
import runpy
import sys

import pytest

from ivcp.datasets.videoespresso import VIDEOESPRESSO_TASKS
from tests.helpers import REPO, base_config, load_action_data, read_json


DATA = os.path.join(REPO, "data")  # the released paths below are relative to it: the shipped demo clips
SCRIPT = os.path.join(REPO, "scripts", "convert_videoespresso.py")
STAGE_FILES = [f"VideoEspresso_stage{stage}.json" for stage in (1, 2, 3)] + ["VideoEspresso_label_names.json"]


@pytest.fixture
def convert(monkeypatch, capsys):
    r"""Run the command line in-process (a subprocess would import LLaMA-Factory again for --label_names)."""

    def run(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", [SCRIPT, *args])
        runpy.run_path(SCRIPT, run_name="__main__")
        return capsys.readouterr().out

    return run


def _release(tmp_path, file_name: str, records: list) -> str:
    path = tmp_path / file_name
    path.write_text(json.dumps(records))
    return str(path)


def _train_record(video: str, task: str, **extra) -> dict:
    return {"video_path": video, "question": "Why does it move?", "answer": "It is pushed.", "task": task, **extra}


def test_train_and_bench_files(tmp_path, convert):
    train = _release(
        tmp_path,
        "videoespresso_train_video.json",
        [
            _train_record(
                "action_demo/train_00000.mp4", "Causal Analysis", evidence="A hand pushes it.", keyframes=[3]
            ),
            _train_record("action_demo/train_00001.mp4", "Traffic Analysis", evidence=[{"frame": 2, "box": [0, 1]}]),
            _train_record("action_demo/train_00002.mp4", "Causal Analysis"),  # no evidence: optional
            _train_record("action_demo/gone.mp4", "Causal Analysis", evidence="x"),
        ],
    )
    bench = _release(
        tmp_path,
        "bench_hard.json",
        [
            {
                "video_path": "action_demo/test_00000.mp4",
                "question": "What moves?",
                "options": ["(A): A square", "(B): A circle"],
                "correct_answer": "(A)",
                "evidence": "The square changes place.",
                "task": "Event Dynamic",
            }
        ],
    )
    out_dir = tmp_path / "data"
    os.makedirs(out_dir)
    (out_dir / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "other.json"}}))

    out = convert(train, bench, "--media_dir", DATA, "--out_dir", str(out_dir))
    assert "skipped 1 records: video file not found under the media dir" in out
    assert "1 records have no evidence" in out
    assert "class  3 Causal Analysis: 2 records" in out and "class  0 Narrative Analysis: 0 records" in out

    assert read_json(out_dir / "VideoEspresso_label_names.json") == list(VIDEOESPRESSO_TASKS)  # ids do not move
    stage1, stage2, stage3 = (read_json(out_dir / name) for name in STAGE_FILES[:3])
    videos = [os.path.join(DATA, "action_demo", f"{clip}.mp4") for clip in ("train_00000", "train_00001")]
    videos += [os.path.join(DATA, "action_demo", f"{clip}.mp4") for clip in ("train_00002", "test_00000")]
    for stage in (stage1, stage2, stage3):
        assert [example["videos"] for example in stage] == [[video] for video in videos]
    assert [example["action_label"] for example in stage3] == [3, 12, 3, 1]
    assert stage3[3]["conversations"] == [
        {"from": "human", "value": "<video>What moves?<ACTION>"},
        {"from": "gpt", "value": "Event Dynamic"},
    ]
    assert stage1[3]["conversations"][0]["value"] == (
        "<video>What moves?\n(A): A square\n(B): A circle\nAnswer with the option's letter."
    )
    assert stage1[3]["conversations"][1]["value"] == "(A)"
    assert stage2[0]["conversations"][0]["value"] == (
        "<video>Why does it move?\nGive the evidence from the video, then the answer."
    )
    assert stage2[0]["conversations"][1]["value"] == "Evidence: A hand pushes it.\nAnswer: It is pushed."
    assert stage2[1]["conversations"][1]["value"].startswith('Evidence: [{"frame": 2, "box": [0, 1]}]')
    assert stage2[2] == stage1[2]  # nothing to ground the answer in
    assert "action_label" not in stage1[0] and "action_label" not in stage2[0]

    info = read_json(out_dir / "dataset_info.json")
    assert info["other"] == {"file_name": "other.json"}
    assert info["VideoEspresso_stage3"]["label_names"] == "VideoEspresso_label_names.json"
    assert "label_names" not in info["VideoEspresso_stage1"] and "label_names" not in info["VideoEspresso_stage2"]


def test_missing_required_key_names_file_record_and_fix(tmp_path, convert):
    bench_record = {"video_path": "v.mp4", "question": "q", "correct_answer": "(A)", "task": "Role Analysis"}
    cases = {
        "'task'": [_train_record("v.mp4", "Role Analysis"), {"video_path": "v.mp4", "question": "q", "answer": "a"}],
        "'options'": [_train_record("v.mp4", "Role Analysis"), bench_record],
        "neither 'answer'": [_train_record("v.mp4", "Role Analysis"), {**bench_record, "correct_answer": ""}],
        "'video_path'": [_train_record("v.mp4", "Role Analysis"), _train_record(None, "Role Analysis")],
    }
    for key, records in cases.items():
        path = _release(tmp_path, "broken.json", records)
        with pytest.raises(ValueError) as err:
            convert(path, "--media_dir", DATA, "--out_dir", str(tmp_path / "data"))
        assert f"{path}: record 1 " in str(err.value) and key in str(err.value), err.value
        assert "fix or remove that record" in str(err.value)
    fine = _release(tmp_path, "fine.json", [_train_record("action_demo/train_00000.mp4", "Role Analysis")])
    with pytest.raises(ValueError, match="must hold <video> and, after it, <ACTION>"):
        convert(
            fine, "--media_dir", DATA, "--out_dir", str(tmp_path / "data"), "--prompt", "{question}<ACTION><video>"
        )
    assert not os.path.exists(tmp_path / "data")


def test_class_order_from_data_or_label_names(tmp_path, convert):
    video = "action_demo/train_00000.mp4"
    release = _release(tmp_path, "train.json", [_train_record(video, "Zeta"), _train_record(video, "Alpha")])
    first = tmp_path / "first"
    out = convert(release, "--media_dir", DATA, "--out_dir", str(first))
    assert "differ from the leaderboard's 14: classes in sorted order" in out
    assert read_json(first / "VideoEspresso_label_names.json") == ["Alpha", "Zeta"]

    # Reusing the order: a file with only "Zeta" still calls it class 1, and names a path relative to the media dir.
    names = str(first / "VideoEspresso_label_names.json")
    later = _release(tmp_path, "later.json", [_train_record(video, "Zeta"), _train_record("gone.mp4", "Zeta")])
    args = ("--media_dir", DATA, "--out_dir", str(tmp_path / "later"), "--name", "VE_bench", "--label_names", names)
    out = convert(later, *args, "--relative_paths", "--keep_missing_videos")
    assert "kept 1 records: video file not found under the media dir" in out
    stage3 = read_json(tmp_path / "later" / "VE_bench_stage3.json")
    assert [(example["videos"], example["action_label"]) for example in stage3] == [([video], 1), (["gone.mp4"], 1)]
    assert read_json(tmp_path / "later" / "VE_bench_label_names.json") == ["Alpha", "Zeta"]

    unknown = _release(tmp_path, "unknown.json", [_train_record(video, "Omega")])
    with pytest.raises(ValueError, match=r"\['Omega'\] are not in the label names of .*first"):
        convert(unknown, *args)


def test_shipped_samples_are_the_converted_sample_release(tmp_path, convert):
    convert("--make_sample", str(tmp_path / "release"))
    releases = [str(tmp_path / "release" / name) for name in ("videoespresso_train_video.json", "bench_hard.json")]
    convert(*releases, "--media_dir", DATA, "--relative_paths", "--out_dir", str(tmp_path / "data"))
    for name in STAGE_FILES:
        with open(os.path.join(DATA, name), encoding="utf-8") as shipped, open(tmp_path / "data" / name) as converted:
            assert shipped.read() == converted.read(), f"data/{name} is not the converter's output: regenerate it"

    shipped_info = read_json(os.path.join(DATA, "dataset_info.json"))
    for name, entry in read_json(tmp_path / "data" / "dataset_info.json").items():
        assert shipped_info[name] == entry


def test_shipped_stage3_sample_loads_for_action_cls(tiny_model, tmp_path):
    config = base_config(
        tiny_model, DATA, str(tmp_path / "out"), dataset="VideoEspresso_stage3", num_action_classes=14
    )
    *_, dataset = load_action_data(config)
    assert dataset["train_dataset"]["action_labels"] == list(range(14)) * 2  # training records, then bench records
