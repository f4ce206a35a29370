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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.context import ActionDataError
from .inputs import Item
from .output import PartWriter, mark_done, merge, missing_parts, part_path, written_rows
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


class _PreparedBatches(Dataset):
    def __init__(self, classifier: "ActionClassifier", chunks: list[list[Item]]) -> None:
        self.classifier = classifier
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> tuple[int, dict[str, Any] | None, list[Any]]:
        chunk = self.chunks[index]
        return index, *self.classifier.prepare([item.video for item in chunk], [item.prompt for item in chunk])


def _as_is(sample: Any) -> Any:
    return sample


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a decode worker runs beside the model: one core each


def prepared_batches(
    classifier: "ActionClassifier", items: list[Item], batch_size: int, workers: int
) -> Iterator[tuple[list[Item], dict[str, Any] | None, list[Any]]]:
    r"""Each batch of ``items`` with its collated inputs and outcomes, prepared ``workers`` batches ahead.

    The workers are forked by this call, not by the first ``next``: before the weights load, when the caller loads
    them after it.
    """
    chunks = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
    workers = workers if "fork" in multiprocessing.get_all_start_methods() else 0  # spawn would copy the model
    loader = DataLoader(
        _PreparedBatches(classifier, chunks),
        batch_size=None,
        collate_fn=_as_is,
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=2 if workers else None,
    )
    batches = iter(loader)  # forks the workers now
    return ((chunks[index], batch, outcomes) for index, batch, outcomes in batches)


class _StandardOutput:
    def write(self, rows: list[dict[str, Any]]) -> None:
        sys.stdout.writelines(json_line(row) for row in rows)
        sys.stdout.flush()

    def close(self) -> None:
        pass


def output_row(
    classifier: "ActionClassifier",
    video: str,
    extra: dict[str, Any],
    outcome: "torch.Tensor | ActionDataError",
    top_k: int,
) -> dict[str, Any]:
    r"""The output row of one video: its manifest columns, then the classifier's result (the one place it is made)."""
    return {**extra, **classifier.result(video, outcome, top_k)}


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
    todo = [item for item in mine if item.video not in written]
    writer = PartWriter(part_path(job.output, placement.part, placement.parts)) if job.output else _StandardOutput()
    reader = load_reader() if todo else None
    progress = Progress(placement, len(todo), len(mine) - len(todo), show=job.progress)
    try:
        if reader is not None:
            batches = prepared_batches(reader, todo, job.batch_size, job.decode_workers)
            classifier = reader.load_model()
            for chunk, batch, outcomes in batches:
                rows = [
                    output_row(classifier, item.video, item.extra, outcome, job.top_k)
                    for item, outcome in zip(chunk, classifier.classify_prepared(batch, outcomes))
                ]
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
