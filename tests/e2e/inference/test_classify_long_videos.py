"""`ivcp classify --test_clips / --window`: the rows are ActionClassifier's own, and a killed timeline run resumes.

The multi-clip rows run the batch runner in this process (the loaded classifier, no decode workers); the timeline and
the killed run go through the command as users run it (the killed run is resumed in this process).
"""

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from ivcp.batch.clips import ClipSettings
from ivcp.batch.inputs import list_inputs
from ivcp.batch.output import read_rows, written_rows
from ivcp.batch.ranks import Placement
from ivcp.batch.runner import Job, classify_items
from ivcp.data.prompt import user_prompt
from ivcp.inference import ActionClassifier
from tests.helpers import run_command, start_command


ONE = Placement(rank=0, world_size=1, local_rank=0, shard_index=0, num_shards=1)


@pytest.fixture(scope="module")
def setup(tiny_model, long_trained, long_clips, tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    r"""(work dir, ``ivcp classify`` arguments naming the model, the videos: each pair's joined clip, then alone)."""
    videos = [paths[2] for paths in long_clips] + [paths[0] for paths in long_clips]
    return tmp_path_factory.mktemp("long_cli"), ["--model", tiny_model, "--adapter", str(long_trained)], videos


@pytest.fixture(scope="module")
def classifier(tiny_model, long_trained) -> ActionClassifier:
    return ActionClassifier.from_pretrained(tiny_model, adapter=str(long_trained))


def run_in_process(classifier, videos: list[str], output: Path, **job) -> list[dict]:
    items = list_inputs(user_prompt(None), videos).items
    code = classify_items(lambda: classifier, items, Job(str(output), decode_workers=0, progress=False, **job), ONE)
    assert code == 0
    return [json.loads(line) for line in output.read_text().splitlines()]


def classify(setup, name: str, *flags: str) -> list[dict]:
    work_dir, model, videos = setup
    result = run_command(work_dir, "ivcp", "classify", *model, *videos, "--output", name, *flags, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (work_dir / name).read_text().splitlines()]


def assert_close(ours: dict, theirs: dict) -> None:
    r"""The same row up to float noise between two processes: every key, every number within 1e-5."""
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
            assert value == pytest.approx(theirs[key], abs=1e-5), key
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            assert len(value) == len(theirs[key]), key
            for mine, other in zip(value, theirs[key]):
                assert_close(mine, other)
        elif isinstance(value, dict):
            assert_close(value, theirs[key])
        else:
            assert value == theirs[key], key


def test_one_clip_is_todays_row_and_n_clips_are_predicts(setup, classifier, tmp_path):
    _, _, videos = setup
    today = run_in_process(classifier, videos, tmp_path / "today.jsonl", batch_size=4)
    predicted = classifier.predict(videos, batch_size=4)
    assert today == [{"video": video, **result} for video, result in zip(videos, predicted)]
    one_clip = run_in_process(classifier, videos, tmp_path / "one.jsonl", batch_size=4, clips=ClipSettings(1))
    assert one_clip == today  # exactly

    clips = ClipSettings(test_clips=2, clip_combine="max")
    rows = run_in_process(classifier, videos, tmp_path / "clips.jsonl", batch_size=4, top_k=3, clips=clips)
    expected = classifier.predict(videos, test_clips=2, combine="max", top_k=3, batch_size=4)
    for row, want in zip(rows, expected, strict=True):
        assert row.pop("clip_combine") == "max"
        spans = [(clip.start, clip.end) for clip in classifier.clip_windows(row["video"], 2)]
        assert [(clip["start"], clip["end"]) for clip in row.pop("clips")] == spans
        assert row == want

    with pytest.raises(ValueError, match=r"--test_clips 2, but this run asks for --test_clips 3: rerun with the same"):
        run_in_process(classifier, videos, tmp_path / "clips.jsonl", clips=ClipSettings(3, "max"))
    with pytest.raises(ValueError, match=r"--window \(not set\), but this run asks for --window 1.0: rerun"):
        run_in_process(classifier, videos, tmp_path / "today.jsonl", clips=ClipSettings(window=1.0))


def test_window_rows_are_the_timeline_and_find_two_actions_in_order(setup, classifier, long_clips):
    rows = classify(setup, "timeline.jsonl", "--window", "1", "--stride", "0.5", "--batch_size", "2")
    by_video = {row["video"]: row for row in rows}
    assert len(by_video) == len(rows) == len(setup[2])
    for video, row in by_video.items():
        assert_close(row, classifier.timeline(video, window=1.0, stride=0.5, batch_size=2))

    def predicted(video: str) -> int:
        return by_video[video]["predicted"]

    pairs = [paths for paths in long_clips if predicted(paths[0]) != classifier.predict(paths[1])["predicted"]]
    assert pairs, "the tiny model gives every motion the same class: train it longer"
    for first, second, both in pairs:
        windows = by_video[both]["timeline"]["windows"]
        assert [(w["start"], w["end"]) for w in windows] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0)]
        segments = by_video[both]["timeline"]["segments"]
        assert (segments[0]["start"], segments[0]["class"]) == (0.0, predicted(first))
        assert (segments[-1]["end"], segments[-1]["class"]) == (2.0, classifier.predict(second)["predicted"])


def test_a_killed_timeline_run_resumes_each_video_once(setup, classifier, long_clips, capsys):
    work_dir, model, _ = setup
    run_dir = work_dir / "killed"
    run_dir.mkdir()
    sources = [paths[2] for paths in long_clips]
    copies = []  # enough work to kill it part-way: hard links under new names
    for i in range(16):
        copies.append(str(run_dir / f"copy_{i:03d}.mp4"))
        os.link(sources[i % len(sources)], copies[-1])
    (run_dir / "many.txt").write_text("\n".join(copies) + "\n")
    arguments = ["classify", *model, "--video_list", "many.txt", "--output", "out.jsonl", "--window", "1"]
    process = start_command(run_dir, "ivcp", *arguments, "--batch_size", "1", log_path=run_dir / "killed.log")
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "out.jsonl").exists() or len(list(read_rows(str(run_dir / "out.jsonl")))) < 3:
            assert process.poll() is None and time.monotonic() < deadline, (run_dir / "killed.log").read_text()
            time.sleep(0.2)
    finally:  # the run and its decode workers at once, as a lost machine
        for survivor in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
            survivor.send_signal(signal.SIGKILL)
        process.wait()
    done = written_rows(str(run_dir / "out.jsonl"))
    assert 3 <= len(done) < len(copies)

    # the rerun, in this process (what `ivcp classify` calls, with the loaded model): the same flags continue
    rows = run_in_process(classifier, copies, run_dir / "out.jsonl", batch_size=4, clips=ClipSettings(window=1.0))
    assert f"{len(done)} videos were already in the output: skipped." in capsys.readouterr().err
    assert [row["video"] for row in rows] == copies  # each exactly once, in input order
    expected = {source: classifier.timeline(source, window=1.0) for source in sources}
    for row, source in zip(rows, (sources[i % len(sources)] for i in range(len(copies)))):
        assert [s["class"] for s in row["timeline"]["segments"]] == [
            s["class"] for s in expected[source]["timeline"]["segments"]
        ]
