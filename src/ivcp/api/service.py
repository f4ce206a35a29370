"""Dynamic batching: concurrent requests' videos go through the model together, decoded outside the event loop.

A batching loop takes up to ``api_max_batch_size`` waiting videos of the same frame-sampling settings (waiting at
most ``api_max_wait_ms`` for more once it has one) and hands the batch to a decode worker, which checks, encodes,
decodes and collates it (:meth:`ActionClassifier.prepare`); the single model thread then runs the forward pass. While
the model runs one batch, the workers already prepare the next ones. It is the same encode/collate/forward as
:meth:`ActionClassifier.classify_batch`, so the results equal ``ActionClassifier.predict``.

The decode workers are processes forked from the server once the model is loaded (``api_decode_processes``): reading
and processing a video is mostly Python holding the GIL (measured: two decode threads prepared 1.16x the videos of
one), so threads could not use a second core. A forked worker shares the loaded classifier copy-on-write, never
touches the model's weights, runs one torch thread, sends back only the collated batch (as numpy arrays) and exits
with the server. ``api_decode_processes: false`` (or a system without fork) keeps them threads of the server.
"""

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from llamafactory.extras import logging

from ..data.context import ActionDataError
from ..data.video_reader import plan_video
from ..inference import ActionClassifier
from .media import MediaError


logger = logging.get_logger(__name__)

MAX_SETTING_VARIANTS = 16

_CLASSIFIERS: dict[int, ActionClassifier] = {}  # by service; forked workers inherit it
_VARIANTS: dict[tuple[int, tuple[float, int]], ActionClassifier] = {}  # a worker's copies for other frame settings


@dataclass
class _Pending:
    settings: tuple[float, int]
    path: str
    prompt: str
    future: asyncio.Future = field(repr=False)


def _too_long(path: str, settings: tuple[float, int], max_video_seconds: float) -> MediaError | None:
    r"""The refusal of a video longer than the limit, measured by the reader's plan (which encoding reuses).

    Demuxing a file for its plan is bounded by ``api_max_video_mb``; reading the header instead took a second open
    of every file (1.4 ms per clip on the load test's clips, against 6-7 ms for decoding and processing it).
    """
    try:
        seconds = plan_video(path, *settings).duration
    except Exception:  # noqa: BLE001  (encoding the video reports what is wrong with it, naming it)
        return None

    if seconds > max_video_seconds:
        return MediaError(f"the video lasts {seconds:.0f} s, more than api_max_video_seconds.", 413)

    return None


def prepare_batch(
    service_id: int, settings: tuple[float, int], items: list[tuple[str, str]], max_video_seconds: float
) -> tuple[dict[str, Any] | None, list[int | ActionDataError | MediaError]]:
    r"""In a decode worker: the collated batch of ``(path, prompt)`` items and each one's token count or error."""
    if (service_id, settings) not in _VARIANTS:
        _VARIANTS[service_id, settings] = _CLASSIFIERS[service_id].with_video_settings(*settings)

    classifier = _VARIANTS[service_id, settings]
    outcomes: list[int | ActionDataError | MediaError | None] = [None] * len(items)
    for i, (path, _) in enumerate(items):
        outcomes[i] = _too_long(path, settings, max_video_seconds)

    todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
    batch, prepared = classifier.prepare([items[i][0] for i in todo], [items[i][1] for i in todo])
    for i, outcome in zip(todo, prepared):
        outcomes[i] = outcome

    return _as_arrays(batch), outcomes


def _as_arrays(batch: dict[str, Any] | None) -> dict[str, Any] | None:
    r"""Tensors as numpy arrays (bfloat16, which numpy lacks, stays a tensor), which pickle as plain bytes.

    Torch sends tensors between processes through shared memory: 2.8 ms per batch round trip here, against 1.1 ms.
    """
    if batch is None:
        return None

    return {
        key: value.numpy() if isinstance(value, torch.Tensor) and value.dtype != torch.bfloat16 else value
        for key, value in batch.items()
    }


def _as_tensors(batch: dict[str, Any] | None) -> dict[str, Any] | None:
    if batch is None:
        return None

    return {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value for key, value in batch.items()}


def _worker_init(parent: int) -> None:
    torch.set_num_threads(1)  # the workers run side by side with the model thread: one core each at most
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    r"""A forked worker holds copies of the server's pipes, so it would never see them close: it watches the server."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


class ClassifierService:
    def __init__(
        self,
        classifier: ActionClassifier,
        max_batch_size: int,
        max_wait_ms: float,
        decode_workers: int,
        max_video_seconds: float,
        decode_processes: bool = True,
    ) -> None:
        self.classifier = classifier
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_video_seconds = max_video_seconds
        self.decode_workers = decode_workers
        self.decode_processes = decode_processes and "fork" in multiprocessing.get_all_start_methods()
        _CLASSIFIERS[id(self)] = classifier
        self.decode_pool = self._decode_pool()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="ivcp-model")
        self.decode_slots = asyncio.Semaphore(decode_workers)
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.variants: set[tuple[float, int]] = {classifier.video_settings}
        self.batches = 0
        self._loop_task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    def _decode_pool(self) -> Executor:
        r"""Forked processes (started now, before the server's threads, so that no lock is copied held) or threads."""
        if not self.decode_processes:
            return ThreadPoolExecutor(self.decode_workers, thread_name_prefix="ivcp-decode")

        pool = ProcessPoolExecutor(
            self.decode_workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )
        pool.submit(os.getpid).result()  # with fork, the first task starts every worker
        return pool

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._batching_loop())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.model_thread.shutdown(wait=False, cancel_futures=True)
        _CLASSIFIERS.pop(id(self), None)

    def variant(self, video_fps: float | None, video_maxlen: int | None) -> tuple[float, int]:
        r"""The frame-sampling settings of a request (requests with equal settings share batches)."""
        default_fps, default_maxlen = self.classifier.video_settings
        key = (video_fps or default_fps, video_maxlen or default_maxlen)
        if key not in self.variants:
            if len(self.variants) >= MAX_SETTING_VARIANTS:
                raise MediaError(
                    f"more than {MAX_SETTING_VARIANTS} different video_fps/video_maxlen settings in use: use the "
                    "defaults or one of the settings already in use."
                )
            self.variants.add(key)

        return key

    async def classify(self, settings: tuple[float, int], path: str, prompt: str) -> tuple[torch.Tensor, int]:
        r"""The logits of one video and its prompt length in tokens; raises MediaError or ActionDataError."""
        pending = _Pending(settings, path, prompt, asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        return await pending.future

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

            groups: dict[tuple[float, int], list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.settings, []).append(pending)
            for i, group in enumerate(groups.values()):
                if i > 0:
                    await self.decode_slots.acquire()
                task = asyncio.create_task(self._run(group))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _prepare(self, group: list[_Pending]) -> tuple[dict[str, Any] | None, list[Any]]:
        loop = asyncio.get_running_loop()
        items = [(pending.path, pending.prompt) for pending in group]
        try:
            batch, outcomes = await loop.run_in_executor(
                self.decode_pool, prepare_batch, id(self), group[0].settings, items, self.max_video_seconds
            )
            return _as_tensors(batch), outcomes
        except BrokenProcessPool as err:  # a worker died (a crash inside a decoder): fail this batch, fork anew
            logger.error(f"A decode worker died while preparing {[path for path, _ in items]}: restarting them.")
            self.decode_pool.shutdown(wait=False, cancel_futures=True)
            self.decode_pool = self._decode_pool()
            return None, [err] * len(group)
        except Exception as err:  # noqa: BLE001  (prepare isolates files; anything else fails the group)
            return None, [err] * len(group)
        finally:
            self.decode_slots.release()

    async def _run(self, group: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        collated, outcomes = await self._prepare(group)
        try:
            logits = (
                await loop.run_in_executor(self.model_thread, self.classifier.forward, collated) if collated else []
            )
            self.batches += 1
        except Exception as err:  # noqa: BLE001
            logits, outcomes = [], [outcome if isinstance(outcome, Exception) else err for outcome in outcomes]

        rows = iter(logits)
        for pending, outcome in zip(group, outcomes):
            result = outcome if isinstance(outcome, Exception) else (next(rows), outcome)  # rows of every success
            if pending.future.done():  # the client went away
                continue
            if isinstance(result, Exception):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
