"""Training loss of Section 3.5: alignment (eq. 15-16), boundary (eq. 17), joint (eq. 18).

Only valid candidates (inside the real video) count.  o_j is the IoU of candidate j with the
ground truth (closed-open, in steps); candidates with ``o_j > tau`` are positive, the other valid
ones negative; N_pos and N_neg are counted over the whole batch.

- Alignment: binary cross-entropy of cs_j = sigmoid(logit_j) against the soft target o_j,
  computed from the logits (``binary_cross_entropy_with_logits``, stable), summed over positives
  / N_pos plus summed over negatives / N_neg (eq. 16 averages each group separately).
- Boundary: smooth-L1 (beta = 1) of predicted minus target offsets, start plus end, summed over
  positives / N_pos.  Targets ``delta = gt - candidate`` in steps, or divided by the window length
  when ``offset_unit == "window"``.
- A batch without any positive has a positive term of 0 and a boundary loss of 0 (nothing to
  align with or regress towards); an all-negative batch still trains the negative term.

No host-device sync except the finiteness check (one, optional via ``check_finite``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fian.config import Config
from fian.metrics import temporal_iou
from fian.model.localization import ModelOutput


def seconds_to_steps(gt: torch.Tensor, duration: torch.Tensor, num_steps: int) -> torch.Tensor:
    """gt ``[B, 2]`` seconds -> steps: ``seconds / duration * T`` (docs/ARCHITECTURE.md, Time)."""
    if gt.dim() != 2 or gt.shape[1] != 2 or duration.shape != gt.shape[:1]:
        raise ValueError(
            f"gt must be [B, 2] and duration [B], got {tuple(gt.shape)} and {tuple(duration.shape)}"
        )
    return gt / duration[:, None] * num_steps


def candidate_iou(candidates: torch.Tensor, gt_steps: torch.Tensor) -> torch.Tensor:
    """o_j: IoU of every candidate ``[N, 2]`` with each ground truth ``[B, 2]`` -> ``[B, N]``."""
    return temporal_iou(candidates[None, :, :], gt_steps[:, None, :])


def offset_targets(candidates: torch.Tensor, gt_steps: torch.Tensor, unit: str) -> torch.Tensor:
    """delta = gt - candidate, ``[B, N, 2]``, in steps or in window lengths (eq. 17)."""
    delta = gt_steps[:, None, :] - candidates[None, :, :]
    if unit == "window":
        delta = delta / (candidates[:, 1] - candidates[:, 0])[None, :, None]
    return delta


class FIANLoss(nn.Module):
    """L = L_align + alpha * L_b (eq. 18).  ``forward`` returns a dict of 0-dim tensors.

    Keys: ``loss``, ``align``, ``boundary`` and ``n_pos`` (positives in the batch, a tensor).
    Raises FloatingPointError naming the term when a term is not finite (``check_finite``).
    """

    def __init__(
        self,
        tau: float,
        alpha: float,
        offset_unit: Literal["steps", "window"] = "steps",
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if not 0 < tau < 1:
            raise ValueError(f"tau must be in (0, 1), got {tau}")
        if offset_unit not in ("steps", "window"):
            raise ValueError(f"offset_unit must be 'steps' or 'window', got {offset_unit!r}")
        self.tau, self.alpha, self.offset_unit, self.check_finite = tau, alpha, offset_unit, check_finite

    def forward(self, out: ModelOutput, gt_steps: torch.Tensor) -> dict[str, torch.Tensor]:
        B, N = out.logits.shape
        if gt_steps.shape != (B, 2):
            raise ValueError(f"gt_steps must be [B={B}, 2] steps, got {tuple(gt_steps.shape)}")
        logits = out.logits.float()  # [B, N]
        gt = gt_steps.float()
        o = candidate_iou(out.candidates.float(), gt)  # [B, N] soft targets
        pos = out.valid & (o > self.tau)  # [B, N]
        neg = out.valid & ~pos
        n_pos = pos.sum()
        n_neg = neg.sum()

        # eq. 15 negated: -(o log cs + (1 - o) log(1 - cs)), per candidate
        bce = F.binary_cross_entropy_with_logits(logits, o, reduction="none")  # [B, N]
        zero = torch.zeros((), device=logits.device)
        align = torch.where(pos, bce, zero).sum() / n_pos.clamp(min=1) + torch.where(
            neg, bce, zero
        ).sum() / n_neg.clamp(min=1)  # eq. 16

        target = offset_targets(out.candidates.float(), gt, self.offset_unit)  # [B, N, 2]
        r1 = F.smooth_l1_loss(out.offsets.float(), target, reduction="none", beta=1.0).sum(-1)  # [B, N]
        boundary = torch.where(pos, r1, zero).sum() / n_pos.clamp(min=1)  # eq. 17

        loss = align + self.alpha * boundary  # eq. 18
        if self.check_finite:
            terms = torch.stack([align, boundary])
            if not bool(torch.isfinite(terms).all()):
                values = dict(zip(("align", "boundary"), terms.tolist(), strict=True))
                bad = [name for name, v in values.items() if not math.isfinite(v)]
                raise FloatingPointError(f"non-finite loss term(s) {bad}: {values}")
        return {"loss": loss, "align": align, "boundary": boundary, "n_pos": n_pos}


def build_loss(cfg: Config) -> FIANLoss:
    """FIANLoss from ``cfg.loss``.  The TGN head (Table 5) predicts no offsets: alpha is 0 for it."""
    alpha = 0.0 if cfg.model.head == "tgn" else cfg.loss.alpha
    return FIANLoss(tau=cfg.loss.tau, alpha=alpha, offset_unit=cfg.loss.offset_unit)
