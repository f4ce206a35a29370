"""The README's demo: build a tiny Qwen2-VL offline, train an action classifier on the shipped clips, print accuracy.

    python scripts/run_demo.py [key=value overrides for the YAML]

Runs the unmodified ``llamafactory-cli train examples/demo/tiny_qwen2vl_action_cls.yaml`` (a few minutes on CPU).
"""

import json
import os
import subprocess
import sys

from ivcp.demo.tiny_model import build_tiny_qwen2vl


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join("examples", "demo", "tiny_qwen2vl_action_cls.yaml")
MODEL_DIR = os.path.join("output", "demo", "tiny_qwen2vl")
OUTPUT_DIR = os.path.join("output", "demo", "action_cls")


def main() -> None:
    os.chdir(REPO)
    if not os.path.isfile(os.path.join(MODEL_DIR, "config.json")):
        build_tiny_qwen2vl(MODEL_DIR, seed=0)
        print(f"Built a tiny random Qwen2-VL in {MODEL_DIR}")

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    cli = os.path.join(os.path.dirname(sys.executable), "llamafactory-cli")
    subprocess.run([cli, "train", CONFIG, *sys.argv[1:]], env=env, check=True)
    with open(os.path.join(OUTPUT_DIR, "eval_results.json"), encoding="utf-8") as f:
        metrics = json.load(f)

    print(f"\nHeld-out accuracy on data/action_demo_test.json: {metrics['eval_accuracy']:.1%} (chance: 25%)")
    print(f"Adapter/model and action_decoder.safetensors are in {OUTPUT_DIR}/")


if __name__ == "__main__":
    main()
