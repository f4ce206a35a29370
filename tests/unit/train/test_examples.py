"""The shipped example configs parse with the stage's arguments (a typo there would only show on a GPU box)."""

import glob
import json
import os

import pytest
import yaml
from llamafactory.hparams.parser import _parse_infer_args, _parse_train_args

from tests.helpers import REPO


EXAMPLES = sorted(glob.glob(os.path.join(REPO, "examples", "*", "*.yaml")))


INFERENCE = [path for path in EXAMPLES if os.path.basename(os.path.dirname(path)) == "inference"]


@pytest.mark.parametrize(
    "path", [p for p in EXAMPLES if "accelerate" not in p and p not in INFERENCE], ids=os.path.basename
)
def test_example_yaml_parses(path):
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)

    if "deepspeed" in config:
        assert os.path.isfile(os.path.join(REPO, config.pop("deepspeed")))
    config["bf16"] = False  # CPU machines
    _, data_args, _, finetuning_args, _ = _parse_train_args(config)
    assert finetuning_args.stage == "action_cls"
    with open(os.path.join(REPO, data_args.dataset_dir, "dataset_info.json"), encoding="utf-8") as f:
        info = json.load(f)
    assert all(name in info for name in data_args.dataset + (data_args.eval_dataset or []))


@pytest.mark.parametrize("path", INFERENCE, ids=os.path.basename)
def test_inference_yaml_parses(path):
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)

    _, _, finetuning_args, _ = _parse_infer_args(config)
    assert finetuning_args.stage == "action_cls" and finetuning_args.allowed_local_media_path == "data"


def test_accelerate_fsdp_config_keeps_full_state_dict():
    with open(os.path.join(REPO, "examples", "accelerate", "fsdp_config.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    assert config["distributed_type"] == "FSDP"
    assert config["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert config["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_deepspeed_configs_have_no_optimizer_section(stage):
    with open(os.path.join(REPO, "examples", "deepspeed", f"ds_z{stage}_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert "optimizer" not in config and config["zero_optimization"]["stage"] == stage
