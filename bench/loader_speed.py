"""Loader speed: GroundingSplit.batches() alone, in samples/s, at the real sizes of the three datasets.

    .venv/bin/python bench/loader_speed.py [--device cpu|cuda] [--max-batches 200] [--only tacos]

Random arrays of the sizes of Section 4.1/4.3 (queries / videos / T / D / batch size):
ActivityNet Captions 37,417 / 10,009 / 200 / 500 / 128, TACoS 9,790 / 75 / 200 / 4096 / 64,
Charades-STA 12,408 / 5,338 / 64 / 1024 / 64.  The split is built in memory (on --device), then
one shuffled epoch (capped at --max-batches) is timed after a warm-up.  Prints a table, with the
rate at which batch video tensors are produced (GB/s): on a CPU the gather is bound by memory
bandwidth and page faults of the fresh [B, T, D] tensors, on a GPU by HBM bandwidth.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from fian.data.dataset import GroundingSplit

SIZES = {  # name: (queries, videos, T, D, batch size)
    "activitynet": (37_417, 10_009, 200, 500, 128),
    "tacos": (9_790, 75, 200, 4096, 64),
    "charades": (12_408, 5_338, 64, 1024, 64),
}
N_Q = 30  # text.max_query_len


def random_split(queries: int, videos: int, T: int, D: int, device: torch.device) -> GroundingSplit:
    g = torch.Generator().manual_seed(0)
    word_len = torch.randint(5, N_Q + 1, (queries,), generator=g)
    words = torch.randint(2, 10_000, (queries, N_Q), generator=g) * (
        torch.arange(N_Q)[None] < word_len[:, None]
    )
    start = torch.rand(queries, generator=g) * 50
    split = GroundingSplit.from_arrays(
        torch.rand(videos, T, D, generator=g),
        torch.randint(0, videos, (queries,), generator=g),
        words, word_len, torch.stack([start, start + 10], 1), torch.full((queries,), 100.0),
    )  # fmt: skip
    return split.to(device)


def time_epoch(
    split: GroundingSplit, batch_size: int, max_batches: int, device: torch.device
) -> tuple[int, float]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    it = split.batches(batch_size, shuffle=True, seed=1)
    for _ in range(5):  # warm-up
        next(it)
    sync()
    n, t0 = 0, time.perf_counter()
    sink = 0.0
    for i, b in enumerate(split.batches(batch_size, shuffle=True, seed=2)):
        if i >= max_batches:
            break
        n += len(b)
        sink += float(b.video[0, 0, 0]) if device.type == "cpu" else 0.0  # the batch is really materialized
    sync()
    return n, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batches", type=int, default=200)
    p.add_argument("--only", nargs="*", default=list(SIZES))
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    for name in args.only:
        Q, V, T, D, B = SIZES[name]
        t0 = time.perf_counter()
        split = random_split(Q, V, T, D, device)
        build = time.perf_counter() - t0
        mb = B * T * D * 4 / 2**20
        n, dt = time_epoch(split, B, args.max_batches, device)
        rows.append(
            (name, Q, V, T, D, B, n // B, n / dt, 1000 * dt / (n / B), mb, n * T * D * 4 / dt / 1e9, build)
        )
        del split
    head = ("dataset", "queries", "videos", "T", "D", "batch", "batches", "samples/s", "ms/batch", "MB/batch",
            "video GB/s", "build s")  # fmt: skip
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
          + f"; torch threads {torch.get_num_threads()}; load average {load} on {os.cpu_count()} cores")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r[0]} | {r[1]:,} | {r[2]:,} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {r[7]:,.0f} | {r[8]:.2f} "
              f"| {r[9]:.1f} | {r[10]:.2f} | {r[11]:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
