"""Dynamic batching: concurrent requests' videos go through the model together, decoded outside the event loop.

A batching loop takes up to ``api_max_batch_size`` waiting videos of the same frame-sampling settings (waiting at
most ``api_max_wait_ms`` for more once it has one) and hands the batch to a decode worker, which checks, encodes,
decodes and collates it (:meth:`ActionClassifier.prepare`); the single model thread then runs the forward pass. While
the model runs one batch, the workers already prepare the next ones. It is the same encode/collate/forward as
:meth:`ActionClassifier.classify_batch`, so the results equal ``ActionClassifier.predict``. Batches take videos
round-robin over requests, so one request of many videos does not hold up another's one video, and the videos of a
request whose client went away are dropped.

The decode workers are processes forked from the server before the model's weights load (``api_decode_processes``;
``create_action_app`` makes the service from :meth:`ActionClassifier.reader`, then loads them): reading and
processing a video is mostly Python holding the GIL (measured: two decode threads prepared 1.16x the videos of one),
so threads could not use a second core. A forked worker shares the tokenizer, processor and collator copy-on-write,
holds no weight (none had reached the GPU when it was forked), runs one torch thread, sends back only the collated batch (as numpy arrays) and
exits with the server. When a worker dies (a crashing decoder), the workers are forked anew in a thread (the event
loop goes on) -- from the loaded server this time: they still touch only CPU tensors --, the new ones first close
every socket they inherited (clients' connections, the listening socket), and each batch that was in the broken
pool is tried once more. ``api_decode_processes: false`` (or a system without fork) keeps them threads of the
server.
"""

import asyncio
import multiprocessing
import os
import stat
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from llamafactory.extras import logging

from ..data.context import ActionDataError, media_error
from ..data.video_reader import VideoWindow, plan_video
from ..data.videos import clear_read_caches
from ..inference import ActionClassifier
from ..model.decoding import combine_clips
from ..model.timeline import clip_windows, timeline_windows
from .media import MediaError
from .protocol import MAX_CLIPS, ClassificationRequest


logger = logging.get_logger(__name__)

MAX_SETTING_VARIANTS = 16  # frame settings a worker keeps a classifier copy for (least recently used dropped)

_CLASSIFIERS: dict[int, ActionClassifier] = {}  # by service; forked workers inherit it
_VARIANTS_LOCK = threading.Lock()
_VARIANTS: "OrderedDict[tuple[int, tuple[float, int]], ActionClassifier]" = OrderedDict()  # per frame setting


@dataclass(frozen=True)
class VideoLimits:
    max_seconds: float
    max_frame_pixels: int


@dataclass(frozen=True)
class WindowLogits:
    r"""A timeline's outcome: the windows (seconds) and one row of logits each."""

    windows: list[tuple[float, float]]
    logits: torch.Tensor


def _windows(path: str, settings: tuple[float, int], request: ClassificationRequest) -> list[tuple[float, float]]:
    r"""The clips (``test_clips``) or timeline windows (``window``, ``stride``) of a request's video, in seconds."""
    try:
        duration = plan_video(path, *settings).duration
    except Exception as err:  # the reader names the file and what to fix
        raise media_error(err, None, path) from err

    if request.window is None:
        return clip_windows(duration, request.test_clips)
    windows = timeline_windows(duration, request.window, request.stride)
    if len(windows) > MAX_CLIPS:
        raise MediaError(
            f"the timeline would take {len(windows)} windows of the {duration:.0f} s video, more than {MAX_CLIPS}: "
            "use a longer `stride`.",
            413,
        )
    return windows


@dataclass
class _Pending:
    settings: tuple[float, int]
    path: str
    prompt: str
    owner: int  # the request it belongs to (round-robin)
    future: asyncio.Future = field(repr=False)


def _refusal(path: str, settings: tuple[float, int], limits: VideoLimits) -> MediaError | None:
    r"""The refusal of a video too long or too large, measured by the reader's plan (which encoding reuses).

    Demuxing a file for its plan is bounded by ``api_max_video_mb``; reading the header instead took a second open
    of every file (1.4 ms per clip on the load test's clips, against 6-7 ms for decoding and processing it).
    """
    try:
        plan = plan_video(path, *settings)
    except Exception:  # noqa: BLE001  (encoding the video reports what is wrong with it, naming it)
        return None

    if plan.duration > limits.max_seconds:
        return MediaError(f"the video lasts {plan.duration:.0f} s, more than api_max_video_seconds.", 413)

    height, width = plan.frame_size
    if height * width > limits.max_frame_pixels:
        return MediaError(
            f"the video's frames are {width}x{height}, more than api_max_frame_pixels ({limits.max_frame_pixels}).",
            413,
        )

    return None


def _variant(service_id: int, settings: tuple[float, int]) -> ActionClassifier:
    key = (service_id, settings)
    with _VARIANTS_LOCK:  # decode threads share the table
        if key not in _VARIANTS:
            _VARIANTS[key] = _CLASSIFIERS[service_id].with_video_settings(*settings)
            if len(_VARIANTS) > MAX_SETTING_VARIANTS:
                _VARIANTS.popitem(last=False)
        _VARIANTS.move_to_end(key)
        return _VARIANTS[key]


def prepare_batch(
    service_id: int, settings: tuple[float, int], items: list[tuple[str, str]], limits: VideoLimits
) -> tuple[dict[str, Any] | None, list[int | ActionDataError | MediaError]]:
    r"""In a decode worker: the collated batch of ``(path, prompt)`` items and each one's token count or error."""
    try:
        outcomes: list[int | ActionDataError | MediaError | None] = [
            _refusal(path, settings, limits) for path, _ in items
        ]
        todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
        batch, prepared = _variant(service_id, settings).prepare(
            [items[i][0] for i in todo], [items[i][1] for i in todo]
        )
        for i, outcome in zip(todo, prepared):
            outcomes[i] = outcome

        return _as_arrays(batch), outcomes
    finally:  # uploads have unique temporary paths: plans kept for them would only pile up
        clear_read_caches()


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
    _close_sockets()
    torch.set_num_threads(1)  # the workers run side by side with the model thread: one core each at most
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _close_sockets() -> None:
    r"""Close the sockets a forked worker inherited; its pool's own queues are pipes.

    A client's connection (or the listening socket) held open by a worker would never close, and a keep-alive
    client would send its next request into it (CLOSE-WAIT).
    """
    if not os.path.isdir("/proc/self/fd"):
        return

    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                os.close(int(name))
        except OSError:  # the listing's own descriptor, already closed
            pass


def _exit_with(parent: int) -> None:
    r"""A forked worker holds copies of the server's pipes, so it would never see them close: it watches the server."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


class _FairQueue:
    r"""Waiting videos, one queue per request, taken round-robin; videos whose request was abandoned are dropped."""

    def __init__(self) -> None:
        self.owners: OrderedDict[int, deque[_Pending]] = OrderedDict()
        self.ready = asyncio.Event()
        self.dropped = 0

    def put(self, pending: _Pending) -> None:
        self.owners.setdefault(pending.owner, deque()).append(pending)
        self.ready.set()

    def take(self) -> _Pending | None:
        while self.owners:
            owner, waiting = next(iter(self.owners.items()))
            pending = waiting.popleft()
            if waiting:
                self.owners.move_to_end(owner)
            else:
                del self.owners[owner]
            if not pending.future.done():
                return pending
            self.dropped += 1
        self.ready.clear()
        return None

    async def get(self) -> _Pending:
        while (pending := self.take()) is None:
            await self.ready.wait()
        return pending


class ClassifierService:
    def __init__(
        self,
        classifier: ActionClassifier,
        max_batch_size: int,
        max_wait_ms: float,
        decode_workers: int,
        limits: VideoLimits,
        decode_processes: bool = True,
    ) -> None:
        self.classifier = classifier
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.limits = limits
        self.decode_workers = decode_workers
        self.decode_processes = decode_processes and "fork" in multiprocessing.get_all_start_methods()
        _CLASSIFIERS[id(self)] = classifier
        self.decode_pool = self._decode_pool()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="ivcp-model")
        self.decode_slots = asyncio.Semaphore(decode_workers)
        self.pool_lock = asyncio.Lock()
        self.queue = _FairQueue()
        self.batches = 0
        self._loop_task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    def _decode_pool(self) -> Executor:
        r"""Forked processes (the first ones before the server's threads, so that no lock is copied held) or threads."""
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
        r"""The frame-sampling settings of a request (requests with equal settings share batches).

        A request may sample fewer frames than the served ``video_maxlen``, never more: that bounds the decoded
        frames a video may hold.
        """
        default_fps, default_maxlen = self.classifier.video_settings
        if video_maxlen is not None and video_maxlen > default_maxlen:
            raise MediaError(f"video_maxlen may be at most the served model's {default_maxlen}, got {video_maxlen}.")

        return (video_fps or default_fps, video_maxlen or default_maxlen)

    async def classify(
        self, settings: tuple[float, int], path: str, prompt: str, owner: int
    ) -> tuple[torch.Tensor, int]:
        r"""The logits of one video and its prompt length in tokens; raises MediaError or ActionDataError.

        ``owner`` names the request: batches take the videos of concurrent requests in turn. Cancelling the call
        (its client went away) drops the video if it has not reached a batch yet.
        """
        pending = _Pending(settings, path, prompt, owner, asyncio.get_running_loop().create_future())
        self.queue.put(pending)
        return await pending.future

    async def classify_windows(
        self, settings: tuple[float, int], path: str, prompt: str, owner: int, request: ClassificationRequest
    ) -> tuple[torch.Tensor | WindowLogits, int]:
        r"""One video as ``test_clips`` clips (their combined logits) or as a timeline (:class:`WindowLogits`).

        Each clip goes through the batches as a video of its own, so the clips of one video share batches; the
        prompt tokens of every clip are counted. Raises the first failing clip's error.
        """
        windows = await asyncio.to_thread(_windows, path, settings, request)  # demuxing stays off the event loop
        clips = [VideoWindow(path, start, end) for start, end in windows]
        outcomes = await asyncio.gather(*(self.classify(settings, clip, prompt, owner) for clip in clips))
        logits, tokens = torch.stack([row for row, _ in outcomes]), sum(count for _, count in outcomes)
        if request.window is not None:
            return WindowLogits(windows, logits), tokens
        return combine_clips(logits, self.classifier.model.problem_type, request.clip_combine), tokens

    async def _batching_loop(self) -> None:
        while True:
            await self.decode_slots.acquire()  # while every worker is busy, requests pile up into bigger batches
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch_size:
                pending = self.queue.take()
                if pending is not None:
                    batch.append(pending)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break

            if self.queue.dropped:
                logger.warning(f"Dropped {self.queue.dropped} videos of requests whose client went away.")
                self.queue.dropped = 0

            groups: dict[tuple[float, int], list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.settings, []).append(pending)
            for i, group in enumerate(groups.values()):
                if i > 0:
                    await self.decode_slots.acquire()
                task = asyncio.create_task(self._run(group))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _replace_pool(self, broken: Executor) -> None:
        r"""Fork new workers in a thread, once for all the batches that found ``broken`` dead."""
        async with self.pool_lock:
            if self.decode_pool is broken:
                self.decode_pool = await asyncio.to_thread(self._decode_pool)
                broken.shutdown(wait=False, cancel_futures=True)

    async def _prepare(self, group: list[_Pending]) -> tuple[dict[str, Any] | None, list[Any]]:
        loop = asyncio.get_running_loop()
        items = [(pending.path, pending.prompt) for pending in group]
        try:
            for attempt in range(2):
                pool = self.decode_pool
                try:
                    batch, outcomes = await loop.run_in_executor(
                        pool, prepare_batch, id(self), group[0].settings, items, self.limits
                    )
                    return _as_tensors(batch), outcomes
                except BrokenProcessPool:  # a worker died (a crash inside a decoder): new workers, one more try
                    logger.error(f"A decode worker died while preparing a batch of {len(items)} (try {attempt + 1}).")
                    await self._replace_pool(pool)

            crashed = MediaError("a decode worker crashed twice while reading this batch's videos.", 422)
            return None, [crashed] * len(group)
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
