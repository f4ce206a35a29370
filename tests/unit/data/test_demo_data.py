"""The shipped demo data is what its script writes, and its sft sets load through LLaMA-Factory's own sft path.

Encoded H.264 bytes are not a portable fixture (libx264 takes CPU-specific code paths), so clips are compared by
what they decode to: the same number and size of frames, and the same picture up to coding noise, which keeps the
square's position in every frame, hence the class's motion.
"""

import filecmp
import io
import itertools
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from tests.helpers import REPO, base_config, read_json


DATA = os.path.join(REPO, "data")
BLOCK = 8  # pixels: block means average the coding noise away, the 12-20 px square stays visible
MAX_BLOCK_DIFFERENCE = 32.0  # re-encoding with another preset stays under 7 here; a square elsewhere exceeds 100


def _decode(source) -> np.ndarray:
    with av.open(source) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _encode(frames: np.ndarray, preset: str) -> io.BytesIO:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18", "preset": preset}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buffer.seek(0)
    return buffer


def _block_means(frames: np.ndarray) -> np.ndarray:
    count, height, width, _ = frames.shape
    blocks = frames.astype(np.float32).reshape(count, height // BLOCK, BLOCK, width // BLOCK, BLOCK, 3)
    return blocks.mean(axis=(2, 4, 5))


def same_clip(ours: np.ndarray, theirs: np.ndarray) -> bool:
    r"""Same frame count and size, and every 8x8 block of every frame within coding noise of the other clip."""
    if ours.shape != theirs.shape:
        return False
    return float(np.abs(_block_means(ours) - _block_means(theirs)).max()) <= MAX_BLOCK_DIFFERENCE


def test_shipped_demo_data_is_the_scripts_output(tmp_path):
    script = os.path.join(REPO, "scripts", "make_demo_data.py")
    subprocess.run([sys.executable, script, "--out_dir", str(tmp_path)], check=True, capture_output=True)

    written = read_json(tmp_path / "dataset_info.json")
    assert set(written) == {
        "action_demo_train",
        "action_demo_test",
        "mllm_video_demo",
        "objects_demo_train",
        "objects_demo_test",
    }
    shipped_info = read_json(os.path.join(DATA, "dataset_info.json"))
    for name, entry in written.items():
        assert shipped_info[name] == entry
        assert filecmp.cmp(tmp_path / entry["file_name"], os.path.join(DATA, entry["file_name"]), shallow=False)

    assert filecmp.cmp(tmp_path / "objects_demo_label_names.json", os.path.join(DATA, "objects_demo_label_names.json"))
    for folder in ("action_demo", "objects_demo"):
        clips = sorted(os.listdir(tmp_path / folder))
        assert clips == sorted(os.listdir(os.path.join(DATA, folder)))
        different = [
            clip
            for clip in clips
            if not same_clip(_decode(tmp_path / folder / clip), _decode(os.path.join(DATA, folder, clip)))
        ]
        assert different == [], folder


@pytest.mark.parametrize("preset", ["ultrafast", "veryslow"])
def test_clip_comparison_accepts_another_encoder_run(preset):
    for clip in ("train_00000.mp4", "test_00007.mp4"):
        shipped = _decode(os.path.join(DATA, "action_demo", clip))
        reencoded = _decode(_encode(shipped, preset))
        assert reencoded.shape == shipped.shape and not np.array_equal(reencoded, shipped)  # not the same bytes
        assert same_clip(reencoded, shipped)


def test_clip_comparison_rejects_other_motion_or_frames():
    shipped = _decode(os.path.join(DATA, "action_demo", "train_00000.mp4"))
    assert not same_clip(shipped[::-1].copy(), shipped)  # the same frames played backwards: the opposite direction
    assert not same_clip(shipped[:-1], shipped)
    assert not same_clip(_decode(os.path.join(DATA, "action_demo", "train_00001.mp4")), shipped)


@pytest.mark.parametrize(
    "dataset_name, size", [("mllm_video_demo", 24), ("VideoEspresso_stage1", 28), ("VideoEspresso_stage2", 28)]
)
def test_shipped_sft_sets_load_for_sft(tiny_model, tmp_path, dataset_name, size):
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    config = base_config(tiny_model, DATA, str(tmp_path / "out"), stage="sft", dataset=dataset_name)
    model_args, data_args, training_args, *_ = get_train_args(config)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    train = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)["train_dataset"]
    assert len(train) == size
    assert all(any(label != -100 for label in labels) for labels in train["labels"])  # the answers are learnt


def _displacement(frames: np.ndarray) -> np.ndarray:
    r"""The median (row, column) shift between consecutive frames of what moves (each pixel's temporal median removed)."""
    moving = frames.astype(np.float32).mean(axis=-1)
    moving -= np.median(moving, axis=0)  # the background and the static square
    size = moving.shape[1]
    shifts = []
    for before, after in itertools.pairwise(moving):  # phase correlation on the torus: the disc wraps around
        correlation = np.fft.ifft2(np.fft.fft2(after) * np.conj(np.fft.fft2(before))).real
        shift = np.unravel_index(correlation.argmax(), correlation.shape)
        shifts.append([(value + size // 2) % size - size // 2 for value in shift])
    return np.median(np.array(shifts), axis=0)


def test_diagonal_clips_move_along_their_class(tmp_path):
    from ivcp.demo.diagonal_videos import DIAGONALS, make_diagonal_dataset

    files = make_diagonal_dataset(str(tmp_path), num_train_per_class=2, num_test_per_class=1, seed=0)
    assert set(read_json(tmp_path / "dataset_info.json")) == {"diagonal_train", "diagonal_test"}
    for name, count in (("diagonal_train", 2), ("diagonal_test", 1)):
        examples = read_json(files[name])
        assert sorted(example["action_label"] for example in examples) == sorted(list(range(4)) * count)
        for example in examples:
            frames = _decode(str(tmp_path / example["videos"][0]))
            assert frames.shape == (8, 48, 48, 3)
            row_step, col_step = _displacement(frames)
            up_or_down, left_or_right = DIAGONALS[example["action_label"]].split("-")
            assert np.sign(row_step) == (-1 if up_or_down == "up" else 1), example
            assert np.sign(col_step) == (-1 if left_or_right == "left" else 1), example
            assert 4 <= abs(row_step) <= 6 and 4 <= abs(col_step) <= 6, (row_step, col_step)
