"""One video reader that decides, for every file, which frames the model sees, and decodes only those.

LLaMA-Factory 0.9.5 trusts the container header: without a frame count (mkv, webm, ts, mpg, wmv) it takes the
first ``video_maxlen`` frames and counts tokens for that many, which crashes the batch of a shorter file and shows
a long one through its first second; and it decodes the whole stream to keep a few frames. Here the real frame
count and duration come from demuxing the stream (no decoding), the samples span the whole clip with LLaMA-Factory's
own rule (``video_fps`` frames a second, at most ``video_maxlen``, evenly spaced), the display matrix is applied,
and decoding stops after the last sample, seeking to the keyframe before a sample when that skips frames and leaving
out the non-reference frames between samples; only the samples are converted, shrunk as they are.
:class:`VideoPlan` is the decision; token counting and the collator both take it from :func:`plan_video`, so they
cannot disagree.

Every file is opened as a local file in one of :data:`VIDEO_DEMUXERS` (FFmpeg's protocols limited to ``file``, its
demuxers to video containers), whatever its name: FFmpeg picks a demuxer by probing the content, and a playlist
(HLS), a concat list or an image sequence would make it open other files or URLs named inside. Frames larger than
:data:`MAX_FRAME_PIXELS` are refused before any is decoded, and the samples are converted as they are decoded, so a
video holds at most one full-size frame (plus the decoder's own) at a time.
"""

import bisect
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from ..log import get_logger


if TYPE_CHECKING:
    from PIL.Image import Image


logger = get_logger(__name__)

HEADER_TOLERANCE = 2  # frames a header may announce beyond those in the stream (AVI muxers add empty chunks)
REENCODE_HINT = "re-encode it (e.g. `ffmpeg -i in.mp4 -c:v libx264 out.mp4`) or remove it"
# FFmpeg demuxer names: mp4/mov/3gp, mkv/webm, avi, MPEG-TS, FLV, MPEG-PS (.mpg/.vob), ASF (.wmv); nothing that
# reads other files or URLs named inside it (hls, dash, concat, image2, ...)
VIDEO_DEMUXERS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts", "flv", "mpeg", "asf")
MAX_FRAME_PIXELS = 8192 * 4320  # 8K (DCI): a 16-frame 8192x8192 mp4 of 199 KB would take 1.6 GB as decoded frames
_OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": ",".join(VIDEO_DEMUXERS)}


class VideoReadError(ValueError):
    r"""A video file the reader cannot use; the message names the file once, then the cause and the fix."""

    def __init__(self, path: str, problem: str, kind: str = "video unreadable", fix: str = REENCODE_HINT) -> None:
        super().__init__(f"video {path!r} {problem}: {fix}.")
        self.path = path
        self.kind = kind


class VideoWindow(str):
    r"""The path of a video file that stands for the part of it from ``start`` to ``end`` seconds.

    It goes wherever a path goes (the encoder, the collator, LLaMA-Factory's plugin), and :func:`plan_video` samples
    inside its window with the usual rule, so token counting and decoding agree for a clip as for a whole file. It
    compares and hashes with its window, so no cache takes one clip for another.
    """

    def __new__(cls, path: str | os.PathLike, start: float, end: float) -> "VideoWindow":  # noqa: PYI034
        if not 0 <= start < end:
            raise ValueError(f"a video window needs 0 <= start < end, got {start}..{end} for {os.fspath(path)!r}.")
        window = super().__new__(cls, os.fspath(path))
        window.start, window.end = float(start), float(end)
        return window

    def __reduce__(self):  # pickled into decode workers with its window
        return VideoWindow, (str(self), self.start, self.end)

    def __eq__(self, other: object) -> bool:
        same_window = isinstance(other, VideoWindow) and (self.start, self.end) == (other.start, other.end)
        return same_window and str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((str(self), self.start, self.end))


class VideoDraw(str):
    r"""The path of a video file whose samples are drawn at random, from ``seed``: training's temporal jitter.

    :func:`plan_video` cuts the clip into as many equal segments as the usual rule samples frames and takes one
    frame at a random offset in each (TSN's sampling), so the frame count, and so the token count, is the uniform
    plan's. The same seed always draws the same frames; it compares and hashes with its seed.
    """

    def __new__(cls, path: str | os.PathLike, seed: int) -> "VideoDraw":  # noqa: PYI034
        draw = super().__new__(cls, os.fspath(path))
        draw.seed = int(seed)
        return draw

    def __reduce__(self):  # pickled into dataloader workers with its seed
        return VideoDraw, (str(self), self.seed)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VideoDraw) and self.seed == other.seed and str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((str(self), self.seed))


@dataclass(frozen=True)
class VideoPlan:
    r"""Which frames of ``path`` the model sees, in presentation order, and how they are shown."""

    path: str
    frames_in_file: int  # frames in the stream (demuxed, one non-empty packet per frame)
    header_frames: int  # the container header's count, 0 when it has none
    duration: float  # seconds, from the stream's timestamps
    average_fps: float  # frames_in_file / duration
    rotation: int  # degrees counterclockwise of the display matrix (phones: -90, 90, 180)
    frame_size: tuple[int, int]  # (height, width) handed to the processor, after rotation
    sample_indices: tuple[int, ...]
    timestamps: tuple[float, ...]  # seconds from the first frame
    sample_pts: tuple[int | None, ...]  # stream timestamps of the samples (None: the container has none)
    keyframe_pts: tuple[int, ...]  # sorted keyframe timestamps (empty: no seeking)
    window: tuple[float, float] | None = None  # (start, end) seconds the samples are taken from; None: the whole file
    draw: int | None = None  # the seed of randomly drawn samples (training's random_segment); None: evenly spaced

    def summary(self) -> dict[str, Any]:
        r"""What ``ivcp show-frames --json`` prints."""
        info = asdict(self)
        for name in ("sample_pts", "keyframe_pts", "sample_indices"):
            info.pop(name)
        info["video"] = info.pop("path")
        info["sampled_frames"] = list(self.sample_indices)
        info["timestamps"] = [round(t, 4) for t in self.timestamps]
        info["frame_size"] = list(self.frame_size)
        if self.draw is None:
            info.pop("draw")
        if self.window is None:
            info.pop("window")
        else:
            info["window"] = [round(t, 4) for t in self.window]
        return info


def sample_indices(total_frames: int, duration: float, video_fps: float, video_maxlen: int) -> list[int]:
    r"""LLaMA-Factory's rule (``_get_video_sample_indices``), applied to the real frame count and duration."""
    sample_frames = max(1, math.floor(duration * video_fps))
    sample_frames = min(total_frames, video_maxlen, sample_frames)
    return np.linspace(0, total_frames - 1, sample_frames).astype(np.int32).tolist()


def segment_indices(total_frames: int, samples: int, seed: int) -> list[int]:
    r"""One frame at a random offset in each of ``samples`` equal segments of ``total_frames`` (TSN's sampling).

    ``samples`` is what :func:`sample_indices` takes (never more than ``total_frames``), so the indices are distinct
    and in order, and their number is the uniform plan's.
    """
    bounds = np.linspace(0, total_frames, samples + 1)
    starts = np.ceil(bounds[:-1]).astype(np.int64)
    stops = np.maximum(np.ceil(bounds[1:]).astype(np.int64), starts + 1)  # each segment holds at least one frame
    offsets = np.random.default_rng(seed).random(samples)
    return (starts + np.floor(offsets * (stops - starts)).astype(np.int64)).tolist()


def _cause(err: "av.FFmpegError") -> str:
    r"""FFmpeg's reason without the file name its message repeats (the error names the file once itself)."""
    return err.strerror or str(err)


def _video_stream(container: "av.container.InputContainer", path: str) -> "av.video.stream.VideoStream":
    stream = next((stream for stream in container.streams if stream.type == "video"), None)
    if stream is None:
        raise VideoReadError(path, "holds no video stream")
    return stream


def _declared_duration(container: "av.container.InputContainer", stream: "av.video.stream.VideoStream") -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _first_frame_rotation(container: "av.container.InputContainer", stream: "av.video.stream.VideoStream") -> int:
    for frame in container.decode(stream):
        return round(frame.rotation / 90.0) * 90 % 360 if frame.rotation else 0
    return 0


def _open(path: str) -> "av.container.InputContainer":
    r"""``path`` as a local file in a video container (FFmpeg refuses any other demuxer with EINVAL)."""
    try:
        return av.open(path, "r", container_options=_OPEN_OPTIONS)
    except av.ValueError as err:
        raise VideoReadError(
            path,
            f"is not in a video container this reader opens ({err}): only mp4/mov/3gp, mkv/webm, avi, MPEG-TS, FLV, "
            "MPEG-PS and ASF/WMV files are read (playlists, concat lists and image sequences never)",
        ) from err
    except (av.FFmpegError, OSError) as err:
        raise VideoReadError(path, f"cannot be read by PyAV ({_cause(err)})") from err


def _check_frame_size(stream: "av.video.stream.VideoStream", path: str) -> None:
    if stream.width * stream.height > MAX_FRAME_PIXELS:
        raise VideoReadError(
            path,
            f"has {stream.width}x{stream.height} frames, more than the reader's limit of {MAX_FRAME_PIXELS} pixels "
            "(8192x4320)",
            fix="downscale it (e.g. `ffmpeg -i in.mp4 -vf scale=-2:1080 out.mp4`)",
            kind="frames too large",
        )


def clear_plan_cache() -> None:
    r"""Forget every plan: a server calls it after each batch, since its uploads' temporary paths never repeat."""
    _plan.cache_clear()
    _scan.cache_clear()


@dataclass(frozen=True)
class _Stream:
    r"""What demuxing a file tells (no decoding beyond its first frame): every frame's time, the keyframes."""

    frames: int
    header_frames: int
    duration: float
    rotation: int
    frame_size: tuple[int, int]  # (height, width), upright
    timestamps: tuple[float, ...]  # of every frame, seconds from the first
    pts: tuple[int, ...] | None  # of every frame, sorted (None: the container has none usable)
    keyframe_pts: tuple[int, ...]


@lru_cache(maxsize=4096)
def _scan(path: str, stamp: tuple[int, int]) -> _Stream:
    r"""``stamp`` (size, mtime) keys the cache so that a file changed on disk is read again."""
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        _check_frame_size(stream, path)
        pts, keyframes, last_duration = [], [], 0
        for packet in container.demux(stream):
            if packet.size == 0:  # flush packets and empty AVI interleave chunks carry no frame
                continue
            timestamp = packet.pts if packet.pts is not None else packet.dts
            pts.append(timestamp)
            if packet.is_keyframe and timestamp is not None:
                keyframes.append(timestamp)
            last_duration = packet.duration or last_duration

        if not pts:
            raise VideoReadError(path, "has a video stream without frames")

        has_pts = all(timestamp is not None for timestamp in pts) and len(set(pts)) == len(pts)
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        time_base = float(stream.time_base) if stream.time_base else 1.0 / rate
        if has_pts:
            pts.sort()
            frame_span = last_duration * time_base if last_duration else 1.0 / rate
            duration = (pts[-1] - pts[0]) * time_base + frame_span
            timestamps = [(timestamp - pts[0]) * time_base for timestamp in pts]
        else:
            duration = len(pts) / rate
            timestamps = [i / rate for i in range(len(pts))]

        total, announced, declared = len(pts), stream.frames, _declared_duration(container, stream)
        frame_time, declared_text = duration / total, f"{declared:.2f} s"
        if announced > total + HEADER_TOLERANCE or declared - duration > max(3 * frame_time, 0.05 * declared):
            raise VideoReadError(
                path,
                f"cannot be read to its end: the stream stops after {total} frames ({duration:.2f} s) of the "
                f"{announced or declared_text} its header announces (a truncated or damaged file)",
            )
        if announced and announced != total:
            logger.info(f"{path}: the header counts {announced} frames, the stream holds {total}; using {total}.")

        container.seek(0)
        rotation = _first_frame_rotation(container, stream)
    except av.FFmpegError as err:
        raise VideoReadError(path, f"cannot be read by PyAV ({_cause(err)})") from err
    finally:
        container.close()

    height, width = stream.height, stream.width
    if rotation in (90, 270):
        height, width = width, height
    return _Stream(
        frames=total,
        header_frames=announced,
        duration=duration,
        rotation=rotation,
        frame_size=(height, width),
        timestamps=tuple(timestamps),
        pts=tuple(pts) if has_pts else None,
        keyframe_pts=tuple(sorted(keyframes)) if has_pts else (),
    )


def _window_frames(scan: _Stream, window: tuple[float, float] | None) -> tuple[int, int, float]:
    r"""(first frame, frame count, seconds) of ``window``: the frames whose time is in [start, end), at least one."""
    if window is None:
        return 0, scan.frames, scan.duration

    start, end = window
    first = min(bisect.bisect_left(scan.timestamps, start), scan.frames - 1)
    stop = max(bisect.bisect_left(scan.timestamps, end), first + 1)
    return first, stop - first, max(min(end, scan.duration) - start, 0.0)


@lru_cache(maxsize=65536)
def _plan(
    path: str,
    stamp: tuple[int, int],
    video_fps: float,
    video_maxlen: int,
    window: tuple[float, float] | None,
    draw: int | None = None,
) -> VideoPlan:
    scan = _scan(path, stamp)
    first, count, seconds = _window_frames(scan, window)
    indices = sample_indices(count, seconds, video_fps, video_maxlen)
    if draw is not None:
        indices = segment_indices(count, len(indices), draw)
    indices = [first + i for i in indices]
    return VideoPlan(
        path=path,
        frames_in_file=scan.frames,
        header_frames=scan.header_frames,
        duration=scan.duration,
        average_fps=scan.frames / scan.duration,
        rotation=scan.rotation,
        frame_size=scan.frame_size,
        sample_indices=tuple(indices),
        timestamps=tuple(scan.timestamps[i] for i in indices),
        sample_pts=tuple(scan.pts[i] for i in indices) if scan.pts else (None,) * len(indices),
        keyframe_pts=scan.keyframe_pts,
        window=window,
        draw=draw,
    )


def plan_video(path: str | os.PathLike, video_fps: float, video_maxlen: int) -> VideoPlan:
    r"""The frames of ``path`` the model sees at these settings; raises :class:`VideoReadError` naming the file.

    A :class:`VideoWindow` is sampled inside its window only, with the same rule (and frame budget) as a whole file;
    a :class:`VideoDraw` at random offsets within that many segments (as many frames as the uniform plan).
    """
    window = (path.start, path.end) if isinstance(path, VideoWindow) else None
    draw = path.seed if isinstance(path, VideoDraw) else None
    path = str(os.fspath(path))  # a plain path: the plan never carries the window's str subclass
    try:
        status = os.stat(path)
    except OSError as err:
        raise VideoReadError(
            path, f"cannot be read ({err.strerror})", kind="video missing", fix="fix the path"
        ) from err

    return _plan(path, (status.st_size, status.st_mtime_ns), float(video_fps), int(video_maxlen), window, draw)


def _upright(frame: "av.VideoFrame", rotation: int, max_pixels: int | None) -> "Image":
    r"""The frame as an upright RGB image, converted (and shrunk to ``max_pixels``) by libswscale in one step.

    The size follows LLaMA-Factory's ``_preprocess_image`` rule, so the plugin finds nothing left to resize; its
    PIL resize of a full-size frame costs several times the conversion.
    """
    height, width = frame.height, frame.width  # the area, and so the scale, is the same upright
    if max_pixels and height * width > max_pixels:
        factor = math.sqrt(max_pixels / (height * width))
        height, width = int(height * factor), int(width * factor)
    image = frame.to_image(width=width, height=height, interpolation="BICUBIC")
    return image.rotate(rotation, expand=True) if rotation else image


def _decoded(container, stream, wanted: set[int | None], skip: bool) -> "Iterator[av.VideoFrame]":
    r"""Decode the stream; with ``skip``, leave out the non-reference frames that are not samples.

    No frame refers to a non-reference frame (most B-frames of H.264 and MPEG-2), so the frames that are decoded are
    bit for bit those of a full decode. The decoder reads ``skip_frame`` for each packet (frame threads included).
    """
    context = stream.codec_context
    for packet in container.demux(stream):
        if skip:
            context.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
        yield from packet.decode()


def _decode_by_pts(container, stream, plan: VideoPlan, fast: bool, convert: Callable) -> dict[int, Any]:
    r"""Decode up to the last sample, each converted as it is decoded.

    With ``fast``, jump to a sample's keyframe when that skips frames, and leave out the non-reference frames.
    """
    wanted, found, position = set(plan.sample_pts), {}, None
    keyframes, frames = plan.keyframe_pts, _decoded(container, stream, wanted, fast)
    for target in plan.sample_pts:
        if target in found:
            continue
        slot = bisect.bisect_right(keyframes, target) - 1
        if fast and slot >= 0 and keyframes[slot] > (keyframes[0] if position is None else position):
            container.seek(keyframes[slot], stream=stream)
            frames = _decoded(container, stream, wanted, fast)
        for frame in frames:
            position = frame.pts if frame.pts is not None else position
            if frame.pts in wanted and frame.pts not in found:  # not an open GOP's broken leading frame
                found[frame.pts] = convert(frame)
            if frame.pts is not None and frame.pts >= target:
                break
        else:  # end of the stream
            break
    return found


def _missing(plan: VideoPlan, frames: list) -> list[int]:
    return [index for index, frame in zip(plan.sample_indices, frames) if frame is None]


def _decode_by_index(container, stream, plan: VideoPlan, convert: Callable) -> list[Any]:
    r"""Count frames in decoding order (for streams without timestamps), up to the last sample."""
    wanted, last, by_index = set(plan.sample_indices), plan.sample_indices[-1], {}
    for index, frame in enumerate(container.decode(stream)):
        if index in wanted:
            by_index[index] = convert(frame)
        if index >= last:
            break
    return [by_index.get(index) for index in plan.sample_indices]


def _decode_samples(plan: VideoPlan, convert: Callable) -> list[Any]:
    r"""The sampled frames through ``convert``, None where the decoder gives none.

    When seeking or skipping loses a sample (a demuxer that seeks coarsely, packed B-frames whose packet carries
    another frame's timestamp), it decodes every frame from the start instead; frames without timestamps are
    counted.
    """
    for mode in ["fast", "pts", "index"] if plan.sample_pts[0] is not None else ["index"]:
        with _open(plan.path) as container:
            stream = _video_stream(container, plan.path)
            stream.thread_type = "AUTO"
            if mode == "index":
                frames = _decode_by_index(container, stream, plan, convert)
            else:
                found = _decode_by_pts(container, stream, plan, mode == "fast", convert)
                frames = [found.get(pts) for pts in plan.sample_pts]
        if not _missing(plan, frames):
            break
    return frames


def decode_frames(plan: VideoPlan, convert: Callable = lambda frame: frame) -> list[Any]:
    r"""The sampled frames of ``plan``; raises :class:`VideoReadError` naming the file.

    ``convert`` is applied to each as it is decoded, so that no full-size frame is kept.
    """
    try:
        frames = _decode_samples(plan, convert)
    except av.FFmpegError as err:
        raise VideoReadError(plan.path, f"cannot be read by PyAV ({_cause(err)})") from err

    missing = _missing(plan, frames)
    if missing and (frames[0] is None or missing[0] < plan.frames_in_file - HEADER_TOLERANCE):
        raise VideoReadError(
            plan.path,
            f"cannot be decoded: frame(s) {missing[:5]} of its {plan.frames_in_file} fail (a truncated or damaged "
            "file)",
        )
    if missing:  # the decoder drops the last frame or two of some AVI files: show the last one that decodes
        logger.info(f"{plan.path}: the last frame(s) {missing} do not decode; repeating the frame before.")
        frames = [frame or next(f for f in frames[i::-1] if f is not None) for i, frame in enumerate(frames)]

    return frames


def read_frames(plan: VideoPlan, max_pixels: int | None = None) -> list["Image"]:
    r"""The sampled frames of ``plan`` as upright RGB images, identical to those of a full sequential decode.

    With ``max_pixels``, larger frames are shrunk to it (keeping their aspect ratio) as they are converted.
    """
    return decode_frames(plan, lambda frame: _upright(frame, plan.rotation, max_pixels))


def _union(plans: list[VideoPlan]) -> VideoPlan:
    r"""One plan holding the samples of ``plans`` (of one file), in order, each once."""
    samples = {}
    for plan in plans:
        samples.update(zip(plan.sample_indices, zip(plan.timestamps, plan.sample_pts)))
    order = sorted(samples)
    return replace(
        plans[0],
        sample_indices=tuple(order),
        timestamps=tuple(samples[i][0] for i in order),
        sample_pts=tuple(samples[i][1] for i in order),
        window=None,
        draw=None,
    )


def read_plans(plans: list[VideoPlan], max_pixels: int | None = None) -> list[list["Image"]]:
    r"""The frames of each plan, as :func:`read_frames` gives them; the plans of one file are decoded in one pass.

    The clips or timeline windows of one video in a batch so cost one decode of the frames they need, each frame
    decoded once, instead of one decode per clip from the keyframe before it.
    """
    by_path: dict[str, list[int]] = {}
    for i, plan in enumerate(plans):
        by_path.setdefault(plan.path, []).append(i)

    frames: list[list[Image] | None] = [None] * len(plans)
    for members in by_path.values():
        if len(members) == 1:
            frames[members[0]] = read_frames(plans[members[0]], max_pixels)
            continue
        union = _union([plans[i] for i in members])
        decoded = dict(zip(union.sample_indices, read_frames(union, max_pixels)))
        for i in members:
            frames[i] = [decoded[index] for index in plans[i].sample_indices]
    return frames
