"""The benchmark converters on tiny fake trees in the official layouts."""

import os
import subprocess
import sys

from tests.helpers import REPO, read_json


SCRIPT = os.path.join(REPO, "scripts", "convert_action_benchmark.py")


def _touch(path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\x00")
    return str(path)


def _convert(tmp_path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, SCRIPT, *args, "--out_dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def _examples(tmp_path, name: str) -> list[tuple[str, int]]:
    examples = read_json(tmp_path / "data" / f"{name}.json")
    for example in examples:
        assert example["conversations"][0]["value"] == "<video>What is the person doing?<ACTION>"
    return [(os.path.relpath(example["videos"][0], tmp_path), example["action_label"]) for example in examples]


def test_ucf101(tmp_path):
    splits = tmp_path / "ucfTrainTestlist"
    os.makedirs(splits)
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (splits / "trainlist02.txt").write_text(
        "ApplyEyeMakeup/v_a_g08_c01.avi 1\nArchery/v_b_g08_c01.avi 2\nArchery/gone.avi 2\n"
    )
    (splits / "testlist02.txt").write_text("Archery/v_b_g01_c01.avi\n")
    for video in ("ApplyEyeMakeup/v_a_g08_c01.avi", "Archery/v_b_g08_c01.avi", "Archery/v_b_g01_c01.avi"):
        _touch(tmp_path / "UCF-101" / video)

    out = _convert(
        tmp_path, "ucf101", "--video_dir", str(tmp_path / "UCF-101"), "--splits_dir", str(splits), "--split", "2"
    )
    assert _examples(tmp_path, "ucf101_train") == [
        ("UCF-101/ApplyEyeMakeup/v_a_g08_c01.avi", 0),
        ("UCF-101/Archery/v_b_g08_c01.avi", 1),
    ]
    assert _examples(tmp_path, "ucf101_test") == [("UCF-101/Archery/v_b_g01_c01.avi", 1)]
    assert "skipped 1 entries: video file not found" in out and "num_action_classes: 2" in out
    info = read_json(tmp_path / "data" / "dataset_info.json")
    assert info["ucf101_train"]["label_names"] == "ucf101_label_names.json"
    assert read_json(tmp_path / "data" / "ucf101_label_names.json") == ["ApplyEyeMakeup", "Archery"]


def test_hmdb51(tmp_path):
    splits = tmp_path / "splits"
    os.makedirs(splits)
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1\nb.avi 2\nc.avi 0\n")
    (splits / "cartwheel_test_split1.txt").write_text("d.avi 2\n")
    (splits / "cartwheel_test_split2.txt").write_text("d.avi 1\n")
    for video in ("brush_hair/a.avi", "brush_hair/b.avi", "brush_hair/c.avi", "cartwheel/d.avi"):
        _touch(tmp_path / "hmdb51" / video)

    _convert(tmp_path, "hmdb51", "--video_dir", str(tmp_path / "hmdb51"), "--splits_dir", str(splits))
    assert _examples(tmp_path, "hmdb51_train") == [("hmdb51/brush_hair/a.avi", 0)]
    assert _examples(tmp_path, "hmdb51_test") == [("hmdb51/brush_hair/b.avi", 0), ("hmdb51/cartwheel/d.avi", 1)]
    assert read_json(tmp_path / "data" / "hmdb51_label_names.json") == ["brush_hair", "cartwheel"]


def test_kinetics400(tmp_path):
    annotations = tmp_path / "annotations"
    os.makedirs(annotations)
    header = "label,youtube_id,time_start,time_end,split\n"
    (annotations / "train.csv").write_text(
        header + "abseiling,AAA,10,20,train\nzumba,BBB,0,10,train\nzumba,CCC,5,15,train\n"
    )
    (annotations / "validate.csv").write_text(header + "zumba,DDD,1,11,val\ntap dancing,EEE,0,10,val\n")
    _touch(tmp_path / "k400" / "train" / "abseiling" / "AAA_000010_000020.mp4")
    _touch(tmp_path / "k400" / "train" / "BBB_000000_000010.mp4")
    _touch(tmp_path / "k400" / "DDD_000001_000011.mp4")

    out = _convert(
        tmp_path, "kinetics400", "--video_dir", str(tmp_path / "k400"), "--annotation_dir", str(annotations)
    )
    assert _examples(tmp_path, "kinetics400_train") == [
        ("k400/train/abseiling/AAA_000010_000020.mp4", 0),
        ("k400/train/BBB_000000_000010.mp4", 1),
    ]
    assert _examples(tmp_path, "kinetics400_validate") == [("k400/DDD_000001_000011.mp4", 1)]
    assert "skipped 1 entries: video file not found" in out  # CCC was never downloaded
    assert "skipped 1 entries: label not among the 2 train classes" in out


def test_prompt_must_put_action_after_video(tmp_path):
    splits = tmp_path / "s"
    os.makedirs(splits)
    (splits / "x_test_split1.txt").write_text("")
    result = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "hmdb51",
            "--video_dir",
            str(tmp_path),
            "--splits_dir",
            str(splits),
            "--prompt",
            "<ACTION><video>",
            "--out_dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and "must hold <video> and, after it, <ACTION>" in result.stderr
    assert not os.path.exists(tmp_path / "data" / "hmdb51_train.json")
