"""Query and video representations of Section 3.2, and the masked bidirectional GRU they share.

Masks are True on real positions and must be prefixes (real positions first, padding after);
``FIAN`` checks that when ``check_inputs`` is on.
"""

from __future__ import annotations

import torch
from torch import nn

from fian.model.attention import MultiHeadAttention


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first ``lengths[b]`` steps and leave the padding in place.

    x: [B, T, C], lengths: [B] long.  The permutation is its own inverse.
    """
    T = x.shape[1]
    t = torch.arange(T, device=x.device)[None, :]  # [1, T]
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # [B, T]
    return x.gather(1, idx[:, :, None].expand_as(x))


class MaskedBiGRU(nn.Module):
    """Bidirectional GRU (eq. 1-3) whose outputs on real steps never depend on padded steps.

    Equivalent to a packed sequence, without the host-device sync that ``pack_padded_sequence``
    needs (its lengths must live on the CPU): the forward GRU runs over the whole padded sequence
    (padding comes after the real steps, so it cannot reach them), the backward GRU runs over each
    row reversed within its own length.  Output ``[h^f; h^b]`` with ``hidden // 2`` per direction,
    zero on padded steps.
    """

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        if hidden % 2:
            raise ValueError(f"BiGRU hidden size must be even (two directions), got {hidden}")
        self.fwd = nn.GRU(in_dim, hidden // 2, batch_first=True)  # GRU^f, eq. 1
        self.bwd = nn.GRU(in_dim, hidden // 2, batch_first=True)  # GRU^b, eq. 2

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: [B, T, C], mask: [B, T] bool (prefix)
        m = mask[:, :, None]
        x = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))  # garbage/NaN padding -> 0
        lengths = mask.sum(1)  # [B]
        h_f, _ = self.fwd(x)  # [B, T, hidden/2]
        h_b, _ = self.bwd(reverse_within_length(x, lengths))
        h = torch.cat([h_f, reverse_within_length(h_b, lengths)], dim=-1)  # [B, T, hidden], eq. 3
        return torch.where(m, h, torch.zeros((), dtype=h.dtype, device=h.device))


class QueryEncoder(nn.Module):
    """GloVe word vectors (a frozen ``nn.Embedding``, row 0 = padding) -> BiGRU: h_q [B, L, d_h]."""

    def __init__(
        self,
        hidden: int,
        *,
        embeddings: torch.Tensor | None = None,
        vocab_size: int | None = None,
        word_dim: int = 300,
        freeze: bool = True,
    ) -> None:
        super().__init__()
        if embeddings is not None:
            if embeddings.dim() != 2:
                raise ValueError(f"embeddings must be [V, word_dim], got shape {tuple(embeddings.shape)}")
            self.embed = nn.Embedding.from_pretrained(embeddings.float(), freeze=freeze, padding_idx=0)
        elif vocab_size is not None:
            # random vectors: only for tests and benchmarks (build_model documents it)
            self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
            self.embed.weight.requires_grad_(not freeze)
        else:
            raise ValueError("QueryEncoder needs embeddings [V, word_dim] or a vocab_size")
        self.gru = MaskedBiGRU(self.embed.embedding_dim, hidden)

    @property
    def vocab_size(self) -> int:
        return self.embed.num_embeddings

    def forward(self, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        # words: [B, L] long, word_mask: [B, L] bool.  Ids under the mask are replaced by <pad>=0,
        # so garbage there (even out of the vocabulary) changes nothing.
        q = self.embed(words.masked_fill(~word_mask, 0))  # [B, L, word_dim]
        return self.gru(q, word_mask)  # [B, L, d_h]


class VideoEncoder(nn.Module):
    """Linear(D -> d_h) -> multi-head self-attention (residual + LayerNorm) -> BiGRU: h_v [B, T, d_h].

    Section 3.2 / 4.3: "a fully-connected layer reduces the feature dimension to 512", then
    self-attention [32] and a BiGRU.  Padded steps are masked as keys and zeroed as inputs.
    """

    def __init__(self, feature_dim: int, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(feature_dim, hidden)
        self.self_attn = MultiHeadAttention(hidden, heads, dropout)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.gru = MaskedBiGRU(hidden, hidden)

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        # video: [B, T, D], video_mask: [B, T] bool
        v = torch.where(
            video_mask[:, :, None], video, torch.zeros((), dtype=video.dtype, device=video.device)
        )
        x = self.proj(v)  # [B, T, d_h]
        x = self.norm(x + self.drop(self.self_attn(x, x, video_mask)))
        return self.gru(x, video_mask)  # [B, T, d_h]
