"""Video files of the kinds users bring, written with PyAV, for the reader's tests and benchmark.

XviD/MJPEG avi with MP3, H.264 mp4/mkv with B-frames, VP9 webm, MPEG-2 ts, variable frame rate, phone rotation,
truncated.

PyAV cannot write a display matrix or a wrong header, so :func:`rotate_mp4` patches the ``tkhd`` box the way phones
write it and :func:`announce_extra_avi_frames` raises the AVI header's frame count the way some muxers do.
"""

import fractions
import os
import struct
from collections.abc import Callable

import numpy as np


Frames = Callable[[int, int, int], np.ndarray]  # (index, height, width) -> uint8 (height, width, 3)

# kind -> (container format, codec, extra stream settings)
KINDS: dict[str, tuple[str, str, dict]] = {
    "xvid_mp3.avi": ("avi", "mpeg4", {"codec_tag": "XVID", "audio": True}),
    "mjpeg.avi": ("avi", "mjpeg", {"pix_fmt": "yuvj420p"}),
    "h264_bframes.mp4": ("mp4", "libx264", {"options": {"bframes": "2"}}),
    "h264_bframes.mkv": ("matroska", "libx264", {"options": {"bframes": "2"}}),
    "vp9.webm": ("webm", "libvpx-vp9", {}),
    "mpeg2.ts": ("mpegts", "mpeg2video", {}),
    "h264_vfr.mp4": ("mp4", "libx264", {"vfr": True}),
}


def moving_bar(index: int, height: int, width: int) -> np.ndarray:
    r"""A frame that differs from its neighbours: a bar moving right, the red channel counting frames."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[..., 0] = (index * 7) % 256
    frame[:, (index * 3) % width] = 255
    return frame


def write_video(
    path: str,
    codec: str,
    container_format: str | None = None,
    num_frames: int = 50,
    size: tuple[int, int] = (64, 96),
    fps: int = 25,
    content: Frames = moving_bar,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    codec_tag: str | None = None,
    audio: bool = False,
    vfr: bool = False,
) -> None:
    r"""Write ``num_frames`` frames of ``content`` (height, width = ``size``); ``vfr`` spaces them 20-120 ms apart."""
    import av

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    height, width = size
    with av.open(path, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {"threads": "1", **(options or {})}
        if codec_tag:
            stream.codec_tag = codec_tag
        if vfr:
            stream.codec_context.time_base = stream.time_base = fractions.Fraction(1, 1000)
            gaps = np.random.default_rng(0).integers(20, 120, num_frames)
            times = np.concatenate([[0], np.cumsum(gaps[:-1])])
        if audio:
            sound = container.add_stream("libmp3lame", rate=44100)
            sound.layout = "mono"

        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(content(index, height, width), format="rgb24")
            if vfr:
                frame.pts, frame.time_base = int(times[index]), fractions.Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())

        if audio:
            dtype = {"s16p": np.int16, "s32p": np.int32, "fltp": np.float32}[sound.format.name]
            samples = np.zeros((1, 44100 * num_frames // fps), dtype=dtype)
            chunk = av.AudioFrame.from_ndarray(samples, format=sound.format.name, layout="mono")
            chunk.sample_rate = 44100
            container.mux(sound.encode(chunk))
            container.mux(sound.encode())


def write_kind(directory: str, kind: str, **kwargs) -> str:
    r"""Write the file ``kind`` (a key of :data:`KINDS`) into ``directory``; ``kwargs`` go to :func:`write_video`."""
    container_format, codec, settings = KINDS[kind]
    path = os.path.join(directory, kind)
    write_video(path, codec, container_format, **{**settings, **kwargs})
    return path


def _find_box(data: bytes, name: bytes, start: int = 0) -> int:
    position = data.find(name, start)
    if position < 4:
        raise ValueError(f"No {name!r} box found.")
    return position - 4  # the box starts with its 4-byte size


# tkhd matrices (a, b, c, d in 16.16 fixed point) for the clockwise rotation a player applies
_MATRICES = {90: (0, 1, -1, 0), 180: (-1, 0, 0, -1), 270: (0, -1, 1, 0)}


def rotate_mp4(path: str, clockwise: int) -> None:
    r"""Write the display matrix of a phone that held the camera turned (``clockwise``: 90, 180 or 270)."""
    with open(path, "rb") as f:
        data = bytearray(f.read())

    tkhd = _find_box(data, b"tkhd")
    version = data[tkhd + 8]
    matrix = tkhd + 12 + (32 if version == 1 else 20) + 16  # after the times, id, duration, layer, volume
    a, b, c, d = _MATRICES[clockwise]
    struct.pack_into(">9i", data, matrix, a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30)
    with open(path, "wb") as f:
        f.write(data)


def announce_extra_avi_frames(path: str, extra: int = 1) -> None:
    r"""Raise the video frame count of an AVI header (``avih`` and the video ``strh``) by ``extra``."""
    with open(path, "rb") as f:
        data = bytearray(f.read())

    avih = data.find(b"avih") + 8  # a RIFF chunk is its name, its size, then its data
    struct.pack_into("<I", data, avih + 16, struct.unpack_from("<I", data, avih + 16)[0] + extra)
    strh = data.find(b"strh") + 8  # the video stream's header: strh, size, then the type "vids"
    while data[strh : strh + 4] != b"vids":
        strh = data.find(b"strh", strh) + 8
    struct.pack_into("<I", data, strh + 32, struct.unpack_from("<I", data, strh + 32)[0] + extra)
    with open(path, "wb") as f:
        f.write(data)


def truncate(path: str, keep: float = 0.5) -> None:
    r"""Cut the file to its first ``keep`` share of bytes, as an interrupted download does."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])
