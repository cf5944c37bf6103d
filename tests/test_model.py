"""FIAN end to end on tiny configs: every Table 4/5/6 variant, padding invariance, bad inputs,
the masked BiGRU against a packed nn.GRU, bf16 autocast."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from fian.config import load_params
from fian.model.build import build_model
from fian.model.encoders import MaskedBiGRU, QueryEncoder

PARAMS = Path(__file__).resolve().parents[1] / "params"
VARIANTS = sorted(p.stem for p in (PARAMS / "variants").glob("*.yaml"))
T, D, NQ, V = 16, 10, 6, 25


def tiny_cfg(variant: str = "fian", dataset: str = "tacos"):
    cfg = load_params(PARAMS, dataset, variant)
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            cfg.model, hidden=16, heads=2, self_attn_heads=2, ffn_dim=24, window_sizes=(4, 8),
            anchor_widths={},  # tgn / cmin: anchors of widths (4, 8) on these 16 steps
        ),
        features=dataclasses.replace(cfg.features, num_steps=T),
        dataset=dataclasses.replace(cfg.dataset, feature_dim=D),
        text=dataclasses.replace(cfg.text, max_query_len=NQ, word_dim=8),
    )


def tiny_model(variant: str = "fian", seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(variant), vocab_size=V, **kw).eval()


def inputs(B: int = 3, L: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(B, T, D, generator=g)
    video_mask = torch.ones(B, T, dtype=torch.bool)
    video_mask[1, 11:] = False  # a shorter video
    words = torch.randint(2, V, (B, L), generator=g)
    word_mask = torch.ones(B, L, dtype=torch.bool)
    word_mask[0, 3:] = False
    word_mask[2, 1:] = False  # a one-word query
    words[~word_mask] = 0
    return video, video_mask, words, word_mask


def test_all_variant_files_are_exercised():
    assert {"fian", "soft", "cma", "vq", "vqma", "qvma", "concat", "matrix", "tgn", "cmin", "stride1"} <= set(
        VARIANTS
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs_forward_and_backward(variant):
    from fian.losses import build_loss

    model = tiny_model(variant).train()
    out = model(*inputs())
    B, N = out.logits.shape
    assert out.scores.shape == (B, N) and out.offsets.shape == (B, N, 2)
    assert out.candidates.shape == (N, 2) and out.valid.shape == (B, N) and out.valid.dtype == torch.bool
    assert torch.allclose(out.scores, torch.sigmoid(out.logits))
    assert not out.valid[1].all() and out.valid[0].all()  # the short video loses the long candidates
    gt = torch.tensor([[2.0, 9.0], [1.0, 5.0], [4.0, 12.0]])
    lengths = torch.tensor([T, 11, T])  # TGN weighs its terms by frequencies over the train set: these
    loss = build_loss(tiny_cfg(variant), (gt, lengths))(out, gt)["loss"]
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), (
        "every trainable weight gets a gradient"
    )
    assert any(g.abs().sum() > 0 for g in grads)


def test_variant_structure():
    full, vq, vqma, qvma = (tiny_model(v) for v in ("fian", "vq", "vqma", "qvma"))
    assert all(e is not None for e in (full.enc_a, full.enc_b, full.enc_c, full.enc_d))
    assert vq.enc_a is None and vq.enc_b is None and vq.enc_c is not None and vq.enc_d is None
    assert vqma.enc_c is not None and vqma.enc_d is not None and vqma.enc_a is None
    assert qvma.enc_a is not None and qvma.enc_b is not None and qvma.enc_c is None
    # four encoders with separate weights
    ptrs = {e.ffn[0].weight.data_ptr() for e in (full.enc_a, full.enc_b, full.enc_c, full.enc_d)}
    assert len(ptrs) == 4
    assert full.fusion.out_dim == 32 and vqma.fusion.out_dim == 16
    assert tiny_model("matrix").fusion.out_dim == 64 and tiny_model("concat").fusion.out_dim == 32
    assert type(tiny_model("soft").enc_c.attention).__name__ == "SoftAttention"
    assert type(tiny_model("cma").enc_c.attention).__name__ == "MultiHeadAttention"


@pytest.mark.parametrize("variant", ["fian", "cmin"])
def test_padding_invariance(variant):
    model = tiny_model(variant)
    video, video_mask, words, word_mask = inputs()
    ref = model(video, video_mask, words, word_mask)

    # more word padding, with garbage (even out-of-vocabulary) ids under the mask
    B = words.shape[0]
    words2 = torch.cat([words, torch.zeros(B, 1, dtype=torch.long)], 1)
    mask2 = torch.cat([word_mask, torch.zeros(B, 1, dtype=torch.bool)], 1)
    words2[~mask2] = torch.randint(1, 10 * V, (int((~mask2).sum()),))
    # garbage in the padded frames of the short video
    video2 = video.clone()
    video2[1, 11:] = 1e4 * torch.randn(T - 11, D)
    out = model(video2, video_mask, words2, mask2)

    assert torch.equal(out.valid, ref.valid)
    v = ref.valid
    torch.testing.assert_close(out.logits[v], ref.logits[v], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.offsets[v], ref.offsets[v], rtol=1e-5, atol=1e-5)
    # and the real rows do not depend on the batch they are in
    solo = model(video[1:2], video_mask[1:2], words[1:2], word_mask[1:2])
    torch.testing.assert_close(solo.logits[solo.valid], ref.logits[1][v[1]], rtol=1e-5, atol=1e-5)


def test_masked_bigru_equals_packed_sequence():
    torch.manual_seed(0)
    ours = MaskedBiGRU(5, 8)
    ref = nn.GRU(5, 4, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(ref, name).copy_(getattr(ours.fwd, name))
            getattr(ref, name + "_reverse").copy_(getattr(ours.bwd, name))
    x = torch.randn(3, 7, 5)
    lengths = torch.tensor([7, 4, 1])
    mask = torch.arange(7)[None] < lengths[:, None]
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expect, _ = nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=7)
    torch.testing.assert_close(ours(x, mask), expect, rtol=1e-5, atol=1e-6)


def test_query_encoder_uses_given_frozen_embeddings():
    emb = torch.randn(V, 8)
    emb[0] = 0
    enc = QueryEncoder(16, embeddings=emb, freeze=True)
    assert torch.equal(enc.embed.weight, emb) and not enc.embed.weight.requires_grad
    assert enc.embed.padding_idx == 0
    with pytest.raises(ValueError, match="embeddings"):
        QueryEncoder(16, embeddings=torch.randn(V))
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(tiny_cfg())
    with pytest.raises(ValueError, match="word_dim"):
        build_model(tiny_cfg(), embeddings=torch.randn(V, 5))


def test_autocast_bf16_forward_backward():
    from fian.losses import build_loss

    model = tiny_model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*inputs())
        loss = build_loss(tiny_cfg())(out, torch.tensor([[2.0, 9.0], [1.0, 5.0], [4.0, 12.0]]))["loss"]
    loss.backward()
    assert torch.isfinite(loss)


def _bad(kind: str):
    video, video_mask, words, word_mask = inputs()
    if kind == "video rank":
        video = video[0]
    elif kind == "feature dim":
        video = torch.randn(3, T, D + 1)
    elif kind == "T != num_steps":
        video, video_mask = video[:, :-1], video_mask[:, :-1]
    elif kind == "mask shape":
        video_mask = video_mask[:, :-1]
    elif kind == "mask dtype":
        word_mask = word_mask.long()
    elif kind == "words batch":
        words, word_mask = words[:2], word_mask[:2]
    elif kind == "words dtype":
        words = words.float()
    elif kind == "empty query":
        word_mask[1] = False
    elif kind == "not a prefix":
        word_mask[1, 0] = False
    elif kind == "too long":
        words = torch.randint(2, V, (3, NQ + 2))
        word_mask = torch.ones(3, NQ + 2, dtype=torch.bool)
    elif kind == "out of vocabulary":
        words[0, 0] = V + 3
    elif kind == "padding id at a real word":
        words[1, 0] = 0
    elif kind == "short video":
        video_mask[2, 3:] = False
    elif kind == "nan":
        video[0, 2, 1] = float("nan")
    elif kind == "inf":
        video[2, 0, 0] = float("inf")
    return video, video_mask, words, word_mask


BAD = {
    "video rank": "video must be",
    "feature dim": "feature dim",
    "T != num_steps": "num_steps",
    "mask shape": "video_mask",
    "mask dtype": "word_mask",
    "words batch": "words must be",
    "words dtype": "integer",
    "empty query": r"empty query .*rows \[1\]",
    "not a prefix": r"prefix.*rows \[1\]",
    "too long": "max_query_len",
    "out of vocabulary": r"vocabulary.*rows \[0\]",
    "padding id at a real word": r"padding id 0.*rows \[1\]",
    "short video": r"smallest window.*rows \[2\]",
    "nan": r"NaN or inf.*rows \[0\]",
    "inf": r"NaN or inf.*rows \[2\]",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_inputs_raise_clear_errors(kind):
    model = tiny_model()
    with pytest.raises(ValueError, match=BAD[kind]):
        model(*_bad(kind))


def test_nan_in_padding_is_not_an_error_and_changes_nothing():
    model = tiny_model()
    video, video_mask, words, word_mask = inputs()
    ref = model(video, video_mask, words, word_mask)
    video[1, 12] = float("nan")  # beyond the real length of row 1
    out = model(video, video_mask, words, word_mask)
    torch.testing.assert_close(out.logits[ref.valid], ref.logits[ref.valid])


def test_checks_can_be_disabled_and_extra_padding_columns_are_trimmed():
    model = tiny_model(check_inputs=False)
    assert not model.check_inputs
    video, video_mask, words, word_mask = inputs()
    ref = model(video, video_mask, words, word_mask)
    pad = NQ + 3 - words.shape[1]
    words2 = torch.cat([words, torch.zeros(3, pad, dtype=torch.long)], 1)
    mask2 = torch.cat([word_mask, torch.zeros(3, pad, dtype=torch.bool)], 1)
    out = tiny_model()(video, video_mask, words2, mask2)  # longer than n_q, but only padding: fine
    torch.testing.assert_close(out.logits, ref.logits)


@pytest.mark.gpu
def test_no_host_device_sync_on_cuda_when_checks_are_off():
    from fian.inference import decode
    from fian.losses import FIANLoss

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = tiny_model(check_inputs=False).cuda().train()
    video, video_mask, words, word_mask = (t.cuda() for t in inputs())
    gt = torch.tensor([[2.0, 9.0], [1.0, 5.0], [4.0, 12.0]], device="cuda")
    loss_fn = FIANLoss(0.55, 0.005, check_finite=False)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(video, video_mask, words, word_mask)
            loss = loss_fn(out, gt)["loss"]
        loss.backward()
        decode(out, torch.full((3,), 30.0, device="cuda"), T, 0.5, 5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
