"""Cross-modal attention of Section 3.3: CMA (eq. 4-5), CGA (eq. 6), additive soft attention (Table 4)
and the cross-modal encoder (eq. 7-8).

Shapes: B = batch, Lq = length of the attending sequence ("Q" of the paper), Lk = length of the
attended sequence ("V" of the paper, keys and values), d = d_h.  ``kv_mask [B, Lk]`` is True on
real positions; padded keys never receive attention weight.  Rows of the output that belong to
padded query positions are computed but meaningless: consumers mask them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttentionKind = Literal["cga", "cma", "soft"]


def _key_mask(kv_mask: torch.Tensor) -> torch.Tensor:
    """[B, Lk] bool -> [B, 1, 1, Lk] bool, broadcast over heads and query positions (True = attend)."""
    return kv_mask[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """CMA, eq. 4-5: ``Concat(head_1..head_n) W^O`` with ``head_i = softmax(Q W_i^Q (V W_i^K)^T / sqrt(d_k)) V W_i^V``.

    Also used for the video self-attention of Section 3.2 (query = key = value = the video).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.dropout = dropout
        self.w_q = nn.Linear(dim, dim)  # W^Q_i of all heads side by side
        self.w_k = nn.Linear(dim, dim)
        self.w_v = nn.Linear(dim, dim)
        self.w_o = nn.Linear(dim, dim)  # W^O of eq. 5

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        B, Lq, d = q.shape
        Lk = kv.shape[1]
        h = self.heads
        # [B, L, d] -> [B, h, L, d_k]
        qh = self.w_q(q).view(B, Lq, h, d // h).transpose(1, 2)
        kh = self.w_k(kv).view(B, Lk, h, d // h).transpose(1, 2)
        vh = self.w_v(kv).view(B, Lk, h, d // h).transpose(1, 2)
        att = F.scaled_dot_product_attention(  # scale 1/sqrt(d_k), eq. 4
            qh, kh, vh, attn_mask=_key_mask(kv_mask), dropout_p=self.dropout if self.training else 0.0
        )  # [B, h, Lq, d_k]
        return self.w_o(att.transpose(1, 2).reshape(B, Lq, d))  # concat heads, eq. 5

    def weights(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        """The attention weights of eq. 4 that :meth:`forward` applies: ``[B, h, Lq, Lk]``, each row
        a softmax over the real keys (padded keys exactly 0; attention dropout, a training-only
        perturbation, not applied).  Not on the forward path (which uses the fused kernel): for
        attention maps (fian.attention_maps)."""
        B, Lq, d = q.shape
        Lk = kv.shape[1]
        h = self.heads
        qh = self.w_q(q).view(B, Lq, h, d // h).transpose(1, 2)
        kh = self.w_k(kv).view(B, Lk, h, d // h).transpose(1, 2)
        s = qh @ kh.transpose(-1, -2) / math.sqrt(d // h)  # [B, h, Lq, Lk]
        return torch.softmax(s.masked_fill(~_key_mask(kv_mask), float("-inf")), dim=-1)


class SoftAttention(nn.Module):
    """FIAN-Soft (Table 4, S5.1): the "widely used soft attention" of the methods FIAN compares
    against (S1; S5.1 contrasts it with CMA), the additive / tanh attention of Bahdanau et al. as
    CMIN implements it (ikuinen/CMIN_moment_retrieval modules_/tanh_attention.py ``TanhAttention``,
    used by CMIN's ``v2s``; TGN's interactor attends the same way):

        s_ij = w^T tanh(W_1 q_i + b_1 + W_2 v_j)        alpha_i = softmax_j(s_ij) over real v_j
        out_i = sum_j alpha_ij v_j

    Single head, the attended values unprojected (CMIN: ``matmul(S, memory)``).  As in CMIN, only
    W_1 has a bias (W_2 and w have none: a bias there shifts every s_ij of a row alike) and the
    hidden width is d_h; CMIN builds it without dropout (``TanhAttention(d_model)``), so none here.
    Memory: ``[B, Lq, Lk, d]`` for the tanh, computed in one piece.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w_q = nn.Linear(dim, dim, bias=True)  # W_1, b_1  (CMIN ws1)
        self.w_k = nn.Linear(dim, dim, bias=False)  # W_2       (CMIN ws2)
        self.w_s = nn.Linear(dim, 1, bias=False)  # w         (CMIN wst)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        return self.weights(q, kv, kv_mask)[:, 0] @ kv  # [B, Lq, d]

    def weights(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        """alpha ``[B, 1, Lq, Lk]`` (one head): softmax over the real keys, padded keys 0."""
        hidden = torch.tanh(self.w_q(q)[:, :, None, :] + self.w_k(kv)[:, None, :, :])  # [B, Lq, Lk, d]
        s = self.w_s(hidden)[..., 0]  # [B, Lq, Lk]
        s = s.masked_fill(~kv_mask[:, None, :], float("-inf"))
        return torch.softmax(s, dim=-1)[:, None]


class GuidedAttention(nn.Module):
    """CGA, eq. 6: the information gate on top of CMA, guided by the attending sequence Q.

        z   = W_q Q + W_v CMA(Q, V)
        CGA = sigmoid(z + b^g) * (z + b^i)

    The paper keeps ``W_q^g = W_q^i`` and ``W_v^g = W_v^i``: one weight each, so ``z`` is shared
    and only the biases ``b^g`` (gate) and ``b^i`` (information) differ.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.cma = MultiHeadAttention(dim, heads, dropout)
        self.w_q = nn.Linear(dim, dim, bias=False)  # W_q^g = W_q^i
        self.w_v = nn.Linear(dim, dim, bias=False)  # W_v^g = W_v^i
        self.b_g = nn.Parameter(torch.zeros(dim))
        self.b_i = nn.Parameter(torch.zeros(dim))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        z = self.w_q(q) + self.w_v(self.cma(q, kv, kv_mask))  # [B, Lq, d]
        return torch.sigmoid(z + self.b_g) * (z + self.b_i)

    def weights(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        """The weights of the CMA inside (eq. 4), ``[B, h, Lq, Lk]``; the gate acts after them."""
        return self.cma.weights(q, kv, kv_mask)


def build_attention(kind: AttentionKind, dim: int, heads: int, dropout: float) -> nn.Module:
    """cga (eq. 4-6) | cma (eq. 4-5, FIAN-CMA) | soft (FIAN-Soft: additive tanh attention)."""
    if kind == "cga":
        return GuidedAttention(dim, heads, dropout)
    if kind == "cma":
        return MultiHeadAttention(dim, heads, dropout)
    if kind == "soft":
        return SoftAttention(dim)
    raise ValueError(f"unknown attention kind {kind!r}; expected cga, cma or soft")


class CrossModalEncoder(nn.Module):
    """Encoder(Q, V) = FFN(Att(Q, V)), eq. 7-8, with the shortcuts and LayerNorms the paper omits.

    Our choice (Figure 4b shows a Transformer encoder; the equations leave them out): post-LN,

        X1  = LayerNorm(Q + Dropout(Att(Q, V)))
        out = LayerNorm(X1 + Dropout(FFN(X1)))     FFN(X) = max(0, X W1 + b1) W2 + b2   (eq. 7)

    A "Q-V encoder" yields a V-aware Q representation with Q's length.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, attention: AttentionKind) -> None:
        super().__init__()
        self.attention = build_attention(attention, dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(q + self.drop(self.attention(q, kv, kv_mask)))  # [B, Lq, d]
        return self.norm2(x + self.drop(self.ffn(x)))
