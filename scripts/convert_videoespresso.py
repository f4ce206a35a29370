"""Convert VideoEspresso's released JSON files to three IVCP training stages.

    python scripts/convert_videoespresso.py videoespresso_train_video.json --media_dir VideoEspresso_train_video
    python scripts/convert_videoespresso.py bench_hard.json --media_dir VideoEspresso-Test --name VideoEspresso_bench \\
        --label_names data/VideoEspresso_label_names.json

Writes data/<name>_stage1.json (video QA, sft), data/<name>_stage2.json (evidence then answer, sft),
data/<name>_stage3.json (the `task` category as the class, action_cls) and data/<name>_label_names.json, and registers
the three datasets in data/dataset_info.json. Each `video_path` is looked up under --media_dir. --label_names reuses
an earlier class order (e.g. the training set's for the bench), so the class ids match.

The shipped samples are the conversion of a made-up release on the demo clips:

    python scripts/convert_videoespresso.py --make_sample /tmp/ve_sample
    python scripts/convert_videoespresso.py /tmp/ve_sample/videoespresso_train_video.json \\
        /tmp/ve_sample/bench_hard.json --media_dir data --relative_paths
"""

import argparse
import json
import os

from ivcp.datasets.videoespresso import (
    STAGE3_PROMPT,
    VIDEOESPRESSO_TASKS,
    category_names,
    convert_release,
    sample_release,
    write_stages,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="released JSON files (training JSON and/or bench_hard.json)")
    parser.add_argument("--media_dir", default=".", help="folder the released `video_path`s are relative to")
    parser.add_argument("--out_dir", default="data")
    parser.add_argument("--name", default="VideoEspresso", help="dataset name prefix")
    parser.add_argument("--label_names", help="class-name file of an earlier conversion: reuse its class order")
    parser.add_argument("--prompt", default=STAGE3_PROMPT, help="stage-3 user turn; {question} is the question")
    parser.add_argument(
        "--keep_missing_videos", action="store_true", help="keep records whose clip is not found (default: skip)"
    )
    parser.add_argument(
        "--relative_paths",
        action="store_true",
        help="write video paths relative to --media_dir (then train with `media_dir:` set to it); default: absolute",
    )
    parser.add_argument("--make_sample", metavar="DIR", help="write the made-up sample release to DIR and stop")
    args = parser.parse_args()

    if args.make_sample:
        os.makedirs(args.make_sample, exist_ok=True)
        for file_name, records in sample_release().items():
            with open(os.path.join(args.make_sample, file_name), "w", encoding="utf-8") as f:
                json.dump(records, f, ensure_ascii=False, indent=2)
            print(f"{len(records)} records -> {os.path.join(args.make_sample, file_name)}")
        return

    if not args.inputs:
        parser.error("pass the released JSON files (or --make_sample DIR)")

    conversion = convert_release(args.inputs, args.media_dir, args.keep_missing_videos, args.relative_paths)
    given = None
    if args.label_names:
        from ivcp.data.label_names import read_label_names  # imports LLaMA-Factory (seconds): only when needed

        given = read_label_names(args.label_names)
    names = category_names((record.task for record in conversion.records), given, args.label_names)
    if given is None and names != list(VIDEOESPRESSO_TASKS):
        print(f"The task names differ from the leaderboard's {len(VIDEOESPRESSO_TASKS)}: classes in sorted order.")

    for line in write_stages(args.out_dir, args.name, conversion, names, args.prompt):
        print(line)


if __name__ == "__main__":
    main()
