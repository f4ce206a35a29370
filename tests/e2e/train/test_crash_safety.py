"""Crash safety: a killed run resumes to the same weights, a half-written checkpoint is skipped, runs never mix."""

import contextlib
import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from ivcp.model import action_decoder
from ivcp.train.action_cls.checkpoints import complete_resume_checkpoint
from tests.helpers import base_config, read_json, run_cli, saved_weights, start_command, write_config


MAX_STEPS = 5  # 16 clips in batches of 4: crosses an epoch boundary


def _config(model_dir: str, data_dir: str, output_dir: Path, **overrides) -> dict:
    return base_config(model_dir, data_dir, str(output_dir), max_steps=MAX_STEPS, save_steps=1, **overrides)


@pytest.fixture(scope="module")
def reference_run(tiny_model, motion_data, tmp_path_factory) -> Path:
    r"""The uninterrupted run that every interrupted one must match."""
    work_dir = tmp_path_factory.mktemp("reference")
    run_cli(_config(tiny_model, motion_data, work_dir / "out"), work_dir)
    return work_dir / "out"


def _assert_same_weights(directory: Path, reference: Path) -> None:
    r"""Bit-exact: on CPU, resuming restores weights, optimizer, scheduler, RNG and data order exactly."""
    expected, actual = saved_weights(reference), saved_weights(directory)
    assert actual.keys() == expected.keys() and "action_embedding" in expected
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


def _file_digests(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_sigkill_mid_training_then_resume_ends_with_the_same_weights(tiny_model, motion_data, reference_run, tmp_path):
    output_dir = tmp_path / "killed"
    config = _config(tiny_model, motion_data, output_dir)
    log_path = tmp_path / "killed.log"
    process = start_command(tmp_path, "llamafactory-cli", "train", write_config(config, tmp_path), log_path=log_path)
    try:  # checkpoint-1 is complete once checkpoint-2 appears; the kill usually lands before any file is in it
        deadline = time.monotonic() + 600
        while not (output_dir / "checkpoint-2").is_dir() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the whole group: LLaMA-Factory may start workers
        process.wait()

    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{log_path.read_text()[-4000:]}"
    assert not (output_dir / "action_decoder.safetensors").exists(), "killed before the final save"
    _assert_same_weights(output_dir / "checkpoint-1", reference_run / "checkpoint-1")  # still loadable

    result = run_cli(config, tmp_path)
    assert "Resuming training from" in result.stdout + result.stderr
    _assert_same_weights(output_dir, reference_run)


def test_a_checkpoint_cut_short_by_a_kill_is_skipped_on_resume(tiny_model, motion_data, reference_run, tmp_path):
    output_dir, complete, cut = tmp_path / "cut", "checkpoint-3", "checkpoint-4"
    shutil.copytree(reference_run / complete, output_dir / complete)
    # checkpoint-4 as a kill while HF Trainer writes optimizer.pt leaves it: the later files are not there yet
    later_files = shutil.ignore_patterns("scheduler.pt", "rng_state.pth", "trainer_state.json")
    shutil.copytree(reference_run / cut, output_dir / cut, ignore=later_files)
    optimizer = output_dir / cut / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])

    result = run_cli(_config(tiny_model, motion_data, output_dir), tmp_path)
    assert f"Skipping {output_dir / cut}" in result.stdout  # ivcp logs print where LLaMA-Factory's do
    assert f"Resuming from {output_dir / complete}, the newest complete checkpoint" in result.stdout
    _assert_same_weights(output_dir, reference_run)
    assert read_json(output_dir / cut / "trainer_state.json")["global_step"] == 4  # saved again by the resumed run


def test_resume_checkpoint_is_the_newest_complete_one(tmp_path):
    states = {2: "{}", 10: "{}", 11: '{"global_st', 12: None}  # 11: cut off mid-write, 12: not written yet
    # 10 is newer than 2 although "checkpoint-2" > "checkpoint-10" as strings
    for step, state in states.items():
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)

    assert complete_resume_checkpoint(str(tmp_path / "checkpoint-12")) == str(tmp_path / "checkpoint-10")
    assert complete_resume_checkpoint(str(tmp_path / "checkpoint-2")) == str(tmp_path / "checkpoint-2")
    assert complete_resume_checkpoint(None) is None
    for step in (2, 10):
        shutil.rmtree(tmp_path / f"checkpoint-{step}")
    with pytest.raises(ValueError, match="no complete earlier checkpoint next to it. Delete it"):
        complete_resume_checkpoint(str(tmp_path / "checkpoint-12"))


def test_a_head_save_cut_short_leaves_the_previous_head(tmp_path, monkeypatch):
    action_decoder.ActionDecoder(hidden_size=8, num_classes=3).save_pretrained(str(tmp_path))
    before = _file_digests(tmp_path)

    def killed_while_writing(tensors: dict, path: str) -> None:
        Path(path).write_bytes(b"half a safetensors file")
        raise KeyboardInterrupt  # stands in for the kill: nothing after this line runs

    monkeypatch.setattr(action_decoder, "save_file", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        action_decoder.ActionDecoder(hidden_size=8, num_classes=3, decoder_type="mlp").save_pretrained(str(tmp_path))
    after = {name: digest for name, digest in _file_digests(tmp_path).items() if ".tmp." not in name}
    assert after == before  # weights and config both still the previous head's


def test_a_run_with_another_head_refuses_an_output_dir_holding_a_finished_run(
    tiny_model, motion_data, reference_run, tmp_path
):
    output_dir = tmp_path / "taken"
    shutil.copytree(reference_run, output_dir)
    before = _file_digests(output_dir)

    # LLaMA-Factory resumes from the old run's last checkpoint, whose linear head cannot load into an mlp head
    config = _config(tiny_model, motion_data, output_dir, action_decoder_type="mlp")
    result = run_cli(config, tmp_path, check=False)
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert f"Cannot resume from {output_dir / f'checkpoint-{MAX_STEPS}'}" in error
    assert "use a new `output_dir`, or set `overwrite_output_dir: true`" in error
    assert _file_digests(output_dir) == before  # nothing written: no mlp head next to the linear run's adapter


def test_an_output_dir_with_a_finished_model_and_no_checkpoints_is_refused(
    tiny_model, motion_data, reference_run, tmp_path
):
    from llamafactory.hparams import get_train_args

    output_dir = tmp_path / "finished"
    shutil.copytree(reference_run, output_dir, ignore=shutil.ignore_patterns("checkpoint-*"))
    with pytest.raises(ValueError, match="Output directory already exists and is not empty"):
        get_train_args(_config(tiny_model, motion_data, output_dir))  # what `llamafactory-cli train` runs first
