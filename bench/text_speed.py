"""Speed of the data/text path: annotation parsing, tokenization, streamed GloVe reading, fallback GloVe.

    .venv/bin/python bench/text_speed.py [--glove-lines 200000] [--annotations ../shared/data/annotations]

Prints one table.  The GloVe file is generated (glove.840B.300d layout, 300 floats per line) in a
temporary folder; its read rate extrapolates to the 2,196,017 lines of glove.840B.300d.txt.
The fallback trainer is timed for one epoch on ActivityNet Captions' training sentences.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from fian.config import PolicyConfig
from fian.data.annotations import load_annotations
from fian.data.glove import cooccurrence, train_glove
from fian.data.text import Vocab, read_glove, tokenize

GLOVE_840B_LINES = 2_196_017


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--glove-lines", type=int, default=200_000)
    p.add_argument("--annotations", type=Path,
                   default=Path(__file__).resolve().parents[2] / "shared" / "data" / "annotations")
    p.add_argument("--fallback-dim", type=int, default=300)
    args = p.parse_args()
    rows: list[tuple[str, str, str]] = []

    t = time.perf_counter()
    splits = {"train": ["train.json"], "val": ["val.json"], "test": ["test.json"]}
    tables, _ = load_annotations(args.annotations / "activitynet", "activitynet", splits, PolicyConfig())
    n = sum(len(df) for df in tables.values())
    rows.append(("parse + validate ActivityNet Captions", f"{time.perf_counter() - t:.2f} s", f"{n} pairs"))

    t = time.perf_counter()
    sents = [tokenize(s) for s in tables["train"]["sentence"]]
    vocab = Vocab.build(sents)
    dt = time.perf_counter() - t
    rows.append(("tokenize + vocab (ANet train)", f"{dt:.2f} s", f"{len(sents)} sentences, {len(vocab)} types"))

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "glove.txt"
        words = vocab.itos[2:][: args.glove_lines // 2] + [f"w{i}" for i in range(args.glove_lines)]
        words = words[: args.glove_lines]
        with open(path, "w") as f:
            for w in words:
                f.write(w + " " + " ".join(f"{x:.5f}" for x in rng.standard_normal(300)) + "\n")
        size = path.stat().st_size
        t = time.perf_counter()
        hits = read_glove(path, vocab, dim=300)
        dt = time.perf_counter() - t
    rate = len(words) / dt
    rows.append(("read_glove (streamed, 300-d)", f"{dt:.2f} s",
                 f"{len(words)} lines, {size / 2**20:.0f} MiB, {rate:,.0f} lines/s, {len(hits.vectors)} hits"))
    rows.append(("  -> glove.840B.300d.txt (extrapolated)", f"{GLOVE_840B_LINES / rate / 60:.1f} min", "5.6 GB"))

    t = time.perf_counter()
    co = cooccurrence(sents, window=5)
    rows.append(("fallback: co-occurrence (window 5)", f"{time.perf_counter() - t:.2f} s", f"{len(co.vals)} nonzeros"))
    t = time.perf_counter()
    train_glove(co, dim=args.fallback_dim, epochs=1, seed=0)
    dt = time.perf_counter() - t
    rows.append((f"fallback: 1 AdaGrad epoch ({args.fallback_dim}-d)", f"{dt:.1f} s",
                 f"25 epochs ~ {25 * dt / 60:.1f} min"))

    w = max(len(r[0]) for r in rows)
    print(f"{'step':<{w}}  {'time':>9}  detail")
    for name, tm, detail in rows:
        print(f"{name:<{w}}  {tm:>9}  {detail}")


if __name__ == "__main__":
    main()
