"""OFFLINE FALLBACK: GloVe vectors trained on the dataset's own sentences (Pennington et al., 2014).

Used only when params say ``text.fallback_train_glove: true`` (no glove.840B.300d available); the
text stage reports it loudly and tags its outputs.  The objective is GloVe's own:

* co-occurrence counts ``X_ij`` in a symmetric window, each pair weighted by ``1 / distance``;
* weighted least squares ``J = sum_ij f(X_ij) (w_i . c_j + b_i + b~_j - log X_ij)^2 / 2`` with
  ``f(x) = min(1, (x / x_max)^0.75)``;
* AdaGrad (accumulators start at 1, as the reference C code), here over shuffled mini-batches of
  co-occurrence entries; the vector of a word is ``w_i + c_i`` (word + context).

The vectors are written in the GloVe text format (``word v1 ... vd``, no header) with a sidecar
``<file>.fallback.json`` that marks the file as a fallback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".fallback.json"


@dataclass(frozen=True)
class Cooccurrence:
    """Sparse symmetric co-occurrence matrix: ``X[rows[k], cols[k]] = vals[k]`` over ``words``."""

    words: list[str]
    rows: np.ndarray  # [nnz] int64
    cols: np.ndarray  # [nnz] int64
    vals: np.ndarray  # [nnz] float64, > 0


def cooccurrence(sentences: Iterable[Sequence[str]], window: int) -> Cooccurrence:
    """Count pairs within ``window`` tokens of each other, weighted ``1 / distance``, both directions."""
    if window < 1:
        raise ValueError(f"glove window must be >= 1, got {window}")
    index: dict[str, int] = {}
    pairs_a, pairs_b, weights = [], [], []
    for toks in sentences:
        ids = np.fromiter((index.setdefault(t, len(index)) for t in toks), dtype=np.int64, count=len(toks))
        for d in range(1, min(window, len(ids) - 1) + 1):
            pairs_a += [ids[:-d], ids[d:]]
            pairs_b += [ids[d:], ids[:-d]]
            weights.append(np.full(2 * (len(ids) - d), 1.0 / d))
    words = sorted(index, key=index.__getitem__)
    if not weights:
        raise ValueError("no co-occurring tokens: the fallback GloVe needs sentences of two or more words")
    a, b, w = np.concatenate(pairs_a), np.concatenate(pairs_b), np.concatenate(weights)
    n = len(words)
    keys, inverse = np.unique(a * n + b, return_inverse=True)
    vals = np.bincount(inverse, weights=w)
    return Cooccurrence(words, keys // n, keys % n, vals)


def train_glove(co: Cooccurrence, dim: int, epochs: int, *, x_max: float = 10.0, alpha: float = 0.75,
                lr: float = 0.05, batch_size: int = 2048, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Fit GloVe on ``co``; return ``vectors [n_words, dim]`` (w + c) and the mean loss per epoch."""
    if x_max <= 0 or lr <= 0 or dim < 1 or epochs < 0 or batch_size < 1:
        raise ValueError(f"fallback GloVe: need x_max > 0, lr > 0, dim >= 1, epochs >= 0, batch_size >= 1 "
                         f"(got {x_max}, {lr}, {dim}, {epochs}, {batch_size})")
    import torch

    # many small ops per batch: one intra-op thread is ~10x faster than two on a busy 2-core
    # machine (bench/text_speed.py); the caller's setting is restored afterwards
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(torch, co, dim, epochs, x_max, alpha, lr, batch_size, seed)
    finally:
        torch.set_num_threads(threads)


def _train(torch: Any, co: Cooccurrence, dim: int, epochs: int, x_max: float, alpha: float, lr: float,
           batch_size: int, seed: int) -> tuple[np.ndarray, list[float]]:
    g = torch.Generator().manual_seed(seed)
    n = len(co.words)
    # parameters: word / context vectors and biases, as the reference code: U(-0.5, 0.5) / dim
    w = (torch.rand(n, dim, generator=g, dtype=torch.float32) - 0.5) / dim  # [n, dim]
    c = (torch.rand(n, dim, generator=g, dtype=torch.float32) - 0.5) / dim  # [n, dim]
    bw = torch.zeros(n, dtype=torch.float32)
    bc = torch.zeros(n, dtype=torch.float32)
    gw, gc = torch.ones_like(w), torch.ones_like(c)  # AdaGrad accumulators
    gbw, gbc = torch.ones_like(bw), torch.ones_like(bc)
    rows, cols = torch.from_numpy(co.rows), torch.from_numpy(co.cols)
    x = torch.from_numpy(co.vals).float()
    logx = x.log()
    fx = (x / x_max).pow(alpha).clamp(max=1.0)  # f(X)
    losses: list[float] = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for s in range(0, len(order), batch_size):
            k = order[s : s + batch_size]
            i, j = rows[k], cols[k]  # [B]
            wi, cj = w.index_select(0, i), c.index_select(0, j)  # [B, dim]
            diff = (wi * cj).sum(1) + bw[i] + bc[j] - logx[k]  # [B]
            fdiff = fx[k] * diff  # [B]
            total += float(0.5 * (fdiff * diff).sum())
            # a word occurs in many entries of one batch: its gradients are summed, and the squares of
            # the per-entry gradients enter the AdaGrad accumulator BEFORE the step, so one batch
            # moves a coordinate at most lr * sqrt(entries) (Cauchy-Schwarz).  Summing without that
            # (step first, as the reference code does per entry) took up to B full steps at once and
            # diverged on small corpora with large counts (loss 6.7 -> 2e8 on the synthetic set).
            # Only the rows a batch touches are updated.
            for p, acc, idx, grad in ((w, gw, i, fdiff[:, None] * cj), (c, gc, j, fdiff[:, None] * wi),
                                      (bw, gbw, i, fdiff), (bc, gbc, j, fdiff)):
                rows_u, inv = torch.unique(idx, return_inverse=True)  # [U], [B]
                if grad.dim() == 2:
                    inv = inv[:, None].expand(-1, grad.shape[1])
                shape = (len(rows_u), *grad.shape[1:])
                g_u = torch.zeros(shape).scatter_add_(0, inv, grad)  # [U(, dim)] summed gradient
                acc_u = acc.index_select(0, rows_u) + torch.zeros(shape).scatter_add_(0, inv, grad * grad)
                acc.index_copy_(0, rows_u, acc_u)
                p.index_copy_(0, rows_u, p.index_select(0, rows_u) - lr * g_u / acc_u.sqrt())
        losses.append(total / len(x))
    return (w + c).numpy(), losses


def write_vectors(path: str | Path, words: Sequence[str], vectors: np.ndarray) -> None:
    """GloVe text format, no header: ``word v1 ... vd`` per line (atomic)."""
    from fian.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for word, vec in zip(words, vectors, strict=True):
            f.write(word + " " + " ".join(f"{v:.6f}" for v in vec) + "\n")


def is_fallback(path: str | Path) -> bool:
    """True when ``path`` is a fallback file (it has the sidecar)."""
    return Path(str(path) + SIDECAR_SUFFIX).exists()


def train_fallback(sentences: Sequence[Sequence[str]], out: str | Path, *, dim: int, epochs: int, window: int,
                   x_max: float, lr: float, seed: int, batch_size: int = 2048) -> dict[str, Any]:
    """Train on tokenized ``sentences``, write ``out`` and its sidecar; return the sidecar's content."""
    co = cooccurrence(sentences, window)
    log.info("fallback GloVe: %d words, %d co-occurrence entries, %d epochs", len(co.words), len(co.vals), epochs)
    vectors, losses = train_glove(co, dim, epochs, x_max=x_max, lr=lr, batch_size=batch_size, seed=seed)
    if not np.isfinite(vectors).all():
        raise ValueError(f"{out}: fallback GloVe diverged (non-finite vectors; loss per epoch {losses}): "
                         "lower text.glove_lr or raise text.glove_batch_size")
    info = {"fallback": True,
            "what": "GloVe trained on the dataset's own training sentences, NOT glove.840B.300d",
            "sentences": len(sentences), "words": len(co.words), "nonzeros": int(len(co.vals)), "dim": dim,
            "epochs": epochs, "window": window, "x_max": x_max, "lr": lr, "batch_size": batch_size, "seed": seed,
            "loss_per_epoch": losses}
    write_vectors(out, co.words, vectors)
    from fian.io import write_text

    write_text(str(out) + SIDECAR_SUFFIX, json.dumps(info, indent=2) + "\n")
    return info
