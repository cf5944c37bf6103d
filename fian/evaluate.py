"""Evaluation: batched inference on the device, then R@n, IoU=m and mIoU (Section 4.2).

:func:`evaluate` runs the model over a split in batches of ``eval.batch_size``, decodes each
batch on the device (:func:`fian.inference.decode`: candidates -> seconds, NMS, top k), keeps the
ranked moments on the device and copies them to the host once at the end.

Metrics are **fractions in [0, 1]** everywhere in code, in ``metrics_<split>.json`` (which says
``"unit": "fraction"``) and in MLflow; only the LaTeX tables print percentages.

A predictions record (one per query, JSON lines on disk)::

    {"index": 12, "video_id": "v_x", "sentence": "...", "gt": [3.1, 9.0], "duration": 31.2,
     "segments": [[2.9, 9.4], ...], "scores": [0.93, ...]}       # ranked, best first; seconds
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
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
    """Ranked moments for every query of ``split``.

    Returns ``(index [Q] long, segments [Q, K, 2] seconds, scores [Q, K])`` on the host, in the
    order of the split (``index`` = ``Batch.index``, the split's ``rows``), with ``K = max(eval.max_predictions, max(eval.top_n))``; rows that
    kept fewer than K moments after NMS are padded with NaN segments and -inf scores.
    """
    from fian.inference import decode

    device = torch.device(device)
    top_k = max(eval_cfg.max_predictions, max(eval_cfg.top_n))
    was_training = model.training
    model.eval()
    idx_parts, seg_parts, score_parts = [], [], []
    try:
        for batch in split.batches(eval_cfg.batch_size, shuffle=False):
            batch = batch.to(device, non_blocking=True)
            with autocast_ctx(device, amp):
                out = model(batch.video, batch.video_mask, batch.words, batch.word_mask)
            segs, scores = decode(
                _float_output(out), batch.duration, num_steps, eval_cfg.nms_threshold, top_k, offset_unit
            )  # [B, K, 2] seconds, [B, K]
            idx_parts.append(batch.index)
            seg_parts.append(segs.float())
            score_parts.append(scores.float())
    finally:
        model.train(was_training)
    if not idx_parts:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, top_k, 2), torch.zeros(0, top_k)
    # one device -> host copy for the whole split
    return torch.cat(idx_parts).cpu(), torch.cat(seg_parts).cpu(), torch.cat(score_parts).cpu()


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
    segments: np.ndarray, gt: np.ndarray, *, top_n: Sequence[int], ious: Sequence[float]
) -> dict[str, float]:
    """R@n, IoU=m and mIoU (fractions) of ranked ``segments [Q, K, 2]`` against ``gt [Q, 2]``."""
    from fian.metrics import evaluate_predictions

    if len(gt) == 0:
        raise ValueError("no queries to evaluate")
    metrics = evaluate_predictions(segments, gt, tuple(top_n), tuple(ious))
    return {k: float(v) for k, v in metrics.items()}


def predictions_frame(
    records: pd.DataFrame, index: np.ndarray, segments: np.ndarray, scores: np.ndarray
) -> pd.DataFrame:
    """One row per query: index, video_id, sentence, gt_start, gt_end, duration, segments, scores.

    ``records`` is the split's table (video_id, sentence, start, end, duration) in the order of
    the predictions, ``index`` the row id of each query (``GroundingSplit.rows``).  NaN padding
    moments are dropped from the ranked lists.
    """
    if len(records) != len(index):
        raise ValueError(f"{len(records)} records for {len(index)} predictions")
    rec = records
    keep = ~np.isnan(segments[..., 0])  # [Q, K]
    seg_lists = np.asarray(segments, dtype=np.float64).tolist()  # C-speed conversion, [[s, e], ...] per query
    score_lists = np.asarray(scores, dtype=np.float64).tolist()
    for q in np.flatnonzero(~keep.all(axis=1)):  # only rows padded after NMS
        seg_lists[q] = [s for s, k in zip(seg_lists[q], keep[q], strict=True) if k]
        score_lists[q] = [x for x, k in zip(score_lists[q], keep[q], strict=True) if k]
    return pd.DataFrame(
        {
            "index": np.asarray(index, dtype=np.int64),
            "video_id": rec["video_id"].astype(str).to_numpy(),
            "sentence": rec["sentence"].astype(str).to_numpy(),
            "gt_start": rec["start"].to_numpy(dtype=np.float64),
            "gt_end": rec["end"].to_numpy(dtype=np.float64),
            "duration": rec["duration"].to_numpy(dtype=np.float64),
            "segments": seg_lists,
            "scores": score_lists,
        }
    )


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
    """Predictions (one record per query) and metrics (fractions) of ``model`` on ``split``.

    ``amp``: ``train.amp`` (bf16 autocast on CUDA); ``offset_unit``: ``loss.offset_unit`` of the run.
    """
    index, segs, scores = predict(
        model, split, eval_cfg=eval_cfg, num_steps=num_steps, device=device, amp=amp, offset_unit=offset_unit
    )
    gt = split.gt.detach().cpu().numpy()  # [Q, 2] seconds, in split order as the predictions
    metrics = score_predictions(segs.numpy(), gt, top_n=eval_cfg.top_n, ious=eval_cfg.iou_thresholds)
    frame = predictions_frame(split.records, index.numpy(), segs.numpy(), scores.numpy())
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
                    }
                )
                + "\n"
            )


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a predictions file back; a malformed line raises naming the file and line number."""
    rows = []
    with open(path) as f:
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
                    }
                )
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise ValueError(f"{path}: line {i}: not a predictions record ({e})") from None
    return pd.DataFrame(rows)


def write_metrics(
    path: str | Path, metrics: dict[str, float], *, split: str, n_queries: int, info: str | Path | None = None, **extra: Any
) -> None:
    """``metrics_<split>.json``: flat, fractions, with ``"unit": "fraction"`` said explicitly.

    With ``info``, the metrics file keeps only the numbers and the rest (``unit``, ``split``, text
    extras) goes to ``info``: DVC lists every key of a metrics file as a metric, strings included."""
    record = {**metrics, "unit": "fraction", "split": split, "n_queries": int(n_queries), **extra}
    if info is None:
        write_json(path, record)
        return
    numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    write_json(path, numbers)
    write_json(info, {k: v for k, v in record.items() if k not in numbers})
