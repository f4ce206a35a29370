"""``llamafactory-cli train`` as a user runs it: LoRA, full and freeze, evaluation, resume, other stages."""

import os
import shutil

import pytest
import torch
from llamafactory.train.tuner import run_exp
from safetensors.torch import load_file
from transformers import TrainerCallback

from tests.helpers import base_config, llamafactory_cli, read_json, run_cli, saved_weights, trainer_losses


HEAD_FILES = ("action_decoder.safetensors", "action_decoder_config.json")


def _assert_head_files(directory, num_classes: int = 4) -> dict[str, torch.Tensor]:
    for name in HEAD_FILES:
        assert os.path.isfile(os.path.join(directory, name)), f"{name} missing in {directory}"

    config = read_json(os.path.join(directory, "action_decoder_config.json"))
    assert config["num_classes"] == num_classes and config["action_token"] == "<ACTION>"
    assert config["hidden_size"] == 64 and config["decoder_type"] == "linear"
    tensors = load_file(os.path.join(directory, "action_decoder.safetensors"))
    assert tensors["net.weight"].shape == (num_classes, 64) and tensors["action_embedding"].shape == (64,)
    return tensors


def test_lora_train_then_evaluate(tiny_model, motion_data, tmp_path):
    output_dir = tmp_path / "lora"
    config = base_config(tiny_model, motion_data, str(output_dir), val_size=0.25, eval_strategy="steps", eval_steps=2)
    run_cli(config, tmp_path)
    history = read_json(output_dir / "trainer_state.json")["log_history"]
    evaluations = [record for record in history if "eval_accuracy" in record]
    assert evaluations and all(0 <= r["eval_accuracy"] <= 1 and r["eval_loss"] > 0 for r in evaluations)

    head = _assert_head_files(output_dir)
    _assert_head_files(output_dir / "checkpoint-2")
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "training_loss.png"):
        assert os.path.isfile(output_dir / name), name
    assert read_json(output_dir / "processor_config.json")["processor_class"] == "Qwen2VLProcessor"

    adapter_keys = load_file(output_dir / "adapter_model.safetensors").keys()
    assert any("lora_A" in key for key in adapter_keys)
    assert not any("embed_tokens" in key or "lm_head" in key for key in adapter_keys)  # no modules_to_save copies
    assert read_json(output_dir / "adapter_config.json")["modules_to_save"] is None

    assert not torch.equal(head["net.weight"], load_file(output_dir / "checkpoint-2" / HEAD_FILES[0])["net.weight"])

    # evaluation exactly as the usage notes write it: flags after the YAML path
    eval_config = base_config(tiny_model, motion_data, str(tmp_path / "eval"), eval_dataset="motion_test")
    run_cli(
        eval_config, tmp_path, "--do_train", "false", "--do_eval", "true", "--adapter_name_or_path", str(output_dir)
    )
    metrics = read_json(tmp_path / "eval" / "eval_results.json")
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["eval_loss"] > 0

    # LLaMA-Factory's own key=value overrides give the same numbers
    run_cli(eval_config, tmp_path, "do_train=false", "do_eval=true", f"adapter_name_or_path={output_dir}")
    again = read_json(tmp_path / "eval" / "eval_results.json")
    assert again["eval_accuracy"] == metrics["eval_accuracy"]
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)


def test_full_finetuning_keeps_lm_head_frozen(tiny_model, motion_data, tmp_path):
    output_dir = tmp_path / "full"
    run_cli(
        base_config(tiny_model, motion_data, str(output_dir), finetuning_type="full", learning_rate=1e-4), tmp_path
    )
    _assert_head_files(output_dir)
    trained = load_file(output_dir / "model.safetensors")
    original = load_file(os.path.join(tiny_model, "model.safetensors"))
    lm_head = next(key for key in trained if key.endswith("lm_head.weight"))
    assert torch.equal(trained[lm_head], original[lm_head])  # unused by the head: frozen, not drifting
    layer = next(key for key in trained if key.endswith("layers.0.mlp.down_proj.weight"))
    assert not torch.equal(trained[layer], original[layer])  # the LLM itself did train


def test_freeze_with_command_line_flags(tiny_model, motion_data, tmp_path):
    output_dir = tmp_path / "freeze"
    config = base_config(tiny_model, motion_data, str(output_dir), finetuning_type="freeze", freeze_trainable_layers=1)
    config.pop("lora_target")
    llamafactory_cli(tmp_path, "train", *[f"--{key}={value}" for key, value in config.items()])
    _assert_head_files(output_dir)
    assert os.path.isfile(output_dir / "model.safetensors")


def test_resume_gives_the_same_head_as_an_uninterrupted_run(tiny_model, motion_data, tmp_path):
    config = base_config(tiny_model, motion_data, str(tmp_path / "straight"), max_steps=4, save_steps=2)
    run_cli(config, tmp_path)

    # a run that "died" after checkpoint-2: LLaMA-Factory resumes automatically from the last checkpoint
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", resumed_dir / "checkpoint-2")
    result = run_cli({**config, "output_dir": str(resumed_dir)}, tmp_path)
    assert "Resuming training from" in result.stdout + result.stderr

    straight, resumed = saved_weights(tmp_path / "straight"), saved_weights(resumed_dir)  # head and adapter
    assert "action_embedding" in straight and any("lora_A" in key for key in straight)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6)
    assert trainer_losses(resumed_dir)[-2:] == pytest.approx(trainer_losses(tmp_path / "straight")[-2:], abs=1e-4)


class _ScriptedMetric(TrainerCallback):
    r"""Adds ``eval_scripted`` to every evaluation: its best step is fixed by the test, not by the trajectory."""

    def __init__(self, values: dict[int, float]) -> None:
        self.values = values

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics["eval_scripted"] = self.values[state.global_step]


def test_load_best_model_at_end_restores_the_best_head(tiny_model, motion_data, tmp_path):
    output_dir = tmp_path / "best"
    config = base_config(
        tiny_model,
        motion_data,
        str(output_dir),
        max_steps=4,
        save_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        eval_dataset="motion_test",
        load_best_model_at_end=True,
        metric_for_best_model="scripted",
        greater_is_better=True,
    )
    run_exp(config, callbacks=[_ScriptedMetric({1: 0.1, 2: 0.9, 3: 0.5, 4: 0.2})])  # in-process, to add the callback
    state = read_json(output_dir / "trainer_state.json")
    assert state["best_model_checkpoint"] == str(output_dir / "checkpoint-2")
    final, best_head = load_file(output_dir / HEAD_FILES[0]), load_file(output_dir / "checkpoint-2" / HEAD_FILES[0])
    last_head = load_file(output_dir / "checkpoint-4" / HEAD_FILES[0])
    assert not torch.equal(last_head["net.weight"], best_head["net.weight"])  # the restore has something to undo
    for key in best_head:
        assert torch.equal(final[key], best_head[key]), key
    final_adapter = load_file(output_dir / "adapter_model.safetensors")
    best_adapter = load_file(output_dir / "checkpoint-2" / "adapter_model.safetensors")
    assert all(torch.equal(final_adapter[key], best_adapter[key]) for key in best_adapter)


def test_sft_is_unchanged_by_ivcp(tiny_model, motion_data, tmp_path):
    config = base_config(tiny_model, motion_data, "", stage="sft", max_steps=3, save_steps=100)
    for key in ("num_action_classes",):
        config.pop(key)

    run_cli({**config, "output_dir": str(tmp_path / "with")}, tmp_path)
    run_cli({**config, "output_dir": str(tmp_path / "without")}, tmp_path, IVCP_DISABLE="1")
    with_ivcp, without_ivcp = trainer_losses(tmp_path / "with"), trainer_losses(tmp_path / "without")
    assert len(with_ivcp) == 3 and with_ivcp == without_ivcp


def test_unknown_action_option_value_is_rejected(tiny_model, motion_data, tmp_path):
    config = base_config(tiny_model, motion_data, str(tmp_path / "x"), action_decoder_type="transformer")
    result = run_cli(config, tmp_path, check=False)
    assert result.returncode != 0
    assert "`action_decoder_type` must be one of ('linear', 'mlp')" in result.stderr
