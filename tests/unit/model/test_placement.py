"""Inference over a model split across devices (``device_map``), dtypes, and the head's fp32 rule (CPU only).

A GPU machine is not needed for the plumbing: a map with ``cpu`` and ``disk`` entries dispatches the tiny model with
accelerate's hooks (offloaded layers load their weights at each forward), which is what several GPUs use too.
"""

import shutil

import pytest
import torch
from transformers import AutoModelForImageTextToText

from ivcp.inference import ActionClassifier
from ivcp.model.action_decoder import ActionDecoder
from tests.helpers import base_config, read_json, run_cli


SPLIT_MAP = {  # the vision tower, embeddings and layer 0 in memory; layer 1, the norm and lm_head offloaded to disk
    "model.visual": "cpu",
    "model.language_model.embed_tokens": "cpu",
    "model.language_model.rotary_emb": "cpu",
    "model.language_model.layers.0": "cpu",
    "model.language_model.layers.1": "disk",
    "model.language_model.norm": "disk",
    "lm_head": "disk",
}


@pytest.fixture(scope="module")
def trained(tiny_model, motion_data, tmp_path_factory):
    r"""A full fine-tuning run: its output_dir is a whole model with the head (PEFT cannot offload an adapter)."""
    work_dir = tmp_path_factory.mktemp("placement")
    config = base_config(tiny_model, motion_data, str(work_dir / "out"), finetuning_type="full", max_steps=2)
    config.pop("lora_target")
    run_cli({**config, "learning_rate": 1.0e-4, "save_steps": 10}, work_dir)
    videos = [example["videos"][0] for example in read_json(f"{motion_data}/motion_test.json")]
    return str(work_dir / "out"), [f"{motion_data}/{video}" for video in videos]


@pytest.fixture(scope="module")
def one_device(trained):
    output_dir, videos = trained
    return ActionClassifier.from_pretrained(output_dir, device="cpu").predict_logits(videos, batch_size=3)


def test_split_over_two_placements_predicts_as_one_device(trained, one_device, tmp_path):
    output_dir, videos = trained
    classifier = ActionClassifier.from_pretrained(
        output_dir, device_map=SPLIT_MAP, offload_folder=str(tmp_path / "offload")
    )
    base = classifier.model.base_model
    assert set(base.hf_device_map.values()) == {"cpu", "disk"}
    assert base.model.language_model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # offloaded
    assert classifier.model.action_decoder.net.weight.device.type == "cpu"
    torch.testing.assert_close(classifier.predict_logits(videos, batch_size=3), one_device, rtol=1e-5, atol=1e-5)


def test_auto_map_with_max_memory_offloads(trained, one_device, tmp_path):
    output_dir, videos = trained
    classifier = ActionClassifier.from_pretrained(
        output_dir,
        device_map="auto",
        max_memory={"cpu": 1_000_000},  # bytes: the tiny model is 1.24 MB, so the LLM layers go to disk
        offload_folder=str(tmp_path / "offload"),
    )
    assert set(classifier.model.base_model.hf_device_map.values()) == {"cpu", "disk"}
    torch.testing.assert_close(classifier.predict_logits(videos, batch_size=3), one_device, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def bf16_model(trained, tmp_path_factory):
    r"""The trained model saved in bf16 (as most released checkpoints are), with its head, tokenizer and processor."""
    path = tmp_path_factory.mktemp("trained_bf16")
    shutil.copytree(trained[0], path, dirs_exist_ok=True)
    AutoModelForImageTextToText.from_pretrained(trained[0], dtype=torch.bfloat16).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(("option", "value"), [("torch_dtype", "float32"), ("infer_dtype", "float32")])
def test_dtype_is_honoured_for_a_bf16_checkpoint(bf16_model, trained, option, value):
    videos = trained[1]
    native = ActionClassifier.from_pretrained(bf16_model, device="cpu")
    assert native.model.base_model.dtype == torch.bfloat16  # the checkpoint's dtype by default
    classifier = ActionClassifier.from_pretrained(bf16_model, device="cpu", **{option: value})
    assert {param.dtype for param in classifier.model.parameters()} == {torch.float32}
    logits = classifier.predict_logits(videos[:2])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_dtype_bf16_on_an_fp32_checkpoint(trained, one_device):
    output_dir, videos = trained
    classifier = ActionClassifier.from_pretrained(output_dir, torch_dtype="bfloat16")
    assert classifier.model.base_model.dtype == torch.bfloat16
    assert classifier.model.action_decoder.net.weight.dtype == torch.float32  # the head stays fp32
    logits = classifier.predict_logits(videos, batch_size=3)
    assert logits.dtype == torch.float32
    assert (logits.argmax(-1) == one_device.argmax(-1)).float().mean() >= 0.5  # bf16 rounding, same model


def test_bad_dtype_is_refused(trained):
    with pytest.raises(ValueError, match="not a floating-point dtype"):
        ActionClassifier.from_pretrained(trained[0], torch_dtype="int8")


@pytest.mark.parametrize("decoder_type", ["linear", "mlp"])
def test_head_computes_in_fp32_under_bf16_autocast(decoder_type):
    torch.manual_seed(0)
    head = ActionDecoder(hidden_size=16, num_classes=5, decoder_type=decoder_type)
    hidden = torch.randn(3, 16).bfloat16()  # what a bf16 backbone hands the head
    expected = head(hidden.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(hidden)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    head.to(torch.bfloat16)  # DeepSpeed casts the whole module: the head still computes in fp32
    assert head(hidden).dtype == torch.float32
