"""A disk cache of the frames the reader samples, so that a second epoch (or a second run) decodes no video again.

What is cached: the sampled frames as the reader hands them to the plugin (upright RGB, already shrunk to
``video_max_pixels``), as raw uint8. Caching the processor's output instead would also skip the processor, but
measured on the tiny Qwen2-VL at 8 frames of 56x56 the decode is 90% of the collator's time and the processor 10%,
while its float32 patches take twice the disk of the frames and depend on the family and its processor settings;
the frames are the same for every family, whose own rules (``video_min_pixels``, Qwen2-VL's even frame count, the
processor) still run on them.

The key is everything the frames depend on: the file's path, size, modification time (ns) and a hash of its first
and last 64 KiB (an mp4's sample table sits at one end, so a rewrite that keeps size and time still misses), the
whole :class:`~ivcp.data.video_reader.VideoPlan` (which frames, window, rotation), ``max_pixels``, and the versions
of PyAV/FFmpeg and Pillow that convert them. A full hash of the file would read every byte on every lookup, which is
most of what a decode costs on slow storage.

Entries are written to a temporary file and renamed in (``os.replace``), carry their key, shape and CRC-32, and
are checked on every read, so a killed write or a torn file is never taken for frames: it is a miss, removed and
decoded again. The size bound is kept under a lock file (``fcntl.flock``) shared by dataloader workers and ranks:
past it, the least recently used entries not used by this run are removed; when only this run's entries are left
the new one is not added (counted), so an epoch never evicts what the next one will read.
"""

import fcntl
import json
import math
import os
import secrets
import time
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from hashlib import blake2b, sha256
from typing import TYPE_CHECKING, Any

import numpy as np

from ..log import get_logger
from .video_reader import VideoPlan, read_plans


if TYPE_CHECKING:
    from collections.abc import Iterator

    from PIL.Image import Image


logger = get_logger(__name__)

CACHE_FORMAT = 1
ENTRY_SUFFIX = ".frames"
_MAGIC = b"IVCPFRM1"
_EDGE_BYTES = 64 * 1024  # hashed at each end of the file
_LEDGER = "ledger.json"
_LOCK = ".lock"
_STALE_TMP_SECONDS = 3600  # a temporary file older than this belongs to a killed write
_EVICT_TO = 0.9  # evict down to this fraction of the bound, so that the next writes need no new scan
GB = 1024**3


def default_cache_dir(datasets_cache_dir: str | None) -> str:
    r"""``ivcp_frames`` beside LLaMA-Factory's dataset cache: ``cache_dir`` when set, else HF datasets' cache."""
    if datasets_cache_dir is None:
        from datasets import config

        datasets_cache_dir = str(config.HF_DATASETS_CACHE)
    return os.path.join(datasets_cache_dir, "ivcp_frames")


@cache
def _decoder_versions() -> dict[str, Any]:
    import av
    import PIL

    return {
        "av": av.__version__,
        "ffmpeg": {k: list(v) for k, v in av.library_versions.items()},
        "pil": PIL.__version__,
    }


@lru_cache(maxsize=65536)
def _plan_digest(plan: VideoPlan, max_pixels: int | None) -> str:
    r"""What decides the frames besides the file: the plan (frames, window, rotation), their size, the decoder."""
    material = {"format": CACHE_FORMAT, "plan": asdict(plan), "max_pixels": max_pixels, **_decoder_versions()}
    return sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def file_identity(path: str) -> tuple[int, int, str]:
    r"""(size, mtime_ns, hash of the first and last 64 KiB): what changes when the file's content does."""
    status = os.stat(path)
    digest = blake2b(digest_size=16)
    with open(path, "rb") as f:
        digest.update(f.read(_EDGE_BYTES))
        if status.st_size > 2 * _EDGE_BYTES:
            f.seek(-_EDGE_BYTES, os.SEEK_END)
        digest.update(f.read(_EDGE_BYTES))
    return status.st_size, status.st_mtime_ns, digest.hexdigest()


def _encode(key: str, frames: np.ndarray) -> bytes:
    payload = frames.tobytes()
    header = json.dumps({"key": key, "shape": list(frames.shape), "crc32": zlib.crc32(payload)}).encode()
    return _MAGIC + len(header).to_bytes(4, "little") + header + payload


def _decode(key: str, blob: bytes) -> np.ndarray | None:
    r"""The frames of an entry, or None when it is not a whole, intact entry of ``key``."""
    if blob[: len(_MAGIC)] != _MAGIC:
        return None
    start = len(_MAGIC) + 4
    header_end = start + int.from_bytes(blob[len(_MAGIC) : start], "little")
    try:
        header = json.loads(blob[start:header_end])
    except ValueError:
        return None
    payload = memoryview(blob)[header_end:]
    shape = header.get("shape") if isinstance(header, dict) else None
    if header.get("key") != key or not isinstance(shape, list) or len(payload) != math.prod(shape):
        return None
    if zlib.crc32(payload) != header.get("crc32"):
        return None
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def _as_array(frames: list["Image"]) -> np.ndarray | None:
    r"""The frames as one uint8 array; None for frames of several sizes (a stream that changes size midway)."""
    if any(frame.mode != "RGB" or frame.size != frames[0].size for frame in frames):
        return None
    return np.stack([np.asarray(frame) for frame in frames])


@dataclass
class FrameCache:
    r"""The cache in ``directory``, at most ``max_bytes``; pickled into dataloader workers with its counters."""

    directory: str
    max_bytes: int
    run_start: float = field(default_factory=time.time)  # entries used since then are this run's: never evicted
    hits: int = 0
    decoded: int = 0
    stored: int = 0
    refused: int = 0  # not stored: the cache full of this run's entries, or the disk
    dropped: int = 0  # damaged entries removed
    _full: bool = False  # a scan found nothing to evict: refuse without scanning again

    def __post_init__(self) -> None:
        os.makedirs(self.directory, exist_ok=True)

    # -- entries ---------------------------------------------------------------------------------------------

    def _entry(self, plan: VideoPlan, max_pixels: int | None) -> tuple[str, str]:
        r"""(key, entry path): the key hashes the file's identity with the plan."""
        identity = json.dumps([os.path.abspath(plan.path), *file_identity(plan.path)])
        key = sha256(f"{identity}\n{_plan_digest(plan, max_pixels)}".encode()).hexdigest()
        return key, os.path.join(self.directory, key[:2], key + ENTRY_SUFFIX)

    def load(self, plan: VideoPlan, max_pixels: int | None) -> list["Image"] | None:
        r"""The cached frames of ``plan`` (equal to :func:`read_frames`' to the bit), or None."""
        from PIL import Image

        key, path = self._entry(plan, max_pixels)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        frames = _decode(key, blob)
        if frames is None:
            logger.warning(f"Frame cache entry {path} is damaged (a killed write?): removed, decoding again.")
            self.dropped += 1
            self._remove(path)
            return None
        try:
            os.utime(path)  # its time is its last use: the least recently used entries go first
        except FileNotFoundError:  # evicted since by another process: the frames read are whole all the same
            pass
        self.hits += 1
        return [Image.fromarray(frame) for frame in frames]

    def store(self, plan: VideoPlan, max_pixels: int | None, frames: list["Image"]) -> None:
        array = _as_array(frames)
        if array is None or self._full:  # frames of several sizes, or a full cache: decoded every epoch
            self.refused += 1
            return
        key, path = self._entry(plan, max_pixels)
        blob = _encode(key, array)
        with self._locked() as ledger:
            if ledger["bytes"] + len(blob) > self.max_bytes and not self._make_room(ledger, len(blob)):
                self._full = True
                self.refused += 1
                logger.warning(
                    f"Frame cache {self.directory} is full ({ledger['bytes'] / GB:.2f} GB of "
                    f"{self.max_bytes / GB:.2f} GB, all used by this run): later videos are decoded every epoch. "
                    "Raise `action_frame_cache_max_gb` to cache them."
                )
                return
            os.makedirs(os.path.dirname(path), exist_ok=True)
            previous = os.path.getsize(path) if os.path.exists(path) else 0
            tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(blob)
                os.replace(tmp, path)  # readers see the old entry, or none, or this whole one
            except OSError as err:  # a full disk: stop trying (one warning, not one per video)
                self._remove(tmp)
                self._full = True
                self.refused += 1
                logger.warning(f"Frame cache {self.directory}: cannot write ({err}); later videos are not cached.")
                return
            ledger["bytes"] += len(blob) - previous
            ledger["entries"] += previous == 0
            self.stored += 1

    def read_plans(self, plans: list[VideoPlan], max_pixels: int | None) -> list[list["Image"]]:
        r""":func:`~ivcp.data.video_reader.read_plans`, decoding only the plans whose frames are not cached."""
        frames = [None if plan.draw is not None else self.load(plan, max_pixels) for plan in plans]
        missing = [i for i, cached in enumerate(frames) if cached is None]
        for i, decoded in zip(missing, read_plans([plans[i] for i in missing], max_pixels)):
            frames[i] = decoded
            if plans[i].draw is None:  # a random_segment draw is new every epoch: never kept
                self.decoded += 1
                self.store(plans[i], max_pixels, decoded)
        return frames

    # -- the bound -------------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> "Iterator[dict[str, int]]":
        r"""The ledger ({bytes, entries}), under the cache's lock; written back when the block ends."""
        os.makedirs(self.directory, exist_ok=True)  # cleared (`rm -rf`) while a run uses it: start again
        with open(os.path.join(self.directory, _LOCK), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ledger = self._read_ledger()
            if ledger is None:
                ledger = self._scan()
            before = dict(ledger)
            yield ledger
            if ledger != before:
                self._write_ledger(ledger)

    def _read_ledger(self) -> dict[str, int] | None:
        try:
            with open(os.path.join(self.directory, _LEDGER), encoding="utf-8") as f:
                ledger = json.load(f)
            return {"bytes": int(ledger["bytes"]), "entries": int(ledger["entries"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_ledger(self, ledger: dict[str, int]) -> None:
        path = os.path.join(self.directory, _LEDGER)
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(ledger, f)
        os.replace(tmp, path)

    def _entries(self) -> list[tuple[float, int, str]]:
        r"""(last use, size, path) of every entry; removes the temporary files of killed writes."""
        entries, now = [], time.time()
        for sub in os.scandir(self.directory):
            if not sub.is_dir():
                continue
            for item in os.scandir(sub.path):
                try:
                    status = item.stat()
                except FileNotFoundError:
                    continue
                if item.name.endswith(ENTRY_SUFFIX):
                    entries.append((status.st_mtime, status.st_size, item.path))
                elif item.name.endswith(".tmp") and now - status.st_mtime > _STALE_TMP_SECONDS:
                    self._remove(item.path)
        return entries

    def _scan(self) -> dict[str, int]:
        entries = self._entries()
        return {"bytes": sum(size for _, size, _ in entries), "entries": len(entries)}

    def _make_room(self, ledger: dict[str, int], needed: int) -> bool:
        r"""Remove the least recently used entries not used by this run until ``needed`` bytes fit (under the lock)."""
        entries = sorted(self._entries())
        ledger.update(bytes=sum(size for _, size, _ in entries), entries=len(entries))
        target = min(self.max_bytes * _EVICT_TO, self.max_bytes - needed)
        for last_use, size, path in entries:
            if ledger["bytes"] <= target or last_use >= self.run_start:
                break
            self._remove(path)
            ledger["bytes"] -= size
            ledger["entries"] -= 1
        return ledger["bytes"] + needed <= self.max_bytes

    def open(self) -> dict[str, int]:
        r"""Recount the cache, shrink it to its bound (a lowered bound, a ledger lost in a crash); its state."""
        with self._locked() as ledger:
            ledger.update(self._scan())
            if ledger["bytes"] > self.max_bytes:
                self._make_room(ledger, 0)
            return dict(ledger)

    def state(self) -> dict[str, int]:
        return self._read_ledger() or {"bytes": 0, "entries": 0}

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
