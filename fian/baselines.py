"""A moment-prior baseline: the same ranked moments for every query, whatever it says.

Fit: k-means (k-means++ seeding, Lloyd iterations) of the training moments normalized by the
video duration, ``(start / duration, end / duration)`` in ``[0, 1]^2``.  Predict: the cluster
centres ranked by cluster size, scaled by each video's duration.  It reads no video and no words,
so it is the floor that a grounding model must beat (it scores well only where moments are
stereotyped, e.g. "the whole video").

:func:`derangement`: the seeded permutation of the video-shuffle check (Table 7), in which every
query is shown another video of its split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MomentPrior:
    centres: np.ndarray  # [K, 2] normalized (start, end), ranked by weight
    weights: np.ndarray  # [K] fraction of training moments in each cluster, descending

    @classmethod
    def fit(cls, moments: np.ndarray, k: int, *, iters: int = 50, seed: int = 0) -> MomentPrior:
        """``moments [Q, 2]`` normalized to ``[0, 1]``; ``k`` clusters (fewer if fewer distinct moments)."""
        x = np.asarray(moments, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != 2 or len(x) == 0:
            raise ValueError(f"moments must be a non-empty [Q, 2] array, got shape {x.shape}")
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise ValueError(f"moment row {bad} is not finite: {x[bad].tolist()}")
        k = min(k, len(np.unique(x, axis=0)))
        rng = np.random.default_rng(seed)
        centres = _kmeans_pp(x, k, rng)
        for _ in range(iters):
            assign = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)  # [Q]
            new = np.stack([x[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
            if np.allclose(new, centres):
                break
            centres = new
        assign = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        counts = np.bincount(assign, minlength=k).astype(np.float64)
        order = np.argsort(-counts, kind="stable")
        return cls(centres=centres[order], weights=counts[order] / counts.sum())

    def predict(self, duration: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``duration [Q]`` seconds -> ``(segments [Q, K, 2] seconds, scores [Q, K])``."""
        d = np.asarray(duration, dtype=np.float64)[:, None, None]  # [Q, 1, 1]
        segs = np.sort(self.centres, axis=1)[None] * d  # [Q, K, 2], start <= end
        scores = np.broadcast_to(self.weights[None], (len(d), len(self.weights))).copy()
        return segs, scores


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability ~ squared distance."""
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None, :] - np.stack(centres)[None]) ** 2).sum(-1), axis=1)
        if d2.sum() == 0:
            break
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())])
    return np.stack(centres)


def normalized_moments(start: np.ndarray, end: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """``[Q, 2]`` (start, end) / duration, clipped to ``[0, 1]``; a non-positive duration is an error."""
    duration = np.asarray(duration, dtype=np.float64)
    if (duration <= 0).any():
        bad = int(np.flatnonzero(duration <= 0)[0])
        raise ValueError(f"record {bad}: duration {duration[bad]} <= 0")
    return np.clip(np.stack([start, end], axis=1) / duration[:, None], 0.0, 1.0)


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation ``p`` of ``range(n)`` with no fixed point (``p[i] != i`` for every ``i``), drawn
    uniformly among all such permutations by rejection (numpy's PCG64 seeded by ``seed``: the same
    ``(n, seed)`` gives the same permutation on every machine).  About e = 2.7 draws on average;
    ``n < 2`` has no derangement: ValueError."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 videos, got {n}")
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p
