"""Localization heads (Section 3.4, Figure 5) and the Table 5 substitutes; :class:`ModelOutput`.

Candidates (docs/ARCHITECTURE.md): for window size k and stride s, candidate j covers steps
``[j*s, j*s + k)`` (end exclusive), ``j = 0 .. floor((T - k) / s)``: exactly the output positions
of ``Conv1d(C, k, s)`` over T steps.  Figure 5's 1-based ``C_1 = (1, d)``, ``C_2 = (1 + d - p,
2d - p)`` (d = k, p = k - s) is ``[0, k)``, ``[s, s + k)`` here.  Window sizes are concatenated in
the order given.  A candidate is valid for a video when it ends at or before the video's real length.
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
    """

    logits: torch.Tensor
    scores: torch.Tensor
    offsets: torch.Tensor
    candidates: torch.Tensor
    valid: torch.Tensor


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


def step_anchors(
    num_steps: int, window_sizes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-step anchors of the TGN/CMIN heads: at step t, window k covers ``[t-k+1, t+1)``.

    Anchors that start before step 0 can never be valid and are left out, so for each k the
    anchors are the stride-1 windows ``[s, s+k)``, ``s = 0 .. T-k``.  Returns candidates ``[N, 2]``
    (float), the step each is scored at (its last step, ``[N]`` long) and its window index ``[N]``.
    """
    cands, steps, wins = [], [], []
    for i, k in enumerate(window_sizes):
        if not 1 <= k <= num_steps:
            raise ValueError(f"window {k} does not fit {num_steps} steps")
        starts = torch.arange(0, num_steps - k + 1)
        cands.append(torch.stack([starts, starts + k], dim=1).float())
        steps.append(starts + k - 1)
        wins.append(torch.full_like(starts, i))
    return torch.cat(cands), torch.cat(steps), torch.cat(wins)


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
            logits, torch.sigmoid(logits), offsets, self.candidates, _valid(self.candidates, video_mask)
        )


class StepAnchorHead(nn.Module):
    """Table 5 substitutes, scoring K anchors from the single step feature f_t where they end.

    tgn:  Linear(d_h -> K) scores, no offsets (all zero; ``build_loss`` sets alpha to 0 for it, so
          the boundary term is reported but carries no weight).
    cmin: Linear(d_h -> 3K): a score and two offsets per anchor.
    Both ignore the stride: anchors sit at every step (as in TGN and CMIN).
    """

    def __init__(
        self, kind: Literal["tgn", "cmin"], dim: int, num_steps: int, window_sizes: Sequence[int]
    ) -> None:
        super().__init__()
        if kind not in ("tgn", "cmin"):
            raise ValueError(f"unknown step-anchor head {kind!r}")
        self.kind = kind
        self.n_windows = len(window_sizes)
        cands, steps, wins = step_anchors(num_steps, window_sizes)
        self.register_buffer("candidates", cands, persistent=False)
        self.register_buffer("anchor_step", steps, persistent=False)
        self.register_buffer("anchor_window", wins, persistent=False)
        self.proj = nn.Linear(dim, self.n_windows * (1 if kind == "tgn" else 3))

    def forward(self, f: torch.Tensor, video_mask: torch.Tensor) -> ModelOutput:
        B, T, _ = f.shape
        out = self.proj(f).view(B, T, self.n_windows, -1)  # [B, T, K, 1 or 3]
        per_anchor = out[:, self.anchor_step, self.anchor_window]  # [B, N, 1 or 3]
        logits = per_anchor[..., 0]
        if self.kind == "cmin":
            offsets = per_anchor[..., 1:]
        else:
            offsets = torch.zeros(B, logits.shape[1], 2, dtype=logits.dtype, device=logits.device)
        return ModelOutput(
            logits, torch.sigmoid(logits), offsets, self.candidates, _valid(self.candidates, video_mask)
        )


def build_head(
    kind: HeadKind, dim: int, num_steps: int, window_sizes: Sequence[int], strides: Sequence[int]
) -> nn.Module:
    if kind == "content":
        return ContentHead(dim, num_steps, window_sizes, strides)
    if kind in ("tgn", "cmin"):
        return StepAnchorHead(kind, dim, num_steps, window_sizes)
    raise ValueError(f"unknown head {kind!r}; expected content, tgn or cmin")
