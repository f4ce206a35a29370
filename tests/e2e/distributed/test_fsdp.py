import os

import pytest
import torch
from accelerate.utils import FullyShardedDataParallelPlugin
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from ivcp.model.action_decoder import HEAD_WEIGHTS_NAME, ActionDecoder
from ivcp.train.action_cls.trainer import check_fsdp_plugin
from tests.helpers import run_command

from .fsdp2_worker import build_model, train_step


def test_fsdp2_full_state_dict_save_matches_single_process(tiny_model, tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "fsdp2_worker.py")
    # --standalone: a free rendezvous port, so a run in another test worker cannot collide with this one
    torchrun = ("torchrun", "--standalone", "--nproc_per_node", "2")
    reload_path = tmp_path / "reloaded.pt"
    run_command(tmp_path, *torchrun, worker, tiny_model, str(tmp_path / "out"), str(reload_path), timeout=600)

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
    saved_head = load_file(tmp_path / "out" / HEAD_WEIGHTS_NAME)
    assert set(saved_head) == {"net.weight", "net.bias", "action_embedding"}

    # resume: load_head filled the sharded (DTensor) head of a fresh FSDP2 model with exactly the saved values
    reloaded = torch.load(reload_path, weights_only=True)
    assert set(reloaded) == {"action_embedding", "action_decoder.net.weight", "action_decoder.net.bias"}
    assert torch.equal(reloaded["action_embedding"], saved_head["action_embedding"])
    for key in ("net.weight", "net.bias"):
        assert torch.equal(reloaded[f"action_decoder.{key}"], saved_head[key]), key


def _initial(model_dir) -> dict[str, torch.Tensor]:
    return AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"fsdp_version": 1}, "`fsdp_version: 2`"),  # accelerate's default
        ({"fsdp_version": 2, "state_dict_type": "SHARDED_STATE_DICT"}, "`fsdp_state_dict_type: FULL_STATE_DICT`"),
    ],
)
def test_unsupported_fsdp_settings_are_refused_up_front(settings, message):
    with pytest.raises(ValueError, match=message):
        check_fsdp_plugin(FullyShardedDataParallelPlugin(**settings))
    check_fsdp_plugin(FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="FULL_STATE_DICT"))


def test_wrap_policy_covers_blocks_and_head(tiny_model):
    model = build_model(tiny_model)
    assert set(model._no_split_modules) >= {"Qwen2VLDecoderLayer", "Qwen2VLVisionBlock", "ActionDecoder"}
