"""VideoEspresso (CVPR 2025) from its released JSON files to three training stages.

Stage 1 (sft) is open-ended video QA; stage 2 (sft) answers the same questions from the annotated evidence; stage 3
(``action_cls``) classifies the record's ``task`` category, since the release carries no action labels.

Both released formats are read: the training JSON (``video_path, question, answer, task`` and more) and
``bench_hard.json`` (``video_path, question, options, correct_answer, evidence, task``). A record missing a required
key stops the conversion with the file, the record index and the key; a record whose clip is not on disk is counted,
never dropped silently.
"""

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .writer import check_prompt, register_datasets, sft_example, to_example, write_examples, write_label_names


# The 14 task categories in the order of the leaderboard of github.com/hshjerry/VideoEspresso (its README): the
# default class order, so that the class ids do not depend on which categories a file happens to hold.
VIDEOESPRESSO_TASKS = (
    "Narrative Analysis",
    "Event Dynamic",
    "Preparation Steps",
    "Causal Analysis",
    "Theme Analysis",
    "Contextual Analysis",
    "Influence Analysis",
    "Role Analysis",
    "Interaction Analysis",
    "Behavior Analysis",
    "Emotion Analysis",
    "Cooking Process",
    "Traffic Analysis",
    "Situation Analysis",
)
STAGE3_PROMPT = "<video>{question}<ACTION>"  # like DEFAULT_PROMPT: <ACTION> after the video and the question
EVIDENCE_INSTRUCTION = "Give the evidence from the video, then the answer."
CHOICE_INSTRUCTION = "Answer with the option's letter."
_RECORD_KEYS = (
    "VideoEspresso records need video_path, question and task, plus answer (training JSON) or correct_answer and "
    "options (bench_hard.json): fix or remove that record."
)


@dataclass
class Record:
    r"""One released QA pair, reduced to what the three stages need."""

    video: str
    task: str
    question: str  # as released: what the stage-3 prompt holds
    query: str  # what stages 1 and 2 ask: a multiple-choice question comes with its options
    answer: str
    evidence: str | None


@dataclass
class Conversion:
    r"""The converted records, and how many clips were not found (skipped, or kept if ``videos_kept``)."""

    records: list[Record] = field(default_factory=list)
    missing_videos: int = 0
    videos_kept: bool = False


def _present(record: dict, key: str) -> bool:
    return record.get(key) not in (None, "", [], {})


def _required(record: dict, key: str, where: str) -> Any:
    if not _present(record, key):
        raise ValueError(f"{where} has no {key!r}. {_RECORD_KEYS}")
    return record[key]


def _evidence_text(record: dict) -> str | None:
    r"""The bench's evidence is text; the training JSON's may be structured (frames, boxes): keep it as JSON text."""
    if not _present(record, "evidence"):
        return None
    value = record["evidence"]
    return value.strip() if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def parse_record(record: Any, where: str) -> tuple[str, str, str, str, str | None]:
    r"""(task, question, query, answer, evidence) of a training or a bench record; ``where`` names it in errors."""
    if not isinstance(record, dict):
        raise TypeError(f"{where} is a {type(record).__name__}, not a JSON object. {_RECORD_KEYS}")

    task = str(_required(record, "task", where)).strip()
    question = str(_required(record, "question", where)).strip()
    if _present(record, "answer"):
        query, answer = question, str(record["answer"]).strip()
    elif _present(record, "correct_answer"):
        options = _required(record, "options", where)
        lines = options if isinstance(options, list) else [options]
        query = "\n".join([question, *map(str, lines), CHOICE_INSTRUCTION])
        answer = str(record["correct_answer"]).strip()
    else:
        raise ValueError(
            f"{where} has neither 'answer' (training JSON) nor 'correct_answer' (bench_hard.json). {_RECORD_KEYS}"
        )

    return task, question, query, answer, _evidence_text(record)


def read_release(path: str) -> list:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: pass VideoEspresso's released JSON files.")

    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise TypeError(f"{path} holds a {type(records).__name__}: a released VideoEspresso file is a JSON list.")
    return records


def convert_release(
    paths: Iterable[str], media_dir: str, keep_missing_videos: bool = False, relative_paths: bool = False
) -> Conversion:
    r"""Read the released files; each ``video_path`` is looked up under ``media_dir``.

    Video paths are written absolute, or with ``relative_paths`` as released (relative to ``media_dir``: then train
    with ``media_dir:`` set to it). Clips not on disk are skipped unless ``keep_missing_videos``; either way counted.
    """
    conversion = Conversion(videos_kept=keep_missing_videos)
    for path in paths:
        for index, record in enumerate(read_release(path)):
            where = f"{path}: record {index}"
            task, question, query, answer, evidence = parse_record(record, where)
            released = os.path.normpath(str(_required(record, "video_path", where)))
            resolved = os.path.join(media_dir, released)  # an absolute video_path stays as it is
            if not os.path.isfile(resolved):
                conversion.missing_videos += 1
                if not keep_missing_videos:
                    continue

            video = released if relative_paths and not os.path.isabs(released) else os.path.abspath(resolved)
            conversion.records.append(Record(video, task, question, query, answer, evidence))

    return conversion


def category_names(tasks: Iterable[str], label_names: list[str] | None = None, origin: str = "") -> list[str]:
    r"""The stage-3 classes, in an order that keeps the class ids stable across runs and files.

    ``label_names`` if given (an earlier run's order), else :data:`VIDEOESPRESSO_TASKS` when every task is one of
    them, else the tasks found, sorted (the release's names then differ from the leaderboard's).
    """
    found = set(tasks)
    if label_names is not None:
        unknown = sorted(found - set(label_names))
        if unknown:
            raise ValueError(
                f"Task categories {unknown} are not in the label names of {origin}: append them to that file "
                "(appending keeps the ids of the others) or leave --label_names out to start a new class order."
            )
        return list(label_names)

    return list(VIDEOESPRESSO_TASKS) if found <= set(VIDEOESPRESSO_TASKS) else sorted(found)


def stage_examples(records: list[Record], names: list[str], prompt: str = STAGE3_PROMPT) -> dict[str, list[dict]]:
    r"""The sharegpt examples of the three stages, in record order (``prompt`` may hold ``{question}``)."""
    stage1 = [sft_example(record.video, f"<video>{record.query}", record.answer) for record in records]
    stage2 = [
        plain  # nothing to ground the answer in: stage 1's example
        if record.evidence is None
        else sft_example(
            record.video,
            f"<video>{record.query}\n{EVIDENCE_INSTRUCTION}",
            f"Evidence: {record.evidence}\nAnswer: {record.answer}",
        )
        for record, plain in zip(records, stage1)
    ]
    class_ids = {name: i for i, name in enumerate(names)}
    stage3 = [
        to_example(record.video, class_ids[record.task], names, prompt.replace("{question}", record.question))
        for record in records
    ]
    return {"stage1": stage1, "stage2": stage2, "stage3": stage3}


def write_stages(
    out_dir: str, name: str, conversion: Conversion, names: list[str], prompt: str = STAGE3_PROMPT
) -> list[str]:
    r"""Write ``<name>_stage{1,2,3}.json`` and ``<name>_label_names.json``, register them; return the report lines."""
    check_prompt(prompt)
    if not conversion.records:
        raise ValueError(
            f"No record left to convert ({conversion.missing_videos} clips not found): check --media_dir."
        )

    os.makedirs(out_dir, exist_ok=True)
    names_file = write_label_names(out_dir, name, names)
    report = []
    for stage, examples in stage_examples(conversion.records, names, prompt).items():
        path = write_examples(out_dir, f"{name}_{stage}", examples)
        report.append(f"{name}_{stage}: {len(examples)} examples -> {path}")

    register_datasets(
        out_dir, {f"{name}_stage1": {}, f"{name}_stage2": {}, f"{name}_stage3": {"label_names": names_file}}
    )
    per_class = Counter(record.task for record in conversion.records)
    report += [f"  class {i:2d} {task}: {per_class[task]} records" for i, task in enumerate(names)]
    no_evidence = sum(record.evidence is None for record in conversion.records)
    if no_evidence:
        report.append(f"{no_evidence} records have no evidence: their stage-2 example is the plain answer")
    if conversion.missing_videos:
        action = "kept" if conversion.videos_kept else "skipped"
        report.append(f"{action} {conversion.missing_videos} records: video file not found under the media dir")
    report.append(f"{len(names)} classes in {names_file}: set `num_action_classes: {len(names)}` for stage 3.")
    return report


def sample_release() -> dict[str, list[dict]]:
    r"""A tiny made-up release, one training and one bench record per task, on the shipped demo clips.

    The shipped ``data/VideoEspresso_*`` files are its conversion (see scripts/convert_videoespresso.py).
    """
    train, bench = [], []
    for k, task in enumerate(VIDEOESPRESSO_TASKS):
        evidence = "The square is at a new position in every frame while the background stays still."
        train.append(
            {
                "video_path": f"action_demo/train_{2 * k:05d}.mp4",
                "question": f"What happens in this clip (sample {2 * k})?",
                "answer": "A bright square moves steadily across a noisy background.",
                "evidence": evidence,
                "task": task,
            }
        )
        bench.append(
            {
                "video_path": f"action_demo/train_{2 * k + 1:05d}.mp4",
                "question": f"Which object moves in this clip (sample {2 * k + 1})?",
                "options": ["(A): A bright square", "(B): A red circle", "(C): A person", "(D): Nothing moves"],
                "correct_answer": "(A)",
                "evidence": evidence,
                "task": task,
            }
        )

    return {"videoespresso_train_video.json": train, "bench_hard.json": bench}
