"""Classify a list of videos with one process, the ranks of a torchrun launch, or one shard of an array job.

DataLoader worker processes check, decode and collate the next batches (:meth:`ActionClassifier.prepare`) while the
model runs the current one, so the model does not wait for FFmpeg. They are forked from the classifier of
:meth:`ActionClassifier.reader` before its weights load (they share its tokenizer and processor copy-on-write and
hold no weight, on the GPU or off it), and start on the first batches while the weights load. Results go through
:meth:`ActionClassifier.result`, the one place a row is made, into the resumable output of :mod:`ivcp.batch.output`.
"""

import json
import multiprocessing
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .clips import ClipSettings, Layout
from .inputs import Item
from .output import PartWriter, claim_settings, mark_done, merge, missing_parts, part_path, written_rows
from .ranks import Placement, Progress


if TYPE_CHECKING:
    from ..inference import ActionClassifier


@dataclass(frozen=True)
class Job:
    output: str | None  # None: standard output (one process, no resume)
    top_k: int = 5
    batch_size: int = 8
    decode_workers: int = 2
    progress: bool = True
    clips: ClipSettings = field(default_factory=ClipSettings)  # whole videos, --test_clips or a --window timeline


@dataclass
class _Piece:
    r"""A batch of at most ``batch_size`` clips of one group of videos, prepared; the group's last piece has ``last``."""

    group: int
    layout: Layout
    spans: list[tuple[float, float] | None]
    batch: dict[str, Any] | None
    outcomes: list[Any]
    last: bool


class _PreparedPieces(IterableDataset):
    r"""Each worker splits its groups of videos into clips (reading their lengths) and prepares them a batch at a time.

    A long video's timeline is many batches: they are prepared one by one, so a worker holds one batch of frames.
    """

    def __init__(self, classifier: "ActionClassifier", groups: list[list[Item]], job: Job) -> None:
        self.classifier, self.groups, self.job = classifier, groups, job

    def __iter__(self) -> Iterator[_Piece]:
        worker = get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for group in range(first, len(self.groups), step):
            items = self.groups[group]
            videos, prompts = [item.video for item in items], [item.prompt for item in items]
            layout, spans, batches = self.job.clips.prepare(self.classifier, videos, prompts, self.job.batch_size)
            count = -(-len(spans) // self.job.batch_size)
            for number, (batch, outcomes) in enumerate(batches, 1):
                yield _Piece(group, layout, spans, batch, outcomes, last=number == count)
            if not count:  # every video of the group failed before it was split
                yield _Piece(group, layout, spans, None, [], last=True)


def _as_is(sample: Any) -> Any:
    return sample


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a decode worker runs beside the model: one core each


def prepared_pieces(reader: "ActionClassifier", groups: list[list[Item]], job: Job) -> Iterator[_Piece]:
    r"""The pieces of ``groups`` (lists of videos), prepared by ``job.decode_workers`` processes ahead of the model.

    The workers are forked by this call, not by the first ``next``: before the weights load, when the caller loads
    them after it.
    """
    workers = min(job.decode_workers, len(groups))
    workers = workers if "fork" in multiprocessing.get_all_start_methods() else 0  # spawn would copy the model
    loader = DataLoader(
        _PreparedPieces(reader, groups, job),
        batch_size=None,
        collate_fn=_as_is,
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=2 if workers else None,
    )
    return iter(loader)  # forks the workers now


def classified_groups(
    classifier: "ActionClassifier", groups: list[list[Item]], pieces: Iterator[_Piece], job: Job
) -> Iterator[tuple[list[Item], list[dict[str, Any]]]]:
    r"""Each group of videos with its results, once the model has classified all its pieces."""
    rows: dict[int, list[Any]] = {}  # the groups in progress: workers interleave theirs
    for piece in pieces:
        rows.setdefault(piece.group, []).extend(classifier.classify_prepared(piece.batch, piece.outcomes))
        if piece.last:
            group = groups[piece.group]
            videos = [item.video for item in group]
            results = job.clips.join(classifier, videos, piece.layout, piece.spans, rows.pop(piece.group), job.top_k)
            yield group, results


class _StandardOutput:
    def write(self, rows: list[dict[str, Any]]) -> None:
        sys.stdout.writelines(json_line(row) for row in rows)
        sys.stdout.flush()

    def close(self) -> None:
        pass


def json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def classify_items(
    load_reader: Callable[[], "ActionClassifier"], items: list[Item], job: Job, placement: Placement
) -> int:
    r"""Classify this process's part of ``items`` (skipping what the output holds); 1 when a video failed, else 0.

    ``load_reader`` gives the classifier without its weights (:meth:`ActionClassifier.reader`): the decode workers
    are forked, then the weights loaded.
    """
    if job.output is None and placement.parts > 1:
        raise ValueError("several processes or shards need --output: each writes its part of it.")

    mine = placement.take(items)
    written = written_rows(job.output) if job.output else {}
    if job.output:
        claim_settings(job.output, job.clips.as_dict(), ClipSettings().as_dict(), has_rows=bool(written))
    todo = [item for item in mine if item.video not in written]
    writer = PartWriter(part_path(job.output, placement.part, placement.parts)) if job.output else _StandardOutput()
    reader = load_reader() if todo else None
    progress = Progress(placement, len(todo), len(mine) - len(todo), show=job.progress)
    try:
        if reader is not None:
            per_group = job.clips.videos_per_batch(job.batch_size)
            groups = [todo[start : start + per_group] for start in range(0, len(todo), per_group)]
            pieces = prepared_pieces(reader, groups, job)
            classifier = reader.load_model()
            for group, results in classified_groups(classifier, groups, pieces, job):
                rows = [{**item.extra, **result} for item, result in zip(group, results)]
                writer.write(rows)
                failed = [row for row in rows if "error" in row]  # unreadable files, non-finite logits
                for row in failed:
                    print(f"ivcp classify: {row['error']}", file=sys.stderr)
                progress.advance(len(rows), len(failed))
    finally:
        writer.close()

    if job.output:
        mark_done(job.output, placement.part, placement.parts)
    totals = progress.finish()
    if placement.rank == 0:
        _finish(job, placement, items, totals, progress.elapsed)

    return 1 if placement.rank == 0 and totals["failed"] else 0  # one exit status per launch: rank 0's


def _finish(job: Job, placement: Placement, items: list[Item], totals: dict[str, int], seconds: float) -> None:
    r"""Rank 0: the launch's summary, and the merge of the output once every part of it is done."""
    done, failed, skipped = totals["done"], totals["failed"], totals["skipped"]
    say = lambda message: print(f"ivcp classify: {message}", file=sys.stderr)
    if done:
        say(f"{done - failed} of {done} videos classified, {failed} failed.")
        say(f"{done / seconds:.2f} videos/s over {seconds:.1f} s with {placement.world_size} process(es).")
    if skipped:
        say(f"{skipped} videos were already in the output: skipped.")
    if not job.output:
        return

    rows = merge(job.output, [item.video for item in items], placement.parts)
    if rows is not None:
        say(f"{job.output}: {rows} rows, in input order.")
    elif missing := missing_parts(job.output, placement.parts):
        say(f"shard {placement.shard_index} done; {job.output} is merged when parts {missing} are done too.")
