"""``ivcp classify``: classify videos from the command line into a JSONL file, with a progress bar.

    ivcp classify --model Qwen/Qwen2-VL-2B-Instruct --adapter output/action_cls_model clip1.mp4 clip2.mp4
    ivcp classify --model output/full_model --video_list videos.txt --output predictions.jsonl --top_k 5

For a whole registered dataset (with labels and metrics), use ``llamafactory-cli train it.yaml --do_train false
--do_predict true``: it writes predictions.jsonl and the confusion matrix.
"""

import argparse
import json
import sys

from . import DEFAULT_PROMPT


def _classify(args: argparse.Namespace) -> None:
    from .inference import ActionClassifier

    videos = list(args.videos)
    if args.video_list:
        with open(args.video_list, encoding="utf-8") as f:
            videos += [line.strip() for line in f if line.strip()]
    if not videos:
        raise SystemExit("Give videos as arguments or in --video_list.")

    overrides = dict(item.split("=", 1) for item in args.set)
    classifier = ActionClassifier.from_pretrained(args.model, adapter=args.adapter, **overrides)
    results = classifier.predict(
        videos, top_k=args.top_k, prompt=args.prompt, batch_size=args.batch_size, progress=True
    )
    with open(args.output, "w", encoding="utf-8") if args.output else sys.stdout as f:
        for result in results:
            f.write(json.dumps(result, ensure_ascii=False) + "\n")


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
    args = parser.parse_args(argv)
    if args.command == "classify":
        _classify(args)


if __name__ == "__main__":
    main()
