"""`ivcp classify` at scale: torchrun ranks, array shards and Ray give one process's rows; a killed run resumes."""

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from ivcp.batch.inputs import list_inputs
from ivcp.batch.output import PartWriter, read_rows, written_rows
from ivcp.data.prompt import user_prompt, wrap_question
from tests.helpers import motion_data_with, read_json, run_command, start_command, write_broken_videos


@pytest.fixture(scope="module")
def clips(trained, motion_data, tmp_path_factory) -> tuple[Path, list[str]]:
    r"""9 videos (an uneven count): the 8 test clips the trainer predicted, with one broken file among them."""
    work_dir = tmp_path_factory.mktemp("at_scale")
    _, records = trained
    broken = write_broken_videos(motion_data, work_dir / "broken")
    videos = [record["videos"][0] for record in records]
    videos.insert(3, str(broken["not-a-video"]))
    (work_dir / "videos.txt").write_text("\n".join(videos) + "\n")
    return work_dir, videos


def classify(work_dir: Path, trained, *args: str, launcher: tuple[str, ...] = ("ivcp",), **kwargs):
    output_dir, _ = trained
    model = read_json(output_dir / "adapter_config.json")["base_model_name_or_path"]
    command = (*launcher, "classify", "--model", model, "--adapter", str(output_dir), "--batch_size", "2", *args)
    return run_command(work_dir, *command, check=False, **kwargs)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_rows(rows: list[dict], expected: list[dict]) -> None:
    assert [row["video"] for row in rows] == [row["video"] for row in expected]  # no loss, no duplicate, in order
    for row, reference in zip(rows, expected):
        assert row.get("predicted") == reference.get("predicted") and row.get("error") == reference.get("error")
        for ours, theirs in zip(row.get("classes", []), reference.get("classes", []), strict=True):
            assert ours["class"] == theirs["class"]
            assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-6)


@pytest.fixture(scope="module")
def one_process(clips, trained) -> list[dict]:
    work_dir, videos = clips
    result = classify(work_dir, trained, "--video_list", "videos.txt", "--output", "one.jsonl")
    assert result.returncode == 1 and "8 of 9 videos classified, 1 failed." in result.stderr, result.stderr[-3000:]
    assert "100%" in result.stderr and "9/9" in result.stderr  # the bar ends full
    rows = rows_of(work_dir / "one.jsonl")
    assert [row["video"] for row in rows] == videos
    return rows


def test_one_process_gives_the_trainers_predictions(one_process, trained):
    _, records = trained
    assert one_process[3]["error_kind"] == "video unreadable" and "not-a-video.mp4" in one_process[3]["error"]
    good = one_process[:3] + one_process[4:]
    assert [row["predicted"] for row in good] == [record["predicted"] for record in records]


def test_torchrun_ranks_and_array_shards_give_one_process_rows(clips, trained, one_process):
    work_dir, _ = clips
    torchrun = ("torchrun", "--standalone", "--nproc_per_node", "2", "-m", "ivcp")
    result = classify(work_dir, trained, "--video_list", "videos.txt", "--output", "ranks.jsonl", launcher=torchrun)
    assert result.returncode != 0 and "8 of 9 videos classified, 1 failed." in result.stderr  # the launch's totals
    assert "with 2 process(es)" in result.stderr and "9/9" in result.stderr  # one bar over both ranks
    assert_same_rows(rows_of(work_dir / "ranks.jsonl"), one_process)
    assert not (work_dir / "ranks.jsonl.parts").exists()

    shard = ("--video_list", "videos.txt", "--output", "shards.jsonl", "--num_shards", "2", "--shard_index")
    first = classify(work_dir, trained, *shard, "1")  # videos 1, 3 (the broken one), 5, 7
    assert first.returncode == 1 and "3 of 4 videos classified, 1 failed." in first.stderr
    assert "merged when parts [0] are done" in first.stderr and not (work_dir / "shards.jsonl").exists()
    second = classify(work_dir, trained, *shard, "0")
    assert second.returncode == 0 and "5 of 5 videos classified, 0 failed." in second.stderr
    assert_same_rows(rows_of(work_dir / "shards.jsonl"), one_process)


def test_a_killed_run_resumes_each_video_exactly_once(clips, trained, one_process, tmp_path):
    _work_dir, videos = clips
    copies = []  # enough work to kill it part-way: hard links of the clips under new names
    for i in range(120):
        source = videos[i % len(videos)]
        copies.append(str(tmp_path / f"copy_{i:03d}{Path(source).suffix}"))
        os.link(source, copies[-1])
    (tmp_path / "many.txt").write_text("\n".join(copies) + "\n")
    output_dir, _ = trained
    model = read_json(output_dir / "adapter_config.json")["base_model_name_or_path"]
    arguments = ["--model", model, "--adapter", str(output_dir), "--video_list", "many.txt", "--output", "out.jsonl"]
    process = start_command(
        tmp_path,
        "torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ivcp",
        "classify",
        *arguments,
        "--batch_size",
        "1",
        log_path=tmp_path / "killed.log",
    )
    parts = tmp_path / "out.jsonl.parts"
    try:
        deadline = time.monotonic() + 300
        while sum(len(list(read_rows(str(part)))) for part in parts.glob("*.jsonl")) < 10:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
            time.sleep(0.2)
    finally:  # every process at once, as a lost machine: torchrun starts each rank in a session of its own
        for survivor in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
            survivor.send_signal(signal.SIGKILL)
        process.wait()
    done = written_rows(str(tmp_path / "out.jsonl"))
    assert 10 <= len(done) < len(copies) and not (tmp_path / "out.jsonl").exists()
    with open(min(parts.glob("*.jsonl")), "a", encoding="utf-8") as part:
        part.write('{"video": "' + copies[-1])  # a torn last line, as a power cut mid-write leaves

    result = run_command(tmp_path, "ivcp", "classify", *arguments, "--batch_size", "4", check=False)  # 1 process now
    assert f"{len(done)} videos were already in the output: skipped." in result.stderr, result.stderr[-3000:]
    rows = rows_of(tmp_path / "out.jsonl")
    assert [row["video"] for row in rows] == copies  # each exactly once, in input order
    for row, source in zip(rows, (videos[i % len(videos)] for i in range(len(copies)))):
        assert row.get("predicted") == one_process[videos.index(source)].get("predicted")
    assert not parts.exists()


def test_ray_data_gives_one_process_rows(clips, trained, one_process, tmp_path):
    r"""``ivcp classify --ray local`` as a user runs it: a local Ray cluster, CPU model actors, Parquet files."""
    pytest.importorskip("ray")
    import pyarrow.parquet as pq

    work_dir, _ = clips
    result = classify(
        work_dir,
        trained,
        "--video_list",
        "videos.txt",
        "--ray",
        "local",
        "--num_gpus",
        "0",
        "--decode_workers",
        "1",
        "--output_format",
        "parquet",
        "--output",
        str(tmp_path / "ray"),
        RAY_USAGE_STATS_ENABLED="0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"9 videos classified by Ray into {tmp_path / 'ray'}/." in result.stderr
    table = pq.read_table(tmp_path / "ray").to_pylist()
    rows = {row["video"]: {key: value for key, value in row.items() if value is not None} for row in table}
    assert len(table) == len(rows) == len(one_process)
    assert_same_rows([rows[row["video"]] for row in one_process], one_process)


def test_unlabelled_dataset_and_manifest_with_a_question(clips, trained, motion_data, one_process, tmp_path):
    _, records = trained
    _work_dir, videos = clips
    unlabelled = [
        {key: value for key, value in example.items() if key != "action_label"}
        for example in read_json(Path(motion_data) / "motion_test.json")
    ]
    motion_data_with(motion_data, tmp_path / "data", "unlabelled", unlabelled)
    (tmp_path / "clips.csv").write_text(f"clip_id,video\nfirst,{videos[0]}\nbroken,{videos[3]}\n")
    result = classify(
        tmp_path,
        trained,
        "--dataset",
        "unlabelled",
        "--manifest",
        "clips.csv",
        "--prompt",
        "Which way does it move?",
        "--output",
        "out.jsonl",
    )
    rows = rows_of(tmp_path / "out.jsonl")
    assert result.returncode == 1 and len(rows) == len(records) + 2, result.stderr[-3000:]
    by_dataset = rows[2:]  # the dataset's own prompts, as in training: the trainer's predictions
    assert [row["predicted"] for row in by_dataset] == [record["predicted"] for record in records]
    assert rows[0]["clip_id"] == "first" and rows[1]["clip_id"] == "broken"
    assert rows[1]["error_kind"] == "video unreadable" and "error" not in rows[0]  # the question was wrapped
    assert rows[0]["classes"][0]["probability"] != pytest.approx(one_process[0]["classes"][0]["probability"], abs=1e-6)


def test_user_prompt_wraps_a_question_once():
    assert user_prompt("Which way?") == wrap_question("Which way?") == "<video>Which way?<ACTION>"
    assert user_prompt("  ") == user_prompt(None) == "<video>What is the person doing?<ACTION>"
    assert user_prompt("<video>Which way?<ACTION>") == "<video>Which way?<ACTION>"  # the data's own turn
    for half in ("Which way?<ACTION>", "<ACTION><video>Which way?", "<video><video>Which?<ACTION>"):
        with pytest.raises(ValueError, match="neither a plain question"):
            user_prompt(half)


def test_inputs_name_what_to_fix(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"video": "a.mp4", "camera": 1}\n{"path": "b.mp4"}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl row 2 has no 'video' path"):
        list_inputs("p", manifest=str(tmp_path / "rows.jsonl"))
    with pytest.raises(ValueError, match="matches no file"):
        list_inputs("p", pattern=str(tmp_path / "*.mp4"))
    (tmp_path / "b.mp4").write_bytes(b"")
    inputs = list_inputs("p", videos=["a.mp4", "a.mp4"], pattern=str(tmp_path / "*.mp4"))
    assert [item.video for item in inputs.items] == ["a.mp4", str(tmp_path / "b.mp4")] and inputs.duplicates == 1


def test_a_torn_line_is_cut_before_appending(tmp_path):
    path = tmp_path / "part.jsonl"
    good, torn_then_appended = '{"video": "a"}\n', '{"video": "x{"video": "b"}\n'
    path.write_text(good + torn_then_appended + '{"video": "c", "predi')  # ends in a torn line
    assert [row["video"] for row in read_rows(str(path))] == ["a"]
    writer = PartWriter(str(path))
    writer.write([{"video": "c"}, {"video": "d"}])
    writer.close()
    assert path.read_text() == good + torn_then_appended + '{"video": "c"}\n{"video": "d"}\n'
    assert [row["video"] for row in read_rows(str(path))] == ["a", "c", "d"]
