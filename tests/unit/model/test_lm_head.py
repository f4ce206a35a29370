"""The unused, untied lm_head is mapped from the checkpoint file, not held in memory, and saves unchanged."""

import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from ivcp.model.lm_head import map_unused_lm_head
from tests.helpers import base_config, load_action_data


def _mapped_files(pointer: int) -> list[str]:
    r"""Paths of the file mappings of this process that contain the address ``pointer``."""
    paths = []
    with open("/proc/self/maps", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            start, end = (int(value, 16) for value in fields[0].split("-"))
            if start <= pointer < end and len(fields) > 5:
                paths.append(fields[5])
    return paths


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_action_model_maps_lm_head_from_the_checkpoint_and_saves_it_unchanged(
    tiny_model, motion_data, tmp_path, finetuning_type
):
    from ivcp.model import load_action_model

    config = base_config(tiny_model, motion_data, str(tmp_path / "out"), finetuning_type=finetuning_type)
    (model_args, training_args, finetuning_args), tokenizer_module, *_ = load_action_data(config)
    model = load_action_model(tokenizer_module["tokenizer"], model_args, finetuning_args, training_args.do_train)
    weight = model.base_model.get_output_embeddings().weight
    checkpoint = os.path.join(tiny_model, "model.safetensors")
    original = load_file(checkpoint)["lm_head.weight"]
    assert os.path.realpath(checkpoint) in _mapped_files(weight.data_ptr())  # backed by the file, not a copy
    assert not weight.requires_grad and torch.equal(weight, original)

    if finetuning_type == "full":  # a full model saves the lm_head it was given
        model.save_pretrained(str(tmp_path / "saved"))
        assert torch.equal(load_file(str(tmp_path / "saved" / "model.safetensors"))["lm_head.weight"], original)

    with torch.no_grad():  # a write (DDP's state broadcast) copies the page and leaves the file alone
        weight[0] += 1.0
    assert torch.equal(load_file(checkpoint)["lm_head.weight"], original)


def _tiny_lm(tmp_path, tie: bool) -> tuple[Qwen2ForCausalLM, str]:
    config = Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=tie,
    )  # fmt: skip
    path = str(tmp_path / ("tied" if tie else "untied"))
    Qwen2ForCausalLM(config).save_pretrained(path)
    return Qwen2ForCausalLM.from_pretrained(path), path


def test_tied_trainable_or_changed_lm_heads_stay_in_memory(tmp_path):
    tied, tied_path = _tiny_lm(tmp_path, tie=True)
    tied.lm_head.weight.requires_grad_(False)
    assert not map_unused_lm_head(tied, tied_path)
    assert tied.lm_head.weight is tied.get_input_embeddings().weight

    untied, path = _tiny_lm(tmp_path, tie=False)
    assert not map_unused_lm_head(untied, path)  # trainable: it may change, so it must stay in memory
    untied.lm_head.weight.requires_grad_(False)
    last_row = untied.lm_head.weight[-1].clone()
    with torch.no_grad():
        untied.lm_head.weight[-1] += 1.0  # no longer what the file holds
    assert not map_unused_lm_head(untied, path)
    with torch.no_grad():
        untied.lm_head.weight[-1] = last_row
    expected = untied.lm_head.weight.detach().clone()
    assert map_unused_lm_head(untied, path)
    assert torch.equal(untied.lm_head.weight, expected)
    assert not map_unused_lm_head(untied, None)
