"""Write the shipped demo set: synthetic clips whose 4 classes differ only by the direction of motion.

    python scripts/make_demo_data.py --out_dir data

Registers ``action_demo_train`` (36 clips per class) and ``action_demo_test`` (12 per class) in data/dataset_info.json
and writes the mp4 files (real H.264 through PyAV) to data/action_demo/.
"""

import argparse

from ivcp.demo.motion_videos import make_motion_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="data")
    parser.add_argument("--train_per_class", type=int, default=36)
    parser.add_argument("--test_per_class", type=int, default=12)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    files = make_motion_dataset(
        args.out_dir,
        args.train_per_class,
        args.test_per_class,
        seed=args.seed,
        name="action_demo",
        video_dir="action_demo",
    )
    for name, path in files.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
