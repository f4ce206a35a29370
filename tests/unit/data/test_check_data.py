"""``ivcp check-data`` reads every example the way training does, lists every problem and exits non-zero on any."""

import json
from collections import Counter
from pathlib import Path

import pytest

from ivcp.cli import main
from tests.helpers import base_config, motion_data_with, read_json, write_broken_videos, write_config


def _check(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", *args])

    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_every_problem_is_counted_and_listed(tiny_model, motion_data, tmp_path, capsys):
    good = read_json(Path(motion_data) / "motion_train.json")[:3]
    broken = write_broken_videos(motion_data, tmp_path / "broken")

    def variant(prompt: str | None = None, video: str | None = None, **label) -> dict:
        example = json.loads(json.dumps(good[0]))
        if prompt is not None:
            example["conversations"][0]["value"] = prompt
        if video is not None:
            example["videos"] = [video]
        example.pop("action_label")
        return {**example, **label}

    examples = [
        *good,
        variant(prompt="<video>What is the person doing?", action_label=0),
        variant(prompt="<ACTION><video>What is the person doing?", action_label=1),
        variant(action_label=7),
        variant(),
        variant(video="videos/not_there.mp4", action_label=2),
        variant(video=str(broken["not-a-video"]), action_label=3),
        variant(prompt="<video>" + "why " * 80 + "<ACTION>", action_label=7),
    ]
    data_dir = motion_data_with(motion_data, tmp_path / "data", "mixed", examples)
    problems_file = tmp_path / "problems.jsonl"
    code, out, err = _check(
        capsys,
        *("--dataset", "mixed", "--dataset_dir", str(data_dir), "--template", "qwen2_vl", "--model", tiny_model),
        *(
            "--cutoff_len",
            "100",
            "--num_action_classes",
            "4",
            "--problems",
            str(problems_file),
            "--set",
            "video_fps=8",
        ),
    )

    assert code == 1, out
    assert "10 examples: mixed 10" in out
    assert "7 of 10 examples cannot be used for action_cls:" in out
    for kind, count in [
        ("no <ACTION>", 1),
        ("<ACTION> before the media", 1),
        ("label out of range", 2),
        ("bad label", 1),
        ("video missing", 1),
        ("video unreadable", 1),
        ("longer than cutoff_len", 1),
    ]:
        assert f"  {kind}: {count}\n" in out, out
    assert "1 over cutoff_len=100" in out
    assert "Checking mixed" in err  # the progress bar

    problems = [json.loads(line) for line in problems_file.read_text().splitlines()]
    assert len(problems) == 8  # the last example has two problems
    assert {problem["dataset"] for problem in problems} == {"mixed"}
    assert sorted(problem["message"].split(" of ")[0] for problem in problems) == [
        f"example {index}" for index in (3, 4, 5, 6, 7, 8, 9, 9)
    ]
    rows = [line.split() for line in out.splitlines() if line[:5] in ("    0", "    1", "    2", "    3")]
    valid = Counter(example.get("action_label") for example in examples)  # 7 and no label are not histogram rows
    assert {int(row[0]): int(row[1]) for row in rows} == {label: valid[label] for label in range(4)}


def test_a_training_yaml_with_thousands_of_examples_passes(tiny_model, motion_data, tmp_path, capsys):
    clips = read_json(Path(motion_data) / "motion_train.json")
    data_dir = motion_data_with(motion_data, tmp_path / "data", "big", [clips[i % len(clips)] for i in range(2000)])
    config = write_config(base_config(tiny_model, str(data_dir), str(tmp_path / "out"), dataset="big"), tmp_path)

    code, out, _ = _check(capsys, config, "--workers", "2")

    assert code == 0, out
    assert "2,000 examples: big 2,000" in out
    assert "No problems: every example can be trained on." in out
    assert "0 over cutoff_len=1,024" in out


def test_a_model_that_cannot_be_loaded_is_one_line_naming_the_setting(motion_data, tmp_path, capsys):
    config = tmp_path / "hub_model.yaml"  # a Hub id that is neither cached nor a folder (offline, or no such repo)
    config.write_text(
        f"model_name_or_path: ivcp-tests/no-such-model\ntemplate: qwen2_vl\ndataset_dir: {motion_data}\n"
    )
    code, out, err = _check(capsys, str(config), "--dataset", "motion_train")
    assert code == 2 and not out
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("ivcp check-data: Cannot load the tokenizer and processor of ")
    assert "model_name_or_path='ivcp-tests/no-such-model'" in err and "`--model`" in err

    video = next(Path(motion_data).glob("**/*.mp4"))
    with pytest.raises(SystemExit) as exit_info:
        main(["show-frames", str(video), str(config)])
    assert str(exit_info.value.code).startswith("ivcp show-frames: Cannot load the tokenizer and processor of ")
