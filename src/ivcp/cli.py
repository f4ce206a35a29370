"""IVCP's command line.

``ivcp check-data``: read every example of a dataset the way training will and report what would stop the run.

    ivcp check-data --dataset my_videos --dataset_dir data --template qwen2_vl --cutoff_len 8192 \
        --model Qwen/Qwen2-VL-7B-Instruct --num_action_classes 51
    ivcp check-data examples/train_lora/qwen2vl_action_cls.yaml --workers 16 --problems problems.jsonl

``ivcp classify``: classify videos from the command line into a JSONL file, with a progress bar.

    ivcp classify --model Qwen/Qwen2-VL-2B-Instruct --adapter output/action_cls_model clip1.mp4 clip2.mp4
    ivcp classify --model output/full_model --video_list videos.txt --output predictions.jsonl --top_k 5

``ivcp show-frames``: which frames of each video the model sees (``--json``, ``--sheet DIR``).

    ivcp show-frames clip.webm phone.mp4 --template qwen2_vl --video_fps 2 --video_maxlen 16 --json --sheet sheets/

``ivcp check-export``: is an exported folder one vLLM serves as IVCP does (``vllm serve DIR --runner pooling``)?

    ivcp check-export output/exported_model

For a whole registered dataset (with labels and metrics), use ``llamafactory-cli train it.yaml --do_train false
--do_predict true``: it writes predictions.jsonl and the confusion matrix.
"""

import argparse
import json
import sys
from typing import Any

import yaml

from . import show_frames
from .constants import DEFAULT_PROMPT


def _classify(args: argparse.Namespace) -> int:
    from .inference import ActionClassifier

    videos = list(args.videos)
    if args.video_list:
        with open(args.video_list, encoding="utf-8") as f:
            videos += [line.strip() for line in f if line.strip()]
    if not videos:
        raise SystemExit("Give videos as arguments or in --video_list.")

    overrides = _parse_settings(args.set)
    classifier = ActionClassifier.from_pretrained(args.model, adapter=args.adapter, **overrides)
    results = classifier.iter_predict(
        videos, top_k=args.top_k, prompt=args.prompt, batch_size=args.batch_size, progress=True
    )
    failed = 0
    with open(args.output, "w", encoding="utf-8") if args.output else sys.stdout as f:
        for result in results:  # each line is on disk once written: a crash or Ctrl-C loses nothing before it
            f.write(json.dumps(result, ensure_ascii=False) + "\n")
            f.flush()
            if "error" in result:
                failed += 1
                print(f"ivcp classify: {result['error']}", file=sys.stderr)

    print(
        f"ivcp classify: {len(videos) - failed} of {len(videos)} videos classified, {failed} failed.", file=sys.stderr
    )
    return 1 if failed else 0


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
    classify.add_argument("videos", nargs="*", help="video files")
    classify.add_argument("--model", required=True, help="base model (LoRA) or the trained model folder (full)")
    classify.add_argument("--adapter", default=None, help="output_dir of a LoRA action_cls run")
    classify.add_argument("--video_list", default=None, help="a text file with one video path per line")
    classify.add_argument("--output", default=None, help="JSONL file (default: standard output)")
    classify.add_argument("--top_k", type=int, default=5)
    classify.add_argument("--batch_size", type=int, default=8)
    classify.add_argument(
        "--prompt",
        default=DEFAULT_PROMPT,
        help="user prompt with <video> and, after it, <ACTION> (default: %(default)s)",
    )
    classify.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="LLaMA-Factory model/data arguments, e.g. video_fps=2",
    )
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
