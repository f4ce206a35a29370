"""Convert UCF-101, HMDB-51 or Kinetics-400 from its official layout to IVCP datasets, one command each.

    python scripts/convert_action_benchmark.py ucf101 --video_dir UCF-101 --splits_dir ucfTrainTestlist --split 1
    python scripts/convert_action_benchmark.py hmdb51 --video_dir hmdb51 --splits_dir testTrainMulti_7030_splits
    python scripts/convert_action_benchmark.py kinetics400 --video_dir k400 --annotation_dir k400/annotations

Writes data/<name>_train.json and data/<name>_test.json (Kinetics: _train and _validate), data/<name>_label_names.json,
and registers the datasets (with their label names) in data/dataset_info.json. Then train with e.g.
`dataset: ucf101_train`, `eval_dataset: ucf101_test`, `num_action_classes: 101`.
"""

import argparse

from ivcp import DEFAULT_PROMPT
from ivcp.datasets.action_benchmarks import convert_hmdb51, convert_kinetics400, convert_ucf101
from ivcp.datasets.writer import write_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=["ucf101", "hmdb51", "kinetics400"])
    parser.add_argument("--video_dir", required=True, help="folder of the clips")
    parser.add_argument("--splits_dir", help="UCF-101 / HMDB-51: folder of the official split lists")
    parser.add_argument("--annotation_dir", help="Kinetics-400: folder of train.csv / validate.csv")
    parser.add_argument("--split", type=int, default=1, choices=[1, 2, 3], help="official split (UCF-101, HMDB-51)")
    parser.add_argument("--out_dir", default="data")
    parser.add_argument("--name", default=None, help="dataset name prefix (default: the benchmark's name)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="user prompt; needs <video> and, after it, <ACTION>")
    args = parser.parse_args()

    if args.benchmark == "kinetics400":
        if not args.annotation_dir:
            parser.error("kinetics400 needs --annotation_dir")
        names, splits = convert_kinetics400(args.video_dir, args.annotation_dir)
    else:
        if not args.splits_dir:
            parser.error(f"{args.benchmark} needs --splits_dir")
        convert = convert_ucf101 if args.benchmark == "ucf101" else convert_hmdb51
        names, splits = convert(args.video_dir, args.splits_dir, args.split)

    write_dataset(args.out_dir, args.name or args.benchmark, names, splits, args.prompt)
    print(f"{len(names)} classes: set `num_action_classes: {len(names)}`.")


if __name__ == "__main__":
    main()
