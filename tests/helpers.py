"""Helpers the tests share: run the CLI as a user would, build configs and data, write broken videos, wait for servers.

Fixtures live in conftest.py; everything else a test reuses lives here (``from tests.helpers import ...``).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from ivcp.demo.motion_videos import motion_stage_config
from ivcp.model.action_decoder import HEAD_WEIGHTS_NAME


REPO = Path(__file__).resolve().parent.parent
BIN_DIR = os.path.dirname(sys.executable)
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
GOOD_PROMPT = "<video>What is the person doing?<ACTION>"


def base_config(model_dir: str, data_dir: str, output_dir: str, **overrides: Any) -> dict[str, Any]:
    config = motion_stage_config(
        model_dir,
        data_dir,
        output_dir,
        finetuning_type="lora",
        lora_target="all",
        per_device_train_batch_size=4,
        learning_rate=1.0e-3,
        max_steps=3,
        logging_steps=1,
        save_steps=2,
        plot_loss=True,
        overwrite_cache=True,
        seed=42,
    )
    config.update(overrides)  # may replace any of the above, the paths included
    return config


def load_action_data(config: dict[str, Any]):
    r"""Parse ``config`` and load its data in-process through the workflow's own data path."""
    from llamafactory.hparams import get_train_args

    from ivcp.train.action_cls.workflow import prepare_action_data

    model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    return (model_args, training_args, finetuning_args), *prepare_action_data(
        model_args, data_args, training_args, finetuning_args
    )


def _venv_command(args: tuple[str, ...], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    full_env = {**os.environ, **OFFLINE_ENV, "PATH": f"{BIN_DIR}:{os.environ['PATH']}", **env}
    return [os.path.join(BIN_DIR, args[0]), *args[1:]], full_env


def run_command(
    work_dir: Path, *args: str, check: bool = True, timeout: float = 900, **env: str
) -> subprocess.CompletedProcess:
    r"""Run a command of the venv (``llamafactory-cli``, ``accelerate``, ``deepspeed``...) as a user would."""
    argv, full_env = _venv_command(args, env)
    result = subprocess.run(
        argv,
        cwd=work_dir,
        check=False,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args[:2])} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")

    return result


def start_command(work_dir: Path, *args: str, log_path: Path, **env: str) -> subprocess.Popen:
    r"""Start what :func:`run_command` runs without waiting, in its own process group so a test can kill it all."""
    argv, full_env = _venv_command(args, env)
    with open(log_path, "w", encoding="utf-8") as log:
        return subprocess.Popen(
            argv, cwd=work_dir, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def llamafactory_cli(work_dir: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run_command(work_dir, "llamafactory-cli", *args, check=check, **env)


def write_config(config: dict[str, Any], work_dir: Path) -> str:
    config_path = work_dir / f"config_{len(list(work_dir.glob('config_*.yaml')))}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return str(config_path)


def run_cli(
    config: dict[str, Any], work_dir: Path, *extra_args: str, command: str = "train", check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    r"""Write ``config`` as a YAML file and run ``llamafactory-cli <command> it.yaml [extra_args]``."""
    return llamafactory_cli(work_dir, command, write_config(config, work_dir), *extra_args, check=check, **env)


def trainer_losses(output_dir: str | Path) -> list[float]:
    r"""The logged training losses of a run, from LLaMA-Factory's trainer_log.jsonl."""
    with open(os.path.join(output_dir, "trainer_log.jsonl"), encoding="utf-8") as f:
        return [record["loss"] for record in map(json.loads, f) if "loss" in record]


def saved_weights(output_dir: str | Path) -> dict[str, torch.Tensor]:
    r"""The adapter (or full model) and the action head a run saved, in one dict."""
    backbone = (
        "adapter_model.safetensors"
        if os.path.isfile(os.path.join(output_dir, "adapter_model.safetensors"))
        else ("model.safetensors")
    )
    return {**load_file(os.path.join(output_dir, backbone)), **load_file(os.path.join(output_dir, HEAD_WEIGHTS_NAME))}


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_broken_videos(motion_data: str, out_dir: Path) -> dict[str, Path]:
    r"""Real broken files: empty, text, half of a good mp4, a good mp4 with its frame data zeroed, audio only."""
    out_dir.mkdir()
    good = Path(motion_data) / read_json(Path(motion_data) / "motion_train.json")[0]["videos"][0]
    data = bytearray(good.read_bytes())
    mdat = data.index(b"mdat")
    mdat_size = int.from_bytes(data[mdat - 4 : mdat], "big")
    files = {
        "empty": b"",
        "not-a-video": b"just some text, renamed to .mp4\n",
        "truncated": bytes(data[: len(data) // 2]),
        "no-decodable-frame": bytes(data[: mdat + 4]) + bytes(mdat_size - 8) + bytes(data[mdat - 4 + mdat_size :]),
    }
    paths = {}
    for name, content in files.items():
        paths[name] = out_dir / f"{name}.mp4"
        paths[name].write_bytes(content)

    paths["audio-only"] = out_dir / "audio-only.mp4"
    with av.open(str(paths["audio-only"]), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)

    return paths


def write_late_damaged_video(good: str | Path, path: Path) -> Path:
    r"""``good`` with the second half of its frame data zeroed: it plans (the demuxer reads it whole), its first frames
    decode, the later ones do not."""
    data = bytearray(Path(good).read_bytes())
    mdat = data.index(b"mdat")
    end = mdat - 4 + int.from_bytes(data[mdat - 4 : mdat], "big")
    start = (mdat + 4 + end) // 2
    path.write_bytes(bytes(data[:start]) + bytes(end - start) + bytes(data[end:]))
    return path


def motion_data_with(motion_data: str, data_dir: Path, name: str, examples: list[dict]) -> Path:
    r"""A copy of the motion data in ``data_dir`` with ``examples`` registered as dataset ``name``."""
    shutil.copytree(motion_data, data_dir, dirs_exist_ok=True)
    info = read_json(data_dir / "dataset_info.json")
    info[name] = {**info["motion_train"], "file_name": f"{name}.json"}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    (data_dir / f"{name}.json").write_text(json.dumps(examples))
    return data_dir


def action_example(prompt: str = GOOD_PROMPT, label=0, answer: str | None = "left", video: str | None = None) -> dict:
    r"""One ShareGPT action example; ``label="missing"`` leaves ``action_label`` out, no ``video`` means a motion clip."""
    conversations = [{"from": "human", "value": prompt}]
    if answer is not None:
        conversations.append({"from": "gpt", "value": answer})

    example = {"conversations": conversations, "videos": [video] if video else []}
    if label != "missing":
        example["action_label"] = label
    return example


def load_examples(tiny_model: str, motion_data: str, tmp_path: Path, examples: list[dict], **overrides):
    r"""Write ``examples`` as dataset ``case`` next to the motion clips and load it the way training does."""
    video = read_json(Path(motion_data) / "motion_train.json")[0]["videos"][0]
    for example in examples:
        if example["videos"] == []:
            example["videos"] = [video]
    data_dir = motion_data_with(motion_data, tmp_path / "data", "case", examples)

    config = base_config(tiny_model, str(data_dir), str(tmp_path / "out"), dataset="case", **overrides)
    _, tokenizer_module, _, _, dataset = load_action_data(config)
    return dataset, tokenizer_module["tokenizer"]


def rows_seen(module: torch.nn.Module) -> list[int]:
    r"""The sequence length of every input ``module`` gets from now on, in call order."""
    seen = []
    module.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
    return seen


def free_port() -> int:
    r"""A loopback port nothing listens on right now, for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    r"""Poll ``url`` until it answers 200; fail with the server's log if ``process`` exits or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server for {url} exited:\n{log_path.read_text()[-6000:]}")
        try:
            if httpx.get(url, timeout=5, follow_redirects=True).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)

    raise AssertionError(f"{url} did not answer within {timeout} s:\n{log_path.read_text()[-6000:]}")
