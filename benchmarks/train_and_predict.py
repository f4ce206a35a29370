"""Training and prediction cost of three ways to classify videos with a Qwen2-VL, on one model and one data set.

1. ``sft``: LLaMA-Factory's own sft stage, the class name as the answer text; prediction generates the answer.
2. ``naive``: the naive classification recipe (``naive_recipe.py``): full forward with the LM head and
   ``output_hidden_states=True`` over the whole sequence, the head on ``hidden_states[-1]`` at ``<ACTION>``.
3. ``action_cls``: IVCP's stage, its prediction through the stage's ``do_predict``.

One invocation writes one random Qwen2-VL with the real vocabulary (151,936 embedding and LM-head rows; the
tokenizer stays small, so generated text decodes to nothing readable, its cost is real) and one set of mp4 clips,
then runs each method's training and its prediction in a subprocess of its own through ``run_exp`` with a timing
callback. Warm-up steps/batches are left out of the timings; peak memory is the process's own high-water mark.
With ``--repeats`` the methods run interleaved, so a change in background load hits all of them alike; the table
shows medians and [min-max], and the CPU other processes used meanwhile (on a busy machine every op of a 2-thread
run stalls at a thread barrier, which flattens the differences).

    python benchmarks/train_and_predict.py                    # defaults: about 3 minutes on 2 CPU cores
    python benchmarks/train_and_predict.py --repeats 3 --hidden_size 512 --num_layers 32
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import psutil
import yaml
from transformers import TrainerCallback


QWEN2_VL_VOCAB_ROWS = 151936
METHODS = {"sft": "(1) sft stage, answer as text", "naive": "(2) naive recipe", "action_cls": "(3) IVCP action_cls"}
# One answer sentence per motion direction (ivcp.demo.motion_videos.DIRECTIONS order), 15-17 tokens each.
ANSWERS = (
    "The square moves steadily left from the right side to the left side of the frame.",
    "The square moves steadily right from the left side to the right side of the frame.",
    "The square moves steadily up from the bottom to the top of the frame.",
    "The square moves steadily down from the top to the bottom of the frame.",
)
BUSY_MACHINE_CORES = 0.25  # CPU cores used by other processes during a timed window that make timings unreliable
# Share of the LM head in the LLM's weight FLOPs per token of the released models, for scale.
RELEASED_LM_HEAD_SHARE = {"Qwen2-VL-2B": 0.15, "Qwen2-VL-7B": 0.077}


def cpu_marks() -> tuple[float, float, float]:
    r"""(wall clock, CPU seconds used by the whole machine, by this process's threads) at this moment."""
    machine, own = psutil.cpu_times(), psutil.Process().cpu_times()
    busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal
    return time.perf_counter(), busy, own.user + own.system


class Clock(TrainerCallback):
    r"""Marks at the end of each training step / prediction batch, RSS when training starts, mean sequence length."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float, float]] = []
        self.rss_at_train_start = 0
        self.mean_tokens = 0.0

    @staticmethod
    def _mean_tokens(dataloader: Any) -> float:
        return float(np.mean([len(ids) for ids in dataloader.dataset["input_ids"]]))

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs) -> None:
        self.rss_at_train_start = psutil.Process().memory_info().rss
        self.mean_tokens = self._mean_tokens(train_dataloader)

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.marks.append(cpu_marks())

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs) -> None:
        self.marks.append(cpu_marks())
        if len(self.marks) == 1:
            self.mean_tokens = self._mean_tokens(eval_dataloader)

    def timing(self, warmup: int, items_per_mark: int) -> dict[str, float]:
        r"""Items per second after the first ``warmup`` steps/batches, and the CPU cores other processes used meanwhile.

        accelerate loads one batch ahead, so a window holds the loading of the next batch, and the last window none:
        with only two prediction batches the timed one is a forward pass alone. With 2 threads, a busy machine stalls
        every op at a thread barrier.
        """
        if len(self.marks) <= warmup:
            raise ValueError(f"{len(self.marks)} steps/batches leave none to time after {warmup} warm-up ones.")

        (start, machine_start, own_start), (end, machine_end, own_end) = self.marks[warmup - 1], self.marks[-1]
        others = (machine_end - machine_start) - (own_end - own_start)
        return {
            "per_second": (len(self.marks) - warmup) * items_per_mark / (end - start),
            "background_cores": max(others, 0.0) / (end - start),
        }


def peak_rss() -> int:
    r"""This process's peak RSS in bytes (Linux ``VmHWM``): ``ru_maxrss`` keeps the parent's RSS at fork if larger."""
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def run_child(spec: dict[str, Any]) -> None:
    r"""One method's training or prediction in this process; writes its measurements to ``spec["result"]``."""
    import torch
    from llamafactory.train.tuner import run_exp  # registers IVCP's stage too (ivcp.pth)
    from naive_recipe import naive_recipe

    clock = Clock()
    predicting = spec["phase"] == "predict"
    with naive_recipe(predicting) if spec["method"] == "naive" else nullcontext():
        run_exp(spec["config"], callbacks=[clock])

    config = spec["config"]
    if predicting:
        timing = clock.timing(1, config["per_device_eval_batch_size"])
    else:
        timing = clock.timing(spec["warmup_steps"], config["per_device_train_batch_size"])

    result = {
        **timing,
        "peak_rss": peak_rss(),
        "rss_at_train_start": clock.rss_at_train_start,
        "mean_tokens": clock.mean_tokens,
        "cuda_peak": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }
    with open(spec["result"], "w", encoding="utf-8") as f:
        json.dump(result, f)


def write_data(data_dir: str, args: argparse.Namespace) -> None:
    r"""The same clips twice: ``cls_*`` with IVCP's prompt (<ACTION> after the video), ``sft_*`` without <ACTION>."""
    from ivcp import DEFAULT_PROMPT
    from ivcp.datasets.writer import register_datasets, to_example, write_examples
    from ivcp.demo.motion_videos import DIRECTIONS, write_motion_clip
    from ivcp.model.action_decoder import ACTION_TOKEN

    rng = np.random.default_rng(args.seed)
    prompts = {"cls": DEFAULT_PROMPT, "sft": DEFAULT_PROMPT.replace(ACTION_TOKEN, "")}
    for split, count in (("train", args.num_train), ("test", args.num_test)):
        labels = np.arange(count) % len(DIRECTIONS)
        rng.shuffle(labels)
        clips = []
        for index, label in enumerate(labels.tolist()):
            video = f"videos/{split}_{index:05d}.mp4"
            path = os.path.join(data_dir, video)
            write_motion_clip(
                path, DIRECTIONS[label], rng, num_frames=args.frames, size=args.frame_size, fps=args.clip_fps
            )
            clips.append((video, label))

        for name, prompt in prompts.items():
            examples = [to_example(video, label, list(ANSWERS), prompt) for video, label in clips]
            write_examples(data_dir, f"{name}_{split}", examples)

    register_datasets(data_dir, {f"{name}_{split}": {} for name in prompts for split in ("train", "test")})


def force_answer_length(model_dir: str) -> int:
    r"""Make generation emit exactly the longest answer plus ``<|im_end|>``: what a trained sft model costs."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    num_tokens = max(len(tokenizer.encode(answer, add_special_tokens=False)) for answer in ANSWERS) + 1
    generation_config = GenerationConfig.from_pretrained(model_dir)
    generation_config.min_new_tokens = num_tokens  # LLaMA-Factory's generating arguments have no min_new_tokens
    generation_config.save_pretrained(model_dir)
    return num_tokens


def parameter_counts(model_dir: str) -> dict[str, int]:
    r"""Parameters by part, read from the safetensors header: how much of the LLM the LM head is."""
    from safetensors import safe_open

    counts = {"lm_head": 0, "embed_tokens": 0, "llm_layers": 0, "vision": 0}
    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        for key in sorted(f.keys()):
            size = int(np.prod(f.get_slice(key).get_shape()))
            group = next((name for name in ("lm_head", "embed_tokens", "visual") if name in key), "llm_layers")
            counts["vision" if group == "visual" else group] += size

    return counts


def lf_config(method: str, phase: str, run_dir: str, args: argparse.Namespace, setup: dict[str, Any]) -> dict:
    r"""The LLaMA-Factory arguments of one run: identical for the three methods except the stage and its data."""
    prefix = "sft" if method == "sft" else "cls"
    train_dir = os.path.join(run_dir, "train")
    config: dict[str, Any] = {
        "model_name_or_path": setup["model_dir"],
        "stage": "sft" if method == "sft" else "action_cls",
        "finetuning_type": args.finetuning_type,
        "template": "qwen2_vl",
        "dataset_dir": setup["data_dir"],
        "media_dir": setup["data_dir"],
        "cutoff_len": 4096,
        "video_fps": args.video_fps or args.clip_fps,
        "video_maxlen": args.frames,
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": args.eval_batch_size,
        "learning_rate": 1.0e-4,
        "report_to": "none",
        "overwrite_cache": True,
        "overwrite_output_dir": True,
        "seed": args.seed,
    }
    if args.finetuning_type == "lora":
        config["lora_target"] = "all"
    if method != "sft":
        config["num_action_classes"] = len(ANSWERS)

    if phase == "train":
        config.update(
            do_train=True,
            dataset=f"{prefix}_train",
            output_dir=train_dir,
            max_steps=args.train_steps,
            logging_steps=args.train_steps,
            save_strategy="no",
        )
    else:
        trained = {"adapter_name_or_path": train_dir} if args.finetuning_type == "lora" else {}
        config.update(
            do_train=False,
            do_predict=True,
            eval_dataset=f"{prefix}_test",
            output_dir=os.path.join(run_dir, "predict"),
            model_name_or_path=setup["model_dir"] if trained else train_dir,
            **trained,
        )
        if method == "sft":
            config.update(predict_with_generate=True, do_sample=False, max_new_tokens=setup["answer_tokens"])

    for item in args.set:
        key, value = item.split("=", 1)
        config[key] = yaml.safe_load(value)

    return config


def run_method(method: str, phase: str, repeat: int, args: argparse.Namespace, setup: dict[str, Any]) -> dict:
    run_dir = os.path.join(setup["work_dir"], "runs", f"{method}_r{repeat}")
    os.makedirs(run_dir, exist_ok=True)
    spec = {
        "method": method,
        "phase": phase,
        "warmup_steps": args.warmup_steps,
        "config": lf_config(method, phase, run_dir, args, setup),
        "result": os.path.join(run_dir, f"{phase}.json"),
    }
    log_path = os.path.join(run_dir, f"{phase}.log")
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
            check=False,
            stdout=log,
            stderr=log,
        )
    if result.returncode != 0:
        with open(log_path, encoding="utf-8") as f:
            tail = f.read()[-6000:]
        raise RuntimeError(f"{method} {phase} failed (exit {result.returncode}), log {log_path}:\n{tail}")

    with open(spec["result"], encoding="utf-8") as f:
        return json.load(f)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    memory = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {gpu}, torch {torch.__version__}"


def print_configuration(args: argparse.Namespace, setup: dict[str, Any], results: dict) -> None:
    import llamafactory
    import peft
    import transformers

    counts = setup["parameters"]
    share = counts["lm_head"] / (counts["lm_head"] + counts["llm_layers"])
    released = ", ".join(f"{name} {value:.0%}" for name, value in RELEASED_LM_HEAD_SHARE.items())
    first = {method: results[method][0] for method in results}
    print("\n== Configuration")
    print(f"machine: {machine()}; torch threads per run: {first['sft']['train']['threads']}")
    print(
        f"versions: llamafactory {llamafactory.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}"
    )
    print(
        f"model: random Qwen2-VL, vocab rows {QWEN2_VL_VOCAB_ROWS} (untied embedding and LM head), LLM hidden "
        f"{args.hidden_size}, {args.num_layers} layers, MLP {2 * args.hidden_size}, 4 heads (2 KV); vision tower "
        f"depth 2, width 32. Parameters: LM head {counts['lm_head'] / 1e6:.1f}M, embedding "
        f"{counts['embed_tokens'] / 1e6:.1f}M, LLM layers {counts['llm_layers'] / 1e6:.2f}M, vision "
        f"{counts['vision'] / 1e6:.2f}M"
    )
    print(
        f"  the LM head is {share:.0%} of the LLM's weight FLOPs per token here ({released}): the compute saved by "
        "skipping it is larger here than on released models"
    )
    print(
        f"data: {args.num_train} train / {args.num_test} test H.264 clips, {args.frames} frames of "
        f"{args.frame_size}x{args.frame_size} at {args.clip_fps} fps, sampled at {args.video_fps or args.clip_fps} "
        f"frames a second (4 motion classes); answers: 4 sentences of "
        f"{setup['answer_tokens'] - 1} tokens at most + <|im_end|>"
    )
    print(
        "mean tokens per sequence: "
        + ", ".join(
            f"{method} train {first[method]['train']['mean_tokens']:.0f} / predict "
            f"{first[method]['predict']['mean_tokens']:.0f}"
            for method in first
        )
    )
    print(
        f"training: finetuning_type {args.finetuning_type}{' (lora_target all)' if args.finetuning_type == 'lora' else ''}"
        f", batch {args.batch_size}, {args.train_steps} steps, the first {args.warmup_steps} untimed; "
        f"LLaMA-Factory defaults otherwise (gradient checkpointing on, vision tower frozen, fp32 on CPU)"
        + (f"; overrides: {' '.join(args.set)}" if args.set else "")
    )
    print(
        f"prediction: batch {args.eval_batch_size}, the first batch untimed; sft generates greedily exactly "
        f"{setup['answer_tokens']} new tokens (min_new_tokens = max_new_tokens), the cost of a trained model"
    )
    print(f"repeats: {args.repeats}, interleaved; work dir {setup['work_dir']}")


def summarize(values: list[float], scale: float, digits: int) -> str:
    median = statistics.median(values) / scale
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} [{min(values) / scale:.{digits}f}-{max(values) / scale:.{digits}f}]"


def print_table(results: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    r"""A Markdown table: medians [min-max] over repeats, and ratios of medians against (1) (prediction also (2))."""
    gpu = results["sft"][0]["train"]["cuda_peak"] is not None
    columns = (  # key, title, value of one run, scale, digits, baselines of the ratios
        ("train", "train samples/s", lambda run: run["train"]["per_second"], 1, 2, ("sft",)),
        (
            "memory",
            "peak CUDA memory MiB" if gpu else "peak RSS MiB",
            lambda run: run["train"]["cuda_peak" if gpu else "peak_rss"],
            2**20,
            0,
            ("sft",),
        ),
        (
            "added",
            "RSS added by training MiB",
            lambda run: run["train"]["peak_rss"] - run["train"]["rss_at_train_start"],
            2**20,
            0,
            ("sft",),
        ),
        ("predict", "predict videos/s", lambda run: run["predict"]["per_second"], 1, 2, ("sft", "naive")),
    )
    medians = {
        method: {key: statistics.median(value(run) for run in runs) for key, _, value, *_ in columns}
        for method, runs in results.items()
    }
    titles = ["method"]
    for _, title, _, _, _, baselines in columns:
        titles += [title, *(f"x({list(METHODS).index(baseline) + 1})" for baseline in baselines)]

    print("\n== Results: median [min-max] over repeats; ratios of medians")
    print("| " + " | ".join(titles) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(titles))) + "|")
    for method, runs in results.items():
        cells = [METHODS[method]]
        for key, _, value, scale, digits, baselines in columns:
            cells.append(summarize([value(run) for run in runs], scale, digits))
            cells += [f"{medians[method][key] / medians[baseline][key]:.2f}" for baseline in baselines]
        print("| " + " | ".join(cells) + " |")

    background = [run[phase]["background_cores"] for runs in results.values() for run in runs for phase in run]
    print(
        f"Other processes used {statistics.median(background):.2f} CPU cores (median; max {max(background):.2f}) "
        "during the timed windows."
    )
    busy = sum(cores > BUSY_MACHINE_CORES for cores in background)
    if busy:
        print(
            f"WARNING: {busy} of {len(background)} timed windows ran while other processes used more than "
            f"{BUSY_MACHINE_CORES} cores. With one torch thread per core every op then waits at a thread barrier: "
            "trust the medians of several --repeats, rerun when the machine is quiet, or use --threads 1."
        )
    return medians


def print_targets(medians: dict[str, dict[str, float]]) -> None:
    ivcp, base, naive = medians["action_cls"], medians["sft"], medians["naive"]
    checks = (
        ("train throughput >= 1.3x sft", ivcp["train"] / base["train"], 1.3, True),
        ("peak memory <= 0.7x sft", ivcp["memory"] / base["memory"], 0.7, False),
        ("prediction >= 2x naive recipe", ivcp["predict"] / naive["predict"], 2.0, True),
    )
    print("\n== Targets for (3) action_cls")
    for name, value, target, higher in checks:
        met = value >= target if higher else value <= target
        print(f"{name:<32} {value:.2f}x  {'met' if met else 'MISSED'}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden_size", type=int, default=256, help="LLM hidden size (a multiple of 64)")
    parser.add_argument("--num_layers", type=int, default=4, help="LLM layers")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--clip_fps", type=int, default=8, help="frame rate of the clips")
    parser.add_argument("--video_fps", type=float, help="frames sampled a second (default: --clip_fps, all frames)")
    parser.add_argument("--frame_size", type=int, default=112, help="clip width and height in pixels")
    parser.add_argument("--num_train", type=int, default=48)
    parser.add_argument("--num_test", type=int, default=48, help="a multiple of --eval_batch_size")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--eval_batch_size", type=int, default=8)
    parser.add_argument("--train_steps", type=int, default=12)
    parser.add_argument("--warmup_steps", type=int, default=2, help="training steps left out of the timing")
    parser.add_argument("--finetuning_type", choices=("lora", "full", "freeze"), default="lora")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads of each run (default: torch's, one per core)")
    parser.add_argument("--set", action="append", default=[], help="extra LLaMA-Factory argument KEY=VALUE, all runs")
    parser.add_argument("--work_dir", help="keep model, data and run outputs here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        return run_child(json.loads(args.child))

    missing = [name for name in ("jieba", "nltk", "rouge_chinese") if importlib.util.find_spec(name) is None]
    if missing:  # LLaMA-Factory's sft predict_with_generate scores with them, at the very end
        raise SystemExit(f"Missing {', '.join(missing)}: pip install jieba nltk rouge-chinese")

    if args.num_test % args.eval_batch_size:
        raise SystemExit("--num_test must be a multiple of --eval_batch_size (every timed batch is full).")

    for env in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[env] = "1"
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the runs' torch reads it at start-up

    from ivcp.demo.tiny_model import build_tiny_qwen2vl

    with (
        tempfile.TemporaryDirectory(prefix="ivcp_bench_")
        if args.work_dir is None
        else nullcontext(args.work_dir) as work_dir
    ):
        setup = {
            "work_dir": work_dir,
            "model_dir": os.path.join(work_dir, "model"),
            "data_dir": os.path.join(work_dir, "data"),
        }
        print(f"Writing the model and {args.num_train + args.num_test} clips to {work_dir} ...", flush=True)
        build_tiny_qwen2vl(
            setup["model_dir"],
            vocab_size=QWEN2_VL_VOCAB_ROWS,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
        )
        setup["answer_tokens"] = force_answer_length(setup["model_dir"])
        setup["parameters"] = parameter_counts(setup["model_dir"])
        write_data(setup["data_dir"], args)
        results: dict[str, list[dict]] = {method: [] for method in METHODS}
        for repeat in range(args.repeats):
            for method, method_runs in results.items():
                start = time.perf_counter()
                runs = {phase: run_method(method, phase, repeat, args, setup) for phase in ("train", "predict")}
                method_runs.append(runs)
                print(
                    f"repeat {repeat + 1}/{args.repeats} {method}: train {runs['train']['per_second']:.2f} samples/s, "
                    f"peak RSS {runs['train']['peak_rss'] / 2**20:.0f} MiB, predict "
                    f"{runs['predict']['per_second']:.2f} videos/s; other processes used "
                    f"{runs['train']['background_cores']:.2f} / {runs['predict']['background_cores']:.2f} cores "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )

        print_configuration(args, setup, results)
        print_targets(print_table(results))


if __name__ == "__main__":
    main()
