"""The served model under load: many concurrent small requests, alone and with bad ones among them.

    python bench/serve_load.py [--dataset tacos] [--requests 200] [--workers 1] [--rows 1]

Builds the model of ``params/datasets/<dataset>.yaml`` (FIAN variant) with random weights and a
features-only recipe, logs it as a pyfunc model into a temp SQLite store (as the train stage logs
it), starts ``mlflow models serve`` on 127.0.0.1, then sends ``--requests`` concurrent requests of
``--rows`` rows (one query, ``features_bytes``: an ``.npy`` of 100 random rows, base64) twice:

    good:        the requests alone
    good + bad:  the same with 10 bad requests among them (a 1.6 kB video whose header says one
                 hour, 20,000 rows, top = 1e9, a 5 MB query, garbage bytes; 2 of each)

and prints one table of latencies (seconds, client side; a request queues for the server's threads
before it is read), then each bad request sent alone.  The bad requests must be refused (400) at
once and must not slow the good ones down.  Nothing is written outside the temp folder.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fian.extract.video import render_long_still

REPO = Path(__file__).resolve().parents[1]


def post(url: str, body: dict) -> tuple[int, float]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read()
            return r.status, time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, time.perf_counter() - t0


def build_model(tmp: Path, dataset: str) -> tuple[str, str, int]:
    """A random-weight checkpoint logged as the train stage logs it; returns (store, model uri, D)."""
    import mlflow

    from fian.config import load_params
    from fian.model.build import build_model as build
    from fian.predict import attach_bundle, make_bundle
    from fian.train import save_checkpoint
    from fian_pipeline.mlflow_model import log_model

    cfg = load_params(REPO / "params", dataset, "fian")
    vocab = ["<pad>", "<unk>", *[f"w{i}" for i in range(1000)], "a", "man", "opens", "the", "fridge"]
    torch.manual_seed(0)
    model = build(cfg, vocab_size=len(vocab))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = tmp / "checkpoint.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "model": state, "best_model": state, "epoch": 0})
    attach_bundle(ckpt, make_bundle(cfg, vocab, {"feature_source": "fian.data.synthetic", "synthetic": True}))
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    exp = mlflow.MlflowClient().create_experiment("bench", artifact_location=(tmp / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = log_model(ckpt, cfg, vocab)
    return store, info.model_uri, cfg.dataset.feature_dim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="tacos", help="params/datasets/<name>.yaml: model size, T, D")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rows", type=int, default=1, help="queries per good request")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers of mlflow models serve")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="fian-serve-bench-") as tmp_name:
        tmp = Path(tmp_name)
        store, uri, dim = build_model(tmp, args.dataset)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        t0 = time.perf_counter()
        with open(tmp / "server.log", "wb") as log:
            server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                                       "-h", "127.0.0.1", "-p", str(port), "-w", str(args.workers)],
                                      env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
                    break
                except OSError:
                    if server.poll() is not None:
                        raise SystemExit((tmp / "server.log").read_text()[-3000:]) from None
                    time.sleep(0.5)
            start_s = time.perf_counter() - t0
            url = f"http://127.0.0.1:{port}/invocations"
            buf = io.BytesIO()
            np.save(buf, np.random.default_rng(0).normal(size=(100, dim)).astype(np.float32))
            feats = base64.b64encode(buf.getvalue()).decode()
            row = {"query": "a man opens the fridge", "features_bytes": feats, "duration": 60.0}
            good = [{"dataframe_records": [row] * args.rows} for _ in range(args.requests)]
            hour = base64.b64encode(render_long_still(tmp / "hour.mp4", 3600).read_bytes()).decode()
            bad = [{"dataframe_records": [{"query": "a man", "video_bytes": hour}]},
                   {"dataframe_records": [{"query": "a man", "features_bytes": "AAAA", "duration": 1.0}] * 20_000},
                   {"dataframe_records": [row], "params": {"top": 1_000_000_000}},
                   {"dataframe_records": [{**row, "query": "man " * 1_300_000}]},
                   {"dataframe_records": [{"query": "a man", "video_bytes": base64.b64encode(b"garbage" * 200).decode()}]}] * 2  # fmt: skip
            post(url, good[0])  # warm-up: the first request builds nothing, but pays the imports
            alone = [post(url, b) for b in bad[:5]]  # each bad request alone: how fast it is refused
            table = []
            for name, bodies in (("good", good), ("good + bad", good[: args.requests // 2] + bad + good[args.requests // 2 :])):
                t = time.perf_counter()
                with ThreadPoolExecutor(max_workers=len(bodies)) as ex:
                    results = list(ex.map(lambda b: post(url, b), bodies))
                wall = time.perf_counter() - t
                is_bad = [any(b is x for x in bad) for b in bodies]
                ok = [lat for (code, lat), b in zip(results, is_bad, strict=True) if not b and code == 200]
                refused = [(code, lat) for (code, lat), b in zip(results, is_bad, strict=True) if b]
                table.append((name, len(bodies), len(ok), sum(c == 400 for c, _ in refused), np.percentile(ok, 50),
                              np.percentile(ok, 95), max(ok), max((lat for _, lat in refused), default=float("nan")), wall))  # fmt: skip
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)

    print(f"mlflow models serve ({args.workers} worker(s)), dataset {args.dataset} model with random weights, D={dim}; "
          f"{args.requests} concurrent requests of {args.rows} row(s) (features_bytes: 100 rows); server up in {start_s:.1f} s")  # fmt: skip
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load {os.getloadavg()}")
    head = ("phase", "requests", "good 200", "bad 400", "good p50 s", "good p95 s", "good max s", "bad max s", "wall s")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in head) + "|")
    for name, n, ok, refused, p50, p95, mx, bmax, wall in table:
        print(f"| {name} | {n} | {ok} | {refused} | {p50:.3f} | {p95:.3f} | {mx:.3f} | {bmax:.3f} | {wall:.1f} |")
    names = ("hour-long video", "20,000 rows", "top = 1e9", "5 MB query", "garbage bytes")
    print("bad requests sent alone (status, seconds): " + ", ".join(
        f"{n} {c} {t:.3f}" for n, (c, t) in zip(names, alone, strict=True)))  # fmt: skip


if __name__ == "__main__":
    main()
