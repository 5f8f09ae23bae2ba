"""Reading and writing video files (PyAV) for ``demo.py`` and the A2D-Sentences reader.

* :func:`decode_video` — the first frames of a video, decoded but not converted (A2D clips);
* :func:`read_video` — every frame of a video file (mp4, avi, webm, … whatever FFmpeg decodes) as
  RGB images, and its frame rate; errors name the file.
* :func:`write_mp4` — RGB images as an H.264 MP4 (sizes padded to even, as yuv420p requires).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np
from PIL import Image

DEFAULT_FPS = 10
"""Frame rate of a folder of frames, and of videos that do not state theirs (the GIFs' 100 ms per frame)."""
MP4_CODEC = "libx264"
MP4_PIXEL_FORMAT = "yuv420p"
"""The format every player reads; its chroma is subsampled 2x2, so the frame sides must be even."""


def decode_video(path: str | Path, max_frames: int | None = None) -> tuple[list[av.VideoFrame], float]:
    """The first ``max_frames`` frames of the video file ``path`` (all if ``None``), decoded but not yet
    converted to RGB (``frame.to_image()``; converting only the frames needed saves most of the time),
    and its frame rate. Decoding stops as soon as enough frames are there.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be decoded as a video, or has no frames (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    frames: list[av.VideoFrame] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else DEFAULT_FPS
            for frame in container.decode(stream):
                frames.append(frame)
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except av.FFmpegError as error:
        raise ValueError(f"cannot read video {path}: {error}") from error
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return frames, fps


def read_video(path: str | Path) -> tuple[list[Image.Image], float]:
    """All frames of the video file ``path`` as RGB images, and its frame rate (errors as :func:`decode_video`)."""
    frames, fps = decode_video(path)
    return [frame.to_image() for frame in frames], fps


def write_mp4(frames: Iterable[Image.Image], path: str | Path, fps: float = DEFAULT_FPS) -> Path:
    """Encode RGB images of one size as an H.264 MP4 at ``fps``; odd sides are padded by one black pixel."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = None
        for image in frames:
            array = np.asarray(image.convert("RGB"))
            height, width = array.shape[:2]
            array = np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)))  # [H', W', 3], even sides
            if stream is None:
                stream = container.add_stream(MP4_CODEC, rate=Fraction(fps).limit_denominator(1001))
                stream.height, stream.width = array.shape[:2]
                stream.pix_fmt = MP4_PIXEL_FORMAT
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        if stream is None:
            raise ValueError(f"no frames to write to {path}")
        container.mux(stream.encode())  # flush the encoder
    return path
