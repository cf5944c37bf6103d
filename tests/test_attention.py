"""Eq. 4-8 against hand computations on tiny tensors: CMA, the CGA gate with its weight
sharing, the additive soft attention of FIAN-Soft, the post-LN cross-modal encoder."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fian.model.attention import (
    CrossModalEncoder,
    GuidedAttention,
    MultiHeadAttention,
    SoftAttention,
    build_attention,
)


def _softmax_attend(q, k, v, mask, scale):
    """One head by hand: softmax over real keys only."""
    s = q @ k.T * scale  # [Lq, Lk]
    s = s.masked_fill(~mask[None, :], float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def test_cma_matches_eq_4_5_by_hand():
    torch.manual_seed(0)
    d, h = 4, 2
    cma = MultiHeadAttention(d, h).eval()
    q, kv = torch.randn(1, 3, d), torch.randn(1, 5, d)
    mask = torch.tensor([[True, True, True, False, False]])
    out = cma(q, kv, mask)[0]  # [3, d]

    Q = cma.w_q(q[0])
    K = cma.w_k(kv[0])
    Vv = cma.w_v(kv[0])
    dk = d // h
    heads = [
        _softmax_attend(
            Q[:, i * dk : (i + 1) * dk],
            K[:, i * dk : (i + 1) * dk],
            Vv[:, i * dk : (i + 1) * dk],
            mask[0],
            1 / math.sqrt(dk),
        )
        for i in range(h)
    ]
    expect = cma.w_o(torch.cat(heads, dim=-1))  # eq. 5
    torch.testing.assert_close(out, expect)

    kv2 = kv.clone()
    kv2[0, 3:] = 1e3  # padded keys/values do not matter
    torch.testing.assert_close(cma(q, kv2, mask), cma(q, kv, mask))


class _Fixed(torch.nn.Module):
    """Stands in for CMA: returns a fixed [Lq, d] output."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, q, kv, mask):
        return self.value[None]


def test_cga_gate_eq_6_with_shared_weights_by_hand():
    d = 2
    cga = GuidedAttention(d, heads=1).eval()
    fixed = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    with torch.no_grad():
        cga.w_q.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        cga.w_v.weight.copy_(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
        cga.b_g.copy_(torch.tensor([0.5, -0.5]))
        cga.b_i.copy_(torch.tensor([1.0, 2.0]))
    cga.cma = _Fixed(fixed)  # isolate the gate: CMA(Q, V) = fixed
    q = torch.tensor([[[1.0, 1.0], [-2.0, 0.5]]])
    out = cga(q, torch.zeros(1, 3, d), torch.ones(1, 3, dtype=torch.bool))[0]
    # row 0: W_q q = (1, 2), W_v c = (-1, -0.5) -> z = (0, 1.5)
    # row 1: W_q q = (-2, 1), W_v c = (0.25, -2) -> z = (-1.75, -1)
    z = torch.tensor([[0.0, 1.5], [-1.75, -1.0]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expect = torch.tensor(
        [
            [sig(0.0 + 0.5) * (0.0 + 1.0), sig(1.5 - 0.5) * (1.5 + 2.0)],
            [sig(-1.75 + 0.5) * (-1.75 + 1.0), sig(-1.0 - 0.5) * (-1.0 + 2.0)],
        ]
    )
    torch.testing.assert_close(out, expect)
    torch.testing.assert_close(out, torch.sigmoid(z + cga.b_g) * (z + cga.b_i))


def test_cga_has_one_weight_per_modality_and_two_biases():
    d = 8
    cga = GuidedAttention(d, heads=2)
    cma_params = sum(p.numel() for p in cga.cma.parameters())
    gate_params = sum(p.numel() for p in cga.parameters()) - cma_params
    assert gate_params == 2 * d * d + 2 * d  # W_q (= W_q^g = W_q^i), W_v, b^g, b^i
    assert cga.w_q.bias is None and cga.w_v.bias is None


def test_soft_attention_is_additive_tanh_attention_by_hand():
    """s_ij = w^T tanh(W_1 q_i + b_1 + W_2 v_j), softmax over real j, out_i = sum_j a_ij v_j (CMIN's
    TanhAttention), with hand-set weights: W_1 = W_2 = I, b_1 = 0, w = (1, 0)."""
    att = SoftAttention(2)
    with torch.no_grad():
        att.w_q.weight.copy_(torch.eye(2))
        att.w_q.bias.zero_()
        att.w_k.weight.copy_(torch.eye(2))
        att.w_s.weight.copy_(torch.tensor([[1.0, 0.0]]))
    q = torch.tensor([[[0.5, 0.0]]])
    kv = torch.tensor([[[0.5, 1.0], [-0.5, 2.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])  # the third value is padding
    s0, s1 = math.tanh(0.5 + 0.5), math.tanh(0.5 - 0.5)
    a0 = math.exp(s0) / (math.exp(s0) + math.exp(s1))
    expect = torch.tensor([a0 * 0.5 + (1 - a0) * -0.5, a0 * 1.0 + (1 - a0) * 2.0])
    torch.testing.assert_close(att(q, kv, mask)[0, 0], expect)


def test_soft_attention_matches_a_plain_loop_reference():
    torch.manual_seed(1)
    d = 4
    att = SoftAttention(d)
    q, kv = torch.randn(2, 3, d), torch.randn(2, 5, d)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out = att(q, kv, mask)
    W1, b1, W2, w = att.w_q.weight, att.w_q.bias, att.w_k.weight, att.w_s.weight[0]
    for b in range(2):
        for i in range(3):
            real = [j for j in range(5) if mask[b, j]]
            s = torch.stack([w @ torch.tanh(W1 @ q[b, i] + b1 + W2 @ kv[b, j]) for j in real])
            a = torch.softmax(s, 0)
            ref = sum(a[n] * kv[b, j] for n, j in enumerate(real))
            torch.testing.assert_close(out[b, i], ref)
    # CMIN's biases: only W_1 has one; the values are not projected; nothing else is learnt
    assert att.w_k.bias is None and att.w_s.bias is None and att.w_q.bias is not None
    assert sum(p.numel() for p in att.parameters()) == 2 * d * d + d + d
    # not the unscaled dot product it replaced
    assert not torch.allclose(out[0], _softmax_attend(q[0], kv[0], kv[0], mask[0], 1.0))


def test_encoder_is_post_ln_ffn_of_attention():
    torch.manual_seed(2)
    enc = CrossModalEncoder(dim=4, heads=2, ffn_dim=6, dropout=0.1, attention="cga").eval()
    q, kv = torch.randn(1, 3, 4), torch.randn(1, 5, 4)
    mask = torch.ones(1, 5, dtype=torch.bool)
    att = enc.attention(q, kv, mask)
    x1 = F.layer_norm(q + att, (4,), enc.norm1.weight, enc.norm1.bias)
    ffn = F.relu(x1 @ enc.ffn[0].weight.T + enc.ffn[0].bias) @ enc.ffn[3].weight.T + enc.ffn[3].bias  # eq. 7
    expect = F.layer_norm(x1 + ffn, (4,), enc.norm2.weight, enc.norm2.bias)
    torch.testing.assert_close(enc(q, kv, mask), expect)


def test_build_attention_kinds():
    assert isinstance(build_attention("cga", 4, 2, 0.0), GuidedAttention)
    assert type(build_attention("cma", 4, 2, 0.0)) is MultiHeadAttention
    assert isinstance(build_attention("soft", 4, 2, 0.0), SoftAttention)
    assert build_attention("soft", 4, 2, 0.0).w_q.in_features == 4
    with pytest.raises(ValueError, match="unknown attention"):
        build_attention("dot", 4, 2, 0.0)
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(6, 4)


# ---- the weights each attention applies (attention maps, fian.attention_maps; issue 19 item 4)


def test_cma_weights_are_eq_4_by_hand_and_are_what_forward_applies():
    torch.manual_seed(3)
    d, h = 6, 3
    cma = MultiHeadAttention(d, h).eval()
    q, kv = torch.randn(2, 4, d), torch.randn(2, 5, d)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    w = cma.weights(q, kv, mask)  # [B, h, Lq, Lk]
    assert w.shape == (2, h, 4, 5)
    dk = d // h
    for b in range(2):
        n = int(mask[b].sum())
        Q, K, Vv = cma.w_q(q[b]), cma.w_k(kv[b]), cma.w_v(kv[b])
        heads = []
        for i in range(h):
            c = slice(i * dk, (i + 1) * dk)
            a = torch.softmax(Q[:, c] @ K[:n, c].T / math.sqrt(dk), dim=-1)  # real keys only, by hand
            torch.testing.assert_close(w[b, i, :, :n], a)
            heads.append(a @ Vv[:n, c])
        assert torch.all(w[b, :, :, n:] == 0), "padded keys get exactly no weight"
        torch.testing.assert_close(w[b].sum(-1), torch.ones(h, 4))
        # these weights are the ones the fused forward applied: W^O [a_1 V_1; ...] is its output
        torch.testing.assert_close(cma(q, kv, mask)[b], cma.w_o(torch.cat(heads, dim=-1)))


def test_cga_weights_are_those_of_its_cma():
    torch.manual_seed(4)
    cga = GuidedAttention(4, 2).eval()
    q, kv = torch.randn(1, 3, 4), torch.randn(1, 6, 4)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    assert torch.equal(cga.weights(q, kv, mask), cga.cma.weights(q, kv, mask))
    assert torch.all(cga.weights(q, kv, mask)[..., 4:] == 0)


def test_soft_attention_weights_are_the_alphas_of_the_loop_reference():
    torch.manual_seed(5)
    d = 4
    att = SoftAttention(d)
    q, kv = torch.randn(2, 3, d), torch.randn(2, 5, d)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    w = att.weights(q, kv, mask)
    assert w.shape == (2, 1, 3, 5)
    W1, b1, W2, ws = att.w_q.weight, att.w_q.bias, att.w_k.weight, att.w_s.weight[0]
    for b in range(2):
        n = int(mask[b].sum())
        for i in range(3):
            s = torch.stack([ws @ torch.tanh(W1 @ q[b, i] + b1 + W2 @ kv[b, j]) for j in range(n)])
            torch.testing.assert_close(w[b, 0, i, :n], torch.softmax(s, 0))
        assert torch.all(w[b, 0, :, n:] == 0)
    torch.testing.assert_close(att(q, kv, mask), w[:, 0] @ kv)
