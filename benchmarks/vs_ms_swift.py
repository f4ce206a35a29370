"""Training throughput and peak memory of IVCP's ``action_cls`` against ms-swift's ``task_type seq_cls``.

Both classify a video by one pooled hidden state and skip the vocabulary head. One invocation writes one random
Qwen2-VL (LLM hidden 256, MLP 1024, 6 layers, 4 heads / 2 KV heads, Qwen2-VL's real 151,936 untied vocabulary rows;
vision tower depth 2, width 32) and 64 H.264 clips (8 frames of 64x64 at 4 fps, 4 motion classes), the data set in
both formats (LLaMA-Factory's dataset_info + ``action_label``; ms-swift's JSONL ``{"messages", "videos", "label"}``),
then trains with both frameworks in turn (interleaved over ``--repeats``) on the same settings: fp32, batch 8,
lr 1e-4, gradient checkpointing on, 8 frames at 56x56 (fps 4, at most 8 frames, 3136 pixels a frame).

Samples/s is each trainer's own ``train_samples_per_second`` (the training loop; saving the model afterwards is
outside it in both: ms-swift runs with ``--save_strategy no``, which would otherwise save model and optimizer
inside the loop). Samples per CPU-second divides the samples by the user + system CPU seconds of the trainer's
process tree during training: on a shared machine wall time measures the queue, CPU time the work. Memory, polled
every 100 ms: the largest ``VmHWM`` in the tree (the trainer), and the tree's peak PSS and RSS sum (ms-swift adds
one dataloader worker by default, IVCP none). ms-swift's template finds videos by the released Qwen2-VL token ids:
benchmarks/ms_swift_plugin.py sets them to the local tokenizer's (its log's ``[INPUT_IDS]`` then shows 16
``<|video_pad|>``). Each run is wrapped in ``flock /tmp/cpu.lock`` (``--lock``), one torch thread (``--threads``).

ms-swift runs from its own venv (scripts/ms_swift_venv.sh builds it: ms-swift 4.6.0 beside our torch pins).
``--profile`` adds benchmarks/step_profile.py's per-step split and memory holdings to both (ms-swift then loads
data in its main process, ``--dataloader_num_workers 0``, so its data path is timed too; its samples/s is then
not its default's).

    scripts/ms_swift_venv.sh                                          # once
    python benchmarks/vs_ms_swift.py --repeats 3                      # full fine-tuning
    python benchmarks/vs_ms_swift.py --repeats 3 --tuning lora
    python benchmarks/vs_ms_swift.py --repeats 3 --tuning freeze_vision
    python benchmarks/vs_ms_swift.py --repeats 1 --profile
    python benchmarks/vs_ms_swift.py --epochs 3
    python benchmarks/vs_ms_swift.py --epochs 3 --clip_seconds 10 --clip_fps 25 --clip_size 256   # decode-heavy

The clips are 2 s at 4 fps, 64x64 by default (the issue's); ``--clip_seconds / --clip_fps / --clip_size`` write
longer or larger ones (both frameworks still sample 8 frames at 56x56), where decoding is a larger share of a step.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from typing import Any

import psutil


HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
QWEN2_VL_VOCAB_ROWS = 151936
PROMPT = "<video>What is the person doing?"  # ms-swift pools the last token; IVCP's adds <ACTION> after it
VIDEO_ENV = {  # ms-swift's (qwen-vl-utils') video settings, the same as IVCP's video_* arguments below
    "FPS": "4",
    "FPS_MIN_FRAMES": "8",
    "FPS_MAX_FRAMES": "8",
    "VIDEO_MAX_PIXELS": "3136",
    "VIDEO_MIN_PIXELS": "3136",
    "FORCE_QWENVL_VIDEO_READER": "decord",
}
FRAMEWORKS = ("ivcp", "ms-swift")
BASELINE = "ivcp-baseline"  # IVCP from --baseline_src (e.g. main's src: before a change), interleaved too


def write_setup(work_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    r"""Model and data once per work dir (reused when its stamp matches the arguments)."""
    setup = {
        "model_dir": os.path.join(work_dir, "model"),
        "data_dir": os.path.join(work_dir, "data"),
        "stamp": {
            "num_train": args.num_train,
            "seed": args.seed,
            "clip": [args.clip_seconds, args.clip_fps, args.clip_size],
            "version": 2,
        },
    }
    stamp_path = os.path.join(work_dir, "setup.json")
    if os.path.isfile(stamp_path):
        with open(stamp_path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved["stamp"] == setup["stamp"] and saved["model_dir"] == setup["model_dir"]:
            return saved

    import numpy as np
    from transformers import AutoTokenizer

    from ivcp import DEFAULT_PROMPT
    from ivcp.datasets.writer import register_datasets, to_example, write_examples
    from ivcp.demo.motion_videos import DIRECTIONS, write_motion_clip
    from ivcp.demo.tiny_model import build_tiny_qwen2vl

    num_frames = round(args.clip_seconds * args.clip_fps)
    print(f"Writing the model and {args.num_train} clips of {num_frames} frames to {work_dir} ...", flush=True)
    build_tiny_qwen2vl(
        setup["model_dir"],
        vocab_size=QWEN2_VL_VOCAB_ROWS,
        hidden_size=256,
        intermediate_size=1024,
        num_layers=6,
        num_heads=4,
        seed=args.seed,
    )
    rng = np.random.default_rng(args.seed)
    labels = np.arange(args.num_train) % len(DIRECTIONS)
    rng.shuffle(labels)
    examples, rows = [], []
    for index, label in enumerate(labels.tolist()):
        video = f"videos/train_{index:05d}.mp4"
        write_motion_clip(
            os.path.join(setup["data_dir"], video), DIRECTIONS[label], rng, num_frames, args.clip_size, args.clip_fps
        )
        examples.append(to_example(video, label, list(DIRECTIONS), DEFAULT_PROMPT))
        rows.append(
            {
                "messages": [{"role": "user", "content": PROMPT}],
                "videos": [os.path.join(setup["data_dir"], video)],
                "label": label,
            }
        )

    write_examples(setup["data_dir"], "cls_train", examples)
    register_datasets(setup["data_dir"], {"cls_train": {}})
    with open(os.path.join(setup["data_dir"], "swift_train.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)

    tokenizer = AutoTokenizer.from_pretrained(setup["model_dir"])
    setup["media_ids"] = [tokenizer.convert_tokens_to_ids(token) for token in ("<|image_pad|>", "<|video_pad|>")]
    with open(stamp_path, "w", encoding="utf-8") as f:
        json.dump(setup, f)
    return setup


def ivcp_config(setup: dict[str, Any], out_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_name_or_path": setup["model_dir"],
        "stage": "action_cls",
        "do_train": True,
        "finetuning_type": "lora" if args.tuning == "lora" else "full",
        "template": "qwen2_vl",
        "dataset": "cls_train",
        "dataset_dir": setup["data_dir"],
        "media_dir": setup["data_dir"],
        "num_action_classes": 4,
        "cutoff_len": 2048,
        "video_fps": 4,
        "video_maxlen": 8,
        "video_max_pixels": 3136,
        "video_min_pixels": 3136,
        "per_device_train_batch_size": 8,
        "learning_rate": 1.0e-4,
        "num_train_epochs": args.epochs,
        "output_dir": out_dir,
        "overwrite_output_dir": True,
        "overwrite_cache": True,
        # a cold frame cache of the run's own: the first epoch decodes every clip, as ms-swift does
        "action_frame_cache_dir": os.path.join(os.path.dirname(out_dir), "frame_cache"),
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "seed": args.seed,
    }
    if args.tuning == "full":
        config.update(freeze_vision_tower=False, freeze_multi_modal_projector=False)
    elif args.tuning == "freeze_vision":
        config.update(freeze_vision_tower=True, freeze_multi_modal_projector=False)
    else:
        config.update(lora_target="all", lora_rank=8, lora_alpha=16, lora_dropout=0.0)
    for item in args.set:
        key, value = item.split("=", 1)
        import yaml

        config[key] = yaml.safe_load(value)
    return config


def swift_command(setup: dict[str, Any], out_dir: str, args: argparse.Namespace) -> list[str]:
    command = [
        os.path.join(args.swift_venv, "bin", "swift"),
        "sft",
        "--model", setup["model_dir"],
        "--model_type", "qwen2_vl",
        "--template", "qwen2_vl",
        "--task_type", "seq_cls",
        "--num_labels", "4",
        "--dataset", os.path.join(setup["data_dir"], "swift_train.jsonl"),
        "--learning_rate", "1e-4",
        "--num_train_epochs", str(args.epochs),
        "--per_device_train_batch_size", "8",
        "--gradient_accumulation_steps", "1",  # ms-swift's default makes 16 samples a step
        "--torch_dtype", "float32",
        "--gradient_checkpointing", "true",
        "--max_length", "2048",
        "--output_dir", out_dir,
        "--add_version", "false",
        "--save_strategy", "no",
        "--logging_steps", "1",
        "--report_to", "none",
        "--dataset_num_proc", "1",
        "--seed", str(args.seed),
        "--external_plugins", os.path.join(HERE, "ms_swift_plugin.py"),
    ]  # fmt: skip
    if args.tuning == "lora":
        command += ["--tuner_type", "lora", "--lora_rank", "8", "--lora_alpha", "16", "--lora_dropout", "0"]
        command += ["--target_modules", "all-linear"]
    else:
        frozen_vision = "true" if args.tuning == "freeze_vision" else "false"
        command += ["--tuner_type", "full", "--freeze_llm", "false", "--freeze_vit", frozen_vision]
        command += ["--freeze_aligner", "false"]
    if args.profile:
        command += ["--dataloader_num_workers", "0"]
    return command


class TreeMemory:
    r"""Polls a process tree: the highest sum of RSS and of PSS (shared pages counted once), the largest VmHWM, and the
    largest anonymous RSS of one process (``RssAnon``: memory that only the process holds, without the file pages
    that reading a memory-mapped checkpoint maps in and the kernel can drop)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.root, self.interval = psutil.Process(pid), interval
        self.peak = {"rss": 0, "pss": 0, "hwm": 0, "anon": 0}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    @staticmethod
    def _status(pid: int) -> dict[str, int]:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmHWM:", "RssAnon:")))
        return {key: int(value.split()[0]) * 1024 for key, value in fields.items()}  # {}: a zombie

    def _poll(self) -> None:
        while not self.done.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = pss = 0
            for process in processes:
                try:
                    info = process.memory_full_info()
                    rss, pss = rss + info.rss, pss + info.pss
                    status = self._status(process.pid)
                    self.peak["hwm"] = max(self.peak["hwm"], status.get("VmHWM", 0))
                    self.peak["anon"] = max(self.peak["anon"], status.get("RssAnon", 0))
                except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                    pass
            self.peak["rss"], self.peak["pss"] = max(self.peak["rss"], rss), max(self.peak["pss"], pss)
            self.done.wait(self.interval)

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.thread.join()
        return self.peak


def run_timed(command: list[str], env: dict[str, str], log_path: str, lock: str) -> dict[str, int]:
    r"""Run ``command`` (under ``flock LOCK``, if given: one timed run on the machine at a time); its memory peaks."""
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen([*(["flock", lock] if lock else []), *command], env=env, stdout=log, stderr=log)
        memory = TreeMemory(process.pid)
        code = process.wait()
    peak = memory.stop()
    if code != 0:
        with open(log_path, encoding="utf-8") as f:
            tail = f.read()[-6000:]
        raise RuntimeError(f"{command[0]} failed (exit {code}), log {log_path}:\n{tail}")
    return peak


def run_ivcp_child(spec: dict[str, Any]) -> None:
    r"""IVCP's training in this process (the benchmark's child), with the profile callback when asked."""
    from step_profile import CpuClock

    callbacks = [CpuClock(spec["clock"])]
    if spec["profile"]:
        from step_profile import StepProfile, wrap_timed
        from transformers import Qwen2VLVideoProcessor

        from ivcp.data.collator import ActionDataCollator
        from ivcp.data.video_plugin import VideoReaderMixin

        wrap_timed(VideoReaderMixin, "_regularize_videos", "decode")
        wrap_timed(Qwen2VLVideoProcessor, "__call__", "processor")
        wrap_timed(ActionDataCollator, "__call__", "collate")
        callbacks.append(StepProfile(spec["profile"]))

    from llamafactory.train.tuner import run_exp

    run_exp(spec["config"], callbacks=callbacks)


def run_one(framework: str, repeat: int, setup: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    run_dir = os.path.join(
        setup["work_dir"], "runs", f"{args.tuning}_e{args.epochs}{args.label}", f"{framework}_r{repeat}"
    )
    os.makedirs(run_dir, exist_ok=True)
    out_dir = os.path.join(run_dir, "output")
    profile = os.path.join(run_dir, "profile.json") if args.profile else None
    clock = os.path.join(run_dir, "clock.json")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = str(args.threads)  # the same torch threads in both
    if framework.startswith("ivcp"):
        spec = {"config": ivcp_config(setup, out_dir, args), "profile": profile, "clock": clock}
        command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
        source = args.baseline_src if framework == BASELINE else env.get("PYTHONPATH")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, source]))
    else:
        command = swift_command(setup, out_dir, args)
        env.update(VIDEO_ENV, IVCP_BENCH_MEDIA_IDS=",".join(map(str, setup["media_ids"])), IVCP_BENCH_CLOCK=clock)
        env.pop("PYTHONPATH", None)  # IVCP's source must not shadow ms-swift's venv
        if profile:
            env["IVCP_BENCH_PROFILE"] = profile

    start = time.perf_counter()
    peak = run_timed(command, env, os.path.join(run_dir, "train.log"), args.lock)
    result = {
        "peak_rss": peak["rss"],
        "peak_pss": peak["pss"],
        "peak_hwm": peak["hwm"],
        "peak_anon": peak["anon"],
        "wall": time.perf_counter() - start,
        "samples_per_second": read_speed(framework, out_dir),
    }
    with open(clock, encoding="utf-8") as f:
        clocked = json.load(f)
    result["samples_per_cpu_second"] = args.num_train * args.epochs / clocked["cpu_seconds"]
    result["peak_hwm_in_training"] = clocked["hwm"]
    if profile:
        with open(profile, encoding="utf-8") as f:
            result["profile"] = json.load(f)
    return result


def read_speed(framework: str, out_dir: str) -> float:
    r"""``train_samples_per_second`` as each framework writes it: train_results.json / the last line of logging.jsonl."""
    if framework.startswith("ivcp"):
        with open(os.path.join(out_dir, "train_results.json"), encoding="utf-8") as f:
            return float(json.load(f)["train_samples_per_second"])

    with open(os.path.join(out_dir, "logging.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return float(next(row["train_samples_per_second"] for row in reversed(rows) if "train_samples_per_second" in row))


def print_results(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    def median(framework: str, key: str) -> float:
        return statistics.median(run[key] for run in results[framework])

    def spread(framework: str, key: str, scale: float, digits: int) -> str:
        values = [run[key] / scale for run in results[framework]]
        return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"

    columns = (  # key, title, scale, digits
        ("samples_per_second", "train samples/s", 1, 2),
        ("samples_per_cpu_second", "samples per CPU-second", 1, 2),
        ("peak_hwm", "peak RSS of the trainer MiB", 2**20, 0),
        ("peak_hwm_in_training", "of it, until training ends MiB", 2**20, 0),
        ("peak_anon", "peak anonymous RSS of the trainer MiB", 2**20, 0),
        ("peak_pss", "peak PSS of the tree MiB", 2**20, 0),
        ("peak_rss", "peak RSS sum of the tree MiB", 2**20, 0),
    )
    print(f"\n== {args.tuning}, {args.epochs} epoch(s), {args.repeats} repeat(s): median [min-max]")
    print("| framework | " + " | ".join(title for _, title, _, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for framework in results:
        cells = [spread(framework, key, scale, digits) for key, _, scale, digits in columns]
        print(f"| {framework} | " + " | ".join(cells) + " |")
    for ivcp in ("ivcp", BASELINE):
        if ivcp in results and "ms-swift" in results:
            ratios = [median(ivcp, key) / median("ms-swift", key) for key, _, _, _ in columns]
            print(f"| {ivcp} / ms-swift | " + " | ".join(f"{ratio:.2f}x" for ratio in ratios) + " |")
    if args.profile:
        for framework, runs in results.items():
            print(f"\n== profile of {framework} (mean seconds per step, first step left out; repeat 1)")
            profile = runs[0]["profile"]
            for key, value in profile["mean_step_seconds"].items():
                print(f"  {key:<42} {value:.3f}")
            print(f"  modules imported at trainer start: {profile['modules_imported']}")
            print(f"  RSS at train begin: {profile['rss_at_train_begin_mib']:.0f} MiB")
            for part, values in sorted(profile.get("holdings_mib", {}).items()):
                print(f"  {part:<28} " + ", ".join(f"{key} {value:.0f}" for key, value in values.items()) + " MiB")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuning", choices=("full", "lora", "freeze_vision"), default="full")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_train", type=int, default=64)
    parser.add_argument("--clip_seconds", type=float, default=2.0, help="length of each training clip")
    parser.add_argument("--clip_fps", type=int, default=4, help="frame rate of each training clip")
    parser.add_argument("--clip_size", type=int, default=64, help="width = height of each training clip")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset of ivcp,ms-swift")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of each run (1: robust on a busy machine)"
    )
    parser.add_argument("--baseline_src", help="also run IVCP from this src folder (e.g. main's), interleaved")
    parser.add_argument("--label", default="", help="suffix of the run folders")
    parser.add_argument("--lock", default="/tmp/cpu.lock", help="flock file around each run ('': none)")
    parser.add_argument("--profile", action="store_true", help="per-step time split and memory holdings")
    parser.add_argument("--set", action="append", default=[], help="extra IVCP (LLaMA-Factory) argument KEY=VALUE")
    parser.add_argument(
        "--swift_venv",
        default=os.environ.get("IVCP_MS_SWIFT_VENV", os.path.expanduser("~/.cache/ivcp/ms-swift-venv")),
        help="ms-swift's venv (scripts/ms_swift_venv.sh)",
    )
    parser.add_argument("--work_dir", help="keep model, data and runs here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        return run_ivcp_child(json.loads(args.child))

    frameworks = [name for name in args.frameworks.split(",") if name] + ([BASELINE] if args.baseline_src else [])
    if "ms-swift" in frameworks and not os.path.isfile(os.path.join(args.swift_venv, "bin", "swift")):
        raise SystemExit(f"No ms-swift in {args.swift_venv}: run scripts/ms_swift_venv.sh first.")

    import tempfile

    with (
        tempfile.TemporaryDirectory(prefix="ivcp_vs_swift_")
        if args.work_dir is None
        else nullcontext(args.work_dir) as work_dir
    ):
        os.makedirs(work_dir, exist_ok=True)
        setup = {**write_setup(work_dir, args), "work_dir": work_dir}
        results: dict[str, list[dict[str, Any]]] = {framework: [] for framework in frameworks}
        for repeat in range(args.repeats):
            for framework in frameworks:
                run = run_one(framework, repeat, setup, args)
                results[framework].append(run)
                print(
                    f"repeat {repeat + 1}/{args.repeats} {framework}: {run['samples_per_second']:.2f} samples/s "
                    f"({run['samples_per_cpu_second']:.2f} per CPU-second), "
                    f"peak RSS {run['peak_hwm'] / 2**20:.0f} MiB, tree PSS {run['peak_pss'] / 2**20:.0f} MiB ({run['wall']:.0f} s; load average "
                    f"{os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        print_results(results, args)


if __name__ == "__main__":
    main()
