"""The shipped demo data is what its script writes, and its sft sets load through LLaMA-Factory's own sft path."""

import filecmp
import os
import subprocess
import sys

import pytest

from .conftest import base_config, read_json


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "data")


def test_shipped_demo_data_is_the_scripts_output(tmp_path):
    script = os.path.join(REPO, "scripts", "make_demo_data.py")
    subprocess.run([sys.executable, script, "--out_dir", str(tmp_path)], check=True, capture_output=True)

    written = read_json(tmp_path / "dataset_info.json")
    assert set(written) == {
        "action_demo_train",
        "action_demo_test",
        "mllm_video_demo",
        "objects_demo_train",
        "objects_demo_test",
    }
    shipped_info = read_json(os.path.join(DATA, "dataset_info.json"))
    for name, entry in written.items():
        assert shipped_info[name] == entry
        assert filecmp.cmp(tmp_path / entry["file_name"], os.path.join(DATA, entry["file_name"]), shallow=False)

    assert filecmp.cmp(tmp_path / "objects_demo_label_names.json", os.path.join(DATA, "objects_demo_label_names.json"))
    for folder in ("action_demo", "objects_demo"):
        clips = sorted(os.listdir(tmp_path / folder))
        assert clips == sorted(os.listdir(os.path.join(DATA, folder)))
        _, mismatch, errors = filecmp.cmpfiles(tmp_path / folder, os.path.join(DATA, folder), clips, False)
        assert mismatch == [] and errors == []


@pytest.mark.parametrize(
    "dataset_name, size", [("mllm_video_demo", 24), ("VideoEspresso_stage1", 28), ("VideoEspresso_stage2", 28)]
)
def test_shipped_sft_sets_load_for_sft(tiny_model, tmp_path, dataset_name, size):
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    config = base_config(tiny_model, DATA, str(tmp_path / "out"), stage="sft", dataset=dataset_name)
    model_args, data_args, training_args, *_ = get_train_args(config)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    train = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)["train_dataset"]
    assert len(train) == size
    assert all(any(label != -100 for label in labels) for labels in train["labels"])  # the answers are learnt
