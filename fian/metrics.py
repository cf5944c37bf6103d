"""Temporal IoU, greedy 1-D NMS and the metrics of Section 4.2: "R@n, IoU=m" and mIoU, plus the
discounted recall "dR@n, IoU=m" of Yuan et al. 2021 (:func:`discounted_recall_at`).

Intervals are (start, end) pairs on closed-open spans.  Predictions are ``[Q, K, 2]`` seconds,
best first, padded with NaN rows; a NaN prediction never hits (IoU is NaN, counted 0).  Recalls
are fractions in [0, 1].

The evaluation protocol has two choices the sources answer differently (``eval.iou_rule``,
``eval.nms`` in params):

* **hit rule** ``iou_rule``: ``"gt"`` = IoU > m, as Section 4.2 words it ("IoU with ground-truth
  moment is larger than m") and as 2D-TAN's evaluator counts (microsoft/2D-TAN lib/core/eval.py:
  ``overlap > t``); ``"ge"`` = IoU >= m, as TALL's evaluator (jiyanggao/TALL main.py
  ``compute_IoU_recall_top_n_forreg``: ``iou>=iou_thresh``) and CMIN's released evaluation
  (ikuinen/CMIN_moment_retrieval runners/runner_final.py ``eval``: ``IoUs >= m`` of the single
  best box).
* **NMS** ``nms``: ``"fixed"`` = one ranked list, NMS at one threshold, scored at every m (2D-TAN:
  ``nms(thresh=TEST.NMS_THRESH)``, 0.5); ``"per_level"`` = for each m its own ranked list, NMS at
  ``m - 0.05`` (TALL's evaluator: ``nms_temporal(..., iou_thresh - 0.05)``; CMIN's criteria.py
  carries a copy, ``compute_IoU_recall``, that its runner never calls).  Every one of these NMS,
  like ours, suppresses a moment whose IoU with a kept one is > the threshold.  The top-1 moment is
  the same under every NMS threshold, so R@1 and mIoU do not depend on ``nms``; R@n for n > 1 does.

``eval.protocol`` names a preset of these keys (fian.config.EVAL_PROTOCOLS: ``tall``, ``2dtan``,
``cmin``); ``custom`` (the default) = the keys as set: S4.2's hit rule with TALL's per-level NMS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

IOU_RULES = ("gt", "ge")
NMS_MODES = ("fixed", "per_level")
PER_LEVEL_MARGIN = 0.05  # TALL main.py: NMS at iou_thresh - 0.05 for the recall at iou_thresh


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


def is_hit(iou: np.ndarray, m: float, iou_rule: str) -> np.ndarray:
    """``iou > m`` (``"gt"``, S4.2's wording, 2D-TAN's code) or ``iou >= m`` (``"ge"``, TALL's and
    CMIN's code); NaN never hits."""
    if iou_rule == "gt":
        return iou > m
    if iou_rule == "ge":
        return iou >= m
    raise ValueError(f"iou_rule must be one of {IOU_RULES}, got {iou_rule!r}")


def nms_thresholds(ms: Sequence[float], nms: str, fixed: float) -> dict[float, float]:
    """IoU level m -> the NMS threshold of the ranked list scored at m (see the module docstring)."""
    if nms == "fixed":
        return {float(m): float(fixed) for m in ms}
    if nms == "per_level":
        return {float(m): round(float(m) - PER_LEVEL_MARGIN, 10) for m in ms}
    raise ValueError(f"nms must be one of {NMS_MODES}, got {nms!r}")


def recall_at(
    pred: Any,
    gt: Any,
    ns: Sequence[int] = (1, 5),
    ms: Sequence[float] = (0.1, 0.3, 0.5, 0.7),
    iou_rule: str = "gt",
) -> dict[str, float]:
    """Recall "R@n, IoU=m": the fraction of queries with at least one of the top-n predictions hitting at m.

    pred ``[Q, K, 2]`` seconds (best first, NaN rows = no prediction), or a mapping ``{m: [Q, K, 2]}``
    giving each IoU level its own ranked list (per-level NMS); gt ``[Q, 2]`` seconds.  A hit is
    :func:`is_hit` under ``iou_rule``.  Fewer than n predictions count as what there is; all-NaN
    rows are misses.
    """
    if isinstance(pred, Mapping):
        missing = [m for m in ms if float(m) not in {float(k) for k in pred}]
        if missing:
            raise ValueError(f"no ranked list for IoU level(s) {missing}; have {sorted(pred)}")
        by_level = {float(k): v for k, v in pred.items()}
        per_m = {float(m): recall_at(by_level[float(m)], gt, ns, (m,), iou_rule) for m in ms}
        return {metric_name(n, m): per_m[float(m)][metric_name(n, m)] for n in ns for m in ms}
    p, g = _pred_gt(pred, gt)
    iou = np.nan_to_num(temporal_iou(p, g[:, None, :]), nan=0.0)  # [Q, K]
    out = {}
    for n in ns:
        best = iou[:, :n].max(axis=1) if p.shape[1] else np.zeros(len(g))  # [Q]
        for m in ms:
            out[metric_name(n, m)] = float(np.mean(is_hit(best, m, iou_rule)))
    return out


def discounted_name(n: int, m: float) -> str:
    """The key of one discounted recall: ``dR@1,IoU=0.5``."""
    return f"dR@{n},IoU={m:g}"


def discounted_recall_at(
    pred: Any,
    gt: Any,
    duration: Any,
    ns: Sequence[int] = (1, 5),
    ms: Sequence[float] = (0.1, 0.3, 0.5, 0.7),
    iou_rule: str = "gt",
) -> dict[str, float]:
    """Discounted recall "dR@n, IoU=m" (Yuan et al. 2021, "A Closer Look at Temporal Sentence
    Grounding in Videos: Dataset and Metric"): a hit counts only as much as its boundaries are close,

        dR@n,IoU=m = (1 / Q) * sum_i r(n, m, q_i) * alpha_i^s * alpha_i^e,
        alpha_i^* = 1 - |p_i^* - g_i^*|   (* in {s, e}),

    with ``p`` the predicted and ``g`` the ground-truth start / end divided by the video's duration
    (so each alpha is in [0, 1]) and ``r(n, m, q_i)`` the hit of R@n,IoU=m (:func:`is_hit` under
    ``iou_rule``).  For n = 1 ``p`` is the top-1 moment (as the paper's formula and BSSARD's
    ``calculate_diou_accuracy``).  For n > 1 the paper names one predicted moment; we take the
    hitting moment among the top n with the largest ``alpha^s * alpha^e`` (ours: dR@n is then
    non-decreasing in n, like R@n, and equals dR@1 when only the top-1 hits).

    pred ``[Q, K, 2]`` seconds (or ``{m: [Q, K, 2]}``, one ranked list per IoU level, as
    :func:`recall_at`), gt ``[Q, 2]`` seconds, duration ``[Q]`` seconds (> 0).
    """
    d = np.asarray(duration.detach().cpu() if isinstance(duration, torch.Tensor) else duration, dtype=np.float64)
    if isinstance(pred, Mapping):
        missing = [m for m in ms if float(m) not in {float(k) for k in pred}]
        if missing:
            raise ValueError(f"no ranked list for IoU level(s) {missing}; have {sorted(pred)}")
        by_level = {float(k): v for k, v in pred.items()}
        per_m = {float(m): discounted_recall_at(by_level[float(m)], gt, d, ns, (m,), iou_rule) for m in ms}
        return {discounted_name(n, m): per_m[float(m)][discounted_name(n, m)] for n in ns for m in ms}
    p, g = _pred_gt(pred, gt)
    if d.shape != (len(g),):
        raise ValueError(f"duration must be [Q] = [{len(g)}], got shape {d.shape}")
    if not (np.isfinite(d).all() and (d > 0).all()):
        raise ValueError(f"duration must be finite and > 0; query rows {np.flatnonzero(~(np.isfinite(d) & (d > 0)))[:10].tolist()}")
    iou = np.nan_to_num(temporal_iou(p, g[:, None, :]), nan=0.0)  # [Q, K]
    dist = np.abs(p - g[:, None, :]) / d[:, None, None]  # [Q, K, 2] normalised boundary distances
    alpha = np.nan_to_num(np.clip(1.0 - dist, 0.0, 1.0).prod(axis=2), nan=0.0)  # [Q, K] alpha^s * alpha^e
    out = {}
    for n in ns:
        for m in ms:
            hit = is_hit(iou[:, :n], m, iou_rule)  # [Q, n]
            out[discounted_name(n, m)] = float(np.mean(np.where(hit, alpha[:, :n], 0.0).max(axis=1, initial=0.0)))
    return out


def mean_iou(pred_top1: Any, gt: Any) -> float:
    """Mean IoU of the top-1 prediction ``[Q, 2]`` with the ground truth ``[Q, 2]``; NaN rows count 0."""
    p = _as_numpy(pred_top1, "pred_top1", (2,))
    p, g = _pred_gt(p[:, None, :], gt)
    return float(np.mean(np.nan_to_num(temporal_iou(p[:, 0], g), nan=0.0)))


def evaluate_predictions(
    pred: Any,
    gt: Any,
    ns: Sequence[int] = (1, 5),
    ms: Sequence[float] = (0.1, 0.3, 0.5, 0.7),
    iou_rule: str = "gt",
    duration: Any = None,
) -> dict[str, float]:
    """All of :func:`recall_at` plus ``"mIoU"`` (top-1), fractions in [0, 1]; with ``duration``
    (``[Q]`` seconds) also every ``dR@n,IoU=m`` (:func:`discounted_recall_at`).

    ``pred`` as in :func:`recall_at` (an array, or ``{m: array}`` per IoU level: mIoU then takes the
    top-1 of the first level's list; NMS never changes the top-1).
    """
    if isinstance(pred, Mapping):
        out = recall_at(pred, gt, ns, ms, iou_rule)
        first = next(iter(pred.values()))
        p, g = _pred_gt(first, gt)
    else:
        p, g = _pred_gt(pred, gt)
        out = recall_at(p, g, ns, ms, iou_rule)
    out["mIoU"] = mean_iou(p[:, 0], g) if p.shape[1] else 0.0
    if duration is not None:
        out.update(discounted_recall_at(pred, g, duration, ns, ms, iou_rule))
    return out


def rank_with_nms(segments: Any, scores: Any, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Host-side NMS of already ranked lists: ``segments [Q, K, 2]``, ``scores [Q, K]`` ->
    the same shapes, each row the survivors of :func:`nms_1d` at ``threshold``, NaN / -inf padded."""
    seg = np.asarray(segments, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    out_seg = np.full_like(seg, np.nan)
    out_sc = np.full_like(sc, -np.inf)
    for q in range(seg.shape[0]):
        ok = ~np.isnan(seg[q, :, 0])
        sq = np.where(ok, sc[q], -np.inf)
        keep = nms_1d(np.nan_to_num(seg[q]), sq, threshold)
        out_seg[q, : len(keep)] = seg[q, keep]
        out_sc[q, : len(keep)] = sc[q, keep]
    return out_seg, out_sc


PRESET_SOURCES = {
    "tall": "TALL's evaluator, jiyanggao/TALL main.py",
    "2dtan": "2D-TAN's evaluator, microsoft/2D-TAN lib/core/eval.py",
    "cmin": "CMIN's evaluation, ikuinen/CMIN_moment_retrieval runners/runner_final.py: the single best box",
}


def protocol(
    iou_rule: str, nms: str, nms_threshold: float, ms: Sequence[float], preset: str = "custom"
) -> dict[str, str]:
    """The evaluation protocol in words (text only: metrics files keep it beside the numbers).

    Keys: ``preset`` (``eval.protocol``), ``iou_rule``, ``hit`` ("IoU > m"), ``nms``,
    ``nms_threshold`` (the fixed one), ``nms_at`` (the threshold per level) and ``text``, one
    sentence with the sources.  Values are strings.
    """
    hit = {"gt": "IoU > m", "ge": "IoU >= m"}[iou_rule] if iou_rule in IOU_RULES else None
    if hit is None:
        raise ValueError(f"iou_rule must be one of {IOU_RULES}, got {iou_rule!r}")
    levels = nms_thresholds(ms, nms, nms_threshold)
    if nms == "fixed":
        nms_at = f"{nms_threshold:g} at every m"
        nms_text = f"one ranked list, NMS at IoU {nms_threshold:g} for every m"
    else:
        nms_at = "m - 0.05 (" + ", ".join(f"m={m:g}: {t:g}" for m, t in levels.items()) + ")"
        nms_text = "one ranked list per m, NMS at m - 0.05 (TALL's evaluator)"
    source = "S4.2 wording, 2D-TAN's code" if iou_rule == "gt" else "TALL's and CMIN's code"
    if preset != "custom" and preset not in PRESET_SOURCES:
        raise ValueError(f"preset must be 'custom' or one of {sorted(PRESET_SOURCES)}, got {preset!r}")
    named = f"preset {preset} ({PRESET_SOURCES[preset]}): " if preset in PRESET_SOURCES else ""
    return {
        "preset": preset,
        "iou_rule": iou_rule,
        "hit": hit,
        "nms": nms,
        "nms_threshold": f"{nms_threshold:g}",
        "nms_at": nms_at,
        "text": f"{named}hit: {hit} ({source}); {nms_text}",
    }
