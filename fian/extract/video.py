"""Decode a video with PyAV into RGB uint8 frames, resized and center-cropped for a backbone.

Frames come out at the source frame rate, or at a fixed rate resampled by presentation
timestamps: output frame ``k`` sits at ``t_k = k / fps`` seconds (from the first frame) and shows
the last source frame whose timestamp is ``<= t_k`` (what a player shows at that instant).
Resizing happens while decoding (libswscale, bilinear) so a long video never exists at full
resolution in memory; normalisation (mean, scale, channel order) belongs to the backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

# the containers the extract stage looks for in a video folder
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")

# a file that decodes to fewer than this fraction of the frames its container declares is truncated
_MIN_DECLARED_FRACTION = 0.98


class VideoDecodeError(RuntimeError):
    """A video that cannot be (fully) decoded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class VideoTooLong(VideoDecodeError):
    """A video over a limit of :func:`decode_video` (``what``: "seconds" or "frames"), found from the
    container's header before decoding, or as soon as decoding passes it."""

    def __init__(self, path: str | Path, what: str, value: float, limit: float, where: str) -> None:
        super().__init__(path, f"{value:g} {what} ({where}), over the limit of {limit:g} {what}")
        self.what, self.value, self.limit, self.where = what, value, limit, where


@dataclass(frozen=True)
class FrameSpec:
    """Resize, then center-crop to ``crop x crop``.

    Exactly one of ``size`` (fixed ``(height, width)``, C3D's 128x171) and ``short_side`` (keep
    the aspect ratio, I3D's 256) is set.
    """

    crop: int
    size: tuple[int, int] | None = None
    short_side: int | None = None

    def __post_init__(self) -> None:
        if (self.size is None) == (self.short_side is None):
            raise ValueError("FrameSpec: set exactly one of size and short_side")
        h, w = self.size or (self.short_side, self.short_side)
        if self.crop < 1 or self.crop > min(h, w):  # type: ignore[operator]
            raise ValueError(f"FrameSpec: crop {self.crop} does not fit the resized frame {h}x{w}")

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize, for a source of ``height x width``."""
        if self.size is not None:
            return self.size
        s = self.short_side
        assert s is not None
        if height <= width:
            return s, max(s, round(width * s / height))
        return max(s, round(height * s / width)), s


@dataclass(frozen=True)
class DecodedVideo:
    """frames: [N, crop, crop, 3] uint8 RGB; times: [N] seconds of each frame from the first one."""

    frames: np.ndarray
    times: np.ndarray
    fps: float  # rate of ``frames``: the requested fps, or the source fps
    source_fps: float
    duration: float  # seconds covered by the source frames (last timestamp + one frame)

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _source_fps(stream, path: Path) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise VideoDecodeError(path, "the video stream declares no frame rate")
    return float(rate)


def _declared_seconds(container, stream, time_base: Fraction) -> float | None:
    """Duration the file's header declares for the video (None when unknown).  The container's
    duration stands in only when the video is the file's one stream (audio may run longer)."""
    if stream.duration:
        return float(stream.duration * time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000  # av.time_base: microseconds
    return None


def decode_video(
    path: str | Path,
    spec: FrameSpec,
    fps: float | None = None,
    *,
    max_seconds: float | None = None,
    max_frames: int | None = None,
) -> DecodedVideo:
    """Decode every frame of ``path`` (first video stream), resample to ``fps`` (None = source).

    Raises :class:`VideoDecodeError` for a missing, unreadable, empty or truncated file, and
    :class:`VideoTooLong` for a video longer than ``max_seconds`` or giving more than ``max_frames``
    frames (at ``fps``): from the header before decoding anything when it says so, else as soon as
    decoding passes the limit (a header may lie or say nothing), so memory and time stay bounded.
    """
    import av  # heavy: imported where used

    path = Path(path)
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0 or None, got {fps}")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoDecodeError(path, f"cannot open: {e}") from None
    with container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        src_fps = _source_fps(stream, path)
        declared = int(stream.frames or 0)
        time_base = stream.time_base or Fraction(1, 1)
        declared_seconds = _declared_seconds(container, stream, time_base)
        header = [s for s in (declared_seconds, declared / src_fps if declared else None) if s]
        if max_seconds is not None and header and max(header) > max_seconds:
            raise VideoTooLong(path, "seconds", round(max(header), 3), max_seconds, "the container's header")
        if max_frames is not None and header:
            want = expected_resampled_count(max(header), fps) if fps is not None else declared or 0
            if want > max_frames:
                raise VideoTooLong(path, "frames", want, max_frames, f"{max(header):g} s in the container's header")

        def over(t: float, n_out: int) -> None:
            """Decoding reached ``t`` seconds with ``n_out`` output frames: stop at a limit."""
            if max_seconds is not None and t > max_seconds:
                raise VideoTooLong(path, "seconds", round(t, 3), max_seconds, "met while decoding")
            if max_frames is not None and n_out > max_frames:
                raise VideoTooLong(path, "frames", n_out, max_frames, "met while decoding")

        out: list[np.ndarray] = []
        times: list[float] = []
        last: list = [None, None]  # [frame, its converted array]: a frame repeats when upsampling

        def convert(frame) -> np.ndarray:
            """[crop, crop, 3] uint8: resize while converting to RGB, then center-crop."""
            if last[0] is not frame:
                h, w = spec.resized(frame.height, frame.width)
                rgb = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="BILINEAR")
                top, left = (h - spec.crop) // 2, (w - spec.crop) // 2
                last[:] = [frame, np.ascontiguousarray(rgb[top : top + spec.crop, left : left + spec.crop])]
            return last[1]

        t0: float | None = None
        prev = None  # (frame, time) of the last decoded source frame
        n_src = 0
        k = 0  # next output index (fixed-fps mode)
        try:
            for frame in container.decode(stream):
                if frame.pts is not None:
                    t_abs = float(frame.pts * time_base)
                else:  # no timestamp: count frames at the source rate
                    t_abs = n_src / src_fps + (t0 or 0.0)
                if t0 is None:
                    t0 = t_abs
                t = t_abs - t0
                if prev is not None:
                    t = max(t, prev[1])  # never step back in time
                n_src += 1
                over(t, len(out) + 1 if fps is None else expected_resampled_count(t, fps) if t > 0 else 0)
                if fps is None:
                    out.append(convert(frame))
                    times.append(t)
                else:
                    # the previous frame is on screen at every target instant before this frame
                    while prev is not None and k / fps < t - 1e-6:
                        out.append(convert(prev[0]))
                        times.append(k / fps)
                        k += 1
                prev = (frame, t)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoDecodeError(path, f"decoding failed after {n_src} frames: {e}") from None

        if prev is None:
            raise VideoDecodeError(path, "no decodable video frames")
        if declared > 0 and n_src < _MIN_DECLARED_FRACTION * declared - 1:
            raise VideoDecodeError(
                path, f"truncated: decoded {n_src} of the {declared} frames the container declares"
            )
        duration = prev[1] + 1.0 / src_fps
        if (
            declared == 0
            and declared_seconds
            and duration < _MIN_DECLARED_FRACTION * declared_seconds - 1.0 / src_fps
        ):
            raise VideoDecodeError(
                path,
                f"truncated: decoded {duration:.3f} s of the {declared_seconds:.3f} s the container declares",
            )
        over(duration, expected_resampled_count(duration, fps) if fps is not None else len(out))
        if fps is not None:
            # the last source frame stays on screen until the end of the video
            while k / fps < duration - 1e-6:
                out.append(convert(prev[0]))
                times.append(k / fps)
                k += 1

    frames = np.stack(out)  # [N, crop, crop, 3] uint8
    return DecodedVideo(
        frames=frames,
        times=np.asarray(times, dtype=np.float64),
        fps=float(fps) if fps is not None else src_fps,
        source_fps=src_fps,
        duration=duration,
    )


def expected_resampled_count(duration: float, fps: float) -> int:
    """Frames that :func:`decode_video` yields at ``fps`` for a video of ``duration`` seconds."""
    return max(1, math.ceil(duration * fps - 1e-6))


def render_moving_square(
    path: str | Path,
    codec: str = "libx264",
    n_frames: int = 20,
    fps: int = 10,
    width: int = 96,
    height: int = 64,
    step: int = 4,
    side: int = 16,
) -> Path:
    """Write a video of a white ``side``-pixel square moving ``step`` pixels right per frame on black.

    For tests and benchmarks: frame ``i`` has the square at columns ``[step*i, step*i + side)`` and
    rows ``[(height - side) // 2, ... + side)``, so any decoded frame tells which source frame it is.
    The container comes from the suffix of ``path`` (mp4, mkv, avi, webm ...).
    """
    import av

    path = Path(path)
    top = (height - side) // 2
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(n_frames):
            img = np.zeros((height, width, 3), np.uint8)  # [H, W, 3] RGB
            img[top : top + side, step * i : step * i + side] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)
    return path


def render_long_still(path: str | Path, seconds: int = 3600, side: int = 64) -> Path:
    """Write two black frames, at 0 s and at ``seconds`` (H.264, 1 frame/s time base): a file of
    about 1.6 kB that decodes to ``seconds`` of video.  For tests and benchmarks of the limits."""
    from fractions import Fraction

    import av

    path = Path(path)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=1)
        s.width, s.height, s.pix_fmt = side, side, "yuv420p"
        for pts in (0, seconds):
            frame = av.VideoFrame.from_ndarray(np.zeros((side, side, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path
