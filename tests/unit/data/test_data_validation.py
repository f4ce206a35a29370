"""Every rejected-input case of the data path names the dataset file, the example index and the fix."""

import json
import shutil

import pytest

from ivcp.data import ActionDataError
from tests.helpers import (
    action_example,
    base_config,
    load_action_data,
    load_examples,
    read_json,
    write_broken_videos,
)


def _assert_rejected(tiny_model, motion_data, tmp_path, bad: dict, *fragments: str, **overrides) -> str:
    with pytest.raises(ActionDataError) as err:
        load_examples(tiny_model, motion_data, tmp_path, [action_example(), bad], **overrides)

    message = str(err.value)
    assert "example 1 of case.json" in message, message
    assert "example 0 " not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_good_examples_are_cut_right_after_action(tiny_model, motion_data, tmp_path):
    dataset, tokenizer = load_examples(
        tiny_model, motion_data, tmp_path, [action_example(label=2), action_example(label=3, answer=None)]
    )
    train = dataset["train_dataset"]
    assert train["action_labels"] == [2, 3]
    action_id = tokenizer.convert_tokens_to_ids("<ACTION>")
    for input_ids in train["input_ids"]:
        assert input_ids[-1] == action_id  # the response (and the assistant header) is cut away
        assert input_ids.count(tokenizer.convert_tokens_to_ids("<|video_pad|>")) > 0


def test_the_last_of_several_action_tokens_is_classified(tiny_model, motion_data, tmp_path):
    prompt = "<video>Look<ACTION> and tell: what is the person doing?<ACTION>"
    dataset, tokenizer = load_examples(tiny_model, motion_data, tmp_path, [action_example(prompt=prompt)])
    action_id = tokenizer.convert_tokens_to_ids("<ACTION>")
    input_ids = dataset["train_dataset"]["input_ids"][0]
    assert input_ids.count(action_id) == 2 and input_ids[-1] == action_id


def test_label_column_can_be_renamed(tiny_model, motion_data, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(motion_data, data_dir)
    info = read_json(data_dir / "dataset_info.json")
    info["renamed"] = {**info["motion_train"], "file_name": "renamed.json"}
    info["renamed"]["columns"] = {**info["renamed"]["columns"], "action_label": "cls"}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    examples = read_json(data_dir / "motion_train.json")[:2]
    for example in examples:
        example["cls"] = 3 - example.pop("action_label")
    (data_dir / "renamed.json").write_text(json.dumps(examples))
    *_, dataset = load_action_data(base_config(tiny_model, str(data_dir), str(tmp_path / "out"), dataset="renamed"))
    assert dataset["train_dataset"]["action_labels"] == [example["cls"] for example in examples]


@pytest.mark.parametrize(
    "bad, fragments",
    [
        (action_example(prompt="<video>What is the person doing?"), ["no <ACTION>", "after the video"]),
        (action_example(prompt="<ACTION><video>What is the person doing?"), ["before its video", "after all media"]),
        (action_example(answer="<ACTION>"), ["assistant turn", "move it to the user turn"]),
        (action_example(label="missing"), ["has no `action_label`", "[0, 4)"]),
        (
            action_example(label=6),
            ["`action_label` 6, outside [0, 4)", "at least 7 classes", "`num_action_classes: 7`"],
        ),
        (action_example(label=-1), ["`action_label` -1, outside [0, 4)"]),
        (action_example(label=1.5), ["1.5, which is not an integer"]),
    ],
    ids=["no-action", "action-before-video", "action-in-answer", "no-label", "label-too-big", "negative", "float"],
)
def test_bad_example_is_rejected(tiny_model, motion_data, tmp_path, bad, fragments):
    _assert_rejected(tiny_model, motion_data, tmp_path, bad, *fragments)


def test_label_given_as_text_is_rejected(tiny_model, motion_data, tmp_path):
    # a file mixing numbers and text in one column does not load into Arrow at all, so both labels are text here
    with pytest.raises(ActionDataError) as err:
        load_examples(
            tiny_model, motion_data, tmp_path, [action_example(label="walking"), action_example(label="running")]
        )

    assert "example 1 of case.json has `action_label` 'running', which is not an integer class id" in str(err.value)


def test_too_long_example_is_rejected_not_truncated(tiny_model, motion_data, tmp_path):
    _assert_rejected(
        tiny_model,
        motion_data,
        tmp_path,
        action_example(prompt="<video>" + "why " * 300 + "<ACTION>"),
        "more than cutoff_len=256",
        "raise `cutoff_len`",
        cutoff_len=256,
    )


def test_missing_video_is_rejected(tiny_model, motion_data, tmp_path):
    message = _assert_rejected(
        tiny_model, motion_data, tmp_path, action_example(video="videos/does_not_exist.mp4"), "does_not_exist.mp4"
    )
    assert message.count("does_not_exist.mp4") == 1, message  # named once, with the option that moves it
    assert "`media_dir` (now '" in message, message


def test_split_special_tokens_is_rejected(tiny_model, motion_data, tmp_path):
    with pytest.raises(ValueError, match="split_special_tokens"):
        load_examples(tiny_model, motion_data, tmp_path, [action_example()], split_special_tokens=True)


def test_unknown_label_name_is_rejected(tiny_model, motion_data, tmp_path):
    (tmp_path / "names.txt").write_text("left\nright\nup\ndown\n")
    with pytest.raises(ActionDataError) as err:
        load_examples(
            tiny_model,
            motion_data,
            tmp_path,
            [action_example(label="left"), action_example(label="sideways")],
            action_label_names=str(tmp_path / "names.txt"),
        )

    assert "example 1 of case.json has `action_label` 'sideways', which is not one of the 4 label names" in str(
        err.value
    )
    assert "example 0 " not in str(err.value)


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("empty", "cannot be read by PyAV"),
        ("not-a-video", "cannot be read by PyAV"),
        ("truncated", "cannot be read by PyAV"),
        ("no-decodable-frame", "cannot be read by PyAV"),
        ("audio-only", "holds no video stream"),
    ],
)
def test_unreadable_video_is_rejected_before_training(tiny_model, motion_data, tmp_path, case, fragment):
    # Qwen2-VL's plugin counts video tokens from the header alone: these files would pass it and crash the collator
    bad = write_broken_videos(motion_data, tmp_path / "bad")
    message = _assert_rejected(
        tiny_model,
        motion_data,
        tmp_path,
        action_example(video=str(bad[case])),
        f"{case}.mp4",
        fragment,
        "re-encode it",
    )
    assert message.count(f"{case}.mp4") == 1 and message.count("re-encode it") == 1, message  # each thing once


def test_model_without_video_processor_is_rejected(tiny_model, motion_data, tmp_path):
    text_only = tmp_path / "no_processor"
    shutil.copytree(tiny_model, text_only)
    (text_only / "processor_config.json").unlink()
    with pytest.raises(ActionDataError, match="the model has no video processor") as err:
        load_examples(str(text_only), motion_data, tmp_path, [action_example(), action_example()])

    assert "example" not in str(err.value)  # one message for the model, not one per example


def test_template_without_video_is_rejected(tiny_model, motion_data, tmp_path):
    with pytest.raises(ActionDataError, match="template `qwen` takes none: use the template that fits the model"):
        load_examples(tiny_model, motion_data, tmp_path, [action_example()], template="qwen")


def test_label_column_mixing_ids_and_names_is_explained(tiny_model, motion_data, tmp_path):
    with pytest.raises(ActionDataError) as err:
        load_examples(tiny_model, motion_data, tmp_path, [action_example(label=0), action_example(label="right")])

    assert "case.json" in str(err.value)
    assert "use one kind in the whole file (all ids, or all names with `action_label_names`)" in str(err.value)
