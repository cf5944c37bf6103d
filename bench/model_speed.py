"""FIAN speed at the sizes of Section 4.3: parameters, forward, forward+backward, decode.

For each dataset config (params/base.yaml + datasets/<d>.yaml + variants/<variant>.yaml) the
model is built with a random frozen embedding (speed does not depend on the vectors), fed random
features [B, T, D] and full-length queries [B, n_q], at the paper's batch size unless --batch or
--batch-scale say otherwise.  Prints one table row per dataset.

    .venv/bin/python -m bench.model_speed                      # CPU, paper batch sizes
    .venv/bin/python -m bench.model_speed --batch 16 --iters 2 # quicker
    python -m bench.model_speed --device cuda --amp bf16       # on a GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fian.config import load_params
from fian.inference import decode
from fian.losses import build_loss, seconds_to_steps
from fian.model.build import build_model

PARAMS = Path(__file__).resolve().parents[1] / "params"
VOCAB = 10_000


def timed(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> float:
    """Median seconds of ``fn`` over ``iters`` runs after ``warmup`` runs."""
    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_dataset(
    dataset: str, variant: str, args: argparse.Namespace, device: torch.device
) -> dict[str, object]:
    cfg = load_params(PARAMS, dataset, variant)
    B = args.batch or max(1, int(cfg.train.batch_size * args.batch_scale))
    T, D, L = cfg.features.num_steps, cfg.dataset.feature_dim, cfg.text.max_query_len
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB, check_inputs=False).to(device)
    video = torch.randn(B, T, D, device=device)
    video_mask = torch.ones(B, T, dtype=torch.bool, device=device)
    words = torch.randint(2, VOCAB, (B, L), device=device)
    word_mask = torch.ones(B, L, dtype=torch.bool, device=device)
    duration = torch.full((B,), 100.0, device=device)
    gt = torch.stack([torch.rand(B, device=device) * 50, 50 + torch.rand(B, device=device) * 50], 1)
    gt_steps = seconds_to_steps(gt, duration, T)
    # the tgn head weighs its loss by frequencies over a training set: this batch stands in for it
    loss_fn = build_loss(cfg, (gt_steps.cpu(), torch.full((B,), T))).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def forward() -> object:
        model.eval()
        with torch.no_grad(), amp:
            return model(video, video_mask, words, word_mask)

    def forward_backward() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with amp:
            out = model(video, video_mask, words, word_mask)
            loss = loss_fn(out, gt_steps)["loss"]
        loss.backward()

    out = forward()
    top_k = max(cfg.eval.max_predictions, max(cfg.eval.top_n))
    t_fwd = timed(forward, device, args.iters, args.warmup)
    t_fb = timed(forward_backward, device, args.iters, args.warmup)
    t_dec = timed(
        lambda: decode(out, duration, T, cfg.eval.nms_threshold, top_k), device, args.iters, args.warmup
    )
    return {
        "dataset": dataset,
        "params (M)": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        "B": B,
        "T": T,
        "D": D,
        "n_q": L,
        "N cand": out.logits.shape[1],
        "fwd ms": t_fwd * 1e3,
        "fwd q/s": B / t_fwd,
        "fwd+bwd ms": t_fb * 1e3,
        "train q/s": B / t_fb,
        "decode ms": t_dec * 1e3,
        "decode q/s": B / t_dec,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["activitynet", "tacos", "charades"])
    p.add_argument("--variant", default="fian")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--batch", type=int, default=None, help="batch size (default: train.batch_size of the config)"
    )
    p.add_argument("--batch-scale", type=float, default=1.0, help="multiply the config's batch size")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", choices=["off", "bf16"], default="off")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"FIAN ({args.variant}) on {where}, amp={args.amp}, torch {torch.__version__}, median of {args.iters}"
    )
    rows = [bench_dataset(d, args.variant, args, device) for d in args.datasets]
    cols = list(rows[0])
    cells = [[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
