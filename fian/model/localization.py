"""Localization heads (Section 3.4, Figure 5) and the Table 5 substitutes; :class:`ModelOutput`.

Candidates (docs/ARCHITECTURE.md): for window size k and stride s, candidate j covers steps
``[j*s, j*s + k)`` (end exclusive), ``j = 0 .. floor((T - k) / s)``: exactly the output positions
of ``Conv1d(C, k, s)`` over T steps.  Figure 5's 1-based ``C_1 = (1, d)``, ``C_2 = (1 + d - p,
2d - p)`` (d = k, p = k - s) is ``[0, k)``, ``[s, s + k)`` here.  Window sizes are concatenated in
the order given.  A candidate is valid for a video when it ends at or before the video's real length.

The Table 5 heads (:class:`TGNHead`, :class:`CMINHead`) replace the windows by anchors at every
step (:func:`anchor_grid`); for them ``window_sizes`` are the anchor widths and strides are unused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

HeadKind = Literal["content", "tgn", "cmin"]


@dataclass
class ModelOutput:
    """What FIAN returns.  N = number of candidates (all window sizes).

    logits:     [B, N]    alignment score before the sigmoid (the loss uses these: stable BCE)
    scores:     [B, N]    confidence cs_j = sigmoid(logits)
    offsets:    [B, N, 2] predicted (delta_s, delta_e), in the unit of ``loss.offset_unit``
    candidates: [N, 2]    (start, end) in steps, float, end exclusive
    valid:      [B, N]    bool, candidate inside the video's real steps
    lengths:    [B]       int64, the video's real steps (the heads set it; a loss that averages
                          over steps, TGN's, needs it; None only in hand-built outputs)
    """

    logits: torch.Tensor
    scores: torch.Tensor
    offsets: torch.Tensor
    candidates: torch.Tensor
    valid: torch.Tensor
    lengths: torch.Tensor | None = None


def sliding_windows(num_steps: int, window_sizes: Sequence[int], strides: Sequence[int]) -> torch.Tensor:
    """Candidates of the content head: ``[N, 2]`` float (start, end) in steps, end exclusive."""
    if len(window_sizes) != len(strides):
        raise ValueError(f"{len(window_sizes)} window sizes but {len(strides)} strides")
    parts = []
    for k, s in zip(window_sizes, strides, strict=True):
        if not 1 <= k <= num_steps or s < 1:
            raise ValueError(f"window {k} / stride {s} does not fit {num_steps} steps")
        starts = torch.arange(0, num_steps - k + 1, s, dtype=torch.float32)  # floor((T-k)/s) + 1 of them
        parts.append(torch.stack([starts, starts + k], dim=1))
    return torch.cat(parts)


def anchor_grid(
    num_steps: int, widths: Sequence[int], align: Literal["end", "center"]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-step anchors of the Table 5 heads, in CMIN's proposal-grid order (step-major ``[T, K]``).

    ``align="end"`` (TGN, Chen et al. EMNLP 2018, S3.4 "Grounder": K candidates *ending* at each
    time step): at step t, width w covers ``[t + 1 - w, t + 1)``.  Our choice: the anchor ends at
    the end of step t (the re-implementation JaywongWang/TGN, data_provider.py, ends it at the
    middle, ``t + 0.5``; on FIAN's step grid the step boundary keeps anchors on whole steps).
    ``align="center"`` (CMIN, Zhang et al. SIGIR 2019, ikuinen/CMIN_moment_retrieval
    models_/gcn_final.py ``proposals``): width w *centred* on step t covers the frames
    ``t - (w-1)/2 .. t + (w-1)/2`` (inclusive), i.e. ``[t + 0.5 - w/2, t + 0.5 + w/2)`` here.

    Anchors reaching outside ``[0, T]`` are left out: CMIN masks them ("illegal", clip_loader.py)
    and they are no candidate moment.  Returns candidates ``[N, 2]`` float (start, end) in steps,
    the step each is scored at ``[N]`` long and its width index ``[N]`` long.
    """
    if not widths:
        raise ValueError("no anchor widths")
    if align not in ("end", "center"):
        raise ValueError(f"align must be 'end' or 'center', got {align!r}")
    for w in widths:
        if not 1 <= w <= num_steps:
            raise ValueError(f"anchor width {w} does not fit {num_steps} steps")
    t = torch.arange(num_steps, dtype=torch.float64)[:, None]  # [T, 1]
    w = torch.tensor(list(widths), dtype=torch.float64)[None, :]  # [1, K]
    if align == "end":
        start, end = t + 1 - w, (t + 1).expand(-1, w.shape[1])
    else:
        start, end = t + 0.5 - w / 2, t + 0.5 + w / 2
    keep = ((start >= 0) & (end <= num_steps)).flatten()  # row-major: step-major, width-minor
    idx = keep.nonzero().flatten()
    cands = torch.stack([start.flatten(), end.flatten()], dim=1)[idx].float()
    return cands, idx // len(widths), idx % len(widths)


def _valid(candidates: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """[B, N] bool: candidate end <= the real length of each video (masks are prefixes)."""
    lengths = video_mask.sum(1)  # [B]
    return candidates[None, :, 1] <= lengths[:, None]


class ContentHead(nn.Module):
    """The content-oriented head of S3.4: per window size, ``Conv1d(d_h, 1, k, s)`` scores every
    candidate from all the features inside it, and a distinct ``Conv1d(d_h, 2, k, s)`` its offsets."""

    def __init__(self, dim: int, num_steps: int, window_sizes: Sequence[int], strides: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer(
            "candidates", sliding_windows(num_steps, window_sizes, strides), persistent=False
        )
        self.score = nn.ModuleList(
            [nn.Conv1d(dim, 1, k, s) for k, s in zip(window_sizes, strides, strict=True)]
        )
        self.offset = nn.ModuleList(
            [nn.Conv1d(dim, 2, k, s) for k, s in zip(window_sizes, strides, strict=True)]
        )

    def forward(self, f: torch.Tensor, video_mask: torch.Tensor) -> ModelOutput:
        x = f.transpose(1, 2)  # [B, d, T]
        logits = torch.cat([conv(x)[:, 0] for conv in self.score], dim=1)  # [B, N]
        offsets = torch.cat([conv(x).transpose(1, 2) for conv in self.offset], dim=1)  # [B, N, 2]
        return ModelOutput(
            logits, torch.sigmoid(logits), offsets, self.candidates, _valid(self.candidates, video_mask),
            video_mask.sum(1),
        )


class _AnchorHead(nn.Module):
    """Shared plumbing of the Table 5 heads: K anchors per step, scored from that step's f_t only."""

    def __init__(self, num_steps: int, widths: Sequence[int], align: Literal["end", "center"]) -> None:
        super().__init__()
        self.n_widths = len(widths)
        cands, steps, wins = anchor_grid(num_steps, widths, align)
        self.register_buffer("candidates", cands, persistent=False)
        self.register_buffer("anchor_step", steps, persistent=False)
        self.register_buffer("anchor_width", wins, persistent=False)

    def _output(self, logits: torch.Tensor, offsets: torch.Tensor, video_mask: torch.Tensor) -> ModelOutput:
        return ModelOutput(
            logits, torch.sigmoid(logits), offsets, self.candidates, _valid(self.candidates, video_mask),
            video_mask.sum(1),
        )


class TGNHead(_AnchorHead):
    """FIAN-TGN (Table 5, S5.2): TGN's grounder (Chen et al., EMNLP 2018, S3.4).

    At every step t, K anchors of widths ``w_1..w_K`` end at t (:func:`anchor_grid`, ``"end"``) and
    are scored at once from the single step feature: ``c_t = sigmoid(W_c f_t + b_c)`` in R^K (TGN:
    from the interactor state h_t^r; here from FIAN's f_t, the BiGRU output that replaces the
    localization input).  TGN regresses nothing: offsets are all zero, so the predicted segment is
    the anchor itself.  Trained with :class:`fian.losses.TGNLoss`.
    """

    def __init__(self, dim: int, num_steps: int, widths: Sequence[int]) -> None:
        super().__init__(num_steps, widths, "end")
        self.score = nn.Linear(dim, self.n_widths)  # W_c, b_c

    def forward(self, f: torch.Tensor, video_mask: torch.Tensor) -> ModelOutput:
        logits = self.score(f)[:, self.anchor_step, self.anchor_width]  # [B, T, K] -> [B, N]
        offsets = logits.new_zeros(*logits.shape, 2)
        return self._output(logits, offsets, video_mask)


class CMINHead(_AnchorHead):
    """FIAN-CMIN (Table 5, S5.2): CMIN's localization (Zhang et al., SIGIR 2019, S3.4;
    ikuinen/CMIN_moment_retrieval models_/gcn_final.py).

    K anchors *centred* on every step (:func:`anchor_grid`, ``"center"``; CMIN's widths are in
    params/variants/cmin.yaml).  Two 1x1 convolutions over the step features (``fc_score``:
    ``Conv1d(d, K, 1)``, ``fc_reg``: ``Conv1d(d, 2K, 1)``), here the equivalent Linear layers: a
    score per anchor (sigmoid) and a (start, end) offset per anchor, in steps (CMIN adds ``reg``
    to the proposal in frame units).  Trained with :class:`fian.losses.CMINLoss`.
    """

    def __init__(self, dim: int, num_steps: int, widths: Sequence[int]) -> None:
        super().__init__(num_steps, widths, "center")
        self.score = nn.Linear(dim, self.n_widths)  # fc_score
        self.reg = nn.Linear(dim, 2 * self.n_widths)  # fc_reg

    def forward(self, f: torch.Tensor, video_mask: torch.Tensor) -> ModelOutput:
        B, T, _ = f.shape
        logits = self.score(f)[:, self.anchor_step, self.anchor_width]  # [B, N]
        reg = self.reg(f).view(B, T, self.n_widths, 2)  # CMIN: reg.view(-1, T * K, 2)
        offsets = reg[:, self.anchor_step, self.anchor_width]  # [B, N, 2]
        return self._output(logits, offsets, video_mask)


def build_head(
    kind: HeadKind, dim: int, num_steps: int, window_sizes: Sequence[int], strides: Sequence[int]
) -> nn.Module:
    """content: windows ``window_sizes`` at ``strides``; tgn / cmin: anchors of widths ``window_sizes``."""
    if kind == "content":
        return ContentHead(dim, num_steps, window_sizes, strides)
    if kind == "tgn":
        return TGNHead(dim, num_steps, window_sizes)
    if kind == "cmin":
        return CMINHead(dim, num_steps, window_sizes)
    raise ValueError(f"unknown head {kind!r}; expected content, tgn or cmin")
