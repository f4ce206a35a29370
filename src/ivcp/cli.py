"""IVCP's command line.

``ivcp check-data``: read every example of a dataset the way training will and report what would stop the run.

    ivcp check-data --dataset my_videos --dataset_dir data --template qwen2_vl --cutoff_len 8192 \
        --model Qwen/Qwen2-VL-7B-Instruct --num_action_classes 51
    ivcp check-data examples/train_lora/qwen2vl_action_cls.yaml --workers 16 --problems problems.jsonl

``ivcp classify``: classify videos from the command line into a JSONL file, with a progress bar.

    ivcp classify --model Qwen/Qwen2-VL-2B-Instruct --adapter output/action_cls_model clip1.mp4 clip2.mp4
    ivcp classify --model output/full_model --video_list videos.txt --output predictions.jsonl --top_k 5
    torchrun --nproc_per_node 4 -m ivcp classify --model M --adapter A --glob 'clips/**/*.mp4' --output out.jsonl
    ivcp classify --model M --adapter A --manifest videos.csv --output out.jsonl --num_shards 100 --shard_index 7
    ivcp classify --model M --adapter A --dataset my_unlabelled --dataset_dir data --ray auto --output out_dir

Long videos (docs/long_videos.md): ``--test_clips 4`` combines 4 clips per video; ``--window 2 --stride 1`` gives
each row a timeline (per-window probabilities, merged segments) beside the whole-video answer.

    ivcp classify --model M --adapter A --glob 'long/*.mp4' --window 2 --stride 1 --output timelines.jsonl

Rerunning the same command resumes: videos already in the output are skipped (see docs/classify_at_scale.md).

``ivcp show-frames``: which frames of each video the model sees (``--json``, ``--sheet DIR``).

    ivcp show-frames clip.webm phone.mp4 --template qwen2_vl --video_fps 2 --video_maxlen 16 --json --sheet sheets/

``ivcp check-export``: is an exported folder one vLLM serves as IVCP does (``vllm serve DIR --runner pooling``)?

    ivcp check-export output/exported_model

For a whole registered dataset (with labels and metrics), use ``llamafactory-cli train it.yaml --do_train false
--do_predict true``: it writes predictions.jsonl and the confusion matrix.
"""

import argparse
import sys
from typing import Any

import yaml

from . import show_frames


def _classify(args: argparse.Namespace) -> int:
    from .batch.clips import ClipSettings
    from .batch.inputs import list_inputs
    from .batch.ranks import Placement
    from .batch.runner import Job, classify_items
    from .data.prompt import user_prompt

    try:
        prompt = user_prompt(args.prompt)
        placement = Placement.from_env(args.num_shards, args.shard_index)
        clips = ClipSettings(
            args.test_clips, args.clip_combine, args.window, args.stride, args.segment_threshold
        ).check()
        inputs = list_inputs(
            prompt,
            args.videos,
            args.video_list,
            args.glob,
            args.manifest,
            args.video_column,
            args.dataset,
            args.dataset_dir,
            args.media_dir,
        )
    except (ValueError, OSError) as err:
        raise SystemExit(f"ivcp classify: {err}") from err
    if not inputs.items:
        raise SystemExit(
            "ivcp classify: no videos: give them as arguments, --video_list, --glob, --manifest or --dataset."
        )
    if inputs.duplicates and placement.rank == 0:
        print(
            f"ivcp classify: {inputs.duplicates} videos listed twice or more: each is classified once.",
            file=sys.stderr,
        )

    settings = _parse_settings(args.set)
    if args.ray is not None:
        return _classify_with_ray(args, inputs.items, settings, clips)

    def load_reader() -> Any:
        import torch

        from .inference import ActionClassifier

        device = f"cuda:{placement.local_rank}" if placement.world_size > 1 and torch.cuda.is_available() else None
        return ActionClassifier.reader(args.model, adapter=args.adapter, device=device, **settings)

    job = Job(args.output, args.top_k, args.batch_size, args.decode_workers, clips=clips)
    try:
        return classify_items(load_reader, inputs.items, job, placement)
    except ValueError as err:  # an output made with other --test_clips / --window flags
        raise SystemExit(f"ivcp classify: {err}") from err
    except KeyboardInterrupt:
        print("ivcp classify: interrupted; rerun the same command to classify the rest.", file=sys.stderr)
        return 130


def _classify_with_ray(args: argparse.Namespace, items: list, settings: dict[str, Any], clips: Any) -> int:
    import ray

    from .batch.ray_data import classify_with_ray

    if not args.output:
        raise SystemExit("ivcp classify --ray: give --output, the folder Ray writes its files into.")
    ray.init(address=None if args.ray == "local" else args.ray)
    classify_with_ray(
        items,
        args.output,
        args.model,
        args.adapter,
        settings,
        top_k=args.top_k,
        batch_size=args.batch_size,
        num_gpus=args.num_gpus,
        concurrency=args.concurrency,
        decode_concurrency=args.decode_workers,
        output_format=args.output_format,
        clips=clips,
    )
    print(f"ivcp classify: {len(items)} videos classified by Ray into {args.output}/.", file=sys.stderr)
    return 0


CHECK_FLAGS = {  # flag -> LLaMA-Factory argument
    "model": "model_name_or_path",
    "dataset": "dataset",
    "eval_dataset": "eval_dataset",
    "dataset_dir": "dataset_dir",
    "media_dir": "media_dir",
    "template": "template",
    "cutoff_len": "cutoff_len",
    "num_action_classes": "num_action_classes",
    "action_label_names": "action_label_names",
    "action_problem_type": "action_problem_type",
}


def _parse_settings(items: list[str]) -> dict[str, Any]:
    r"""``KEY=VALUE`` pairs, each value read as YAML (so ``8192`` is a number and ``true`` a boolean)."""
    return {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}


def _check_data(args: argparse.Namespace) -> int:
    from .check_data import check_data

    config = {}
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            config = yaml.safe_load(f)

    config.update({name: getattr(args, flag) for flag, name in CHECK_FLAGS.items() if getattr(args, flag) is not None})
    config.update(_parse_settings(args.set))
    try:
        report = check_data(config, num_workers=args.workers)
    except (ValueError, OSError) as err:  # settings, model (offline, not a folder) or template that cannot work at all
        print(f"ivcp check-data: {err}", file=sys.stderr)
        return 2

    print(report.format())
    if args.problems:
        report.write_problems(args.problems)
        print(f"Every problem, one JSON line each: {args.problems}")

    return 1 if report.problems else 0


def _add_check_data(commands: Any) -> None:
    check = commands.add_parser(
        "check-data",
        help="check a dataset before training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("config", nargs="?", default=None, help="a training YAML to take the settings from")
    for flag in CHECK_FLAGS:
        check.add_argument(f"--{flag}", type=int if flag in ("cutoff_len", "num_action_classes") else str)
    check.add_argument("--workers", type=int, default=None, help="processes (like preprocessing_num_workers)")
    check.add_argument("--problems", default=None, help="write every problem to this JSONL file")
    check.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other LLaMA-Factory arguments")


def _add_classify_arguments(classify: argparse.ArgumentParser) -> None:
    inputs = classify.add_argument_group("videos (any mix; each video is classified once)")
    inputs.add_argument("videos", nargs="*", help="video files")
    inputs.add_argument("--video_list", default=None, help="a text file with one video path per line")
    inputs.add_argument("--glob", default=None, help="a quoted pattern such as 'clips/**/*.mp4' (sorted)")
    inputs.add_argument("--manifest", default=None, help="a .jsonl or .csv file; its other columns join the output")
    inputs.add_argument("--video_column", default="video", help="the manifest's video column (default: video)")
    inputs.add_argument("--dataset", default=None, help="a registered dataset, labelled or not (its own prompts)")
    inputs.add_argument("--dataset_dir", default="data", help="where its dataset_info.json is (default: data)")
    inputs.add_argument(
        "--media_dir", default=None, help="what its video paths are relative to (default: dataset_dir)"
    )

    classify.add_argument("--model", required=True, help="base model (LoRA) or the trained model folder (full)")
    classify.add_argument("--adapter", default=None, help="output_dir of a LoRA action_cls run")
    classify.add_argument(
        "--output", default=None, help="JSONL file: rerunning the same command resumes it (default: standard output)"
    )
    classify.add_argument("--top_k", type=int, default=5)
    classify.add_argument("--batch_size", type=int, default=8)
    classify.add_argument(
        "--decode_workers", type=int, default=2, help="processes decoding the next batches (0: decode in the loop)"
    )
    classify.add_argument(
        "--prompt",
        default=None,
        help="the question (<video> and <ACTION> are added, as the API does), or a whole user turn as the data has it",
    )
    classify.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="LLaMA-Factory model/data arguments, e.g. video_fps=2",
    )

    long = classify.add_argument_group("long videos (see docs/long_videos.md)")
    long.add_argument(
        "--test_clips", type=int, default=1, help="cut each video into N clips and combine their answers (N passes)"
    )
    long.add_argument("--clip_combine", default="mean", help="how N clips combine: mean (probabilities), logits, max")
    long.add_argument(
        "--window", type=float, default=None, metavar="SECONDS", help="a timeline: classify windows of this length"
    )
    long.add_argument(
        "--stride", type=float, default=None, metavar="SECONDS", help="between windows (default: window)"
    )
    long.add_argument(
        "--segment_threshold",
        type=float,
        default=None,
        help="a window shows a class at or above this probability (default: its top class; multi-label: the head's)",
    )

    scale = classify.add_argument_group("at scale (see docs/classify_at_scale.md)")
    scale.add_argument("--num_shards", type=int, default=1, help="split the videos into this many array-job shards")
    scale.add_argument("--shard_index", type=int, default=0, help="the shard this job classifies (0-based)")
    scale.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster ('local': start one)",
    )
    scale.add_argument("--num_gpus", type=float, default=1.0, help="Ray: GPUs per model actor (0 on CPU)")
    scale.add_argument("--concurrency", type=int, default=1, help="Ray: model actors")
    scale.add_argument("--output_format", choices=("jsonl", "parquet"), default="jsonl", help="Ray: file format")


def _check_export(args: argparse.Namespace) -> int:
    from .model.vllm_layout import check_vllm_export

    problems = check_vllm_export(args.directory)
    for problem in problems:
        print(f"ivcp check-export: {args.directory}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.directory} is a classifier vLLM serves: vllm serve {args.directory} --runner pooling")

    return 1 if problems else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ivcp", description="IVCP tools for the action_cls stage.")
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser(
        "classify",
        help="classify videos into JSONL",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_classify_arguments(classify)
    _add_check_data(commands)
    show_frames.add_parser(commands)
    check_export = commands.add_parser("check-export", help="check that vLLM serves an exported classifier as IVCP")
    check_export.add_argument("directory", help="the export_dir of `llamafactory-cli export`")
    args = parser.parse_args(argv)
    if args.command == "classify":
        sys.exit(_classify(args))
    elif args.command == "check-data":
        sys.exit(_check_data(args))
    elif args.command == "show-frames":
        sys.exit(show_frames.show_frames(args))
    elif args.command == "check-export":
        sys.exit(_check_export(args))


if __name__ == "__main__":
    main()
