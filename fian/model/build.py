"""``build_model``: the one place that maps a :class:`~fian.config.Config` onto :class:`FIAN`."""

from __future__ import annotations

import torch

from fian.config import Config, stride_for
from fian.model.fian import FIAN


def head_window_sizes(cfg: Config) -> tuple[int, ...]:
    """Window sizes theta_k of the content head, or the anchor widths of the Table 5 heads.

    tgn / cmin: ``model.anchor_widths[dataset.name]`` (their papers' widths per dataset,
    params/variants/{tgn,cmin}.yaml); a dataset without an entry uses ``model.window_sizes``.
    """
    m = cfg.model
    if m.head == "content":
        return m.window_sizes
    return m.anchor_widths.get(cfg.dataset.name, m.window_sizes)


def model_strides(cfg: Config) -> list[int]:
    """theta_s of each window size theta_k (S3.4, S4.3, Table 6); 1 for the per-step anchors of tgn / cmin."""
    m = cfg.model
    if m.head != "content":
        return [1] * len(head_window_sizes(cfg))
    return [stride_for(k, m.stride_ratio, m.stride_steps) for k in m.window_sizes]


def build_model(
    cfg: Config,
    embeddings: torch.Tensor | None = None,
    vocab_size: int | None = None,
    *,
    check_inputs: bool = True,
) -> FIAN:
    """FIAN for ``cfg``.  ``embeddings [V, word_dim]``: the GloVe matrix of the text stage.

    With ``embeddings=None`` a RANDOM embedding of ``vocab_size`` rows is built: only for tests
    and benchmarks, never for a reported result.
    """
    if embeddings is None and vocab_size is None:
        raise ValueError("build_model needs the embeddings matrix (or, for tests, a vocab_size)")
    if embeddings is not None and embeddings.shape[-1] != cfg.text.word_dim:
        raise ValueError(f"embeddings are {tuple(embeddings.shape)}, text.word_dim is {cfg.text.word_dim}")
    m = cfg.model
    return FIAN(
        feature_dim=cfg.dataset.feature_dim,
        num_steps=cfg.features.num_steps,
        max_query_len=cfg.text.max_query_len,
        window_sizes=head_window_sizes(cfg),
        strides=model_strides(cfg),
        hidden=m.hidden,
        heads=m.heads,
        self_attn_heads=m.self_attn_heads,
        ffn_dim=m.ffn_dim,
        dropout=m.dropout,
        attention=m.attention,
        branches=m.branches,
        iterate=m.iterate,
        fusion=m.fusion,
        head=m.head,
        embeddings=embeddings,
        vocab_size=vocab_size,
        word_dim=cfg.text.word_dim,
        freeze_embeddings=m.freeze_embeddings,
        video_input=m.video_input,
        check_inputs=check_inputs,
    )
