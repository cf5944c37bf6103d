"""Latency of one query on one video with ``fian.predict.Predictor`` on the CPU: cold and cached.

    python bench/predict_speed.py [--seconds 120] [--video-fps 25] [--dataset tacos] [--threads N]

Renders a video of ``--seconds`` seconds with PyAV (320x240 H.264, a moving bar over noise, into a
temp folder), builds the model of ``params/datasets/<dataset>.yaml`` (FIAN variant) with random
weights and a C3D backbone with random weights (latency does not depend on the weight values), with
the extract recipe of those params, then times

    cold:   encode_video (decode | backbone | downsample) + predict of one query
    cached: the same video again (sha256 of the file, cache hit) + predict of another query
    next process: a second Predictor with an empty in-memory cache, as the next `fian predict`
            has, on the same file: the persistent cache folder (fian.predict_cache) + predict

and prints one table.  Nothing is written outside the temp folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def render(path: Path, seconds: float, fps: int, width: int = 320, height: int = 240) -> Path:
    import av

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 60, size=(8, height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for i in range(int(seconds * fps)):
            img = noise[i % 8].copy()
            x = (i * 4) % width
            img[:, x : x + 24] = (255, 200, 40)
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--video-fps", type=int, default=25)
    ap.add_argument("--dataset", default="tacos", help="params/datasets/<name>.yaml: model size, T, extract recipe")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from fian.config import load_params
    from fian.model.build import build_model
    from fian.predict import Predictor, feature_recipe

    repo = Path(__file__).resolve().parents[1]
    cfg = load_params(repo / "params", args.dataset, "fian")
    if cfg.dataset.feature_dim not in (4096, 1024):
        raise SystemExit(f"{args.dataset}: feature_dim {cfg.dataset.feature_dim} is not a C3D/I3D width (released PCA features)")
    vocab = [f"w{i}" for i in range(1000)] + ["a", "man", "opens", "the", "fridge", "woman", "closes", "door"]
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=len(vocab) + 2)
    recipe = feature_recipe(cfg, {"feature_source": f"extract:{cfg.extract.backbone}:random", "backbone": cfg.extract.backbone, "random_weights": True})
    bundle = {"version": 1, "vocab": ["<pad>", "<unk>", *vocab], "recipe": recipe}

    from fian.predict_cache import VideoCache

    with tempfile.TemporaryDirectory(prefix="fian-predict-bench-") as tmp:
        p = Predictor(model, cfg, bundle, device="cpu", video_cache=VideoCache(Path(tmp) / "cache"))
        t = time.perf_counter()
        video = render(Path(tmp) / "clip.mp4", args.seconds, args.video_fps)
        render_s = time.perf_counter() - t
        p._get_backbone()  # built once per Predictor (random init), not part of a query

        t0 = time.perf_counter()
        v = p.encode_video(video)
        t1 = time.perf_counter()
        p.predict("a man opens the fridge", v, top=5)
        t2 = time.perf_counter()
        v2 = p.encode_video(video)  # cache hit: the file's sha256 only
        t3 = time.perf_counter()
        p.predict("a woman closes the door", v2, top=5)
        t4 = time.perf_counter()
        assert v2 is v
        q = Predictor(model, cfg, bundle, device="cpu", video_cache=VideoCache(Path(tmp) / "cache"))
        t5 = time.perf_counter()
        v3 = q.encode_video(video)  # the next process: its memory is empty, the cache folder is not
        t6 = time.perf_counter()
        q.predict("a woman closes the door", v3, top=5)
        t7 = time.perf_counter()
        assert set(v3.timings) == {"cache_s"} and torch.equal(v3.features, v.features)

    tm = v.timings
    rows = [
        ("decode (PyAV, resize + crop)", tm["decode_s"], 0.0),
        (f"backbone ({recipe['backbone']}, {v.n_features} clips)", tm["backbone_s"], 0.0),
        (f"downsample ({v.n_features} -> {cfg.features.num_steps} steps)", tm["downsample_s"], 0.0),
        ("content hash + cache lookup (+ write)", (t1 - t0) - sum(tm.values()), t3 - t2),
        ("  of which the cache folder (read .npz)", 0.0, 0.0),
        ("model + NMS (one query)", t2 - t1, t4 - t3),
        ("total", t2 - t0, t4 - t2),
    ]
    nxt = [0.0, 0.0, 0.0, t6 - t5, v3.timings["cache_s"], t7 - t6, t7 - t5]
    print(f"fian predict latency: {args.seconds:.0f} s video, {args.video_fps} fps 320x240, dataset {args.dataset} "
          f"(T={cfg.features.num_steps}, hidden {cfg.model.hidden}), recipe fps={recipe['fps']} clip "
          f"{recipe['clip_len']} stride {recipe['stride_frames']}; torch threads {torch.get_num_threads()}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load {os.getloadavg()}; "
          f"(rendering the video took {render_s:.1f} s)")
    print(f"| {'step':<40} | {'cold (s)':>9} | {'cached (s)':>10} | {'next process (s)':>16} |")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 12}|{'-' * 18}|")
    for (name, cold, cached), later in zip(rows, nxt, strict=True):
        print(f"| {name:<40} | {cold:9.3f} | {cached:10.3f} | {later:16.3f} |")


if __name__ == "__main__":
    main()
