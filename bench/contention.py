"""Threads under contention (issue 21 item 5): a training step at 1 and 2 threads with 0, 2 and 4 busy processes.

    python -m bench.contention [--busy 0 2 4] [--threads 1 2] [--steps 4]

Starts ``--busy`` background processes that spin on the CPU (``while True: pass``; started and
stopped by this bench, by their process ids), and for each thread count runs a fresh process
that times the demo's training step (params base + synthetic + fian: hidden 64, T = 64, batch 32,
the real ``fian.train._train_epoch`` on a random split of the demo's size) with
``OMP_NUM_THREADS`` = threads, as Snakemake gives a job of that many ``threads:``, under two
settings of the OpenMP runtime:

- ``spin``: the runtime's defaults (libgomp: a waiting thread spins before it sleeps);
- ``stage``: what the stage entry points set before torch is imported (``fian_pipeline/__init__.py``;
  measured as ``OMP_WAIT_POLICY=PASSIVE``, ``KMP_BLOCKTIME=0`` in bench/RESULTS.md's table; now
  ``GOMP_SPINCOUNT=10000``, ``KMP_BLOCKTIME=1``: a waiting thread spins briefly, then sleeps).

Per cell: median wall s per step (CPU s per step in brackets: > wall x threads' share means
spinning), and the slowdown vs the same setting on the quiet machine (0 busy).  A fair share of
2 cores among 1 + N busy processes is a slowdown of (1 + N) / 2 at most for 2 threads and
(1 + N) / 2 for 1 thread once N >= 1: "degrades in proportion to the load".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("spin", "stage")
OMP_KEYS = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT")


def child(threads: int, setting: str, steps: int, warmup: int) -> None:
    """One measurement, in a fresh process (the OpenMP runtime reads its settings once, at load)."""
    if setting == "stage":
        import fian_pipeline  # noqa: F401  - the stage entry points' settings, before torch
    import torch

    torch.set_num_threads(threads)
    import dataclasses

    from bench.train_speed import VOCAB, random_split
    from fian.config import load_params
    from fian.distributed import DistInfo
    from fian.losses import build_loss
    from fian.model.build import build_model
    from fian.train import _train_epoch, build_optimizer

    cfg = load_params(ROOT / "params", "synthetic", "fian")
    B = cfg.train.batch_size
    train_cfg = dataclasses.replace(cfg.train, sync_every=50)
    g = torch.Generator().manual_seed(0)
    video = torch.randn(300, cfg.features.num_steps, cfg.dataset.feature_dim, generator=g)
    split = random_split(cfg, B * (steps + warmup), video, torch.device("cpu"), seed=0)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB, check_inputs=False)
    loss_fn = build_loss(cfg)
    opt = build_optimizer(model, train_cfg, torch.device("cpu"))
    walls, cpus = [], []
    for i in range(steps + warmup):
        part = split.subset(torch.arange(i * B, (i + 1) * B))
        t0, c0 = time.perf_counter(), time.process_time()
        _train_epoch(model, loss_fn, opt, part, model=model, train_cfg=train_cfg, num_steps=cfg.features.num_steps,
                     epoch=0, device=torch.device("cpu"), info=DistInfo(), progress=False)  # fmt: skip
        if i >= warmup:
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    env = {k: os.environ.get(k) for k in OMP_KEYS}
    print(json.dumps({"step_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
                      "threads": torch.get_num_threads(), "env": env}))  # fmt: skip


def measure(threads: int, setting: str, steps: int, warmup: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OMP_KEYS}
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})  # as Snakemake sets them
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT)
    cmd = [sys.executable, "-m", "bench.contention", "--child", str(threads), setting, str(steps), str(warmup)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, nargs="+", default=[0, 2, 4], help="busy background processes")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="OMP_NUM_THREADS of the training process")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--steps", type=int, default=4, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        t, s, n, w = args.child
        child(int(t), s, int(n), int(w))
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` of the bench stops its busy processes too
    uptime0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    results: dict[tuple[int, int, str], dict] = {}
    for busy in args.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(1.0 if busy else 0.0)
            for threads in args.threads:
                for setting in args.settings:
                    results[(busy, threads, setting)] = r = measure(threads, setting, args.steps, args.warmup)
                    print(f"  busy {busy} threads {threads} {setting}: {r['step_s']:.3f} s/step "
                          f"({r['cpu_s']:.3f} CPU s)", file=sys.stderr, flush=True)  # fmt: skip
        finally:
            for sp in spinners:
                sp.terminate()
            for sp in spinners:
                sp.wait(timeout=30)
    uptime1 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"contention: demo training step (synthetic/fian, batch 32), median of {args.steps} after {args.warmup}; "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"uptime before: {uptime0}")
    print(f"uptime after:  {uptime1}")
    print()
    head = [f"{s}: s/step (CPU s) x quiet" for s in args.settings]
    print("| busy procs | threads | " + " | ".join(head) + " |")
    print("|---|---|" + "---|" * len(head))
    for busy in args.busy:
        for threads in args.threads:
            cells = []
            for s in args.settings:
                r, q = results[(busy, threads, s)], results.get((args.busy[0], threads, s))
                ratio = r["step_s"] / q["step_s"] if q else float("nan")
                cells.append(f"{r['step_s']:.3f} ({r['cpu_s']:.3f}) x{ratio:.1f}")
            print(f"| {busy} | {threads} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
