"""A JSONL output that survives being killed: per-part files of whole lines, a done marker each, one atomic merge.

Each process appends its rows to its own part file, one ``write`` per batch followed by ``fsync``, so a crash or
SIGKILL loses at most the batch in flight. A torn last line (a machine that lost power mid-write) is cut off when the
part is reopened, and readers ignore it. A rerun reads every row already written, in the final output and in all
parts (whatever the earlier run's number of processes was), and skips those videos: no video is written twice.
The flags that shape a row (``--test_clips``, ``--window``...), when not the defaults, are recorded beside the output
(``OUTPUT.settings.json``, before the first row): a rerun with other flags is refused rather than mixing two kinds of
row. When every part of
the run carries its done marker, the last process to finish merges them, under a file lock,
into the output in input order (write a temporary file, fsync, rename) and removes the parts.
"""

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

from ..log import get_logger


logger = get_logger(__name__)


def parts_dir(output: str) -> str:
    return f"{output}.parts"


def part_path(output: str, part: int, parts: int) -> str:
    r"""Where part ``part`` of ``parts`` writes: the output itself when there is one part (one process, no shards)."""
    if parts == 1:
        return output

    return os.path.join(parts_dir(output), f"part-{part:05d}-of-{parts:05d}.jsonl")


def read_rows(path: str) -> Iterator[dict[str, Any]]:
    r"""The complete rows of a JSONL file; a torn last line (no newline) is not a row.

    A line that is not a JSON row (a torn line that something appended to) is logged and left out, so its video is
    classified again rather than the whole run stopping.
    """
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict) and "video" in row:
                yield row
            else:
                logger.warning(f"{path} line {number} is not a result row: its video is classified again.")


def written_rows(output: str) -> dict[str, dict[str, Any]]:
    r"""Every row already in the output and its parts, by video (the output's own row wins)."""
    paths = []
    if os.path.isdir(parts_dir(output)):
        paths = sorted(
            os.path.join(parts_dir(output), name) for name in os.listdir(parts_dir(output)) if name.endswith(".jsonl")
        )
    if os.path.isfile(output):
        paths.append(output)

    rows = {}
    for path in paths:
        rows.update((row["video"], row) for row in read_rows(path))

    return rows


class PartWriter:
    r"""Appends whole lines to one part file; :meth:`write` returns once the rows are on disk."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        _cut_torn_tail(self.fd)

    def write(self, rows: list[dict[str, Any]]) -> None:
        data = memoryview("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode())
        os.lseek(self.fd, 0, os.SEEK_END)
        while data:
            data = data[os.write(self.fd, data) :]
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _cut_torn_tail(fd: int) -> None:
    r"""Truncate after the last newline, so that appended rows never continue half a line."""
    size = end = os.lseek(fd, 0, os.SEEK_END)
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start

    if end != size:
        os.ftruncate(fd, end)
        os.fsync(fd)


def settings_path(output: str) -> str:
    return f"{output}.settings.json"


def claim_settings(output: str, settings: dict[str, Any], defaults: dict[str, Any], has_rows: bool) -> None:
    r"""Record ``settings`` for ``output``, or raise a ValueError when the rows already there were made with others.

    An output without a record was made with ``defaults`` (a run with them writes none: nothing new on disk for the
    usual run). The record is created with an exclusive link, so processes starting together agree on one.
    """
    path = settings_path(output)
    if not os.path.isfile(path):
        if has_rows or settings == defaults:
            _refuse_other(output, defaults, settings)
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        temporary = f"{path}.{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(settings, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process recorded first: compare with its record
            os.link(temporary, path)
        os.remove(temporary)

    with open(path, encoding="utf-8") as f:
        _refuse_other(output, json.load(f), settings)


def _refuse_other(output: str, recorded: dict[str, Any], settings: dict[str, Any]) -> None:
    def flags(values: dict[str, Any]) -> str:
        return " ".join(f"--{key} {'(not set)' if values.get(key) is None else values.get(key)}" for key in changed)

    changed = [key for key in sorted({**recorded, **settings}) if recorded.get(key) != settings.get(key)]
    if changed:
        record = f" (its record: {settings_path(output)})" if os.path.isfile(settings_path(output)) else ""
        raise ValueError(
            f"{output} holds rows classified with {flags(recorded)}, but this run asks for {flags(settings)}: rerun "
            f"with the same flags to resume it, or give another --output{record}."
        )


def mark_done(output: str, part: int, parts: int) -> None:
    if parts > 1:
        with open(part_path(output, part, parts) + ".done", "w", encoding="utf-8"):
            pass


def missing_parts(output: str, parts: int) -> list[int]:
    r"""The parts of this partitioning that have not finished yet."""
    return [
        part for part in range(parts) if parts > 1 and not os.path.isfile(part_path(output, part, parts) + ".done")
    ]


def merge(output: str, videos: list[str], parts: int) -> int | None:
    r"""Write the output in ``videos`` order (rows of videos no longer listed follow) and drop the parts.

    Returns the number of rows, or None when a part is unfinished or another process merged first.
    """
    lock_path = f"{output}.lock"
    try:
        with open(lock_path, "w", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # shards finishing together: one merges, the others find it done
            if parts > 1 and (missing_parts(output, parts) or not os.path.isdir(parts_dir(output))):
                return None

            rows = written_rows(output)
            ordered = [rows.pop(video) for video in videos if video in rows] + list(rows.values())
            temporary = f"{output}.merging"
            with open(temporary, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in ordered)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, output)
            shutil.rmtree(parts_dir(output), ignore_errors=True)
            return len(ordered)
    finally:
        with contextlib.suppress(FileNotFoundError):  # the decision was made from the parts: the file can go
            os.remove(lock_path)
