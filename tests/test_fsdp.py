import os

import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from ivcp.model.action_decoder import HEAD_WEIGHTS_NAME, ActionDecoder

from .conftest import run_command
from .fsdp2_worker import build_model, train_step


def test_fsdp2_full_state_dict_save_matches_single_process(tiny_model, tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "fsdp2_worker.py")
    # --standalone: a free rendezvous port, so a run in another test worker cannot collide with this one
    torchrun = ("torchrun", "--standalone", "--nproc_per_node", "2")
    run_command(tmp_path, *torchrun, worker, tiny_model, str(tmp_path / "out"), timeout=600)

    reference = build_model(tiny_model)
    reference.backbone.get_output_embeddings().weight.requires_grad_(False)
    train_step(reference)

    head = ActionDecoder(hidden_size=64, num_classes=4)
    embedding = head.load_pretrained(str(tmp_path / "out"))  # full tensors, not shards
    torch.testing.assert_close(head.net.weight, reference.action_decoder.net.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embedding, reference.action_embedding.detach(), rtol=1e-5, atol=1e-6)
    saved = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").state_dict()
    expected = reference.backbone.state_dict()
    assert saved.keys() == expected.keys()
    moved = max((expected[key] - original).abs().max().item() for key, original in _initial(tiny_model).items())
    assert moved > 5e-3  # the step changed the backbone by about lr = 1e-2 ...
    for key in expected:  # ... and FSDP2 reproduces it (Adam's first step amplifies tiny gradients' rounding)
        torch.testing.assert_close(saved[key], expected[key], rtol=0, atol=2e-4, msg=lambda m, key=key: f"{key}: {m}")
    assert set(load_file(tmp_path / "out" / HEAD_WEIGHTS_NAME)) == {"net.weight", "net.bias", "action_embedding"}


def _initial(model_dir) -> dict[str, torch.Tensor]:
    return AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()


def test_wrap_policy_covers_blocks_and_head(tiny_model):
    model = build_model(tiny_model)
    assert set(model._no_split_modules) >= {"Qwen2VLDecoderLayer", "Qwen2VLVisionBlock", "ActionDecoder"}
