"""Evaluation clips and training draws through the data path: rows per clip, windows back from Arrow, TSN draws."""

import itertools

import numpy as np
import pytest
import torch

from ivcp.data import ActionDataCollator
from ivcp.data.clips import CLIP_FIELD, RANDOM_SEGMENT, WINDOWS_FIELD, clip_groups, drawn
from ivcp.data.video_reader import VideoDraw, VideoWindow, plan_video, segment_indices
from ivcp.demo.motion_videos import render_motion_frames, write_clip
from tests.helpers import base_config, load_action_data


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("draws") / "long.mp4")
    write_clip(path, render_motion_frames("up", np.random.default_rng(0), 80, 64))  # 10 s at 8 fps
    return path


@pytest.mark.parametrize(("total", "samples"), [(80, 8), (10, 4), (7, 7), (5, 1), (100, 3)])
def test_segment_draws_take_one_frame_in_each_segment(total, samples):
    bounds = np.linspace(0, total, samples + 1)
    for seed in range(20):
        indices = segment_indices(total, samples, seed)
        assert len(indices) == samples and indices == sorted(set(indices))
        for index, start, stop in zip(indices, bounds[:-1], bounds[1:]):
            assert start - 1 < index < stop and 0 <= index < total


def test_a_draw_has_the_uniform_plans_frame_count_and_its_seeds_frames(long_clip):
    uniform = plan_video(long_clip, 8, 8)
    draws = [plan_video(VideoDraw(long_clip, seed), 8, 8) for seed in range(6)]
    assert all(len(draw.sample_indices) == len(uniform.sample_indices) == 8 for draw in draws)
    assert all(draw.frame_size == uniform.frame_size for draw in draws)
    assert len({draw.sample_indices for draw in draws}) > 4  # other seeds, other frames
    assert plan_video(VideoDraw(long_clip, 3), 8, 8).sample_indices == draws[3].sample_indices
    assert uniform.draw is None and draws[3].draw == 3


def test_training_collator_draws_other_frames_each_epoch(tiny_model, motion_data, tmp_path):
    r"""Same seed and epoch: the same pixels; another epoch or seed: others; the token count never changes."""
    config = base_config(tiny_model, motion_data, str(tmp_path / "out"), video_maxlen=4)
    _, tokenizer_module, template, _, dataset = load_action_data(config)
    features = [dataset["train_dataset"][i] for i in range(4)]

    def pixels(**sampling) -> torch.Tensor:
        collator = ActionDataCollator(template=template, **tokenizer_module, **sampling)
        batch = collator([dict(feature) for feature in features])
        assert batch["input_ids"].shape[1] == max(len(feature["input_ids"]) for feature in features)
        return batch["pixel_values_videos"]

    uniform = pixels()
    first = pixels(train_sampling=RANDOM_SEGMENT, sampling_seed=1, epoch=0)
    assert uniform.shape == first.shape  # as many frames as the tokens were counted for
    assert torch.equal(first, pixels(train_sampling=RANDOM_SEGMENT, sampling_seed=1, epoch=0))
    assert not torch.equal(first, pixels(train_sampling=RANDOM_SEGMENT, sampling_seed=1, epoch=1))
    assert not torch.equal(first, pixels(train_sampling=RANDOM_SEGMENT, sampling_seed=2, epoch=0))
    assert torch.equal(uniform, pixels(sampling_seed=1, epoch=1))  # uniform: the seed and epoch change nothing
    assert drawn(["a.mp4"], 1, 0) == drawn(["a.mp4"], 1, 0) != drawn(["a.mp4"], 1, 1)


def test_evaluation_videos_become_one_row_per_clip(tiny_model, motion_data, tmp_path):
    r"""``action_test_clips: 3``: three rows a video, windows covering it without gap; 1 leaves the rows as they are."""
    common = {"do_train": False, "do_eval": True, "eval_dataset": "motion_test"}
    config = base_config(tiny_model, motion_data, str(tmp_path / "one"), **common)
    single = load_action_data(config)[-1]["eval_dataset"]
    config = base_config(tiny_model, motion_data, str(tmp_path / "three"), action_test_clips=3, **common)
    clips = load_action_data(config)[-1]["eval_dataset"]

    assert CLIP_FIELD not in single.column_names and WINDOWS_FIELD not in single.column_names
    assert len(clips) == 3 * len(single) and clip_groups(clips[CLIP_FIELD]) == [3] * len(single)
    for i, video in enumerate(single):
        rows = [clips[3 * i + k] for k in range(3)]
        assert all(row["videos"] == video["videos"] and row["action_labels"] == video["action_labels"] for row in rows)
        bounds = [row[WINDOWS_FIELD][0] for row in rows]
        duration = plan_video(video["videos"][0], 8, 128).duration
        assert bounds[0][0] == 0 and bounds[-1][1] == pytest.approx(duration)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))  # no gap, no overlap
        for row, (start, end) in zip(rows, bounds):  # each clip counted with its window's frames
            plan = plan_video(VideoWindow(video["videos"][0], start, end), 8, 128)
            assert all(start <= t < end for t in plan.timestamps)
            assert len(row["input_ids"]) < len(video["input_ids"])
