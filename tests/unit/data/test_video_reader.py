"""The video reader on the files users bring: which frames, rotation, headers that lie, truncation, and training.

Every file is written here with PyAV (no downloads): XviD avi with an MP3 track and a header one frame too many,
MJPEG avi, H.264 with B-frames in mp4 and mkv (no frame count), VP9 webm, MPEG-2 ts, a 1-frame mkv, a variable
frame rate mp4, a phone-rotated mp4 and a truncated webm.
"""

import json
from pathlib import Path

import av
import numpy as np
import pytest
from llamafactory.data.mm_plugin import Qwen2VLPlugin

from ivcp.cli import main
from ivcp.data import ActionDataError
from ivcp.data.video_reader import VideoReadError, _decoded, plan_video, read_frames
from ivcp.demo.video_files import (
    KINDS,
    announce_extra_avi_frames,
    rotate_mp4,
    truncate,
    write_kind,
    write_video,
)
from tests.helpers import base_config, load_action_data, read_json, run_cli


SEEKABLE = {"options": {"g": "12"}}  # a keyframe every 12 frames, so that reading seeks


def _marker(index: int, height: int, width: int) -> np.ndarray:
    frame = np.full((height, width, 3), 40, dtype=np.uint8)
    frame[:16, :16] = 250  # top-left corner as encoded
    return frame


@pytest.fixture(scope="module")
def wild_videos(tmp_path_factory) -> dict[str, Path]:
    r"""One file of each kind users bring; 120 frames (keyframes every 12) where the codec allows."""
    directory = tmp_path_factory.mktemp("wild_videos")
    files = {}
    for kind, (_, codec, settings) in KINDS.items():
        extra = {} if codec == "mjpeg" else {"options": {**settings.get("options", {}), "g": "12"}}
        files[kind] = Path(write_kind(str(directory), kind, num_frames=120, **extra))

    announce_extra_avi_frames(str(files["xvid_mp3.avi"]))  # header: 121 frames, stream: 120
    files["one_frame.mkv"] = directory / "one_frame.mkv"
    write_video(str(files["one_frame.mkv"]), "libx264", "matroska", num_frames=1)
    files["rotated.mp4"] = directory / "rotated.mp4"
    write_video(str(files["rotated.mp4"]), "libx264", "mp4", content=_marker)
    rotate_mp4(str(files["rotated.mp4"]), 90)  # a phone held upright: played turned 90 degrees clockwise
    files["truncated.webm"] = directory / "truncated.webm"
    write_video(str(files["truncated.webm"]), "libvpx-vp9", "webm", num_frames=100)
    truncate(str(files["truncated.webm"]), keep=0.5)
    return files


GOOD = [*KINDS, "one_frame.mkv", "rotated.mp4"]


def _sequential(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]


@pytest.mark.parametrize("kind", [kind for kind in GOOD if kind != "rotated.mp4"])
def test_sampled_frames_equal_a_full_sequential_decode(wild_videos, kind):
    reference = _sequential(wild_videos[kind])
    for video_fps, video_maxlen in ((2.0, 128), (25.0, 6), (100.0, 1000)):
        plan = plan_video(wild_videos[kind], video_fps, video_maxlen)
        assert plan.frames_in_file == len(reference)
        assert plan.sample_indices[0] == 0 and plan.sample_indices[-1] == len(reference) - 1  # the whole clip
        frames = read_frames(plan)
        assert len(frames) == len(plan.sample_indices) == len(plan.timestamps)
        for index, frame in zip(plan.sample_indices, frames):
            assert np.array_equal(np.asarray(frame), reference[index]), (kind, video_fps, video_maxlen, index)


def test_samples_span_the_clip_where_the_header_has_no_frame_count(wild_videos):
    # LLaMA-Factory 0.9.5 takes the first video_maxlen frames of such files and counts tokens for that many
    for kind in ("h264_bframes.mkv", "vp9.webm", "mpeg2.ts", "one_frame.mkv"):
        with av.open(str(wild_videos[kind])) as container:
            stream = container.streams.video[0]
            assert stream.frames == 0
            plugin = Qwen2VLPlugin(image_token="<|image_pad|>", video_token="<|video_pad|>", audio_token=None)
            upstream = plugin._get_video_sample_indices(stream, video_fps=2.0, video_maxlen=128)
        plan = plan_video(wild_videos[kind], 2.0, 128)
        assert list(upstream) == list(range(128))
        expected = 1 if kind == "one_frame.mkv" else 9  # 120 frames at 25 fps: 4.8 s at 2 frames a second
        assert len(plan.sample_indices) == expected and plan.sample_indices[-1] == plan.frames_in_file - 1

    vfr = plan_video(wild_videos["h264_vfr.mp4"], 2.0, 128)  # 20-120 ms apart: timestamps, not index / fps
    gaps = np.diff(vfr.timestamps)
    assert vfr.timestamps[0] == 0 and gaps.min() > 0 and gaps.max() / gaps.min() > 1.2


def test_rotated_phone_clip_reaches_the_processor_upright(wild_videos):
    plan = plan_video(wild_videos["rotated.mp4"], 2.0, 128)
    assert plan.rotation == 270 and plan.frame_size == (96, 64)  # encoded 64 x 96, shown portrait
    frame = np.asarray(read_frames(plan)[0])
    assert frame.shape == (96, 64, 3)
    assert frame[:16, -16:].mean() > 200 and frame[:16, :16].mean() < 100  # turned clockwise: marker top-right


@pytest.mark.parametrize("kind", ["h264_bframes.mp4", "rotated.mp4"])
def test_frames_are_shrunk_to_the_plugins_size_as_they_are_converted(wild_videos, kind):
    plugin = Qwen2VLPlugin(image_token="<|image_pad|>", video_token="<|video_pad|>", audio_token=None)
    limits = {"image_max_pixels": 48 * 32, "image_min_pixels": 16 * 16}
    plan = plan_video(wild_videos[kind], 2.0, 128)
    for full, shrunk in zip(read_frames(plan), read_frames(plan, limits["image_max_pixels"])):
        expected = plugin._preprocess_image(full, **limits)  # what LLaMA-Factory makes of the full-size frame
        assert shrunk.size == expected.size == (plan.frame_size[1] // 2, plan.frame_size[0] // 2)  # 96x64 -> 48x32
        assert plugin._preprocess_image(shrunk, **limits).size == shrunk.size  # nothing left to resize
        assert np.abs(np.asarray(shrunk, dtype=float) - np.asarray(expected, dtype=float)).mean() < 4


def test_non_reference_frames_between_samples_are_not_decoded(wild_videos):
    path = wild_videos["h264_bframes.mp4"]  # the identity of what is decoded: test_sampled_frames_equal_...
    plan = plan_video(path, 2.0, 128)
    with av.open(str(path)) as container:
        decoded = [frame.pts for frame in _decoded(container, container.streams.video[0], set(plan.sample_pts), True)]
    assert set(plan.sample_pts) <= set(decoded)
    assert len(decoded) < plan.frames_in_file


def test_header_off_by_one_is_accepted_and_truncated_webm_rejected(wild_videos):
    plan = plan_video(wild_videos["xvid_mp3.avi"], 2.0, 128)
    assert (plan.header_frames, plan.frames_in_file) == (121, 120)
    with pytest.raises(VideoReadError, match="truncated.webm' cannot be read to its end") as err:
        plan_video(wild_videos["truncated.webm"], 2.0, 128)
    assert "a truncated or damaged file" in str(err.value)


def _dataset(data_dir: Path, name: str, videos: list[Path], labels: list[int]) -> None:
    info_path = data_dir / "dataset_info.json"
    info = read_json(info_path) if info_path.exists() else {}
    info[name] = {
        "file_name": f"{name}.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "videos": "videos"},
    }
    info_path.write_text(json.dumps(info))
    examples = [
        {
            "conversations": [
                {"from": "human", "value": "<video>What happens?<ACTION>"},
                {"from": "gpt", "value": ""},
            ],
            "videos": [str(video)],
            "action_label": label,
        }
        for video, label in zip(videos, labels)
    ]
    (data_dir / f"{name}.json").write_text(json.dumps(examples))


def test_every_kind_trains_and_predicts_at_the_default_video_maxlen(tiny_model, wild_videos, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    videos = [wild_videos[kind] for kind in GOOD]
    _dataset(data_dir, "wild", videos, [i % 4 for i in range(len(videos))])
    config = base_config(tiny_model, str(data_dir), str(tmp_path / "out"), dataset="wild", eval_dataset="wild")
    del config["video_fps"]  # LLaMA-Factory's defaults: video_fps 2, video_maxlen 128
    config.update(max_steps=2, save_steps=10, do_predict=True, per_device_eval_batch_size=len(videos))
    run_cli(config, tmp_path)
    with open(tmp_path / "out" / "predictions.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert [Path(record["videos"][0]).name for record in records] == GOOD

    _dataset(data_dir, "with_truncated", [videos[0], wild_videos["truncated.webm"]], [0, 1])
    with pytest.raises(ActionDataError) as err:
        load_action_data(base_config(tiny_model, str(data_dir), str(tmp_path / "out2"), dataset="with_truncated"))
    assert "example 1 of with_truncated.json: " in str(err.value) and "truncated.webm" in str(err.value)
    assert "example 0 " not in str(err.value)


def test_show_frames_prints_the_samples_and_draws_a_sheet(wild_videos, tmp_path, capsys):
    videos = [str(wild_videos[kind]) for kind in ("vp9.webm", "rotated.mp4", "truncated.webm")]
    with pytest.raises(SystemExit) as code:  # in-process: the `ivcp` entry point runs exactly this
        main(
            [
                "show-frames",
                *videos,
                "--video_fps",
                "2",
                "--video_maxlen",
                "4",
                "--json",
                "--sheet",
                str(tmp_path / "sheets"),
            ]
        )
    output = capsys.readouterr()
    assert code.value.code == 1 and "1 of 3 videos cannot be read" in output.err and "truncated.webm" in output.err
    webm, rotated = (json.loads(line) for line in output.out.splitlines())
    assert webm["video"].endswith("vp9.webm") and webm["frames_in_file"] == 120
    assert webm["sampled_frames"] == [0, 39, 79, 119] and webm["timestamps"] == [0.0, 1.56, 3.16, 4.76]
    assert webm["frame_size"] == [64, 96] and webm["rotation"] == 0
    assert rotated["frame_size"] == [96, 64] and rotated["rotation"] == 270
    assert sorted(path.name for path in (tmp_path / "sheets").iterdir()) == ["rotated.mp4.png", "vp9.webm.png"]


def test_show_frames_counts_the_video_tokens_training_puts_in_the_prompt(tiny_model, wild_videos, tmp_path, capsys):
    data_dir, video = tmp_path / "data", wild_videos["h264_bframes.mkv"]
    data_dir.mkdir()
    _dataset(data_dir, "one", [video], [0])
    config = base_config(tiny_model, str(data_dir), str(tmp_path / "out"), dataset="one", video_maxlen=16)
    _, tokenizer_module, _, _, dataset_module = load_action_data(config)
    video_pad = tokenizer_module["tokenizer"].convert_tokens_to_ids("<|video_pad|>")
    trained = dataset_module["train_dataset"][0]["input_ids"].count(video_pad)

    flags = ["--model", tiny_model, "--template", "qwen2_vl", "--video_fps", "8", "--video_maxlen", "16", "--json"]
    capsys.readouterr()  # the data loading's log lines
    with pytest.raises(SystemExit) as code:
        main(["show-frames", str(video), *flags])
    shown = json.loads(capsys.readouterr().out)
    assert code.value.code == 0 and shown["frames_to_processor"] == 16
    assert shown["video_tokens"] == trained > 0


def _late_colour_clip(path: Path, label: int, seed: int) -> None:
    r"""40 frames (4 s): a random grey for 3 s, then red (class 0) or blue (class 1) for the last second.

    Grey, not any colour: only the last second tells the classes apart, so a reader that never samples it leaves
    nothing to learn (a random colour could be red- or blue-ish and mislead a tiny model on some clips).
    """
    start = np.full(3, np.random.default_rng(seed).integers(0, 256))
    late = (220, 30, 30) if label == 0 else (30, 30, 220)

    def content(index: int, height: int, width: int) -> np.ndarray:
        return np.broadcast_to(np.array(start if index < 30 else late, dtype=np.uint8), (height, width, 3)).copy()

    write_video(str(path), "libvpx-vp9", "webm", num_frames=40, size=(64, 64), fps=10, content=content)


def test_classes_seen_only_at_the_end_of_webm_clips_are_learned(tiny_model, tmp_path):
    r"""One run (training seed 42, these clips). Not a lucky one: with other clips (seeds from 1000, 2000, 3000, 4000,
    5000) and training seeds 1-3 all 9 runs tried gave 1.000 on the 8 held-out clips. With the earlier random-colour
    starts 3 of those 9 gave 0.625, hence the grey. A reader that never samples the last second sees grey only.
    """
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split, count, offset in (("late_train", 16, 0), ("late_test", 8, 100)):
        labels = [i % 2 for i in range(count)]
        videos = [data_dir / f"{split}_{i}.webm" for i in range(count)]
        for i, (video, label) in enumerate(zip(videos, labels)):
            _late_colour_clip(video, label, seed=offset + i)
        _dataset(data_dir, split, videos, labels)

    with av.open(str(data_dir / "late_test_0.webm")) as container:  # what LLaMA-Factory 0.9.5 would sample
        stream = container.streams.video[0]
        plugin = Qwen2VLPlugin(image_token="<|image_pad|>", video_token="<|video_pad|>", audio_token=None)
        assert max(plugin._get_video_sample_indices(stream, video_fps=2.0, video_maxlen=8)) < 30  # never the end
    assert plan_video(data_dir / "late_test_0.webm", 2.0, 8).sample_indices[-2:] == (33, 39)

    config = base_config(tiny_model, str(data_dir), str(tmp_path / "out"), dataset="late_train")
    del config["video_fps"]  # LLaMA-Factory's default, 2 frames a second
    del config["max_steps"]
    config.update(
        eval_dataset="late_test",
        do_eval=True,
        video_maxlen=8,
        num_action_classes=2,
        finetuning_type="full",
        freeze_vision_tower=False,
        freeze_multi_modal_projector=False,
        freeze_language_model=True,
        learning_rate=3.0e-3,
        num_train_epochs=15,
        per_device_train_batch_size=8,
        lr_scheduler_type="cosine",
        warmup_ratio=0.05,
        save_strategy="no",
        disable_gradient_checkpointing=True,
        plot_loss=False,
    )
    run_cli(config, tmp_path)
    metrics = read_json(tmp_path / "out" / "eval_results.json")
    assert metrics["eval_accuracy"] >= 0.875, metrics  # chance is 0.5 on the 8 held-out clips


def test_only_the_action_cls_template_gets_the_reader():
    from llamafactory.data.template import TEMPLATES

    from ivcp.data.video_plugin import VideoReaderMixin, with_video_reader

    shared = TEMPLATES["qwen2_vl"]
    plugin_class = type(shared.mm_plugin)
    template = with_video_reader(shared)
    assert isinstance(template.mm_plugin, VideoReaderMixin) and isinstance(template.mm_plugin, plugin_class)
    assert type(shared.mm_plugin) is plugin_class and not isinstance(shared.mm_plugin, VideoReaderMixin)
    assert with_video_reader(template).mm_plugin.__class__ is template.mm_plugin.__class__  # idempotent
