"""Fusion of the iterative-attention outputs into M (Section 3.3.3, eq. 11-14, and Table 4).

fusion kind   M                                       width
gate          LayerNorm(V_hat + r * Q_hat), eq. 11-14  d_h per branch (2 d_h with both)
concat        [V1, V2]  (FIAN-Concat)                  2 d_h
matrix        [V1, V2, V1 - V2, V1 * V2] (FIAN-Matrix) 4 d_h
none          the one video representation (FIAN-Soft/CMA/VQ: M = V2)   d_h
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

FusionKind = Literal["gate", "concat", "matrix", "none"]


class LengthProjection(nn.Module):
    """Eq. 11: ``Q_hat = W Q + b`` with ``W in R^{n_v x n_q}``: a linear map along the LENGTH axis.

    ``[n_v, n_q] @ [n_q, d_h] -> [n_v, d_h]``.  The paper writes ``b in R^{n_q}``, which cannot be
    added to an ``n_v x d_h`` result: a typo; we use one bias per output step, ``b in R^{n_v}``
    (broadcast over features).  Queries shorter than ``n_q`` are zero-padded, and padded rows are
    zeroed before ``W`` so padded words contribute nothing.
    """

    def __init__(self, n_q: int, n_v: int) -> None:
        super().__init__()
        self.n_q, self.n_v = n_q, n_v
        bound = 1.0 / math.sqrt(n_q)  # nn.Linear's default initialisation (fan_in = n_q)
        self.weight = nn.Parameter(torch.empty(n_v, n_q).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_v).uniform_(-bound, bound))

    def forward(self, q: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        # q: [B, L, d], word_mask: [B, L] with L <= n_q
        B, L, d = q.shape
        q = torch.where(word_mask[:, :, None], q, torch.zeros((), dtype=q.dtype, device=q.device))
        w = self.weight[:, :L]  # the columns of words L..n_q-1 would multiply zero rows
        return (
            torch.einsum("tn,bnd->btd", w.to(q.dtype), q) + self.bias.to(q.dtype)[None, :, None]
        )  # [B, n_v, d]


class VideoEnhancedIntegration(nn.Module):
    """Eq. 11-14 for one or two branches (FIAN / VQMA / QVMA).

    V_hat = [V_1, V_2], Q_hat = [W_1 Q_1 + b_1, W_2 Q_2 + b_2]   (concat on features)
    r = sigmoid(Q_hat W^r + b^r);  M = LayerNorm(V_hat + r * Q_hat)
    """

    def __init__(self, n_branches: int, dim: int, n_q: int, n_v: int) -> None:
        super().__init__()
        self.length_proj = nn.ModuleList([LengthProjection(n_q, n_v) for _ in range(n_branches)])
        width = n_branches * dim
        self.filter = nn.Linear(width, width)  # W^r, b^r of eq. 13
        self.norm = nn.LayerNorm(width)
        self.out_dim = width

    def forward(
        self, videos: list[torch.Tensor], queries: list[torch.Tensor], word_mask: torch.Tensor
    ) -> torch.Tensor:
        # videos: each [B, T, d]; queries: each [B, L, d]
        v_hat = torch.cat(videos, dim=-1)  # [B, T, n d], eq. 12
        q_hat = torch.cat([p(q, word_mask) for p, q in zip(self.length_proj, queries, strict=True)], dim=-1)
        r = torch.sigmoid(self.filter(q_hat))  # [B, T, n d], eq. 13
        return self.norm(v_hat + r * q_hat)  # eq. 14


class Fusion(nn.Module):
    """Chooses M from the branch outputs by ``kind`` (see the module docstring)."""

    def __init__(self, kind: FusionKind, n_branches: int, dim: int, n_q: int, n_v: int) -> None:
        super().__init__()
        self.kind = kind
        self.gate: VideoEnhancedIntegration | None = None
        if kind == "gate":
            self.gate = VideoEnhancedIntegration(n_branches, dim, n_q, n_v)
            self.out_dim = self.gate.out_dim
        elif kind in ("concat", "matrix"):
            if n_branches != 2:
                raise ValueError(f"fusion {kind!r} needs both branches (qv and vq), got {n_branches}")
            self.out_dim = 2 * dim if kind == "concat" else 4 * dim
        elif kind == "none":
            if n_branches != 1:
                raise ValueError(
                    f"fusion 'none' takes the one video representation of one branch, got {n_branches}"
                )
            self.out_dim = dim
        else:
            raise ValueError(f"unknown fusion {kind!r}; expected gate, concat, matrix or none")

    def forward(
        self, videos: list[torch.Tensor], queries: list[torch.Tensor], word_mask: torch.Tensor
    ) -> torch.Tensor:
        if self.gate is not None:
            return self.gate(videos, queries, word_mask)
        if self.kind == "concat":
            return torch.cat(videos, dim=-1)  # [B, T, 2d]
        if self.kind == "matrix":
            v1, v2 = videos
            return torch.cat([v1, v2, v1 - v2, v1 * v2], dim=-1)  # [B, T, 4d]
        return videos[0]  # [B, T, d]
