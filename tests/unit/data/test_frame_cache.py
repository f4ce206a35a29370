"""The frame cache: later epochs decode nothing, any change misses, a killed write is never read, the bound holds."""

import multiprocessing
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ivcp.data import frame_cache, video_reader
from ivcp.data.frame_cache import ENTRY_SUFFIX, FrameCache
from ivcp.demo.motion_videos import write_motion_clip
from tests.helpers import base_config, load_action_data


MAX_PIXELS = 3136  # 56x56, the setting


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    r"""The file of every decode the reader makes from now on."""
    calls, original = [], video_reader.decode_frames

    def counting(plan, *args, **kwargs):
        calls.append(plan.path)
        return original(plan, *args, **kwargs)

    monkeypatch.setattr(video_reader, "decode_frames", counting)
    return calls


@pytest.fixture
def clips(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = [str(tmp_path / f"clip{i}.mp4") for i in range(3)]
    for path, direction in zip(paths, ("left", "up", "down")):
        write_motion_clip(path, direction, rng, num_frames=16)
    return paths


def _plan(path, video_fps=8.0, video_maxlen=8):
    return video_reader.plan_video(path, video_fps, video_maxlen)


def _entries(cache: FrameCache) -> list[str]:
    return [
        os.path.join(root, name)
        for root, _, names in os.walk(cache.directory)
        for name in names
        if name.endswith(ENTRY_SUFFIX)
    ]


def _same(a: list[Image.Image], b: list[Image.Image]) -> bool:
    return len(a) == len(b) and all(
        x.mode == y.mode and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)
    )


def test_second_epoch_decodes_nothing_and_gives_the_same_frames(clips, tmp_path, decodes):
    cache = FrameCache(str(tmp_path / "cache"), 10**9)
    plans = [_plan(path) for path in clips] + [_plan(video_reader.VideoWindow(clips[0], 0.5, 1.5))]
    expected = video_reader.read_plans(plans, MAX_PIXELS)
    decodes.clear()

    first = cache.read_plans(plans, MAX_PIXELS)
    assert sorted(decodes) == clips and cache.stored == len(plans)  # a file's clips: one decode
    decodes.clear()
    second = cache.read_plans(plans, MAX_PIXELS)
    assert decodes == [] and cache.hits == len(plans)
    assert all(_same(a, b) for a, b in zip(expected, first)) and all(_same(a, b) for a, b in zip(expected, second))


def test_random_draws_are_never_cached(clips, tmp_path, decodes):
    cache = FrameCache(str(tmp_path / "cache"), 10**9)
    plans = [_plan(video_reader.VideoDraw(clips[0], seed)) for seed in (1, 1, 2)]
    frames = [cache.read_plans([plan], MAX_PIXELS)[0] for plan in plans]
    assert len(decodes) == 3 and _entries(cache) == [] and cache.hits == cache.stored == 0
    assert _same(frames[0], frames[1]) and _same(frames[0], video_reader.read_plans(plans[:1], MAX_PIXELS)[0])


def test_a_changed_file_misses(clips, tmp_path, decodes):
    cache = FrameCache(str(tmp_path / "cache"), 10**9)
    path = clips[0]
    cache.read_plans([_plan(path)], MAX_PIXELS)
    assert cache.load(_plan(path), MAX_PIXELS) is not None

    status = os.stat(path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1000))  # touch
    assert cache.load(_plan(path), MAX_PIXELS) is None

    shutil.copyfile(clips[1], path)  # rewritten with other frames
    decodes.clear()
    frames = cache.read_plans([_plan(path)], MAX_PIXELS)[0]
    assert decodes == [path] and _same(frames, video_reader.read_plans([_plan(clips[1])], MAX_PIXELS)[0])

    plan = _plan(path)
    stamp = os.stat(path)
    with open(path, "r+b") as f:  # same size, same time, another byte at its end: still a miss
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert os.stat(path).st_size == stamp.st_size and cache.load(plan, MAX_PIXELS) is None


@pytest.mark.parametrize(
    "setting",
    [{"video_fps": 2.0}, {"video_maxlen": 4}, {"window": (0.25, 1.75)}, {"max_pixels": 1024}, {"max_pixels": None}],
)
def test_any_video_setting_misses(clips, tmp_path, setting):
    cache = FrameCache(str(tmp_path / "cache"), 10**9)
    cache.read_plans([_plan(clips[0])], MAX_PIXELS)
    video = video_reader.VideoWindow(clips[0], *setting["window"]) if "window" in setting else clips[0]
    plan = _plan(video, setting.get("video_fps", 8.0), setting.get("video_maxlen", 8))
    assert cache.load(plan, setting.get("max_pixels", MAX_PIXELS)) is None


def test_a_killed_write_is_never_read(clips, tmp_path, decodes):
    cache = FrameCache(str(tmp_path / "cache"), 10**9)
    plan = _plan(clips[0])
    expected = cache.read_plans([plan], MAX_PIXELS)[0]
    (entry,) = _entries(cache)
    with open(entry, "rb") as f:
        blob = f.read()

    os.remove(entry)  # killed before the rename: only its temporary file is left
    with open(f"{entry}.4242.deadbeef.tmp", "wb") as f:
        f.write(blob[: len(blob) // 2])
    assert cache.load(plan, MAX_PIXELS) is None

    for damaged in (blob[: len(blob) // 2], blob[:-3] + b"\0\0\0", b""):  # truncated, torn (zeros), empty
        with open(entry, "wb") as f:
            f.write(damaged)
        decodes.clear()
        assert _same(cache.read_plans([plan], MAX_PIXELS)[0], expected) and decodes == [plan.path]
        with open(entry, "rb") as f:
            assert f.read() == blob  # replaced by a whole entry
    assert cache.dropped == 3

    old = 2 * 3600
    os.utime(f"{entry}.4242.deadbeef.tmp", (os.stat(entry).st_atime - old, os.stat(entry).st_mtime - old))
    assert cache.open()["entries"] == 1  # the next run's recount removes the stale temporary file
    assert sorted(os.listdir(os.path.dirname(entry))) == [os.path.basename(entry)]


def test_the_size_bound_holds(clips, tmp_path):
    directory = str(tmp_path / "cache")
    earlier = FrameCache(directory, 10**9)
    earlier.read_plans([_plan(path) for path in clips], MAX_PIXELS)
    size = max(os.path.getsize(entry) for entry in _entries(earlier))
    for entry in _entries(earlier):  # last used an hour ago, by an earlier run
        os.utime(entry, (earlier.run_start - 3600, earlier.run_start - 3600))

    bound = int(2.5 * size)
    cache = FrameCache(directory, bound)
    assert cache.open()["bytes"] <= bound and len(_entries(cache)) == 2  # a lowered bound: the oldest left

    plans = [_plan(path) for path in clips]  # 3 new entries of the same size (another max_pixels, same frames)
    new = cache.read_plans(plans, MAX_PIXELS + 1)
    entries = _entries(cache)
    assert sum(os.path.getsize(entry) for entry in entries) <= bound
    assert cache.state() == {"bytes": sum(os.path.getsize(entry) for entry in entries), "entries": len(entries)}
    assert cache.stored == 2 and cache.refused == 1  # the earlier run's entries made room; then one refused, counted
    assert all(os.stat(entry).st_mtime >= cache.run_start for entry in entries)
    assert cache.read_plans(plans[:2], MAX_PIXELS + 1) == new[:2] and cache.hits == 2


def test_a_full_disk_stops_caching_with_one_warning(clips, tmp_path, monkeypatch):
    cache, warnings = FrameCache(str(tmp_path / "cache"), 10**9), []

    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    monkeypatch.setattr(frame_cache.logger, "warning", warnings.append)
    plans = [_plan(path) for path in clips]
    frames = cache.read_plans(plans, MAX_PIXELS)
    assert all(_same(a, b) for a, b in zip(frames, video_reader.read_plans(plans, MAX_PIXELS)))
    assert cache.stored == 0 and cache.refused == 3 and _entries(cache) == []
    cause = "[Errno 28] No space left on device"
    assert warnings == [f"Frame cache {cache.directory}: cannot write ({cause}); later videos are not cached."]
    assert not [name for _, _, names in os.walk(cache.directory) for name in names if name.endswith(".tmp")]


def _store_many(directory: str, bound: int, path: str, offset: int) -> None:
    cache = FrameCache(directory, bound)
    plan = _plan(path)
    frames = [Image.fromarray(np.full((56, 56, 3), i, np.uint8)) for i in range(8)]
    for max_pixels in range(offset, offset + 40):  # max_pixels only keys distinct entries here
        cache.store(plan, max_pixels, frames)


def test_several_writers_at_once_keep_the_bound_and_whole_entries(clips, tmp_path):
    directory, entry_size = str(tmp_path / "cache"), 8 * 56 * 56 * 3
    bound = 50 * entry_size
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_store_many, args=(directory, bound, clips[0], 20 * i)) for i in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0

    cache = FrameCache(directory, bound)
    entries = _entries(cache)
    assert 40 <= len(entries) and sum(os.path.getsize(entry) for entry in entries) <= bound
    assert cache.state() == cache.open()  # the ledger the writers kept is the truth
    plan = _plan(clips[0])
    for max_pixels in range(100):  # overlapping keys: written twice at once, each whole
        frames = cache.load(plan, max_pixels)
        assert frames is None or np.asarray(frames[3]).max() == 3
    assert cache.dropped == 0 and not [name for _, _, names in os.walk(directory) for name in names if ".tmp" in name]


def test_the_collator_gives_the_same_batches_and_decodes_nothing_the_second_epoch(
    tiny_model, motion_data, tmp_path, decodes
):
    from transformers import AutoModelForImageTextToText

    from ivcp.data import ActionDataCollator

    config = base_config(tiny_model, motion_data, str(tmp_path / "out"), video_fps=4, video_maxlen=8)
    _, tokenizer_module, template, _, dataset_module = load_action_data(config)
    features = [dict(example) for example in dataset_module["train_dataset"]]
    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    collator = ActionDataCollator(template=template, model=model, **tokenizer_module)

    def epoch() -> list[dict[str, torch.Tensor]]:
        return [collator([dict(feature) for feature in features[i : i + 4]]) for i in range(0, len(features), 4)]

    uncached = epoch()
    template.mm_plugin.frame_cache = FrameCache(str(tmp_path / "cache"), 10**9)
    decodes.clear()
    first = epoch()
    assert len(decodes) == len(features)
    decodes.clear()
    second = epoch()
    assert decodes == []
    for batches in (first, second):
        for got, want in zip(batches, uncached):
            assert got.keys() == want.keys()
            assert all(torch.equal(got[key], want[key]) for key in want)
