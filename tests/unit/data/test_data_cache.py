"""Preprocessing is cached: a second run on the same data neither tokenizes nor opens a video again."""

import av
import pytest

from ivcp.data import videos
from tests.helpers import base_config, load_action_data


@pytest.fixture
def video_opens(monkeypatch) -> list[str]:
    r"""Every file PyAV opens (LLaMA-Factory's header probe and IVCP's decode check both go through ``av.open``).

    The reader's per-process memory of planned and checked files is emptied first: an earlier test in this worker
    may have read the same clips, and only the dataset cache is under test here.
    """
    videos.clear_read_caches()
    opened, original = [], av.open

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return original(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting_open)
    return opened


def _train_dataset(tiny_model: str, motion_data: str, tmp_path, **overrides):
    config = base_config(
        tiny_model, motion_data, str(tmp_path / "out"), overwrite_cache=False, cache_dir=str(tmp_path / "cache")
    )
    *_, dataset = load_action_data({**config, **overrides})
    return dataset["train_dataset"]


def test_second_run_reuses_the_preprocessed_data(tiny_model, motion_data, tmp_path, video_opens):
    first = _train_dataset(tiny_model, motion_data, tmp_path)
    assert len(video_opens) >= len(first)  # every clip was probed and decoded once

    video_opens.clear()
    second = _train_dataset(tiny_model, motion_data, tmp_path)
    assert video_opens == []
    assert second.cache_files == first.cache_files
    assert second["input_ids"] == first["input_ids"] and second["action_labels"] == first["action_labels"]

    changed = _train_dataset(tiny_model, motion_data, tmp_path, video_fps=4)  # a preprocessing setting changed
    assert len(video_opens) >= len(changed)
    assert changed.cache_files != first.cache_files
    assert len(changed["input_ids"][0]) < len(first["input_ids"][0])  # half the frames, fewer video tokens
