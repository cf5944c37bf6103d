"""Model output -> ranked moments in seconds (Section 3.5, Inference), batched on the device.

Rank valid candidates by confidence, move their boundaries by the predicted offsets, clip to
``[0, T]`` (an end before its start is raised to the start), greedy 1-D NMS (IoU ``> threshold``
suppresses, ties in score by candidate order, as :func:`fian.metrics.nms_1d`), keep the top k and
convert steps to seconds (``x duration / T``).

The NMS is vectorised over the batch: one sort, then ``top_k`` rounds; each round takes every
query's best remaining candidate and drops the ones overlapping it (an IoU row ``[B, N]``).  That
is exactly greedy NMS stopped after ``top_k`` keeps, with no per-query Python loop, no ``[B, N, N]``
matrix and no host-device sync.  Work and memory are bounded by the number of candidates ``N``, never
by the caller's ``top_k``: a ``top_k`` above ``N`` returns ``N`` columns (all there can be).
"""

from __future__ import annotations

import torch

from fian.metrics import temporal_iou
from fian.model.localization import ModelOutput


def predicted_segments(out: ModelOutput, num_steps: int, offset_unit: str = "steps") -> torch.Tensor:
    """Candidates moved by the predicted offsets, clipped to [0, T] with start <= end: ``[B, N, 2]`` steps."""
    cand = out.candidates.float()  # [N, 2]
    off = out.offsets.float()  # [B, N, 2]
    if offset_unit == "window":
        off = off * (cand[:, 1] - cand[:, 0])[None, :, None]
    elif offset_unit != "steps":
        raise ValueError(f"offset_unit must be 'steps' or 'window', got {offset_unit!r}")
    seg = (cand[None] + off).clamp(0, num_steps)  # [B, N, 2]
    start = seg[..., 0]
    return torch.stack([start, torch.maximum(seg[..., 1], start)], dim=-1)


@torch.no_grad()
def decode(
    out: ModelOutput,
    duration: torch.Tensor,
    num_steps: int,
    nms_threshold: float,
    top_k: int,
    offset_unit: str = "steps",
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ``(segments [B, K, 2] seconds, scores [B, K])``, ``K = min(top_k, N)``, best first.

    Rows with fewer than K survivors are padded with (nan, nan) and score -inf.  ``offset_unit``
    must match ``loss.offset_unit`` of the training run.
    """
    B, N = out.logits.shape
    if duration.shape != (B,):
        raise ValueError(f"duration must be [B={B}], got {tuple(duration.shape)}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    top_k = min(int(top_k), N)  # no more than N windows exist: a client's top_k never sizes the work
    dev = out.logits.device
    seg = predicted_segments(out, num_steps, offset_unit)  # [B, N, 2] steps
    key = torch.where(out.valid, out.logits.float(), float("-inf"))  # invalid candidates never ranked
    key, order = torch.sort(key, dim=1, descending=True, stable=True)  # [B, N]
    seg = seg.gather(1, order[:, :, None].expand(B, N, 2))
    avail = torch.isfinite(key)  # [B, N] not yet kept nor suppressed

    rows = torch.arange(B, device=dev)
    pos = torch.arange(N, device=dev)[None, :]  # [1, N]
    segments = torch.full((B, top_k, 2), float("nan"), device=dev)
    scores = torch.full((B, top_k), float("-inf"), device=dev)
    for k in range(top_k):
        has = avail.any(1)  # [B]
        first = torch.where(avail, pos, N).amin(1).clamp(max=N - 1)  # [B] best remaining rank
        chosen = seg[rows, first]  # [B, 2]
        suppress = temporal_iou(seg, chosen[:, None, :]) > nms_threshold  # [B, N]
        avail = avail & ~suppress & (pos != first[:, None])
        segments[:, k] = torch.where(has[:, None], chosen, float("nan"))
        scores[:, k] = torch.where(has, torch.sigmoid(key[rows, first]), float("-inf"))
    return segments * (duration.float() / num_steps)[:, None, None], scores
