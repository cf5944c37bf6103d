"""A variant against the reference (full FIAN) on the same test queries: paired R@1 differences.

:func:`compare_runs` reads the predictions files of both, one per seed, keeps of each query only
its ``index``, its ground truth ``gt`` and its top-1 moment (the first of ``segments``; nothing
else of a predictions file's layout is relied on), scores R@1 per query under the runs' hit rule,
averages each query's hits over the seeds (seeds pooled) and bootstraps the mean paired
difference over queries (:func:`fian.reports.stats.paired_bootstrap`).

Every mismatch is an error naming the file: a query set or a ground truth that differs between
the runs, different hit rules, a malformed line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fian.reports.paper_results import METRIC_RE, REFERENCE_VARIANT
from fian.reports.stats import paired_bootstrap, top1_hits

REFERENCE = REFERENCE_VARIANT  # the variant every other one is compared with (Tables 4-6: full FIAN)


def compare_file(reference: str, split: str) -> str:
    """The comparison's file name in the variant's results folder (the registry's ``compare`` output)."""
    return f"compare_{reference}_{split}.json"


METHOD = (
    "paired percentile bootstrap over queries: queries resampled with replacement; a query's "
    "difference is its R@1 hit averaged over the seeds minus the reference's, averaged likewise"
)


@dataclass(frozen=True)
class Top1:
    """One predictions file reduced to what R@1 needs, rows sorted by query index."""

    path: Path
    index: np.ndarray  # [Q] int, the query rows of the split
    gt: np.ndarray  # [Q, 2] seconds
    top1: np.ndarray  # [Q, 2] seconds; NaN: no prediction


def read_top1(path: str | Path) -> Top1:
    """The ``index``, ``gt`` and first ``segments`` entry of every line of a predictions file."""
    path = Path(path)
    idx, gts, tops = [], [], []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the predictions: {e}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            gt = [float(r["gt"][0]), float(r["gt"][1])]
            segs = r["segments"]
            first = segs[0] if segs else None
            top = [math.nan, math.nan] if first is None or None in first else [float(first[0]), float(first[1])]
            idx.append(int(r["index"]))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{path}: line {i}: not a predictions record with index, gt and segments ({e})") from None
        gts.append(gt)
        tops.append(top)
    if not idx:
        raise ValueError(f"{path}: no query")
    index = np.asarray(idx, dtype=np.int64)
    if len(np.unique(index)) != len(index):
        raise ValueError(f"{path}: a query index appears twice")
    order = np.argsort(index, kind="stable")
    return Top1(path, index[order], np.asarray(gts)[order], np.asarray(tops, dtype=np.float64)[order])


def _level(metric: str) -> float:
    m = METRIC_RE.match(metric)
    if not m or int(m.group(1)) != 1:
        raise ValueError(f"metric {metric!r}: only R@1,IoU=m is compared per query")
    return float(m.group(2))


def _same_queries(first: Top1, other: Top1) -> None:
    if not np.array_equal(first.index, other.index):
        missing = sorted(set(first.index.tolist()) ^ set(other.index.tolist()))[:5]
        raise ValueError(
            f"{other.path}: not the same queries as {first.path} ({len(other.index)} vs {len(first.index)} "
            f"queries; indices in one only, first few: {missing})"
        )
    bad = np.flatnonzero(~np.isclose(first.gt, other.gt, rtol=0, atol=1e-6).all(axis=1))
    if len(bad):
        q = int(first.index[bad[0]])
        raise ValueError(
            f"{other.path}: query {q} has ground truth {other.gt[bad[0]].tolist()}, {first.path} has "
            f"{first.gt[bad[0]].tolist()}: not the same test queries"
        )


def pooled_hits(runs: Sequence[Top1], ms: Sequence[float], iou_rule: str) -> np.ndarray:
    """``[Q, len(ms)]``: each query's top-1 hit at each level, averaged over the runs (seeds)."""
    return np.mean([top1_hits(r.top1, r.gt, ms, iou_rule) for r in runs], axis=0)


def compare_runs(
    variant: Sequence[str | Path],
    reference: Sequence[str | Path],
    *,
    metrics: Sequence[str],
    iou_rule: str,
    resamples: int,
    level: float,
    seed: int,
) -> dict:
    """The paired comparison of a variant's runs with the reference's (one predictions file per seed
    each, seeds in the same order) on the same queries.  Returns, per metric (``R@1,IoU=m``), the
    pooled R@1 of both (fractions), their difference (variant - reference), its bootstrap interval
    and whether the interval contains 0."""
    if not variant or len(variant) != len(reference):
        raise ValueError(f"need one reference predictions file per variant file, got {len(variant)} and {len(reference)}")
    ms = [_level(m) for m in metrics]
    runs = [read_top1(p) for p in variant]
    refs = [read_top1(p) for p in reference]
    for r in (*runs[1:], *refs):
        _same_queries(runs[0], r)
    mine, theirs = pooled_hits(runs, ms, iou_rule), pooled_hits(refs, ms, iou_rule)
    out: dict[str, dict] = {}
    for j, name in enumerate(metrics):
        diff = mine[:, j] - theirs[:, j]
        ci = paired_bootstrap(diff, resamples=resamples, level=level, seed=seed)
        out[name] = {
            "variant": float(mine[:, j].mean()),
            "reference": float(theirs[:, j].mean()),
            "difference": ci.mean,
            "low": ci.low,
            "high": ci.high,
            "contains_zero": ci.contains_zero,
        }
    return {
        "unit": "fraction",
        "n_queries": len(runs[0].index),
        "n_runs": len(runs),
        "iou_rule": iou_rule,
        "bootstrap": {"method": METHOD, "resamples": resamples, "level": level, "seed": seed},
        "metrics": out,
    }
