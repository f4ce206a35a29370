"""Learning, not just running: classes that differ only by motion over time are told apart on held-out clips.

This proves the gradient path video -> vision tower -> backbone -> <ACTION> hidden state -> head. It trains the
shipped demo config (examples/demo) on freshly generated clips that the demo data never contained.

One seed runs: the demo config's 42, on data seed 7 (it passes). Why one is enough: the recipe's spread over seeds is
measured where it is cheap to repeat, not here. docs/learning.md (``benchmarks/learning_parity.py accuracy``) trains
this data and recipe (warmup 0.1 instead of the demo's 0.05) on seeds 1-10: with the default
``action_token_own_clip`` 9 of 10 reach >= 0.90 (mean 0.975, the worst 0.875), as many as or more than the
hand-written reference loop (8 of 10); before it, seed 4 of the same data spent 11 epochs at chance and ended at
0.896. So about one seed in ten of this recipe lands just under 0.90: a failure here is a regression to look into
first, and a run of the multi-seed table tells it from a draw.
"""

import os

import yaml

from ivcp.demo.motion_videos import make_motion_dataset
from tests.helpers import REPO, read_json, run_cli


def test_motion_direction_is_learned(tiny_model, tmp_path):
    data_dir = tmp_path / "data"
    make_motion_dataset(str(data_dir), num_train_per_class=36, num_test_per_class=12, seed=7)
    with open(os.path.join(REPO, "examples", "demo", "tiny_qwen2vl_action_cls.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)

    config.update(
        model_name_or_path=tiny_model,
        dataset="motion_train",
        eval_dataset="motion_test",
        dataset_dir=str(data_dir),
        media_dir=str(data_dir),
        output_dir=str(tmp_path / "out"),
        plot_loss=False,
    )
    run_cli(config, tmp_path)
    metrics = read_json(tmp_path / "out" / "eval_results.json")
    assert metrics["eval_accuracy"] >= 0.9, metrics  # chance is 0.25 on the 48 held-out clips
