"""Videos/s of ``ivcp classify``: one process vs N torchrun processes, and decode workers 0/1/2, on the same files.

Each setting classifies the same ``--videos`` files (hard links of the motion clips, so no cache is shared by name)
into a fresh output and reports the rate its own summary line prints: videos per second from the model being loaded
to the last row written, across all ranks (process start and model loading excluded, as they do not grow with the
archive). The settings run in turn, ``--repeats`` rounds (medians shown), so that a change in the machine's other load
hits them alike. Ratios are to one process decoding in its loop (``--decode_workers 0``), in the same run. A last
in-process pass splits one process's time between preparing batches (reading, decoding, processing and collating
the videos: what the decode workers take over) and the model's forward pass, which shows where the time goes.

Without ``--model`` it builds a tiny random Qwen2-VL and trains a classifier for 2 steps first (see serve_load.py).

    flock /tmp/cpu.lock python benchmarks/classify_at_scale.py                 # about 10 minutes on 2 busy cores
    python benchmarks/classify_at_scale.py --videos 512 --processes 1 2 4 --workers 0 1 2 --batch_size 8
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from serve_load import _env, train_tiny_classifier


def run(work_dir: str, args: argparse.Namespace, processes: int, workers: int) -> float:
    output = os.path.join(work_dir, f"out_{processes}_{workers}.jsonl")
    if os.path.exists(output):  # an earlier round's: it would be resumed, with nothing left to do
        os.remove(output)
    launcher = (
        ["ivcp"] if processes == 1 else ["torchrun", "--standalone", "--nproc_per_node", str(processes), "-m", "ivcp"]
    )
    command = [*launcher, "classify", "--model", args.model, "--video_list", args.list, "--output", output]
    command += ["--batch_size", str(args.batch_size), "--decode_workers", str(workers)]
    command += ["--adapter", args.adapter] if args.adapter else []
    command[0] = os.path.join(os.path.dirname(sys.executable), command[0])  # the venv's ivcp / torchrun
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=_env(args.threads), cwd=work_dir)
    rate = re.search(r"ivcp classify: ([0-9.]+) videos/s", result.stderr)
    if result.returncode != 0 or rate is None:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return float(rate.group(1))


def time_split(args: argparse.Namespace, videos: list[str]) -> tuple[float, float]:
    r"""Seconds one process spends preparing all batches, and in the model, for the same videos."""
    import torch

    from ivcp import DEFAULT_PROMPT
    from ivcp.inference import ActionClassifier

    torch.set_num_threads(args.threads)  # as the measured processes run
    classifier = ActionClassifier.from_pretrained(args.model, adapter=args.adapter)
    prepare = forward = 0.0
    for start in range(0, len(videos), args.batch_size):
        chunk = videos[start : start + args.batch_size]
        began = time.perf_counter()
        batch, outcomes = classifier.prepare(chunk, [DEFAULT_PROMPT] * len(chunk))
        prepared = time.perf_counter()
        classifier.classify_prepared(batch, outcomes)
        prepare, forward = prepare + prepared - began, forward + time.perf_counter() - prepared
    return prepare, forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--clips", nargs="*", default=None, help="videos to link --videos times (default: motion)")
    parser.add_argument("--videos", type=int, default=192)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all settings, interleaved; medians shown")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work_dir:
        if args.model is None:
            args.model, args.adapter, data_dir, clips = train_tiny_classifier(work_dir, args.threads)
            args.clips = [os.path.join(data_dir, clip) for clip in clips]  # relative to the data: media_dir
        os.makedirs(os.path.join(work_dir, "videos"))
        videos = []
        for i in range(args.videos):
            source = args.clips[i % len(args.clips)]
            videos.append(os.path.join(work_dir, "videos", f"{i:06d}{os.path.splitext(source)[1]}"))
            os.link(source, videos[-1])
        args.list = os.path.join(work_dir, "videos.txt")
        with open(args.list, "w", encoding="utf-8") as f:
            f.write("\n".join(videos) + "\n")

        print(
            f"{args.videos} videos, batch_size {args.batch_size}, {args.threads} torch thread(s) per process, "
            f"{os.cpu_count()} CPU cores"
        )
        settings = [(1, workers) for workers in args.workers]
        settings += [(processes, workers) for processes in args.processes if processes > 1 for workers in (0, 1)]
        rounds = [{setting: run(work_dir, args, *setting) for setting in settings} for _ in range(args.repeats)]
        rates = {setting: statistics.median(rates[setting] for rates in rounds) for setting in settings}
        baseline = rates[1, 0]
        print(f"{'processes':>9} {'decode workers':>14} {'videos/s':>9} {'ratio':>6}")
        for (processes, workers), rate in rates.items():
            print(f"{processes:>9} {workers:>14} {rate:>9.2f} {rate / baseline:>5.2f}x")

        prepare, forward = time_split(args, videos)
        total = prepare + forward
        print(
            f"one process, in its loop: preparing the videos {prepare:.1f} s ({prepare / total:.0%}), "
            f"the model {forward:.1f} s ({forward / total:.0%})"
        )


if __name__ == "__main__":
    main()
