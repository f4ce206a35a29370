"""Two processes on CPU (gloo), launched as users launch them: torchrun via llamafactory-cli, accelerate, DeepSpeed.

Each route must reproduce the single-process run with the same seed and global batch: same losses, same head,
same backbone weights, and a head file that loads into a plain single-process ActionDecoder.
"""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from ivcp.model.action_decoder import HEAD_WEIGHTS_NAME, ActionDecoder
from tests.helpers import (
    REPO,
    base_config,
    read_json,
    run_cli,
    run_command,
    saved_weights,
    trainer_losses,
    write_config,
)


DS_CONFIG = os.path.join(REPO, "examples", "deepspeed", "ds_z{stage}_config.json")
# every process of a run and of its reference computes with one thread: the same kernels, whatever the machine
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TORCHRUN = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", **ONE_THREAD}
LEARNING_RATE, LR_SCALE = 1.0e-3, 0.1

deepspeed = pytest.importorskip("deepspeed")


def _config(
    tiny_model,
    motion_data,
    output_dir,
    finetuning_type: str,
    per_device_batch: int,
    own_clip: bool = True,
    **overrides,
):
    config = base_config(
        tiny_model,
        motion_data,
        str(output_dir),
        finetuning_type=finetuning_type,
        per_device_train_batch_size=per_device_batch,
        learning_rate=LEARNING_RATE if finetuning_type == "lora" else 1.0e-4,
        action_token_lr_scale=LR_SCALE,
        action_token_own_clip=own_clip,
        **overrides,
    )
    if finetuning_type != "lora":
        config.pop("lora_target")
    return config


def _assert_same_run(output_dir, reference_dir) -> None:
    assert trainer_losses(output_dir) == pytest.approx(trainer_losses(reference_dir), rel=1e-4, abs=1e-5)
    ours, reference = saved_weights(output_dir), saved_weights(reference_dir)
    assert ours.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(ours[key].float(), reference[key].float(), rtol=1e-4, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def single_process(tiny_model, motion_data, tmp_path_factory):
    r"""The reference run of a setting (made on first use): one process, batch 4 (= 2 processes x 2).

    DeepSpeed clips gradients inside its engine, where the ``<ACTION>`` row stays in the global norm
    (``action_token_own_clip`` applies to DDP and one process only): its routes are compared with that setting off.
    """
    runs = {}

    def reference(finetuning_type: str, own_clip: bool = True):
        if (finetuning_type, own_clip) not in runs:
            work_dir = tmp_path_factory.mktemp(f"single_{finetuning_type}_{own_clip}")
            config = _config(tiny_model, motion_data, work_dir / "out", finetuning_type, 4, own_clip=own_clip)
            run_cli(config, work_dir, **ONE_THREAD)
            runs[finetuning_type, own_clip] = work_dir / "out"
        return runs[finetuning_type, own_clip]

    return reference


def _launch(route: str, config: dict, work_dir) -> None:
    if route == "accelerate":
        run_command(
            work_dir,
            "accelerate",
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            os.path.join(REPO, "src", "train.py"),
            write_config(config, work_dir),
            **ONE_THREAD,
        )
    else:
        if route.startswith("zero"):
            config = {**config, "deepspeed": DS_CONFIG.format(stage=route[-1])}
        run_cli(config, work_dir, **TORCHRUN)


@pytest.mark.parametrize("finetuning_type", ["lora", "full"])
@pytest.mark.parametrize("route", ["torchrun", "accelerate", "zero2", "zero3"])
def test_two_processes_match_one(tiny_model, motion_data, tmp_path, single_process, route, finetuning_type):
    if route == "accelerate" and finetuning_type == "full":
        pytest.skip("accelerate's DDP is the same engine as torchrun's, already covered for full fine-tuning")

    output_dir, own_clip = tmp_path / "out", not route.startswith("zero")
    _launch(route, _config(tiny_model, motion_data, output_dir, finetuning_type, 2, own_clip=own_clip), tmp_path)
    _assert_same_run(output_dir, single_process(finetuning_type, own_clip))
    assert os.path.isfile(output_dir / "checkpoint-2" / HEAD_WEIGHTS_NAME)

    # the head file holds full tensors and loads into a plain single-process ActionDecoder
    head = ActionDecoder(hidden_size=64, num_classes=4)
    embedding = head.load_pretrained(str(output_dir))
    assert embedding.shape == (64,) and head.net.weight.shape == (4, 64)


def test_zero3_scales_the_action_token_lr_and_resumes(tiny_model, motion_data, tmp_path, single_process):
    config = _config(tiny_model, motion_data, tmp_path / "z3", "lora", 2, deepspeed=DS_CONFIG.format(stage=3))
    run_cli(config, tmp_path, **TORCHRUN)

    # the row moved, by at most lr * scale per Adam step (3 steps), not by the unscaled lr
    embed = next(v for k, v in load_file(os.path.join(tiny_model, "model.safetensors")).items() if "embed_tokens" in k)
    start = embed[: embed.shape[0] - 152].float().mean(dim=0)  # the tiny model has 152 spare rows
    moved = (load_file(tmp_path / "z3" / HEAD_WEIGHTS_NAME)["action_embedding"] - start).abs().max().item()
    assert 0 < moved <= 3 * LEARNING_RATE * LR_SCALE * 1.01

    # resume from checkpoint-2 under ZeRO-3 (DeepSpeed's own engine checkpoint) ends where the straight run ended
    shutil.copytree(tmp_path / "z3" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    result = run_cli({**config, "output_dir": str(tmp_path / "resumed")}, tmp_path, **TORCHRUN)
    assert "Resuming training from" in result.stdout + result.stderr
    ours, straight = saved_weights(tmp_path / "resumed"), saved_weights(tmp_path / "z3")
    for key in straight:
        torch.testing.assert_close(ours[key], straight[key], rtol=0, atol=1e-6, msg=key)


def test_deepspeed_launcher_with_command_line_flags(tiny_model, motion_data, tmp_path, single_process):
    config = _config(tiny_model, motion_data, tmp_path / "out", "lora", 2, own_clip=False)
    flags = [f"--{key}={value}" for key, value in config.items()]
    run_command(
        tmp_path,
        "deepspeed",
        "--num_gpus",
        "2",
        os.path.join(REPO, "src", "train.py"),
        "--deepspeed",
        DS_CONFIG.format(stage=3),
        *flags,
        **ONE_THREAD,
    )
    _assert_same_run(tmp_path / "out", single_process("lora", own_clip=False))


def test_deepspeed_optimizer_section_is_refused(tiny_model, motion_data, tmp_path):
    with open(DS_CONFIG.format(stage=2), encoding="utf-8") as f:
        ds_config = json.load(f)
    ds_config["optimizer"] = {"type": "AdamW", "params": {"lr": "auto"}}
    (tmp_path / "ds.json").write_text(json.dumps(ds_config))
    config = _config(tiny_model, motion_data, tmp_path / "out", "lora", 2, deepspeed=str(tmp_path / "ds.json"))
    result = run_cli(config, tmp_path, check=False, **TORCHRUN)
    assert result.returncode != 0
    assert "has its own `optimizer` section" in result.stderr and "action_token_lr_scale" in result.stderr


def test_bad_data_stops_every_rank_with_the_message(tiny_model, motion_data, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(motion_data, data_dir)
    examples = read_json(data_dir / "motion_train.json")
    examples[3]["action_label"] = 9
    (data_dir / "motion_train.json").write_text(json.dumps(examples))
    config = _config(tiny_model, str(data_dir), tmp_path / "out", "lora", 2)
    result = run_cli(config, tmp_path, check=False, **TORCHRUN)  # run_command's timeout turns a hang into a failure
    assert result.returncode != 0
    assert "example 3 of motion_train.json has `action_label` 9, outside [0, 4)" in result.stderr
