"""The head's saved options (``ivcp.model.head_config``): one schema, one precedence rule, a new option is one edit."""

import logging

import pytest
from llamafactory.hparams import get_train_args

from ivcp.model import head_config, load_action_model, load_action_tokenizer
from ivcp.model.head_config import HeadOption, check_head_config, head_arguments, load_head_config
from ivcp.train.export import action_export_args
from tests.helpers import base_config


def test_a_new_saved_option_is_one_edit(tiny_model, motion_data, tmp_path, monkeypatch, caplog):
    options = head_config.HEAD_OPTIONS
    monkeypatch.setattr(head_config, "HEAD_OPTIONS", (*options, HeadOption("action_token_lr_scale", "token_lr_scale")))
    config = base_config(tiny_model, motion_data, str(tmp_path / "out"), action_token_lr_scale=0.25, video_fps=3)
    model_args, data_args, _, finetuning_args, _ = get_train_args(config)
    tokenizer_module, _ = load_action_tokenizer(model_args, data_args)
    model = load_action_model(tokenizer_module["tokenizer"], model_args, finetuning_args, True, data_args=data_args)
    model.save_pretrained(str(tmp_path / "head"))  # training writes it
    saved = load_head_config(str(tmp_path / "head"))
    assert saved["token_lr_scale"] == 0.25 and saved["preprocessing"]["video_fps"] == 3

    # inference, the API and the web UI complete their arguments with it; the user's explicit value wins, with a warning
    assert head_arguments(saved, {})["action_token_lr_scale"] == 0.25
    with caplog.at_level(logging.WARNING):
        assert head_arguments(saved, {"action_token_lr_scale": 0.5, "video_fps": 3})["action_token_lr_scale"] == 0.5
    assert "`action_token_lr_scale: 0.5` is given; the head was trained with 0.25" in caplog.text
    assert "video_fps" not in caplog.text  # the same value: nothing to say

    export_args = {"model_name_or_path": tiny_model, "adapter_name_or_path": str(tmp_path / "head")}
    completed = action_export_args({**export_args, "template": "qwen2_vl", "export_dir": str(tmp_path / "export")})
    assert completed["action_token_lr_scale"] == 0.25 and completed["video_fps"] == 3  # export reads the same

    # marked fixed, the loader refuses another value and names the saved one
    monkeypatch.setattr(
        head_config, "HEAD_OPTIONS", (*options, HeadOption("action_token_lr_scale", "token_lr_scale", True))
    )
    with pytest.raises(
        ValueError, match=r"token_lr_scale=0.25, but this run has 0.5: set `action_token_lr_scale: 0.25`"
    ):
        check_head_config("head", saved, {**saved, "token_lr_scale": 0.5})
