"""Long videos whose action fills 10% of the clip: one clip at a small ``video_maxlen`` against multi-clip testing.

A tiny Qwen2-VL is trained on the trimmed 4-class motion clips (:mod:`ivcp.demo.motion_videos`, the recipe of
``benchmarks/learning_parity.py``), then classifies held-out long clips (:mod:`ivcp.demo.long_videos`: 80 frames at
8 fps, the motion in 8 of them at a random place, the square still elsewhere) at ``video_maxlen`` 8:

- accuracy with ``test_clips`` 1, 4 and 8 (``mean`` and ``max`` combinations) and the cost in videos/s;
- the timeline (1 s windows every 0.5 s): its best-scoring segment against the true interval (IoU, right class);
- frames decoded per video for N clips and for the timeline (counted in the reader) against the frames in the file,
  and how many frames were decoded more than once: decoding reads each needed frame once per video (the clips of a
  video in one batch are read in one pass), so that count is 0 for N clips; a timeline whose windows span several
  batches (``--batch`` below its window count) decodes again the frames that two batches' passes share.

    nice -n 10 python benchmarks/long_videos.py --work_dir /tmp/long --seeds 1 2 --epochs 30

``--mode sampling`` trains on long clips instead (``long_train_ef{percent}``, generator seed ``--long_train_seed``,
the motion in ``--event_fraction`` of each clip of ``--long_frames``; held out: ``long_test_ef{percent}``, seed
``--long_seed``; a length other than 80 frames adds ``_f{frames}`` to both names) with
``action_train_sampling`` uniform and random_segment on the same budget (epochs, ``video_maxlen``), and reports the
held-out long clips' ``eval_accuracy`` through the trainer's eval path with ``action_test_clips`` 1 (the training
run's own evaluation) and each of ``--eval_clips`` (an evaluation-only run per ``--combines``):

    nice -n 10 python benchmarks/long_videos.py --mode sampling --work_dir /tmp/long_sampling --seeds 1 2 3
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from learning_parity import build_assets, stage_config, train_with_cli  # the trained recipe, shared


def train(model_dir: str, data_dir: str, seed: int, args: argparse.Namespace, run_dir: str) -> tuple[str, float]:
    r"""``llamafactory-cli train`` on the learning-parity recipe; (output_dir, held-out accuracy on trimmed clips)."""
    config = stage_config(model_dir, data_dir, os.path.join(run_dir, f"seed{seed}"), seed, args)
    return config["output_dir"], train_with_cli(config, os.path.join(run_dir, f"seed{seed}.yaml"))


def interval_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    overlap = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return overlap / (max(a[1], b[1]) - min(a[0], b[0]))


def count_decoded_frames() -> Counter:
    r"""Count, per (file, frame time), the frames the reader decodes from now on."""
    from ivcp.data import video_reader

    counts, original = Counter(), video_reader._decoded

    def counted(container, *args, **kwargs):
        for frame in original(container, *args, **kwargs):
            counts[container.name, frame.pts] += 1
            yield frame

    video_reader._decoded = counted
    return counts


def decode_counts(counts: Counter, videos: int) -> dict[str, float]:
    r"""Frames decoded per video, and decodes of a frame already decoded for that video (0: each frame once)."""
    return {
        "decoded_frames_per_video": sum(counts.values()) / videos,
        "frames_decoded_again": sum(count - 1 for count in counts.values()),
    }


def evaluate(classifier, examples: list[dict], data_dir: str, args: argparse.Namespace, counts: Counter) -> dict:
    videos = [os.path.join(data_dir, example["videos"][0]) for example in examples]
    labels = [example["action_label"] for example in examples]
    report = {}
    for clips in args.clips:
        for combine in ("mean", "max") if clips > 1 else ("mean",):
            counts.clear()
            start = time.perf_counter()
            results = classifier.predict(videos, test_clips=clips, combine=combine, batch_size=args.batch)
            seconds = time.perf_counter() - start
            accuracy = sum(r["predicted"] == label for r, label in zip(results, labels)) / len(labels)
            report[f"clips{clips}_{combine}"] = {
                "accuracy": accuracy,
                "videos_per_s": len(videos) / seconds,
                **decode_counts(counts, len(videos)),
            }

    ious, right = [], 0
    counts.clear()
    for video, example in zip(videos, examples):
        timeline = classifier.timeline(video, window=args.window, stride=args.stride, batch_size=args.batch)
        best = max(timeline["timeline"]["segments"], key=lambda segment: segment["score"])
        ious.append(interval_iou((best["start"], best["end"]), tuple(example["event"])))
        right += best["class"] == example["action_label"]
    report["timeline"] = {
        "best_segment_iou_mean": sum(ious) / len(ious),
        "best_segment_iou_over_0.3": sum(iou > 0.3 for iou in ious) / len(ious),
        "best_segment_right_class": right / len(ious),
        **decode_counts(counts, len(videos)),
    }
    return report


def evaluate_with_cli(config: dict, trained_dir: str, clips: int, combine: str) -> float:
    r"""``llamafactory-cli train`` with do_eval only on the trained model: eval_accuracy at ``clips`` clips."""
    output_dir = f"{trained_dir}_clips{clips}_{combine}"
    eval_config = {
        **config,
        "model_name_or_path": trained_dir,
        "output_dir": output_dir,
        "do_train": False,
        "action_test_clips": clips,
        "action_clip_combine": combine,
    }
    return train_with_cli(eval_config, f"{output_dir}.yaml")


def train_losses(output_dir: str) -> dict[str, float]:
    r"""The run's mean training loss (train_results.json) and its last logged loss (trainer_log.jsonl)."""
    with open(os.path.join(output_dir, "train_results.json"), encoding="utf-8") as f:
        mean = json.load(f)["train_loss"]
    with open(os.path.join(output_dir, "trainer_log.jsonl"), encoding="utf-8") as f:
        logged = [record["loss"] for record in map(json.loads, f) if "loss" in record]
    return {"train_loss_mean": round(mean, 4), "train_loss_last_logged": round(logged[-1], 4)}


def compare_sampling(model_dir: str, data_dir: str, args: argparse.Namespace, work_dir: str) -> None:
    r"""Train on long clips with each training sampling; held-out accuracy at 1 clip and at ``args.eval_clips``."""
    from ivcp.demo.long_videos import make_long_motion_dataset

    suffix = f"_ef{round(args.event_fraction * 100)}"  # another event_fraction or length never reuses written clips
    suffix += "" if args.long_frames == 80 else f"_f{args.long_frames}"
    train_name, test_name = f"long_train{suffix}", f"long_test{suffix}"
    for name, count, seed in (
        (train_name, args.long_train_per_class, args.long_train_seed),
        (test_name, args.long_per_class, args.long_seed),
    ):
        if not os.path.isfile(os.path.join(data_dir, f"{name}.json")):
            make_long_motion_dataset(
                data_dir, count, seed=seed, num_frames=args.long_frames, event_fraction=args.event_fraction, name=name
            )

    run_dir = os.path.join(work_dir, "sampling_runs")
    os.makedirs(run_dir, exist_ok=True)
    for seed in args.seeds:
        for sampling in ("uniform", "random_segment"):
            name = f"{sampling}_seed{seed}"
            config = stage_config(model_dir, data_dir, os.path.join(run_dir, name), seed, args)
            config.update(
                dataset=train_name,
                eval_dataset=test_name,
                video_maxlen=args.video_maxlen,
                action_train_sampling=sampling,
                per_device_eval_batch_size=args.batch,
            )
            start = time.perf_counter()
            report = {
                "seed": seed,
                "sampling": sampling,
                "clips1": train_with_cli(config, f"{config['output_dir']}.yaml"),
            }
            report["train_s"] = round(time.perf_counter() - start, 1)
            report.update(train_losses(config["output_dir"]))
            for clips in args.eval_clips:
                for combine in args.combines:
                    report[f"clips{clips}_{combine}"] = evaluate_with_cli(config, config["output_dir"], clips, combine)
            print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train_per_class", type=int, default=36)
    parser.add_argument("--test_per_class", type=int, default=12)
    parser.add_argument("--data_seed", type=int, default=7)
    parser.add_argument("--long_per_class", type=int, default=12)
    parser.add_argument("--long_seed", type=int, default=100, help="the held-out long clips' generator seed")
    parser.add_argument("--video_maxlen", type=int, default=8)
    parser.add_argument("--clips", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--stride", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=8, help="training batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup_ratio", type=float, default=0.1)
    parser.add_argument("--work_dir", help="keep model, data and runs here (default: a temporary folder)")
    parser.add_argument("--mode", choices=["clips", "sampling"], default="clips")
    parser.add_argument("--long_train_per_class", type=int, default=24, help="sampling mode: long training clips")
    parser.add_argument("--long_train_seed", type=int, default=50, help="sampling mode: their generator seed")
    parser.add_argument(
        "--event_fraction", type=float, default=0.1, help="sampling mode: the part of each long clip the motion fills"
    )
    parser.add_argument("--long_frames", type=int, default=80, help="sampling mode: frames per long clip (8 fps)")
    parser.add_argument("--eval_clips", type=int, nargs="+", default=[4], help="sampling mode: action_test_clips")
    parser.add_argument("--combines", nargs="+", default=["mean", "max"], help="sampling mode: action_clip_combine")
    args = parser.parse_args()
    args.stage_set, args.generator = [], "motion"  # learning_parity's recipe and its trimmed motion clips

    from ivcp.demo.long_videos import make_long_motion_dataset
    from ivcp.inference import ActionClassifier

    torch.set_num_threads(1)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="long_videos_")
    model_dir, data_dir = build_assets(work_dir, args)
    if args.mode == "sampling":
        compare_sampling(model_dir, data_dir, args, work_dir)
        return

    long_file = os.path.join(data_dir, "long_motion.json")
    if not os.path.isfile(long_file):
        make_long_motion_dataset(data_dir, args.long_per_class, seed=args.long_seed)
    with open(long_file, encoding="utf-8") as f:
        examples = json.load(f)

    counts = count_decoded_frames()
    for seed in args.seeds:
        run_dir = os.path.join(work_dir, "runs")
        os.makedirs(run_dir, exist_ok=True)
        output_dir, trimmed_accuracy = train(model_dir, data_dir, seed, args, run_dir)
        classifier = ActionClassifier.from_pretrained(output_dir, video_maxlen=args.video_maxlen)
        report = {"seed": seed, "trimmed_clips_accuracy": trimmed_accuracy}
        report.update(evaluate(classifier, examples, data_dir, args, counts))
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
