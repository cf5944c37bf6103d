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

The Table 5 heads are trained with their own papers' losses: :class:`TGNLoss` (TGN's weighted
binary cross-entropy) and :class:`CMINLoss` (CMIN's BCE over soft anchor labels plus regression
of the best anchor); :func:`build_loss` picks the loss of ``model.head``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fian.config import Config
from fian.data.dataset import GroundingSplit
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
            _finite_or_raise(align, boundary)
        return {"loss": loss, "align": align, "boundary": boundary, "n_pos": n_pos}


def _finite_or_raise(align: torch.Tensor, boundary: torch.Tensor) -> None:
    terms = torch.stack([align, boundary])
    if not bool(torch.isfinite(terms).all()):
        values = dict(zip(("align", "boundary"), terms.tolist(), strict=True))
        bad = [name for name, v in values.items() if not math.isfinite(v)]
        raise FloatingPointError(f"non-finite loss term(s) {bad}: {values}")


# --------------------------------------------------------------------------------------------
# Table 5: the losses of the substitute heads (fian.model.localization.TGNHead / CMINHead)
# --------------------------------------------------------------------------------------------


def tgn_labels(iou: torch.Tensor, pos_iou: float, neg_iou: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TGN's anchor labels from the IoU ``o``: positive ``o > pos_iou``, negative ``o <= neg_iou``,
    ignored in between (JaywongWang/TGN data_provider.py: ``proposal_tiou_threshold`` and
    ``negative_tiou_threshold``; its TACoS run sets both to 0.5, so nothing is ignored there).

    Our choice: a negative is ``o <= neg_iou`` (the re-implementation writes ``o < neg``, and, when
    it does not mask, labels everything that is not positive 0): with ``neg_iou == pos_iou`` this is
    exactly "every non-positive is negative", the TACoS setting.
    """
    return iou > pos_iou, iou <= neg_iou


def tgn_scale_weights(
    gt_steps: torch.Tensor,
    lengths: torch.Tensor,
    num_steps: int,
    widths: Sequence[int],
    pos_iou: float,
    chunk: int = 512,
    form: Literal["pos_weight", "frequency"] = "pos_weight",
) -> tuple[torch.Tensor, torch.Tensor]:
    """TGN's per-scale weights ``(w_0^k, w_1^k)`` of its weighted cross-entropy, from the training set.

    TGN (Chen et al. EMNLP 2018, S3.4) weights the positive and the negative term of scale k by
    weights "calculated according to the frequency of positive and negative samples" of that scale
    in the training data; JaywongWang/TGN (datasets/tacos/get_anchor_weight.py) computes
    ``p_k = #positives_k / #anchors_k`` over the training moments and stores ``w_0^k = 1 - p_k``
    (positive term) and ``w_1^k = p_k`` (negative term): rare positives weigh more.

    ``form`` (``loss.tgn_weights``): what the loss multiplies its two terms by.

    - ``pos_weight`` (default): what the re-implementation trains with.  Its data_provider.py
      (lines 73-75) rescales the stored pair, ``w_0 /= w_1; w_1 = 1``, and its model.py (lines
      347-348) calls ``tf.nn.weighted_cross_entropy_with_logits(pos_weight=w_0)``: positive term
      ``(1 - p_k) / p_k``, negative term 1.
    - ``frequency``: the stored pair as it is, ``(1 - p_k, p_k)`` (TGN's paper text and
      get_anchor_weight.py); it is the default form divided by ``1 / p_k``, a different factor per
      scale (13x between the re-implementation's TACoS scales, ~300x on ours at T = 200), so
      the scales are balanced differently.

    Here ``#anchors_k`` counts the valid anchors of width k (ending inside each moment's video,
    ``lengths`` real steps) over the training moments ``gt_steps [M, 2]`` (steps); the
    re-implementation samples random 60-step crops instead: we have whole videos of T steps.
    Ours: a scale with no positive at all would get ``w_1^k = 0`` (no gradient ever): the count of
    positives is kept in ``[1, #anchors_k - 1]`` (as if one positive / one negative were seen).  Returns ``(w_pos [K], w_neg [K])`` float32.
    """
    from fian.model.localization import anchor_grid

    if gt_steps.dim() != 2 or gt_steps.shape[1] != 2 or lengths.shape != gt_steps.shape[:1]:
        raise ValueError(
            f"gt_steps must be [M, 2] and lengths [M], got {tuple(gt_steps.shape)}, {tuple(lengths.shape)}"
        )
    if gt_steps.shape[0] == 0:
        raise ValueError("TGN's scale weights need at least one training moment")
    cands, _, width = anchor_grid(num_steps, widths, "end")
    K = len(widths)
    n_pos = torch.zeros(K, dtype=torch.float64)
    n_all = torch.zeros(K, dtype=torch.float64)
    for i in range(0, gt_steps.shape[0], chunk):
        gt = gt_steps[i : i + chunk].double()
        valid = cands[None, :, 1].double() <= lengths[i : i + chunk, None].double()  # [m, N]
        pos = valid & (candidate_iou(cands.double(), gt) > pos_iou)
        n_pos.index_add_(0, width, pos.sum(0).double())
        n_all.index_add_(0, width, valid.sum(0).double())
    if (n_all == 0).any():
        raise ValueError(
            f"anchor widths {[w for w, n in zip(widths, n_all.tolist(), strict=True) if n == 0]} fit no training video"
        )
    p = torch.minimum(n_pos.clamp(min=1.0), (n_all - 1).clamp(min=1.0)) / n_all  # 1 <= #pos <= #all - 1
    if form == "frequency":
        return (1 - p).float(), p.float()
    if form == "pos_weight":  # w_0 /= w_1; w_1 = 1 (JaywongWang/TGN data_provider.py:73-75)
        return ((1 - p) / p).float(), torch.ones_like(p).float()
    raise ValueError(f"form must be 'pos_weight' or 'frequency', got {form!r}")


class TGNLoss(nn.Module):
    """TGN's weighted binary cross-entropy (Chen et al. EMNLP 2018, S3.4, eq. of the grounder):

        L(t) = -sum_k [ w_0^k y_t^k log c_t^k + w_1^k (1 - y_t^k) log(1 - c_t^k) ]

    with ``y`` the IoU-thresholded labels (:func:`tgn_labels`) and ``(w_0^k, w_1^k)`` the per-scale
    weights of :func:`tgn_scale_weights`.  Summed over the valid, labelled anchors and divided by
    the number of real steps in the batch (TGN sums over t; JaywongWang/TGN model.py sums over k
    and averages over the real steps: that normalisation is taken, so the loss does not grow with T).
    TGN regresses nothing: ``boundary`` is 0.  Keys as :class:`FIANLoss`; ``n_pos`` = positives.

    ``width_index [N]`` maps each candidate of the head to its scale k (the head's anchor grid).
    """

    offset_unit = "steps"

    def __init__(
        self,
        w_pos: torch.Tensor,
        w_neg: torch.Tensor,
        width_index: torch.Tensor,
        pos_iou: float = 0.5,
        neg_iou: float = 0.5,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if not 0 < neg_iou <= pos_iou < 1:
            raise ValueError(f"need 0 < neg_iou <= pos_iou < 1, got neg {neg_iou}, pos {pos_iou}")
        if w_pos.shape != w_neg.shape or w_pos.dim() != 1:
            raise ValueError(f"w_pos and w_neg must be [K], got {tuple(w_pos.shape)}, {tuple(w_neg.shape)}")
        self.register_buffer("w_pos", w_pos[width_index].float(), persistent=False)  # [N]
        self.register_buffer("w_neg", w_neg[width_index].float(), persistent=False)  # [N]
        self.pos_iou, self.neg_iou, self.check_finite = pos_iou, neg_iou, check_finite

    def forward(self, out: ModelOutput, gt_steps: torch.Tensor) -> dict[str, torch.Tensor]:
        B, N = out.logits.shape
        if gt_steps.shape != (B, 2):
            raise ValueError(f"gt_steps must be [B={B}, 2] steps, got {tuple(gt_steps.shape)}")
        if N != self.w_pos.shape[0]:
            raise ValueError(f"the head has {N} anchors, the TGN loss was built for {self.w_pos.shape[0]}")
        logits = out.logits.float()
        cands = out.candidates.float()
        o = candidate_iou(cands, gt_steps.float())  # [B, N]
        pos, neg = tgn_labels(o, self.pos_iou, self.neg_iou)
        pos, neg = pos & out.valid, neg & out.valid
        # -log c = softplus(-x), -log(1 - c) = softplus(x): stable in the logits
        # the training loop does not move the loss: weights follow the logits (a no-op once there)
        w_pos, w_neg = self.w_pos.to(logits.device), self.w_neg.to(logits.device)
        term = torch.where(pos, w_pos * F.softplus(-logits), 0.0) + torch.where(
            neg, w_neg * F.softplus(logits), 0.0
        )
        # real steps of the batch (from the heads' lengths: the last valid anchor end would count 0
        # steps for a video shorter than the narrowest anchor)
        if out.lengths is None or out.lengths.shape != (B,):
            got = None if out.lengths is None else tuple(out.lengths.shape)
            raise ValueError(f"TGNLoss averages over the real steps: needs ModelOutput.lengths [B={B}], got {got}")
        align = term.sum() / out.lengths.sum().clamp(min=1)
        boundary = torch.zeros((), device=logits.device)
        if self.check_finite:
            _finite_or_raise(align, boundary)
        return {"loss": align, "align": align, "boundary": boundary, "n_pos": pos.sum()}


def cmin_labels(iou: torch.Tensor, valid: torch.Tensor, min_ratio: float) -> torch.Tensor:
    """CMIN's soft anchor labels (ikuinen/CMIN_moment_retrieval dataloaders/clip_loader.py):
    IoU of invalid anchors 0; per query, IoUs below ``min_ratio`` (0.3) x the best IoU set to 0;
    the rest divided by the best IoU, so the best anchor has label 1.  A query whose best IoU is 0
    (CMIN stops the run on it) gets all-zero labels.  ``iou, valid [B, N]`` -> ``[B, N]``.
    """
    o = torch.where(valid, iou, 0.0)
    best = o.amax(1, keepdim=True)  # [B, 1]
    return torch.where((o >= min_ratio * best) & (best > 0), o / best.clamp(min=1e-12), 0.0)


class CMINLoss(nn.Module):
    """CMIN's loss (ikuinen/CMIN_moment_retrieval models_/gcn_final.py ``Model.forward``):

        L = BCE(sigmoid(logits), labels) + alpha * SmoothL1(anchor* + reg*, gt)

    - BCE against the soft labels of :func:`cmin_labels`, ``nn.BCELoss`` mean over the whole
      ``[B, T, K]`` proposal grid: CMIN multiplies the illegal anchors' scores by 0 (their labels are
      0, so they add 0 but count in the mean).  Here ``grid_size = T * K`` is that denominator per
      query, and invalid anchors add 0.
    - Regression of the best anchor only: at training CMIN takes ``argmax(label)`` (the first best in
      the grid's order, which :func:`~fian.model.localization.anchor_grid` keeps), adds its
      predicted ``reg`` to it and applies ``nn.SmoothL1Loss`` (beta 1, mean over the B x 2
      coordinates) against the ground truth; here offsets and targets in steps, gt - anchor.
      Queries without any overlapping anchor (all-zero labels) do not count.
    - alpha = ``loss.alpha``, 1e-3 in CMIN (params/variants/cmin.yaml).

    CMIN quantises the ground truth to whole frames (inclusive ends, IoU with "+1"); we keep the
    continuous steps and the closed-open IoU of the rest of the project (:func:`candidate_iou`).
    Keys as :class:`FIANLoss`; ``n_pos`` = anchors with a non-zero label.
    """

    offset_unit = "steps"

    def __init__(
        self, grid_size: int, alpha: float = 1e-3, min_ratio: float = 0.3, check_finite: bool = True
    ) -> None:
        super().__init__()
        if grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {grid_size}")
        if not 0 <= min_ratio < 1:
            raise ValueError(f"min_ratio must be in [0, 1), got {min_ratio}")
        self.grid_size, self.alpha, self.min_ratio, self.check_finite = (
            grid_size,
            alpha,
            min_ratio,
            check_finite,
        )

    def forward(self, out: ModelOutput, gt_steps: torch.Tensor) -> dict[str, torch.Tensor]:
        B, N = out.logits.shape
        if gt_steps.shape != (B, 2):
            raise ValueError(f"gt_steps must be [B={B}, 2] steps, got {tuple(gt_steps.shape)}")
        if N > self.grid_size:
            raise ValueError(f"the head has {N} anchors, more than the grid of {self.grid_size}")
        logits = out.logits.float()
        cands, gt = out.candidates.float(), gt_steps.float()
        labels = cmin_labels(candidate_iou(cands, gt), out.valid, self.min_ratio)  # [B, N]
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        align = torch.where(out.valid, bce, 0.0).sum() / (B * self.grid_size)

        has = labels.amax(1) > 0  # [B] queries with a best anchor
        best = labels.argmax(1)  # [B] first maximum, as CMIN's torch.argmax
        rows = torch.arange(B, device=logits.device)
        target = gt - cands[best]  # [B, 2]
        r1 = F.smooth_l1_loss(out.offsets.float()[rows, best], target, reduction="none", beta=1.0).sum(1)
        boundary = torch.where(has, r1, 0.0).sum() / (2 * has.sum()).clamp(min=1)

        loss = align + self.alpha * boundary
        if self.check_finite:
            _finite_or_raise(align, boundary)
        return {"loss": loss, "align": align, "boundary": boundary, "n_pos": (labels > 0).sum()}


def training_moments(split: GroundingSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gt_steps [M, 2], lengths [M])`` of a training split, for :func:`build_loss`: each moment
    in steps and the real steps of its video (on the CPU)."""
    gt = seconds_to_steps(split.gt.float().cpu(), split.duration.float().cpu(), split.num_steps)
    lengths = split.video_mask.cpu().sum(1)[split.video_index.cpu()]
    return gt, lengths


def build_loss(cfg: Config, train_moments: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
    """The loss of ``cfg.model.head``: FIANLoss (content), TGNLoss (tgn) or CMINLoss (cmin).

    ``train_moments = (gt_steps [M, 2], lengths [M])`` of the training split
    (:func:`training_moments`): needed by TGN only (its per-scale weights are frequencies over the
    training set, :func:`tgn_scale_weights`); ignored by the other heads.
    """
    from fian.model.build import head_window_sizes
    from fian.model.localization import anchor_grid

    m, lo, T = cfg.model, cfg.loss, cfg.features.num_steps
    if m.head == "tgn":
        if train_moments is None:
            raise ValueError(
                "FIAN-TGN's loss weights come from the training set: build_loss(cfg, train_moments=(gt_steps, lengths))"
            )
        widths = head_window_sizes(cfg)
        w_pos, w_neg = tgn_scale_weights(*train_moments, T, widths, lo.tgn_pos_iou, form=lo.tgn_weights)
        _, _, width_index = anchor_grid(T, widths, "end")
        return TGNLoss(w_pos, w_neg, width_index, pos_iou=lo.tgn_pos_iou, neg_iou=lo.tgn_neg_iou)
    if m.head == "cmin":
        return CMINLoss(T * len(head_window_sizes(cfg)), alpha=lo.alpha, min_ratio=lo.cmin_min_iou_ratio)
    return FIANLoss(tau=lo.tau, alpha=lo.alpha, offset_unit=lo.offset_unit)
