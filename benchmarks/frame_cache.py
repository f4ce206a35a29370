"""The collator's video reading over several epochs, decoding every epoch against the frame cache (data path only).

For each setting, writes ``--videos`` H.264 motion clips, then reads them the way the training collator does (batches
of 8, :func:`~ivcp.data.video_reader.read_plans` or :meth:`~ivcp.data.frame_cache.FrameCache.read_plans`) for
``--epochs`` epochs, and prints the seconds of each epoch and the cache's size on disk. Settings: the issue's (8
frames of 64x64 at 4 fps, ``video_fps`` 4, ``video_maxlen`` 8, 56x56 = 3136 pixels) and a larger one (64 frames
of 256x256 at 8 fps, ``video_fps`` 2, ``video_maxlen`` 16, ``video_max_pixels`` 65536, Qwen2-VL's default).

    flock /tmp/cpu.lock python benchmarks/frame_cache.py --videos 64 --epochs 3
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from ivcp.data import video_reader
from ivcp.data.frame_cache import FrameCache
from ivcp.demo.motion_videos import DIRECTIONS, write_motion_clip


SETTINGS = {  # name: (frames in the clip, size, clip fps, video_fps, video_maxlen, video_max_pixels)
    "issue (8 frames 64x64, 56x56 sampled)": (8, 64, 4, 4.0, 8, 3136),
    "larger (64 frames 256x256, 16 sampled at 65536 pixels)": (64, 256, 8, 2.0, 16, 65536),
}
BATCH = 8


def epochs(read, plans: list, max_pixels: int, count: int) -> list[float]:
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        for i in range(0, len(plans), BATCH):
            read(plans[i : i + BATCH], max_pixels)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    for name, (frames, size, fps, video_fps, video_maxlen, max_pixels) in SETTINGS.items():
        work_dir = tempfile.mkdtemp(prefix="ivcp_frame_cache_")
        rng = np.random.default_rng(0)
        paths = [os.path.join(work_dir, f"clip{i}.mp4") for i in range(args.videos)]
        for i, path in enumerate(paths):
            write_motion_clip(path, DIRECTIONS[i % 4], rng, num_frames=frames, size=size, fps=fps)
        plans = [video_reader.plan_video(path, video_fps, video_maxlen) for path in paths]  # demuxed once, for both

        decoding = epochs(video_reader.read_plans, plans, max_pixels, args.epochs)
        cache = FrameCache(os.path.join(work_dir, "cache"), 100 * 1024**3)
        cached = epochs(cache.read_plans, plans, max_pixels, args.epochs)
        on_disk = cache.state()["bytes"] / 2**20
        print(f"== {name}, {args.videos} videos, seconds per epoch")
        print(f"  decoding every epoch: {' '.join(f'{s:.3f}' for s in decoding)}  (total {sum(decoding):.3f})")
        print(f"  frame cache:          {' '.join(f'{s:.3f}' for s in cached)}  (total {sum(cached):.3f})")
        print(f"  cache {on_disk:.1f} MiB; {cache.decoded} decoded, {cache.hits} read; ", end="")
        print(f"epochs 2+: {sum(decoding[1:]) / max(sum(cached[1:]), 1e-9):.1f}x faster", flush=True)
        shutil.rmtree(work_dir)


if __name__ == "__main__":
    main()
