"""FIAN: Fine-grained Iterative Attention Network (Qu et al., ACM MM 2020), Figure 2.

    h_q = QueryEncoder(words)                 [B, L, d]     S3.2, eq. 1-3
    h_v = VideoEncoder(video)                 [B, T, d]     S3.2
    Q1 = Enc_a(Q, V),  V1 = Enc_b(V, Q1)                    eq. 9   (branch qv)
    V2 = Enc_c(V, Q),  Q2 = Enc_d(Q, V2)                    eq. 10  (branch vq)
    M  = Fusion(V1, V2, Q1, Q2)               [B, T, w]     eq. 11-14 / Table 4
    f  = BiGRU(M)                             [B, T, d]     S3.4
    out = Head(f)                             ModelOutput   S3.4 / Table 5

``video_input="constant"`` is the blind baseline of Table 7 (params/variants/blind.yaml): the
video's features are replaced by zeros before the video encoder, in training and evaluation.

The ablations of Table 4 are configurations: ``branches`` (qv, vq or both), ``iterate`` (False:
only the first encoder, which for the vq branch gives V2 = Enc(V, Q)), ``attention`` and
``fusion``.  Encoders whose output no fusion reads are not built: Q2 exists only for the gate
(FIAN-Concat/Matrix read V1 and V2; their Q2 would be dead weight), Q1 always feeds V1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fian.model.attention import AttentionKind, CrossModalEncoder
from fian.model.encoders import MaskedBiGRU, QueryEncoder, VideoEncoder
from fian.model.integration import Fusion, FusionKind
from fian.model.localization import HeadKind, ModelOutput, build_head

__all__ = ["FIAN", "ModelOutput"]


def _rows(bad: torch.Tensor) -> list[int]:
    return bad.nonzero().flatten().tolist()[:10]


class FIAN(nn.Module):
    """The whole network.  Every hyperparameter is an explicit argument (``build_model`` maps the Config).

    ``check_inputs`` validates shapes, masks and values on every forward (a few cheap reductions,
    each a host-device sync on GPU); turn it off for speed once the data path is trusted.
    """

    def __init__(
        self,
        *,
        feature_dim: int,
        num_steps: int,
        max_query_len: int,
        window_sizes: Sequence[int],
        strides: Sequence[int],
        hidden: int = 512,
        heads: int = 8,
        self_attn_heads: int = 8,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        attention: AttentionKind = "cga",
        branches: Sequence[str] = ("qv", "vq"),
        iterate: bool = True,
        fusion: FusionKind = "gate",
        head: HeadKind = "content",
        embeddings: torch.Tensor | None = None,
        vocab_size: int | None = None,
        word_dim: int = 300,
        freeze_embeddings: bool = True,
        video_input: str = "features",
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        if set(branches) - {"qv", "vq"} or not branches or len(set(branches)) != len(branches):
            raise ValueError(f"branches must be one or both of 'qv', 'vq', got {list(branches)}")
        if "qv" in branches and not iterate:
            raise ValueError("branch 'qv' without iterate gives no video representation (Q1 only)")
        if fusion == "gate" and not iterate:
            raise ValueError("fusion 'gate' needs iterate=True (it reads Q1/Q2)")
        self.feature_dim, self.num_steps, self.max_query_len = feature_dim, num_steps, max_query_len
        self.min_window = min(window_sizes)
        self.check_inputs = check_inputs
        self.has_qv, self.has_vq = "qv" in branches, "vq" in branches
        self.fusion_kind = fusion
        if video_input not in ("features", "constant"):
            raise ValueError(f"video_input must be 'features' or 'constant', got {video_input!r}")
        # constant: the blind baseline (Table 7): zeros in place of the features, in training and
        # evaluation alike; the masks (how many steps are real) are kept
        self.video_input = video_input

        self.query_encoder = QueryEncoder(
            hidden, embeddings=embeddings, vocab_size=vocab_size, word_dim=word_dim, freeze=freeze_embeddings
        )
        self.video_encoder = VideoEncoder(feature_dim, hidden, self_attn_heads, dropout)

        def enc() -> CrossModalEncoder:
            return CrossModalEncoder(hidden, heads, ffn_dim, dropout, attention)

        # separate weights for each of the four encoders of eq. 9-10
        self.enc_a = enc() if self.has_qv else None  # Q1 = Enc(Q, V)
        self.enc_b = enc() if self.has_qv else None  # V1 = Enc(V, Q1)
        self.enc_c = enc() if self.has_vq else None  # V2 = Enc(V, Q)
        self.enc_d = enc() if self.has_vq and iterate and fusion == "gate" else None  # Q2 = Enc(Q, V2)

        self.fusion = Fusion(fusion, len(branches), hidden, max_query_len, num_steps)
        self.loc_gru = MaskedBiGRU(self.fusion.out_dim, hidden)  # M -> f, S3.4
        self.head = build_head(head, hidden, num_steps, window_sizes, strides)

    @property
    def candidates(self) -> torch.Tensor:
        """[N, 2] candidate (start, end) in steps."""
        return self.head.candidates

    def forward(
        self, video: torch.Tensor, video_mask: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
    ) -> ModelOutput:
        # video [B, T, D], video_mask [B, T] bool, words [B, L] long, word_mask [B, L] bool
        if self.check_inputs:
            self.validate(video, video_mask, words, word_mask)
        if words.shape[1] > self.max_query_len:  # only padding beyond n_q (validate checks it)
            words, word_mask = words[:, : self.max_query_len], word_mask[:, : self.max_query_len]
        if self.video_input == "constant":  # blind: what the video holds is never seen
            video = torch.zeros_like(video)
        q = self.query_encoder(words, word_mask)  # [B, L, d]
        v = self.video_encoder(video, video_mask)  # [B, T, d]

        videos: list[torch.Tensor] = []
        queries: list[torch.Tensor] = []
        if self.enc_a is not None and self.enc_b is not None:  # eq. 9
            q1 = self.enc_a(q, v, video_mask)  # [B, L, d]
            videos.append(self.enc_b(v, q1, word_mask))  # V1 [B, T, d]
            queries.append(q1)
        if self.enc_c is not None:  # eq. 10
            v2 = self.enc_c(v, q, word_mask)  # [B, T, d]
            videos.append(v2)
            if self.enc_d is not None:
                queries.append(self.enc_d(q, v2, video_mask))  # Q2 [B, L, d]

        m = self.fusion(videos, queries, word_mask)  # [B, T, w]
        f = self.loc_gru(m, video_mask)  # [B, T, d]
        return self.head(f, video_mask)

    def validate(
        self, video: torch.Tensor, video_mask: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
    ) -> None:
        """Raise ValueError naming the tensor (and the batch rows) for any input FIAN cannot use."""
        if video.dim() != 3:
            raise ValueError(f"video must be [B, T, D], got shape {tuple(video.shape)}")
        B, T, D = video.shape
        if D != self.feature_dim:
            raise ValueError(
                f"video feature dim is {D}, the model expects dataset.feature_dim={self.feature_dim}"
            )
        if T != self.num_steps:
            raise ValueError(f"video has T={T} steps, the model expects features.num_steps={self.num_steps}")
        if not video.is_floating_point():
            raise ValueError(f"video must be a float tensor, got {video.dtype}")
        if words.dim() != 2 or words.shape[0] != B:
            raise ValueError(f"words must be [B={B}, L], got shape {tuple(words.shape)}")
        if words.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"words must hold integer token ids, got {words.dtype}")
        for name, mask, ref in (("video_mask", video_mask, video), ("word_mask", word_mask, words)):
            if mask.dtype != torch.bool or mask.shape != ref.shape[:2]:
                raise ValueError(
                    f"{name} must be a bool tensor of shape {tuple(ref.shape[:2])}, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
            pos = torch.arange(mask.shape[1], device=mask.device)[None, :]
            bad = (mask != (pos < mask.sum(1, keepdim=True))).any(1)
            if bad.any():
                raise ValueError(
                    f"{name}: real positions must come first (prefix mask); batch rows {_rows(bad)}"
                )
        n_words = word_mask.sum(1)
        if (n_words == 0).any():
            raise ValueError(f"empty query (no real word) in batch rows {_rows(n_words == 0)}")
        if words.shape[1] > self.max_query_len and word_mask[:, self.max_query_len :].any():
            rows = _rows(word_mask[:, self.max_query_len :].any(1))
            raise ValueError(
                f"query longer than text.max_query_len={self.max_query_len} words in batch rows {rows} "
                "(the data layer must truncate)"
            )
        oov = word_mask & ((words < 0) | (words >= self.query_encoder.vocab_size))
        if oov.any():
            raise ValueError(
                f"word ids outside the vocabulary [0, {self.query_encoder.vocab_size}) in batch rows {_rows(oov.any(1))}"
            )
        padded = word_mask & (words == 0)
        if padded.any():
            raise ValueError(f"the padding id 0 (<pad>) at a real word position (word_mask true) in batch rows "
                             f"{_rows(padded.any(1))}")  # fmt: skip
        n_steps = video_mask.sum(1)
        if (n_steps < self.min_window).any():
            raise ValueError(
                f"video shorter than the smallest window ({self.min_window} steps) in batch rows "
                f"{_rows(n_steps < self.min_window)}"
            )
        nonfinite = (~torch.isfinite(video) & video_mask[:, :, None]).any(2).any(1)
        if nonfinite.any():
            raise ValueError(f"NaN or inf in the video features of batch rows {_rows(nonfinite)}")
