import os

import pytest
import torch
from accelerate.utils import FullyShardedDataParallelPlugin
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from ivcp.model.action_decoder import HEAD_WEIGHTS_NAME, ActionDecoder
from ivcp.train.action_cls.trainer import check_fsdp_plugin
from tests.helpers import REPO, base_config, run_cli, run_command, write_config

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


@pytest.mark.parametrize("route", ["accelerate_launch", "fsdp_argument"])
def test_fsdp_on_cpu_is_refused_through_the_entry_points(route, tiny_model, motion_data, tmp_path):
    r"""accelerate 1.11 makes a run FSDP only on an accelerator: on a CPU it would silently train DDP instead."""
    config = base_config(tiny_model, motion_data, str(tmp_path / "out"))
    if route == "accelerate_launch":  # the documented command, with the shipped config as it is
        launch = ("accelerate", "launch", "--config_file", str(REPO / "examples" / "accelerate" / "fsdp_config.yaml"))
        result = run_command(
            tmp_path, *launch, str(REPO / "src" / "train.py"), write_config(config, tmp_path), check=False
        )
    else:  # HF's own FSDP arguments in the YAML (one process is enough: the check reads the arguments)
        config.update(fsdp="full_shard auto_wrap", fsdp_config={"fsdp_version": 2})
        result = run_cli(config, tmp_path, check=False)
    assert result.returncode != 0
    assert "FSDP needs GPUs" in result.stderr and "FORCE_TORCHRUN=1 NPROC_PER_NODE=N" in result.stderr
    assert not (tmp_path / "out").exists()  # refused before any training or saving
