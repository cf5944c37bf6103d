"""How sure a table is: the spread over seeds and paired bootstrap intervals over queries.

Pure functions with explicit arguments (docs/PIPELINE.md "Seeds and intervals"):

- :func:`summarize`: the values of one metric over n seeds -> mean, sample standard deviation
  (``ddof=1``; None for n = 1, where it is undefined), min, max, n and every seed's value;
- :func:`top1_hits`: whether each query's top-1 moment hits its ground truth at each IoU level,
  under a run's hit rule (``gt``: IoU > m, ``ge``: IoU >= m; fian/metrics.py).  R@1 is the mean
  of these hits; temporal NMS never removes the top-scored moment, so R@1 does not depend on the
  NMS setting;
- :func:`paired_bootstrap`: the mean of per-query paired differences (an ablation's hit minus the
  reference's hit on the same query, each averaged over the seeds) and its percentile interval,
  resampling queries with replacement from a seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fian.metrics import is_hit, temporal_iou


def summarize(values: Mapping[int, float] | Sequence[float]) -> dict:
    """``{"mean", "std", "min", "max", "n", "values"}`` of one metric over seeds.

    ``values``: ``{seed: value}`` (kept in that order under ``"values"``, keys as strings: JSON)
    or a plain sequence (keys 0, 1, ...).  ``std`` is the sample standard deviation (ddof=1),
    None when n = 1.  Raises ValueError for no value or a non-finite one.
    """
    items = list(values.items()) if isinstance(values, Mapping) else list(enumerate(values))
    if not items:
        raise ValueError("no value to summarize")
    xs = np.array([float(v) for _, v in items], dtype=np.float64)
    if not np.all(np.isfinite(xs)):
        raise ValueError(f"non-finite value among {[v for _, v in items]}")
    n = len(xs)
    return {
        "mean": float(xs.mean()),
        "std": float(xs.std(ddof=1)) if n > 1 else None,
        "min": float(xs.min()),
        "max": float(xs.max()),
        "n": n,
        "values": {str(k): float(v) for k, v in items},
    }


def top1_hits(top1: np.ndarray, gt: np.ndarray, ms: Sequence[float], iou_rule: str) -> np.ndarray:
    """``bool [Q, len(ms)]``: the top-1 moment ``top1 [Q, 2]`` hits ``gt [Q, 2]`` at each level m.

    ``iou_rule``: ``gt`` (IoU > m) or ``ge`` (IoU >= m).  A query without a prediction (NaN) misses.
    """
    top1 = np.asarray(top1, dtype=np.float64).reshape(-1, 2)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 2)
    if top1.shape != gt.shape:
        raise ValueError(f"top1 {top1.shape} and gt {gt.shape} differ in shape")
    iou = np.asarray(temporal_iou(top1, gt), dtype=np.float64)  # NaN (no prediction) never hits
    return np.stack([is_hit(iou, float(m), iou_rule) for m in ms], axis=1).reshape(len(gt), len(ms))


@dataclass(frozen=True)
class Interval:
    """A mean paired difference and its bootstrap interval (same unit as the differences)."""

    mean: float
    low: float
    high: float
    level: float
    resamples: int
    seed: int
    n: int

    @property
    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


def bootstrap_means(diff: np.ndarray, *, resamples: int, seed: int, chunk: int = 256) -> np.ndarray:
    """``resamples`` means of ``diff [Q]`` resampled with replacement (``numpy.random.default_rng(seed)``,
    ``integers(0, Q, (chunk, Q))`` per block of at most ``chunk`` resamples: same seed, same means)."""
    d = np.asarray(diff, dtype=np.float64).ravel()
    n = len(d)
    rng = np.random.default_rng(seed)
    out = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        out[start : start + b] = d[rng.integers(0, n, size=(b, n))].mean(axis=1)
    return out


def paired_bootstrap(diff: Sequence[float] | np.ndarray, *, resamples: int, level: float, seed: int) -> Interval:
    """Mean of the per-query paired differences ``diff [Q]`` and its ``level`` percentile interval
    (the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of :func:`bootstrap_means`, numpy's
    default linear interpolation).  The queries are the resampled unit: a query's difference, with
    seeds pooled, is its hit averaged over the seeds minus the reference's, averaged likewise."""
    d = np.asarray(diff, dtype=np.float64).ravel()
    if len(d) == 0:
        raise ValueError("no query to compare")
    if not np.all(np.isfinite(d)):
        raise ValueError("non-finite paired difference")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples}, {level}")
    means = bootstrap_means(d, resamples=resamples, seed=seed)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(float(d.mean()), float(low), float(high), float(level), int(resamples), int(seed), len(d))


def format_mean_std(values: Sequence[float], *, digits: int = 2, pm: str = " ± ") -> str:
    """One table cell from the values of n seeds: ``"61.23 ± 0.45"`` (mean ± sample std), or the
    value alone when n = 1.  ``pm``: the separator (LaTeX: ``" $\\pm$ "``)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("no value for the cell")
    mean = math.fsum(xs) / len(xs)
    if len(xs) == 1:
        return f"{mean:.{digits}f}"
    std = float(np.std(np.array(xs), ddof=1))
    return f"{mean:.{digits}f}{pm}{std:.{digits}f}"
