"""Temporal IoU, greedy 1-D NMS and the metrics of Section 4.2: "R@n, IoU=m" and mIoU.

Intervals are (start, end) pairs on closed-open spans.  A prediction hits at threshold ``m``
when ``IoU >= m`` (as MMN and lighthouse; 2D-TAN uses ``>``).  Predictions are ``[Q, K, 2]``
seconds, best first, padded with NaN rows; a NaN prediction never hits (IoU is NaN, counted 0).
Recalls are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def temporal_iou(a: Any, b: Any) -> Any:
    """IoU of intervals ``a[..., 2]`` and ``b[..., 2]`` with broadcasting; numpy or torch in, same out.

    ``|a ∩ b| / |a ∪ b|``; an empty union (two equal points) gives 0; NaN inputs give NaN.
    """
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        inter = (torch.minimum(a[..., 1], b[..., 1]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
        union = (a[..., 1] - a[..., 0]) + (b[..., 1] - b[..., 0]) - inter
        return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.where(union.isnan(), union, 0.0))
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        inter = np.clip(np.minimum(a[..., 1], b[..., 1]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
        union = (a[..., 1] - a[..., 0]) + (b[..., 1] - b[..., 0]) - inter
        return np.where(
            union > 0, inter / np.where(union > 0, union, 1.0), np.where(np.isnan(union), np.nan, 0.0)
        )


def nms_1d(segments: Any, scores: Any, threshold: float, top_k: int | None = None) -> np.ndarray:
    """Greedy temporal NMS (the plain reference; ``fian.inference.decode`` is the batched one).

    segments ``[K, 2]``, scores ``[K]``.  Visit segments by descending score (ties: lower index
    first); keep one unless its IoU with an already kept segment is ``> threshold``.  Segments
    with a non-finite score (e.g. -inf padding) are never kept.  Returns the kept indices, best
    first, at most ``top_k``.
    """
    seg = np.asarray(
        segments.detach().cpu() if isinstance(segments, torch.Tensor) else segments, dtype=np.float64
    )
    sc = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    if seg.ndim != 2 or seg.shape[1] != 2 or sc.shape != (seg.shape[0],):
        raise ValueError(f"nms_1d needs segments [K, 2] and scores [K], got {seg.shape} and {sc.shape}")
    order = np.argsort(-sc, kind="stable")
    kept: list[int] = []
    for i in order:
        if top_k is not None and len(kept) >= top_k:
            break
        if not np.isfinite(sc[i]):
            continue
        if kept and np.any(temporal_iou(seg[kept], seg[i]) > threshold):
            continue
        kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)


def _as_numpy(x: Any, name: str, shape_tail: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail:
        raise ValueError(f"{name} must be [Q, {', '.join(map(str, shape_tail))}], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: no queries to evaluate")
    return arr


def _pred_gt(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != 2:
        raise ValueError(f"predictions must be [Q, K, 2] seconds, got shape {p.shape}")
    g = _as_numpy(gt, "gt", (2,))
    if p.shape[0] != g.shape[0]:
        raise ValueError(f"{p.shape[0]} prediction rows but {g.shape[0]} ground-truth rows")
    if np.isnan(g).any():
        raise ValueError(
            f"NaN in the ground truth of query rows {np.flatnonzero(np.isnan(g).any(1))[:10].tolist()}"
        )
    return p, g


def metric_name(n: int, m: float) -> str:
    """The key of one recall: ``R@1,IoU=0.5``."""
    return f"R@{n},IoU={m:g}"


def recall_at(
    pred: Any, gt: Any, ns: Sequence[int] = (1, 5), ms: Sequence[float] = (0.1, 0.3, 0.5, 0.7)
) -> dict[str, float]:
    """Recall "R@n, IoU=m": the fraction of queries with at least one of the top-n predictions at ``IoU >= m``.

    pred ``[Q, K, 2]`` seconds (best first, NaN rows = no prediction), gt ``[Q, 2]`` seconds.
    Fewer than n predictions count as what there is; all-NaN rows are misses.
    """
    p, g = _pred_gt(pred, gt)
    iou = np.nan_to_num(temporal_iou(p, g[:, None, :]), nan=0.0)  # [Q, K]
    out = {}
    for n in ns:
        best = iou[:, :n].max(axis=1) if p.shape[1] else np.zeros(len(g))  # [Q]
        for m in ms:
            out[metric_name(n, m)] = float(np.mean(best >= m))
    return out


def mean_iou(pred_top1: Any, gt: Any) -> float:
    """Mean IoU of the top-1 prediction ``[Q, 2]`` with the ground truth ``[Q, 2]``; NaN rows count 0."""
    p = _as_numpy(pred_top1, "pred_top1", (2,))
    p, g = _pred_gt(p[:, None, :], gt)
    return float(np.mean(np.nan_to_num(temporal_iou(p[:, 0], g), nan=0.0)))


def evaluate_predictions(
    pred: Any, gt: Any, ns: Sequence[int] = (1, 5), ms: Sequence[float] = (0.1, 0.3, 0.5, 0.7)
) -> dict[str, float]:
    """All of :func:`recall_at` plus ``"mIoU"`` (top-1), fractions in [0, 1]."""
    p, g = _pred_gt(pred, gt)
    out = recall_at(p, g, ns, ms)
    out["mIoU"] = mean_iou(p[:, 0], g) if p.shape[1] else 0.0
    return out
