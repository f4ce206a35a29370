"""``action_embedding_rows``: full fine-tuning of only the used embedding rows is the dense run, saved and resumed."""

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import base_config, run_cli, saved_weights, trainer_losses


ROWS_LOG = "token embedding rows, those of the training set's tokens"


def _full_config(tiny_model: str, motion_data: str, output_dir, **overrides):
    config = base_config(
        tiny_model,
        motion_data,
        str(output_dir),
        **{"finetuning_type": "full", "learning_rate": 1e-3, "max_steps": 4, **overrides},
    )
    config.pop("lora_target")
    return config


@pytest.fixture(scope="module")
def full_runs(tiny_model, motion_data, tmp_path_factory):
    r"""The same 4 full fine-tuning steps with the used rows (default) and with the whole table, and their logs."""
    work_dir = tmp_path_factory.mktemp("embedding_rows")
    logs = {}
    for rows in ("used", "all"):
        config = _full_config(tiny_model, motion_data, work_dir / rows, action_embedding_rows=rows)
        result = run_cli(config, work_dir)
        logs[rows] = result.stdout + result.stderr
    return work_dir, logs


def test_used_rows_train_the_same_model_as_the_whole_table(full_runs, tiny_model):
    work_dir, logs = full_runs
    assert ROWS_LOG in logs["used"] and ROWS_LOG not in logs["all"]
    assert "Training the whole token embedding table (" in logs["all"] and "action_embedding_rows: all" in logs["all"]
    assert trainer_losses(work_dir / "used") == pytest.approx(trainer_losses(work_dir / "all"), rel=1e-5, abs=1e-6)

    used, dense = saved_weights(work_dir / "used"), saved_weights(work_dir / "all")
    assert used.keys() == dense.keys() and not any("embedding_rows" in key for key in used)  # an ordinary model
    for key in dense:  # Adam turns a rounding-size gradient into a step of up to lr: 1e-4 of the 4e-3 a row moves
        torch.testing.assert_close(used[key], dense[key], rtol=1e-5, atol=1e-4)
    table = next(key for key in dense if key.endswith("embed_tokens.weight"))
    changed = (used[table] != load_file(os.path.join(tiny_model, "model.safetensors"))[table]).any(dim=-1)
    assert 0 < changed.sum() < used[table].size(0) // 2  # the rows of the data's tokens trained, the rest as they were
    checkpoint = saved_weights(work_dir / "used" / "checkpoint-2")[table]  # checkpoints hold the trained rows too
    torch.testing.assert_close(
        checkpoint, saved_weights(work_dir / "all" / "checkpoint-2")[table], rtol=1e-5, atol=1e-4
    )


def test_resume_with_used_rows_equals_the_uninterrupted_run(full_runs, tiny_model, motion_data):
    work_dir, _ = full_runs
    resumed_dir = work_dir / "resumed"
    shutil.copytree(work_dir / "used" / "checkpoint-2", resumed_dir / "checkpoint-2")
    result = run_cli(_full_config(tiny_model, motion_data, resumed_dir), work_dir)
    assert "Resuming training from" in result.stdout + result.stderr

    straight, resumed = saved_weights(work_dir / "used"), saved_weights(resumed_dir)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)
    assert trainer_losses(resumed_dir)[-2:] == pytest.approx(trainer_losses(work_dir / "used")[-2:], abs=1e-5)


def test_weight_decay_keeps_the_whole_table(tiny_model, motion_data, tmp_path):
    config = _full_config(tiny_model, motion_data, tmp_path / "decay", weight_decay=0.01, max_steps=1, save_steps=1)
    result = run_cli(config, tmp_path)
    log = result.stdout + result.stderr
    assert "Training the whole token embedding table (" in log and "weight_decay 0.01 moves every row" in log
    assert ROWS_LOG not in log
