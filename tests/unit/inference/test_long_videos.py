"""Long videos: clips that cover the whole file, multi-clip answers through the one decoder, and the timeline."""

import itertools
import json
import os
import pickle

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from ivcp.api.app import create_action_app
from ivcp.cli import main
from ivcp.data import video_reader
from ivcp.data.video_reader import VideoWindow, plan_video
from ivcp.hparams.serving_args import ActionServingArguments
from ivcp.inference import ActionClassifier
from ivcp.model.decoding import combine_clips, decode, probabilities
from ivcp.model.multi_label import MULTI_LABEL, SINGLE_LABEL
from ivcp.model.timeline import merge_segments, timeline_windows


@pytest.fixture(scope="module")
def classifier(tiny_model, long_trained) -> ActionClassifier:
    return ActionClassifier.from_pretrained(tiny_model, adapter=str(long_trained))


def test_clips_cover_the_video_without_gap(classifier, long_clips):
    video = long_clips[0][2]
    whole = plan_video(video, *classifier.video_settings)
    for clips in (1, 2, 3, 5):
        windows = classifier.clip_windows(video, clips)
        assert windows[0].start == 0 and windows[-1].end == whole.duration
        assert all(left.end == right.start for left, right in itertools.pairwise(windows))
        plans = [plan_video(window, *classifier.video_settings) for window in windows]
        samples = [i for plan in plans for i in plan.sample_indices]
        assert samples == sorted(set(samples))  # in order, no frame twice
        for window, plan in zip(windows, plans):
            assert all(window.start <= t < window.end for t in plan.timestamps)
            assert len(plan.sample_indices) >= 1

    one = plan_video(VideoWindow(video, 0, whole.duration), *classifier.video_settings)
    assert one.sample_indices == whole.sample_indices and one.timestamps == whole.timestamps


def test_one_clip_is_todays_prediction(classifier, long_clips):
    videos = [paths[2] for paths in long_clips]
    assert classifier.predict(videos, test_clips=1) == classifier.predict(videos)
    whole = [VideoWindow(video, 0, plan_video(video, *classifier.video_settings).duration) for video in videos]
    assert torch.equal(torch.stack(classifier.classify_batch(whole)), torch.stack(classifier.classify_batch(videos)))


def test_multi_clip_answer_combines_the_clips(classifier, long_clips):
    videos = [paths[2] for paths in long_clips]
    results = classifier.predict(videos, test_clips=2, top_k=4, batch_size=3)  # 1 video (2 clips) per batch
    for video, result in zip(videos, results):
        clips = [classifier.classify_batch([clip])[0] for clip in classifier.clip_windows(video, 2)]  # one by one
        expected = probabilities(torch.stack(clips), SINGLE_LABEL).mean(dim=0)
        assert result["video"] == video and result["predicted"] == int(expected.argmax())
        for entry in result["classes"]:
            assert entry["probability"] == pytest.approx(expected[entry["class"]].item(), abs=1e-5)

    by_max = classifier.predict(videos[0], test_clips=2, combine="max")
    assert by_max["classes"] != results[0]["classes"]
    with pytest.raises(ValueError, match="number of test clips"):
        classifier.predict(videos[0], test_clips=0)


def test_a_bad_file_fails_alone(classifier, long_clips, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    results = classifier.predict([str(bad), long_clips[0][2]], test_clips=3)
    assert results[0]["error_kind"] == "video unreadable" and str(bad) in results[0]["error"]
    assert "predicted" in results[1]


def test_timeline_finds_two_actions_in_order(classifier, long_clips):
    def predicted(video: str) -> int:
        return classifier.predict(video)["predicted"]

    pairs = [paths for paths in long_clips if predicted(paths[0]) != predicted(paths[1])]
    assert pairs, "the tiny model gives every motion the same class: train it longer"
    for first, second, both in pairs:
        result = classifier.timeline(both, window=1.0)
        segments = result["timeline"]["segments"]
        assert [(s["start"], s["end"], s["class"]) for s in segments] == [
            (0.0, 1.0, predicted(first)),
            (1.0, 2.0, predicted(second)),
        ]
        alone = [classifier.predict(video, top_k=4)["classes"] for video in (first, second)]
        for window, classes in zip(result["timeline"]["windows"], alone):  # each window shows that half alone
            for entry in classes:
                assert window["probabilities"][entry["class"]] == pytest.approx(entry["probability"], abs=0.05)

    overlapping = classifier.timeline(pairs[0][2], window=1.0, stride=0.5)["timeline"]["windows"]
    assert [(w["start"], w["end"]) for w in overlapping] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0)]


def test_timeline_windows_reach_the_end():
    assert timeline_windows(10.0, 4.0) == [(0.0, 4.0), (4.0, 8.0), (6.0, 10.0)]
    assert timeline_windows(10.0, 4.0, 3.0) == [(0.0, 4.0), (3.0, 7.0), (6.0, 10.0)]
    assert timeline_windows(3.0, 4.0) == [(0.0, 3.0)]
    with pytest.raises(ValueError, match="positive"):
        timeline_windows(3.0, 1.0, 0.0)


def test_segments_merge_runs_of_one_class():
    windows = [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.7, 0.3]])
    segments = merge_segments(windows, probs, SINGLE_LABEL, 0.0, ["a", "b"])
    assert [(s["start"], s["end"], s["label"]) for s in segments] == [
        (0.0, 2.0, "a"),
        (2.0, 3.0, "b"),
        (3.0, 4.0, "a"),
    ]
    assert segments[0]["score"] == pytest.approx(0.85)
    assert [s["label"] for s in merge_segments(windows, probs, SINGLE_LABEL, 0.65, ["a", "b"])] == ["a", "a"]
    both = merge_segments(windows, probs, MULTI_LABEL, 0.3, ["a", "b"])  # a class may overlap another
    assert [(s["start"], s["end"], s["label"]) for s in both] == [(0.0, 4.0, "a"), (2.0, 4.0, "b")]


@pytest.mark.parametrize("problem_type", [SINGLE_LABEL, MULTI_LABEL])
def test_combined_clips_decode_to_the_combined_probabilities(problem_type):
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)) * 4
    clips = probabilities(logits, problem_type)
    for how, expected in (("mean", clips.mean(0)), ("max", clips.amax(0)), ("logits", None)):
        combined = probabilities(combine_clips(logits, problem_type, how)[None], problem_type)[0]
        if expected is None:
            expected = probabilities(logits.mean(0)[None], problem_type)[0]
        elif problem_type == SINGLE_LABEL:
            expected = expected / expected.sum()
        torch.testing.assert_close(combined, expected)

    logits[1, 2] = float("nan")
    assert decode(combine_clips(logits, problem_type)[None], problem_type)[0]["error_kind"] == "non_finite"
    with pytest.raises(ValueError, match="combination"):
        combine_clips(logits, problem_type, "median")


def test_api_answers_equal_action_classifiers(classifier, long_clips):
    videos = [paths[2] for paths in long_clips[:2]]
    settings = ActionServingArguments(allowed_local_media_path=os.path.dirname(videos[0]), api_decode_processes=False)
    with TestClient(create_action_app(classifier, settings, "motion")) as client:  # threads: no fork of pytest
        clips = client.post("/v1/classify", json={"input": videos, "test_clips": 3, "top_k": 4})
        timeline = client.post("/v1/classify", json={"input": videos[:1], "window": 1.0, "stride": 0.5})
        refused = client.post("/v1/classify", json={"input": videos[:1], "window": 1.0, "stride": 0.01})
        bad = client.post("/v1/classify", json={"input": videos[:1], "test_clips": 0})

    assert clips.status_code == 200, clips.text
    expected = classifier.predict(videos, test_clips=3, top_k=4)
    for data, want in zip(clips.json()["data"], expected, strict=True):
        assert data["predicted"] == want["predicted"] and data["label"] == want["name"]
        for ours, theirs in zip(data["classes"], want["classes"], strict=True):
            assert ours["class"] == theirs["class"]
            assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-5)
    assert clips.json()["usage"]["prompt_tokens"] > 0

    assert timeline.status_code == 200, timeline.text
    data, want = timeline.json()["data"][0], classifier.timeline(videos[0], window=1.0, stride=0.5)
    assert data["predicted"] == want["predicted"]
    assert [s["class"] for s in data["timeline"]["segments"]] == [s["class"] for s in want["timeline"]["segments"]]
    for ours, theirs in zip(data["timeline"]["windows"], want["timeline"]["windows"], strict=True):
        assert (ours["start"], ours["end"]) == (theirs["start"], theirs["end"])
        assert ours["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-5)

    assert refused.status_code == 413 and "stride" in refused.json()["message"]
    assert bad.status_code == 400 and "test_clips" in bad.json()["message"]


def test_a_window_survives_pickling_into_decode_workers(long_clips):
    window = VideoWindow(long_clips[0][2], 0.5, 1.5)
    again = pickle.loads(pickle.dumps(window))
    assert again == window and (again.start, again.end) == (0.5, 1.5)
    assert again != VideoWindow(long_clips[0][2], 0.5, 1.0) and hash(again) == hash(window)
    with pytest.raises(ValueError, match="start < end"):
        VideoWindow(long_clips[0][2], 1.0, 1.0)


def test_the_clips_of_a_video_are_decoded_in_one_pass(long_clips, monkeypatch):
    decoded = []
    original = video_reader._decoded

    def counted(*args, **kwargs):
        for frame in original(*args, **kwargs):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(video_reader, "_decoded", counted)
    video = long_clips[0][2]  # 16 frames, one keyframe: a clip alone decodes from the first frame
    plans = [plan_video(VideoWindow(video, start, start + 0.5), 8, 4) for start in (0.0, 0.5, 1.0, 1.5)]
    alone = [video_reader.read_frames(plan) for plan in plans]
    assert len(decoded) > plans[0].frames_in_file
    decoded.clear()
    together = video_reader.read_plans(plans)
    assert len(decoded) == len(set(decoded)) <= plans[0].frames_in_file  # each frame once
    for ours, theirs in zip(together, alone, strict=True):
        assert [np.asarray(image).tobytes() for image in ours] == [np.asarray(image).tobytes() for image in theirs]


def test_show_frames_shows_each_clip_and_window(long_clips, tmp_path, capsys):
    video = long_clips[0][2]  # 2 s, 16 frames
    for flags, windows in (
        (["--test_clips", "2"], [[0.0, 1.0], [1.0, 2.0]]),
        (["--window", "1", "--stride", "0.5"], [[0.0, 1.0], [0.5, 1.5], [1.0, 2.0]]),
    ):
        with pytest.raises(SystemExit) as code:
            main(["show-frames", video, "--video_fps", "8", "--video_maxlen", "4", "--json", *flags])
        assert code.value.code == 0
        shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [info["window"] for info in shown] == windows
        for info in shown:
            assert len(info["sampled_frames"]) == 4
            assert all(info["window"][0] <= t < info["window"][1] for t in info["timestamps"])

    with pytest.raises(SystemExit):
        main(["show-frames", video, "--test_clips", "2", "--sheet", str(tmp_path / "sheets")])
    assert sorted(os.listdir(tmp_path / "sheets")) == ["0_ab.mp4.part0.png", "0_ab.mp4.part1.png"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--test_clips", "2", "--window", "1"], "give --test_clips or --window, not both"),
        (["--stride", "1"], "give --window SECONDS too"),
        (["--window", "0"], "window and stride must be positive"),
        (["--test_clips", "0"], "number of test clips must be a positive integer"),
        (["--clip_combine", "median"], "--clip_combine must be one of"),
        (["--window", "1", "--segment_threshold", "2"], r"--segment_threshold is a probability in \[0, 1\]"),
    ],
)
def test_classify_flags_that_cannot_work_stop_before_any_model_loads(flags, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(["classify", "--model", str(tmp_path / "no_model"), str(tmp_path / "v.mp4"), *flags])
