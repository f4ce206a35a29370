"""Dynamic batching: concurrent requests' videos go through the model together, decoded off the event loop.

Each video is encoded (tokens counted from the file) in a worker thread as soon as it arrives. A batching loop
then takes up to ``api_max_batch_size`` waiting videos of the same frame-sampling settings (waiting at most
``api_max_wait_ms`` for more once it has one) and hands the batch to a worker thread that decodes and collates it
(:meth:`ActionClassifier.collate`), then to the single model thread. While the model runs one batch, the workers
already decode the next ones. It is the same encode/collate/forward as :meth:`ActionClassifier.classify_batch`, so
the results equal ``ActionClassifier.predict``.
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import av
import torch

from ..inference import ActionClassifier
from .media import MediaError


MAX_SETTING_VARIANTS = 16


@dataclass
class _Pending:
    classifier: ActionClassifier
    features: dict[str, Any]
    future: asyncio.Future = field(repr=False)


def video_seconds(path: str) -> float | None:
    r"""The duration the file's header announces, or None when it announces none (or cannot be read)."""
    try:
        with av.open(path, "r") as container:
            stream = next(stream for stream in container.streams if stream.type == "video")
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return container.duration / av.time_base if container.duration else None
    except (av.FFmpegError, OSError, StopIteration):
        return None  # the encode step reports what is wrong with the file


class ClassifierService:
    def __init__(
        self,
        classifier: ActionClassifier,
        max_batch_size: int,
        max_wait_ms: float,
        decode_workers: int,
        max_video_seconds: float,
    ) -> None:
        self.classifier = classifier
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_video_seconds = max_video_seconds
        self.decode_pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="ivcp-decode")
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="ivcp-model")
        self.decode_slots = asyncio.Semaphore(decode_workers)
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.variants: dict[tuple[float, int], ActionClassifier] = {classifier.video_settings: classifier}
        self.batches = 0
        self._loop_task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._batching_loop())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.model_thread.shutdown(wait=False, cancel_futures=True)

    def variant(self, video_fps: float | None, video_maxlen: int | None) -> ActionClassifier:
        r"""The classifier for these frame-sampling settings (requests with equal settings share batches)."""
        default_fps, default_maxlen = self.classifier.video_settings
        key = (video_fps or default_fps, video_maxlen or default_maxlen)
        if key not in self.variants:
            if len(self.variants) >= MAX_SETTING_VARIANTS:
                raise MediaError(
                    f"more than {MAX_SETTING_VARIANTS} different video_fps/video_maxlen settings in use: use the "
                    "defaults or one of the settings already in use."
                )
            self.variants[key] = self.classifier.with_video_settings(*key)

        return self.variants[key]

    def _encode(self, classifier: ActionClassifier, path: str, prompt: str) -> dict[str, Any]:
        seconds = video_seconds(path)
        if seconds is not None and seconds > self.max_video_seconds:
            raise MediaError(f"the video lasts {seconds:.0f} s, more than api_max_video_seconds.", 413)

        return classifier.encode(path, prompt)

    async def classify(self, classifier: ActionClassifier, path: str, prompt: str) -> tuple[torch.Tensor, int]:
        r"""The logits of one video and its prompt length in tokens; raises MediaError or ActionDataError."""
        loop = asyncio.get_running_loop()
        features = await loop.run_in_executor(self.decode_pool, self._encode, classifier, path, prompt)
        pending = _Pending(classifier, features, loop.create_future())
        await self.queue.put(pending)
        return await pending.future, len(features["input_ids"])

    async def _batching_loop(self) -> None:
        while True:
            await self.decode_slots.acquire()  # while every worker is busy, requests pile up into bigger batches
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break

            groups: dict[int, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(id(pending.classifier), []).append(pending)
            for i, group in enumerate(groups.values()):
                if i > 0:
                    await self.decode_slots.acquire()
                task = asyncio.create_task(self._run(group))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _run(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        classifier = group[0].classifier
        try:
            collated, errors = await loop.run_in_executor(
                self.decode_pool, classifier.collate, [pending.features for pending in group]
            )
        except Exception as err:  # noqa: BLE001  (collate isolates files; anything else fails the group)
            collated, errors = None, [err] * len(group)
        finally:
            self.decode_slots.release()

        try:
            logits = await loop.run_in_executor(self.model_thread, classifier.forward, collated) if collated else []
            self.batches += 1
        except Exception as err:  # noqa: BLE001
            logits, errors = [], [error or err for error in errors]

        rows = iter(logits)
        for pending, error in zip(group, errors):
            if pending.future.done():
                continue
            if error is not None:
                pending.future.set_exception(error)
            else:
                pending.future.set_result(next(rows))
