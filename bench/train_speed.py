"""Training and evaluation speed of the real loop at the sizes of Section 4.1/4.3 (issue 6).

For each dataset config (params/base.yaml + datasets/<d>.yaml + variants/fian.yaml) a random
split of the real size is built (features [n_videos, T, D], queries of random length, random
moments), preloaded on the device, and the real training loop (``fian.train._train_epoch``:
gather on device, autocast, fused Adam, deferred host sync) runs ``--iters`` steps after
``--warmup`` steps.  Prints per dataset: samples/s, step time, peak memory, achieved TFLOP/s (the
FLOPs of one forward+backward counted by ``torch.utils.flop_counter.FlopCounterMode``), the
projected epoch time (training pairs / samples per second), evaluation queries/s
(``fian.evaluate.evaluate``: model, decode, NMS, metrics and the predictions table) and the
latency of one query (model + decode).

Sizes: ActivityNet Captions 37,417 training pairs / 10,009 videos, TACoS 10,146 / 75,
Charades-STA 12,408 / 5,338; T, D, batch size and windows from params.  On the CPU the videos are
capped (``--max-videos``, default 256 there) to keep memory and set-up short; a step does not
depend on how many videos the split holds.

    .venv/bin/python -m bench.train_speed --device cpu --batch-scale 0.125 --iters 1 --repeats 1 --warmup 0 \
        --cpu-eval-queries 32 --latency-iters 2                                 # dev VM (slow CPU)
    python -m bench.train_speed --device cuda                                   # H100: bf16, fused Adam
    python -m bench.train_speed --device cuda --compile                         # torch.compile on

Needs only torch, numpy, pandas, h5py, pyyaml (no mlflow / snakemake / dvc).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fian.config import Config, load_params
from fian.data.dataset import GroundingSplit
from fian.distributed import DistInfo
from fian.evaluate import evaluate
from fian.inference import decode
from fian.losses import build_loss
from fian.model.build import build_model
from fian.train import _fp32, _train_epoch, build_optimizer

PARAMS = Path(__file__).resolve().parents[1] / "params"
VOCAB = 10_000
# (training pairs, training videos, evaluation pairs) of Section 4.1 (eval: the test split)
SIZES = {"activitynet": (37_417, 10_009, 17_031), "tacos": (10_146, 75, 4_083), "charades": (12_408, 5_338, 3_720)}


def random_split(cfg: Config, n_pairs: int, video: torch.Tensor, device: torch.device, seed: int) -> GroundingSplit:
    """Random queries over the features ``video [n_videos, T, D]``, preloaded on ``device``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    L = cfg.text.max_query_len
    n_videos, T, _ = video.shape
    video_index = torch.randint(0, n_videos, (n_pairs,), generator=g)
    word_len = torch.randint(5, L + 1, (n_pairs,), generator=g)
    words = torch.randint(2, VOCAB, (n_pairs, L), generator=g) * (torch.arange(L)[None] < word_len[:, None])
    duration = 30 + 150 * torch.rand(n_pairs, generator=g)
    a, b = torch.rand(n_pairs, generator=g), torch.rand(n_pairs, generator=g)
    gt = torch.stack([torch.minimum(a, b), torch.maximum(a, b)], 1) * duration[:, None]
    records = pd.DataFrame(
        {
            "video_id": [f"v{i}" for i in video_index.tolist()],
            "sentence": [""] * n_pairs,
            "start": gt[:, 0].double().numpy(),
            "end": gt[:, 1].double().numpy(),
            "duration": duration.double().numpy(),
            "source": "random",
        }
    )
    split = GroundingSplit.from_arrays(video, video_index, words, word_len, gt, duration, records=records, num_steps=T)
    return split.to(device)  # preloaded on the device, as in training


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def step_flops(
    model: torch.nn.Module, loss_fn: torch.nn.Module, split: GroundingSplit, cfg: Config, amp: str, batch_size: int
) -> float:
    """FLOPs of one forward + loss + backward on one training batch (GRUs included)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fian.evaluate import autocast_ctx

    device = split.device
    batch = next(split.batches(batch_size))
    counter = FlopCounterMode(display=False)
    # cuDNN's fused GRU is one op that FlopCounterMode does not count: count with the native GRU
    with counter, torch.backends.cudnn.flags(enabled=False):
        with autocast_ctx(device, amp):
            out = model(batch.video, batch.video_mask, batch.words, batch.word_mask)
        terms = loss_fn(_fp32(out), batch.gt / batch.duration[:, None] * cfg.features.num_steps)
        terms["loss"].backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_dataset(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    cfg = load_params(PARAMS, name, "fian")
    train_cfg = dataclasses.replace(cfg.train, amp=args.amp, compile=args.compile, sync_every=50)
    n_pairs, n_videos, n_eval = SIZES[name]
    cap = args.max_videos if args.max_videos is not None else (256 if device.type == "cpu" else None)
    vids = min(n_videos, cap) if cap else n_videos
    B = max(1, round(cfg.train.batch_size * args.batch_scale))
    train_cfg = dataclasses.replace(train_cfg, batch_size=B)
    n_steps = args.warmup + args.iters
    g = torch.Generator().manual_seed(0)
    video = torch.randn(vids, cfg.features.num_steps, cfg.dataset.feature_dim, generator=g)  # [n_videos, T, D]
    train = random_split(cfg, B * n_steps, video, device, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB, check_inputs=False).to(device)
    loss_fn = build_loss(cfg)
    loss_fn.check_finite = False  # fit checks finiteness every sync_every steps instead
    optimizer = build_optimizer(model, train_cfg, device)
    step_model = torch.compile(model) if args.compile else model
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)

    flops = step_flops(model, loss_fn, train, cfg, args.amp, B)

    def run_steps(split: GroundingSplit, n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        part = split.subset(torch.arange(n * B))
        _train_epoch(step_model, loss_fn, optimizer, part, model=model, train_cfg=train_cfg,
                     num_steps=cfg.features.num_steps, epoch=0, device=device, info=DistInfo(), progress=False)  # fmt: skip
        sync(device)
        return time.perf_counter() - t0

    t_compile = run_steps(train, args.warmup) if args.warmup else 0.0
    times = [run_steps(train, args.iters) / args.iters for _ in range(args.repeats)]
    step_s = statistics.median(times)
    train_mem = peak_memory(device)

    # evaluation: the real evaluate() over a split of the test size (capped on the CPU)
    eval_q = n_eval if device.type == "cuda" else min(n_eval, args.cpu_eval_queries)
    test = random_split(cfg, eval_q, video, device, seed=1)
    evaluate(model, test.subset(torch.arange(min(eval_q, cfg.eval.batch_size))), eval_cfg=cfg.eval,
             num_steps=cfg.features.num_steps, device=device, amp=args.amp)  # fmt: skip  (warm-up)
    sync(device)
    t0 = time.perf_counter()
    evaluate(model, test, eval_cfg=cfg.eval, num_steps=cfg.features.num_steps, device=device, amp=args.amp)
    sync(device)
    eval_qps = eval_q / (time.perf_counter() - t0)

    # single-query latency: model + decode for one query
    one = next(test.batches(1))
    top_k = max(cfg.eval.max_predictions, max(cfg.eval.top_n))
    model.eval()
    lat = []
    from fian.evaluate import autocast_ctx

    with torch.no_grad():
        for i in range(args.latency_iters + 2):
            sync(device)
            t0 = time.perf_counter()
            with autocast_ctx(device, args.amp):
                out = model(one.video, one.video_mask, one.words, one.word_mask)
            segs, _ = decode(_fp32(out), one.duration, cfg.features.num_steps, cfg.eval.nms_threshold, top_k)
            segs.cpu()
            sync(device)
            if i >= 2:
                lat.append(time.perf_counter() - t0)
    return {
        "dataset": name,
        "batch": B,
        "T x D": f"{cfg.features.num_steps} x {cfg.dataset.feature_dim}",
        "videos": vids,
        "step ms": 1000 * step_s,
        "samples/s": B / step_s,
        "GFLOP/step": flops / 1e9,
        "TFLOP/s": flops / step_s / 1e12,
        "epoch s (proj.)": n_pairs / (B / step_s),
        "peak mem": train_mem,
        "warm-up s": t_compile,
        "eval q/s": eval_qps,
        "eval queries": eval_q,
        "1-query ms": 1000 * statistics.median(lat),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--datasets", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--iters", type=int, default=20, help="timed training steps per repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotune, compile)")
    p.add_argument("--amp", choices=["bf16", "off"], default="bf16", help="bf16 autocast (CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--max-videos", type=int, default=None, help="cap on videos per split (default 256 on CPU)")
    p.add_argument("--batch-scale", type=float, default=1.0, help="batch = paper batch x this (CPU: 0.125 to fit the time)")
    p.add_argument("--cpu-eval-queries", type=int, default=512, help="evaluation queries timed on the CPU")
    p.add_argument("--latency-iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86'}, {torch.get_num_threads()} threads)"
    amp = args.amp if device.type == "cuda" else "off (fp32 on CPU)"
    print(f"# train_speed: {name}; torch {torch.__version__}; amp {amp}; compile {args.compile}; "
          f"{args.iters} steps x {args.repeats} repeats after {args.warmup} warm-up")  # fmt: skip
    for i, d in enumerate(args.datasets):  # each row as soon as it is measured (a timeout keeps the rest)
        r = bench_dataset(d, args, device)
        if i == 0:
            print("| " + " | ".join(r) + " |")
            print("|" + "---|" * len(r))
        print("| " + " | ".join(_fmt(v) for v in r.values()) + " |", flush=True)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
