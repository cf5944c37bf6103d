"""Evaluation: batched inference on the device, then R@n, IoU=m and mIoU (Section 4.2).

:func:`evaluate` runs the model over a split in batches of ``eval.batch_size``, decodes each
batch on the device (:func:`fian.inference.decode`: candidates -> seconds, NMS, top k), keeps the
ranked moments on the device and copies them to the host once at the end.

The protocol (``eval.iou_rule``: a hit is IoU > m or >= m; ``eval.nms``: NMS at
``eval.nms_threshold`` for every m, or per IoU level at m - 0.05; see :mod:`fian.metrics`) is
applied here and written, as text, under the ``"protocol"`` key of every metrics file
(:func:`protocol_info`).  Under ``per_level`` each IoU level is scored on its own ranked list.
``predictions_<split>.jsonl`` holds what every number of ``metrics_<split>.json`` was computed
from: the ground truth as scored, the hit rule, the list at ``eval.nms_threshold`` (what a user of
the model gets; R@n under ``fixed``, R@1 and mIoU always) and, under ``per_level``, each level's
own list (``by_level``), so anyone can recompute each metric from that file alone
(tests/test_evaluate.py does, with a plain scorer).

Metrics are **fractions in [0, 1]** everywhere in code, in ``metrics_<split>.json`` (which says
``"unit": "fraction"``) and in MLflow; only the LaTeX tables print percentages.

A predictions record (one per query, JSON lines on disk)::

    {"index": 12, "video_id": "v_x", "sentence": "...", "gt": [3.1, 9.0], "duration": 31.2,
     "segments": [[2.9, 9.4], ...], "scores": [0.93, ...],      # ranked, best first; seconds
     "iou_rule": "gt",                                           # hit: IoU > m ("gt") or >= m ("ge")
     "by_level": {"0.1": [[2.9, 9.4], ...], "0.3": [...], ...}}  # eval.nms per_level only

``gt`` is the ground truth the metrics compared with (the split's float32 seconds); ``by_level``
maps each IoU level m (as in the metric name "R@n,IoU=m") to the ranked list R@n,IoU=m was scored
on; without it every level was scored on ``segments``.  mIoU is the IoU of ``segments[0]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from fian.io import atomic_path, write_json

if TYPE_CHECKING:
    from fian.config import EvalConfig
    from fian.data.dataset import GroundingSplit

PRIMARY_METRIC = "R@1,IoU=0.5"  # the metric that picks the best epoch (Section 4.2's headline)


def metric_names(top_n: Sequence[int], ious: Sequence[float]) -> list[str]:
    return [f"R@{n},IoU={m:g}" for n in top_n for m in ious] + ["mIoU"]


def autocast_ctx(device: torch.device, amp: str) -> Any:
    """bf16 autocast on CUDA when ``amp == "bf16"``; a no-op context otherwise (the CPU runs fp32)."""
    enabled = device.type == "cuda" and amp == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    split: GroundingSplit,
    *,
    eval_cfg: EvalConfig,
    num_steps: int,
    device: torch.device | str,
    amp: str = "off",
    offset_unit: str = "steps",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ranked moments for every query of ``split``, NMS at ``eval.nms_threshold``.

    Returns ``(index [Q] long, segments [Q, K, 2] seconds, scores [Q, K])`` on the host, in the
    order of the split (``index`` = ``Batch.index``, the split's ``rows``), with ``K = max(eval.max_predictions, max(eval.top_n))``; rows that
    kept fewer than K moments after NMS are padded with NaN segments and -inf scores.
    """
    thr = float(eval_cfg.nms_threshold)
    index, ranked = predict_at(
        model, split, eval_cfg=eval_cfg, thresholds=[thr], num_steps=num_steps, device=device, amp=amp,
        offset_unit=offset_unit,
    )  # fmt: skip
    return index, *ranked[thr]


@torch.no_grad()
def predict_at(
    model: torch.nn.Module,
    split: GroundingSplit,
    *,
    eval_cfg: EvalConfig,
    thresholds: Sequence[float],
    num_steps: int,
    device: torch.device | str,
    amp: str = "off",
    offset_unit: str = "steps",
) -> tuple[torch.Tensor, dict[float, tuple[torch.Tensor, torch.Tensor]]]:
    """As :func:`predict`, one forward pass per batch decoded at each NMS threshold of ``thresholds``:
    ``(index [Q], {threshold: (segments [Q, K, 2], scores [Q, K])})`` on the host."""
    from fian.inference import decode

    device = torch.device(device)
    top_k = max(eval_cfg.max_predictions, max(eval_cfg.top_n))
    thrs = sorted({float(t) for t in thresholds})
    was_training = model.training
    model.eval()
    idx_parts: list[torch.Tensor] = []
    parts: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {t: ([], []) for t in thrs}
    try:
        for batch in split.batches(eval_cfg.batch_size, shuffle=False):
            batch = batch.to(device, non_blocking=True)
            with autocast_ctx(device, amp):
                out = model(batch.video, batch.video_mask, batch.words, batch.word_mask)
            out = _float_output(out)
            idx_parts.append(batch.index)
            for t in thrs:
                segs, scores = decode(out, batch.duration, num_steps, t, top_k, offset_unit)  # [B, K, 2] s, [B, K]
                parts[t][0].append(segs.float())
                parts[t][1].append(scores.float())
    finally:
        model.train(was_training)
    if not idx_parts:
        empty = (torch.zeros(0, top_k, 2), torch.zeros(0, top_k))
        return torch.zeros(0, dtype=torch.long), {t: empty for t in thrs}
    # one device -> host copy per threshold for the whole split
    return torch.cat(idx_parts).cpu(), {t: (torch.cat(s).cpu(), torch.cat(c).cpu()) for t, (s, c) in parts.items()}


def level_thresholds(eval_cfg: EvalConfig) -> dict[float, float]:
    """IoU level m -> NMS threshold of the list scored at m, under ``eval.nms``."""
    from fian.metrics import nms_thresholds

    return nms_thresholds(eval_cfg.iou_thresholds, eval_cfg.nms, eval_cfg.nms_threshold)


def protocol_info(eval_cfg: EvalConfig) -> dict[str, str]:
    """The protocol in words, for the ``"protocol"`` key of metrics files (text only)."""
    from fian.metrics import protocol

    return protocol(eval_cfg.iou_rule, eval_cfg.nms, eval_cfg.nms_threshold, eval_cfg.iou_thresholds, eval_cfg.protocol)


def predict_and_score(
    model: torch.nn.Module,
    split: GroundingSplit,
    *,
    eval_cfg: EvalConfig,
    num_steps: int,
    device: torch.device | str,
    amp: str = "off",
    offset_unit: str = "steps",
    discounted: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], dict[float, np.ndarray], dict[str, float]]:
    """Ranked moments at ``eval.nms_threshold``, the list each IoU level was scored on and the
    metrics under the protocol of ``eval_cfg``:
    ``(index [Q], (segments [Q, K, 2], scores [Q, K]), {m: segments [Q, K, 2]}, metrics)``;
    ``discounted``: with the dR@n,IoU=m of Yuan et al. 2021 (the metrics files; not the per-epoch
    validation)."""
    levels = level_thresholds(eval_cfg)
    fixed = float(eval_cfg.nms_threshold)
    index, ranked = predict_at(
        model, split, eval_cfg=eval_cfg, thresholds=[fixed, *levels.values()], num_steps=num_steps,
        device=device, amp=amp, offset_unit=offset_unit,
    )  # fmt: skip
    gt = split.gt.detach().cpu().numpy()  # [Q, 2] seconds, in split order as the predictions
    by_level = {m: ranked[t][0].numpy() for m, t in levels.items()}
    durations = split.duration.detach().cpu().numpy() if discounted else None  # [Q] seconds
    metrics = score_predictions(by_level, gt, top_n=eval_cfg.top_n, ious=eval_cfg.iou_thresholds,
                                iou_rule=eval_cfg.iou_rule, durations=durations)  # fmt: skip
    return index, ranked[fixed], by_level, metrics


def _float_output(out: Any) -> Any:
    """The model output with floating tensors in fp32 (autocast leaves some in bf16)."""
    import dataclasses

    if dataclasses.is_dataclass(out):
        changes = {
            f.name: getattr(out, f.name).float()
            for f in dataclasses.fields(out)
            if isinstance(getattr(out, f.name), torch.Tensor) and getattr(out, f.name).is_floating_point()
        }
        return dataclasses.replace(out, **changes)
    return out


def score_predictions(
    segments: np.ndarray | Mapping[float, np.ndarray],
    gt: np.ndarray,
    *,
    top_n: Sequence[int],
    ious: Sequence[float],
    iou_rule: str,
    durations: np.ndarray | None = None,
) -> dict[str, float]:
    """R@n, IoU=m and mIoU (fractions) of ranked ``segments [Q, K, 2]`` (or ``{m: [Q, K, 2]}``, one
    ranked list per IoU level) against ``gt [Q, 2]``; a hit is IoU > m (``"gt"``) or >= m (``"ge"``).
    With ``durations [Q]`` (seconds) also dR@n,IoU=m (:func:`fian.metrics.discounted_recall_at`)."""
    from fian.metrics import evaluate_predictions

    if len(gt) == 0:
        raise ValueError("no queries to evaluate")
    metrics = evaluate_predictions(segments, gt, tuple(top_n), tuple(ious), iou_rule, duration=durations)
    return {k: float(v) for k, v in metrics.items()}


def score_ranked(segments: np.ndarray, scores: np.ndarray, gt: np.ndarray, *, eval_cfg: EvalConfig,
                 durations: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of lists ranked elsewhere (the moment prior: ``segments [Q, K, 2]``, ``scores [Q, K]``)
    under the protocol of ``eval_cfg``: each level's list is the host-side NMS of the given one
    (with ``durations [Q]``: dR@n,IoU=m too)."""
    by_level = rank_levels(segments, scores, eval_cfg)
    return score_predictions(by_level, gt, top_n=eval_cfg.top_n, ious=eval_cfg.iou_thresholds, iou_rule=eval_cfg.iou_rule,
                             durations=durations)  # fmt: skip


def rank_levels(segments: np.ndarray, scores: np.ndarray, eval_cfg: EvalConfig) -> dict[float, np.ndarray]:
    """``{m: segments [Q, K, 2]}``: the list of each IoU level m, the host-side NMS of ranked
    ``segments``/``scores`` at that level's threshold (:func:`level_thresholds`), NaN padded."""
    from fian.metrics import rank_with_nms

    return {m: rank_with_nms(segments, scores, t)[0] for m, t in level_thresholds(eval_cfg).items()}


def _unpadded(segments: np.ndarray, scores: np.ndarray | None = None) -> tuple[list, list | None]:
    """Ranked ``[Q, K, 2]`` (and ``[Q, K]``) -> per query Python lists without the NaN padding."""
    keep = ~np.isnan(segments[..., 0])  # [Q, K]
    seg_lists = np.asarray(segments, dtype=np.float64).tolist()  # C-speed conversion, [[s, e], ...] per query
    score_lists = None if scores is None else np.asarray(scores, dtype=np.float64).tolist()
    for q in np.flatnonzero(~keep.all(axis=1)):  # only rows padded after NMS
        seg_lists[q] = [s for s, k in zip(seg_lists[q], keep[q], strict=True) if k]
        if score_lists is not None:
            score_lists[q] = [x for x, k in zip(score_lists[q], keep[q], strict=True) if k]
    return seg_lists, score_lists


def predictions_frame(
    records: pd.DataFrame,
    index: np.ndarray,
    segments: np.ndarray,
    scores: np.ndarray,
    *,
    gt: np.ndarray | None = None,
    by_level: Mapping[float, np.ndarray] | None = None,
    iou_rule: str | None = None,
) -> pd.DataFrame:
    """One row per query: index, video_id, sentence, gt_start, gt_end, duration, segments, scores
    (and iou_rule, by_level when given).

    ``records`` is the split's table (video_id, sentence, start, end, duration) in the order of
    the predictions, ``index`` the row id of each query (``GroundingSplit.rows``).  ``gt [Q, 2]``:
    the ground truth the metrics used (else the records' start, end).  ``by_level``: ``{m: [Q, K,
    2]}``, the list each IoU level was scored on (kept, as ``{"m": [[s, e], ...]}`` per row, only
    where some level's list differs from ``segments``).  NaN padding moments are dropped.
    """
    if len(records) != len(index):
        raise ValueError(f"{len(records)} records for {len(index)} predictions")
    rec = records
    seg_lists, score_lists = _unpadded(segments, scores)
    gts = np.stack([rec["start"].to_numpy(dtype=np.float64), rec["end"].to_numpy(dtype=np.float64)], 1) if gt is None else gt
    if gts.shape != (len(index), 2):
        raise ValueError(f"gt must be [{len(index)}, 2], got {gts.shape}")
    frame = pd.DataFrame(
        {
            "index": np.asarray(index, dtype=np.int64),
            "video_id": rec["video_id"].astype(str).to_numpy(),
            "sentence": rec["sentence"].astype(str).to_numpy(),
            "gt_start": np.asarray(gts[:, 0], dtype=np.float64),
            "gt_end": np.asarray(gts[:, 1], dtype=np.float64),
            "duration": rec["duration"].to_numpy(dtype=np.float64),
            "segments": seg_lists,
            "scores": score_lists,
        }
    )
    if iou_rule is not None:
        frame["iou_rule"] = iou_rule
    same = by_level is None or all(np.array_equal(v, segments, equal_nan=True) for v in by_level.values())
    if not same:
        lists = {f"{m:g}": _unpadded(np.asarray(v))[0] for m, v in by_level.items()}
        frame["by_level"] = [{m: lists[m][q] for m in lists} for q in range(len(frame))]
    return frame


def evaluate(
    model: torch.nn.Module,
    split: GroundingSplit,
    *,
    eval_cfg: EvalConfig,
    num_steps: int,
    device: torch.device | str,
    amp: str = "off",
    offset_unit: str = "steps",
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Predictions (one record per query, NMS at ``eval.nms_threshold``) and metrics (fractions,
    under ``eval.iou_rule`` / ``eval.nms``) of ``model`` on ``split``.

    ``amp``: ``train.amp`` (bf16 autocast on CUDA); ``offset_unit``: ``loss.offset_unit`` of the run.
    """
    index, (segs, scores), by_level, metrics = predict_and_score(
        model, split, eval_cfg=eval_cfg, num_steps=num_steps, device=device, amp=amp, offset_unit=offset_unit,
        discounted=True,
    )
    frame = predictions_frame(
        split.records, index.numpy(), segs.numpy(), scores.numpy(),
        gt=split.gt.detach().cpu().numpy(), by_level=by_level, iou_rule=eval_cfg.iou_rule,
    )  # fmt: skip
    return frame, metrics


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def write_predictions(path: str | Path, frame: pd.DataFrame) -> None:
    """JSON lines, one query per line (see the module docstring), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for row in frame.itertuples(index=False):
            f.write(
                json.dumps(
                    {
                        "index": int(row.index),
                        "video_id": row.video_id,
                        "sentence": row.sentence,
                        "gt": [row.gt_start, row.gt_end],
                        "duration": row.duration,
                        "segments": row.segments,
                        "scores": [s if math.isfinite(s) else None for s in row.scores],
                        **({"iou_rule": row.iou_rule} if "iou_rule" in frame.columns else {}),
                        **({"by_level": row.by_level} if "by_level" in frame.columns else {}),
                    }
                )
                + "\n"
            )


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a predictions file back; a malformed line raises naming the file and line number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                rows.append(
                    {
                        "index": int(r["index"]),
                        "video_id": r["video_id"],
                        "sentence": r["sentence"],
                        "gt_start": float(r["gt"][0]),
                        "gt_end": float(r["gt"][1]),
                        "duration": float(r["duration"]),
                        "segments": [[float(x) for x in s] for s in r["segments"]],
                        "scores": [float("-inf") if s is None else s for s in r["scores"]],
                        **({"iou_rule": str(r["iou_rule"])} if "iou_rule" in r else {}),
                        **({"by_level": {str(m): [[float(x) for x in s] for s in v] for m, v in r["by_level"].items()}}
                           if "by_level" in r else {}),
                    }
                )
            except (ValueError, KeyError, TypeError, IndexError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
                why = "JSON nested too deeply" if isinstance(e, RecursionError) else e
                raise ValueError(f"{path}: line {i}: not a predictions record ({why})") from None
    return pd.DataFrame(rows)


def write_metrics(
    path: str | Path, metrics: dict[str, float], *, split: str, n_queries: int,
    protocol: dict[str, str], info: str | Path | None = None, **extra: Any,
) -> None:  # fmt: skip
    """``metrics_<split>.json``: flat, fractions, with ``"unit": "fraction"`` said explicitly, and the
    protocol (:func:`protocol_info`, text only) under the one key ``"protocol"``.

    With ``info``, the metrics file keeps only the numbers and the rest (``unit``, ``split``, the
    protocol, text extras) goes to ``info``: DVC lists every key of a metrics file as a metric,
    strings included."""
    record = {**metrics, "unit": "fraction", "split": split, "n_queries": int(n_queries), "protocol": protocol, **extra}
    if info is None:
        write_json(path, record)
        return
    numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    write_json(path, numbers)
    write_json(info, {k: v for k, v in record.items() if k not in numbers})
