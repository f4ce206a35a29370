"""Checkpoints under DDP, ZeRO-2 and ZeRO-3 (2 CPU processes; DDP and ZeRO-2 in bf16): contents, precision, resuming.

One run per route, shared by the assertions: a LoRA checkpoint holds the adapter, the head and the <ACTION> row, not
the frozen base (compared with DDP's); the head is saved in fp32 from the optimizer's fp32 weights whatever the
route; ZeRO-3 without `stage3_gather_16bit_weights_on_model_save` saves and resumes; a resumed run ends where the
straight run ended.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ivcp.model.action_decoder import HEAD_WEIGHTS_NAME
from tests.helpers import REPO, base_config, run_cli, trainer_losses


pytest.importorskip("deepspeed")

TORCHRUN = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
ONE_PROCESS = {"OMP_NUM_THREADS": "1"}
HEAD_KEYS = {"action_embedding", "action_decoder.net.weight", "action_decoder.net.bias"}


def _ds_config(work_dir: Path, stage: int, gather: bool = True) -> str:
    with open(REPO / "examples" / "deepspeed" / f"ds_z{stage}_config.json", encoding="utf-8") as f:
        config = json.load(f)
    if stage == 3:
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = gather
    path = work_dir / f"ds_z{stage}_{gather}.json"
    path.write_text(json.dumps(config))
    return str(path)


# bf16 on a CPU needs HF's `use_cpu`, with which ZeRO-3's zero.Init at load time sees one process (DeepSpeed's batch
# size check fails: "train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size 4 != 2 * 1
# * 1"): the ZeRO-3 runs here are fp32, and ZeRO-3's bf16 master read (safe_get_full_fp32_param) is GPU-only-unverified.
ROUTES = {  # name: (finetuning_type, bf16, deepspeed stage, 16-bit gather, processes)
    "ddp": ("lora", True, None, True, 2),
    "zero2": ("lora", True, 2, True, 2),
    "zero3_no_gather": ("lora", False, 3, False, 2),
    "zero3_full_no_gather": ("full", False, 3, False, 2),
    # the reference of the bf16 DeepSpeed routes: one process, the same global batch; its gradient clipping keeps the
    # <ACTION> row in the global norm, as DeepSpeed's engines do
    "one_bf16": ("lora", True, None, True, 1),
}


def _config(tiny_model, motion_data, work_dir: Path, route: str, output_dir: Path) -> dict:
    finetuning_type, bf16, stage, gather, processes = ROUTES[route]
    config = base_config(
        tiny_model,
        motion_data,
        str(output_dir),
        per_device_train_batch_size=4 // processes,
        action_token_own_clip=processes > 1,
    )
    if finetuning_type == "full":
        config.pop("lora_target")
        config.update(finetuning_type="full", learning_rate=1.0e-4)
    if bf16:  # HF Trainer allows bf16 on a CPU only with use_cpu; DeepSpeed still runs (its CPU accelerator)
        config.update(bf16=True, use_cpu=True)
    if stage is not None:
        config["deepspeed"] = _ds_config(work_dir, stage, gather)
    return config


@pytest.fixture(scope="module")
def runs(tiny_model, motion_data, tmp_path_factory):
    r"""Each route trained once for 3 steps (checkpoint-2 saved), on demand."""
    done = {}

    def run(route: str) -> tuple[Path, dict]:
        if route not in done:
            work_dir = tmp_path_factory.mktemp(route)
            config = _config(tiny_model, motion_data, work_dir, route, work_dir / "out")
            run_cli(config, work_dir, **(TORCHRUN if ROUTES[route][-1] > 1 else ONE_PROCESS))
            done[route] = (work_dir, config)
        return done[route]

    return run


def _size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def _assert_no_frozen_base(checkpoint: Path, base_model: str, reference: Path) -> None:
    r"""DeepSpeed's module states of every rank hold LoRA and head weights only, and no fragments of frozen weights;
    the whole checkpoint is the DDP one's size give or take DeepSpeed's overhead, far below the base model's."""
    states = list(checkpoint.glob("global_step*/*model_states.pt"))
    assert states
    for path in states:
        state = torch.load(path, map_location="cpu", weights_only=False)
        assert HEAD_KEYS <= set(state["module"]), path.name
        assert all(key in HEAD_KEYS or "lora_" in key for key in state["module"]), path.name
        assert not state.get("frozen_param_fragments"), path.name
    base_bytes = (Path(base_model) / "model.safetensors").stat().st_size
    assert _size(checkpoint) < _size(reference) + base_bytes / 4


def _assert_resumes(run_dir: Path, config: dict, tmp_path: Path) -> None:
    r"""checkpoint-2 of the straight run, resumed to step 3, ends with the straight run's head (and adapter)."""
    shutil.copytree(run_dir / "out" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    result = run_cli({**config, "output_dir": str(tmp_path / "resumed")}, tmp_path, **TORCHRUN)
    assert "Resuming training from" in result.stdout + result.stderr
    for name in (HEAD_WEIGHTS_NAME, "adapter_model.safetensors"):
        if (run_dir / "out" / name).is_file():
            ours, straight = load_file(tmp_path / "resumed" / name), load_file(run_dir / "out" / name)
            for key in straight:
                torch.testing.assert_close(ours[key], straight[key], rtol=0, atol=1e-5, msg=key)


def _assert_fp32_head(output_dir: Path, from_master_weights: bool) -> None:
    head = load_file(output_dir / HEAD_WEIGHTS_NAME)
    assert {tensor.dtype for tensor in head.values()} == {torch.float32}
    if from_master_weights:  # not a bf16 module copy cast up: some values are not bf16-representable
        for key, tensor in head.items():
            assert (tensor.bfloat16().float() != tensor).any(), key


def test_zero2_lora_checkpoint_holds_no_frozen_base_and_resumes(runs, tiny_model, tmp_path):
    ddp_dir, _ = runs("ddp")
    run_dir, config = runs("zero2")
    _assert_no_frozen_base(run_dir / "out" / "checkpoint-2", tiny_model, ddp_dir / "out" / "checkpoint-2")
    _assert_fp32_head(ddp_dir / "out", from_master_weights=False)
    _assert_fp32_head(run_dir / "out", from_master_weights=True)
    _assert_resumes(run_dir, config, tmp_path)


def test_zero3_lora_without_16bit_gather_saves_adapter_and_head_and_resumes(runs, tiny_model, tmp_path):
    ddp_dir, _ = runs("ddp")
    run_dir, config = runs("zero3_no_gather")
    for output_dir in (run_dir / "out", run_dir / "out" / "checkpoint-2"):
        adapter = load_file(output_dir / "adapter_model.safetensors")
        reference = load_file(ddp_dir / "out" / "adapter_model.safetensors")
        assert adapter.keys() == reference.keys()
        assert {key: value.shape for key, value in adapter.items()} == {k: v.shape for k, v in reference.items()}
        _assert_fp32_head(output_dir, from_master_weights=False)
    _assert_no_frozen_base(run_dir / "out" / "checkpoint-2", tiny_model, ddp_dir / "out" / "checkpoint-2")
    _assert_resumes(run_dir, config, tmp_path)


def test_zero3_full_without_16bit_gather_saves_head_and_resumes(runs, tmp_path):
    run_dir, config = runs("zero3_full_no_gather")
    output_dir = run_dir / "out"
    assert not (output_dir / "model.safetensors").exists()  # no empty dummy: the weights are DeepSpeed's
    assert list(output_dir.glob("global_step*/*model_states.pt"))
    _assert_fp32_head(output_dir, from_master_weights=False)
    assert set(load_file(output_dir / HEAD_WEIGHTS_NAME)) == {"action_embedding", "net.weight", "net.bias"}
    _assert_resumes(run_dir, config, tmp_path)


def test_zero2_bf16_head_is_its_master_weights_and_the_one_process_bf16_head(runs):
    r"""A bf16 ZeRO-2 run saves the fp32 master of its head: it rounds exactly to the module's bf16 copy in DeepSpeed's
    checkpoint (DeepSpeed's own ``safe_get_full_fp32_param`` gave a slice of a LoRA B matrix, 0.127 away), and it is
    what the same bf16 run trains on one process: Adam moves a weight by at most about lr a step, so the two routes
    (which round differently) differ by at most 2 lr a step, and by less than the last step for most weights."""
    (zero2_dir, config), reference = runs("zero2"), runs("one_bf16")[0] / "out"
    zero2 = zero2_dir / "out"
    states = next((zero2 / "checkpoint-2").glob("global_step*/*model_states.pt"))
    module = torch.load(states, map_location="cpu", weights_only=False)["module"]
    for key, saved in load_file(zero2 / "checkpoint-2" / HEAD_WEIGHTS_NAME).items():
        copy = module[key if key == "action_embedding" else f"action_decoder.{key}"]
        assert copy.dtype == torch.bfloat16 and saved.dtype == torch.float32, key
        assert torch.equal(saved.bfloat16(), copy), key

    assert trainer_losses(zero2) == pytest.approx(trainer_losses(reference), rel=1e-2)
    ours, theirs = load_file(zero2 / HEAD_WEIGHTS_NAME), load_file(reference / HEAD_WEIGHTS_NAME)
    before_last = load_file(reference / "checkpoint-2" / HEAD_WEIGHTS_NAME)
    steps = len(trainer_losses(reference))
    for key in theirs:
        last_step = (theirs[key] - before_last[key]).abs().max()
        difference = (ours[key] - theirs[key]).abs()
        assert difference.median() < last_step, key
        assert difference.max() <= 2 * config["learning_rate"] * steps, key
