"""Session fixtures: a tiny Qwen2-VL built offline, real mp4 clips, one trained classifier (helpers: tests/helpers.py)."""

import json
import os
from pathlib import Path
from typing import Any

import pytest

import ivcp
from ivcp.demo.long_videos import write_two_action_clips
from ivcp.demo.motion_videos import make_motion_dataset
from ivcp.demo.tiny_model import build_tiny_qwen2vl
from tests.helpers import OFFLINE_ENV, base_config, run_cli


os.environ.update(OFFLINE_ENV)
ivcp.register()  # in-process tests use LLaMA-Factory's API without importing its tuner first


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return build_tiny_qwen2vl(str(tmp_path_factory.mktemp("tiny_qwen2vl")), seed=0)


@pytest.fixture(scope="session")
def motion_data(tmp_path_factory) -> str:
    r"""A small 4-class motion dataset (``motion_train`` / ``motion_test`` in its dataset_info.json)."""
    data_dir = str(tmp_path_factory.mktemp("motion_data"))
    make_motion_dataset(data_dir, num_train_per_class=4, num_test_per_class=2, seed=0)
    return data_dir


@pytest.fixture(scope="session")
def long_clips(tmp_path_factory) -> list[tuple[str, str, str]]:
    r"""(first motion alone, second alone, both in a row) for 4 pairs of motions: 1 s + 1 s at 8 fps."""
    return write_two_action_clips(str(tmp_path_factory.mktemp("long_clips")))


@pytest.fixture(scope="session")
def long_trained(tiny_model, motion_data, tmp_path_factory) -> Path:
    r"""A tiny LoRA run trained long enough (6 steps) to tell some motions apart: the long-video tests' model."""
    work_dir = tmp_path_factory.mktemp("long_videos")
    run_cli(base_config(tiny_model, motion_data, str(work_dir / "out"), max_steps=6, save_steps=6), work_dir)
    return work_dir / "out"


@pytest.fixture(scope="session")
def trained(tiny_model, motion_data, tmp_path_factory) -> tuple[Path, list[dict[str, Any]]]:
    r"""One tiny LoRA classifier for the inference tests, and the trainer's own predictions on motion_test."""
    work_dir = tmp_path_factory.mktemp("inference")
    config = base_config(
        tiny_model,
        motion_data,
        str(work_dir / "out"),
        eval_dataset="motion_test",
        do_predict=True,
        per_device_eval_batch_size=3,
    )
    run_cli(config, work_dir)
    with open(work_dir / "out" / "predictions.jsonl", encoding="utf-8") as f:
        return work_dir / "out", [json.loads(line) for line in f]
