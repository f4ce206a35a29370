"""Write the shipped demo set: synthetic clips whose 4 classes differ only by the direction of motion.

    python scripts/make_demo_data.py --out_dir data

Registers ``action_demo_train`` (36 clips per class) and ``action_demo_test`` (12 per class) for ``action_cls`` and
``mllm_video_demo`` (video QA on the first 24 training clips, for ``sft``) in data/dataset_info.json, and writes the
mp4 files (real H.264 through PyAV) to data/action_demo/. The multi-label demo, ``objects_demo_train`` (64 clips) and
``objects_demo_test`` (32), holds one or two of 4 coloured objects per clip (clips in data/objects_demo/).
"""

import argparse
import json

from ivcp.demo.motion_videos import make_motion_dataset, write_video_qa_demo
from ivcp.demo.object_videos import make_object_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="data")
    parser.add_argument("--train_per_class", type=int, default=36)
    parser.add_argument("--test_per_class", type=int, default=12)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--video_qa", type=int, default=24, help="training clips that get a video QA example")
    parser.add_argument("--objects_train", type=int, default=64, help="multi-label demo: training clips")
    parser.add_argument("--objects_test", type=int, default=32, help="multi-label demo: test clips")
    args = parser.parse_args()
    files = make_motion_dataset(
        args.out_dir,
        args.train_per_class,
        args.test_per_class,
        seed=args.seed,
        name="action_demo",
        video_dir="action_demo",
    )
    with open(files["action_demo_train"], encoding="utf-8") as f:
        files["mllm_video_demo"] = write_video_qa_demo(args.out_dir, json.load(f)[: args.video_qa])

    files.update(
        make_object_dataset(
            args.out_dir,
            args.objects_train,
            args.objects_test,
            seed=args.seed,
            name="objects_demo",
            video_dir="objects_demo",
        )
    )

    for name, path in files.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
