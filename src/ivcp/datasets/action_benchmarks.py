"""UCF-101, HMDB-51 and Kinetics-400 from their official layouts, with official split selection.

Every entry of a split list is either converted or counted as skipped with its reason (a clip that is not on disk,
a label not in the class list); nothing disappears silently. Video paths are absolute.
"""

import csv
import glob
import os

from .writer import Split


def _read_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: point --root / --splits_dir at the dataset's official files.")

    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _add(split: Split, video: str, label: int) -> None:
    if os.path.isfile(video):
        split.items.append((video, label))
    else:
        split.skipped["video file not found"] += 1


def convert_ucf101(video_dir: str, splits_dir: str, split: int = 1) -> tuple[list[str], dict[str, Split]]:
    r"""``classInd.txt`` (1-based ids), ``trainlist0N.txt`` (path id) and ``testlist0N.txt`` (path)."""
    class_ids = {}
    for line in _read_lines(os.path.join(splits_dir, "classInd.txt")):
        number, name = line.split()
        class_ids[name] = int(number) - 1
    names = [name for name, _ in sorted(class_ids.items(), key=lambda item: item[1])]

    splits = {"train": Split(), "test": Split()}
    for split_name, list_name in (("train", f"trainlist0{split}.txt"), ("test", f"testlist0{split}.txt")):
        for line in _read_lines(os.path.join(splits_dir, list_name)):
            relative = line.split()[0]
            class_name = relative.split("/")[0]
            if class_name not in class_ids:
                splits[split_name].skipped[f"class {class_name!r} not in classInd.txt"] += 1
                continue
            _add(splits[split_name], os.path.abspath(os.path.join(video_dir, relative)), class_ids[class_name])

    return names, splits


def convert_hmdb51(video_dir: str, splits_dir: str, split: int = 1) -> tuple[list[str], dict[str, Split]]:
    r"""Per-class ``<class>_test_split<N>.txt`` files whose lines are ``<video> <0|1|2>`` (1 = train, 2 = test)."""
    suffix = f"_test_split{split}.txt"
    split_files = sorted(glob.glob(os.path.join(splits_dir, f"*{suffix}")))
    if not split_files:
        raise FileNotFoundError(f"No *{suffix} files in {splits_dir}: point --splits_dir at HMDB-51's split files.")

    names = [os.path.basename(path)[: -len(suffix)] for path in split_files]
    splits = {"train": Split(), "test": Split()}
    for label, (name, path) in enumerate(zip(names, split_files)):
        for line in _read_lines(path):
            video, assignment = line.split()
            target = {"1": "train", "2": "test"}.get(assignment)
            if target is not None:
                _add(splits[target], os.path.abspath(os.path.join(video_dir, name, video)), label)

    return names, splits


def kinetics_clip_name(youtube_id: str, time_start: str, time_end: str) -> str:
    r"""The file name the common Kinetics downloaders write: ``<id>_<start:06d>_<end:06d>.mp4``."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}.mp4"


def convert_kinetics400(
    video_dir: str, annotation_dir: str, splits: tuple[str, ...] = ("train", "validate")
) -> tuple[list[str], dict[str, Split]]:
    r"""The CSVs (label, youtube_id, time_start, time_end, split) and the clips the user downloaded.

    Clips are looked up in ``<video_dir>/<split>/<label>/``, ``<video_dir>/<split>/`` and ``<video_dir>``.
    The classes are the sorted labels of the train CSV.
    """
    rows = {}
    for split in splits:
        path = os.path.join(annotation_dir, f"{split}.csv")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: point --annotation_dir at Kinetics-400's CSV files.")
        with open(path, encoding="utf-8", newline="") as f:
            rows[split] = list(csv.DictReader(f))

    names = sorted({row["label"] for row in rows.get("train", next(iter(rows.values())))})
    class_ids = {name: i for i, name in enumerate(names)}
    converted = {}
    for split, split_rows in rows.items():
        converted[split] = Split()
        for row in split_rows:
            if row["label"] not in class_ids:
                converted[split].skipped[f"label not among the {len(names)} train classes"] += 1
                continue
            clip = kinetics_clip_name(row["youtube_id"], row["time_start"], row["time_end"])
            candidates = [
                os.path.join(video_dir, split, row["label"], clip),
                os.path.join(video_dir, split, clip),
                os.path.join(video_dir, clip),
            ]
            found = next((path for path in candidates if os.path.isfile(path)), candidates[0])
            _add(converted[split], os.path.abspath(found), class_ids[row["label"]])

    return names, converted
