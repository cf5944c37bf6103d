"""Wiring of the FIAN network against a reference forward written here in plain tensor ops.

The reference follows the paper's equations (Qu et al., ACM MM 2020, eq. 1-14 and S3.4) and the
choices the model documents (post-LN shortcuts of the cross-modal encoder, one bias per step in
eq. 11, torch's GRU gate order r, z, n).  It reads the weights by name from the model's
``state_dict`` and uses nothing of ``fian`` to compute: no module, no helper.  Each sample is
run on its own real steps and words only (no masks, no padding tricks), so the model's masking
is checked too.  Tiny sizes, double precision, eval mode, every weight random (LayerNorm and
gate biases included, so a swapped or dropped parameter shows).

Mutations these tests were written to kill (docs/MUTATION.md lists which test killed which):
Q(2) fed V instead of V(2); Q(1)/Q(2) swapped before the fusion; V(1) fed Q instead of Q(1);
video self-attention, encoder FFN or localization BiGRU removed; positive rule IoU >= tau.
"""

from __future__ import annotations

import math

import pytest
import torch

from fian.losses import FIANLoss
from fian.model.fian import FIAN
from fian.model.localization import ModelOutput

T, D, NQ, VOCAB, WORD, HID, FFN = 12, 5, 6, 20, 7, 8, 12
WINDOWS, STRIDES = (4, 6), (2, 3)
HEADS, SELF_HEADS = 2, 2
LN_EPS = 1e-5  # nn.LayerNorm's default

MAIN = dict(attention="cga", branches=("qv", "vq"), iterate=True, fusion="gate")
# Table 4 structures that use the main path's parts (the soft attention and the Table 5 heads
# are variants under change elsewhere and are left to their own tests)
STRUCTURES = {
    "fian": MAIN,
    "qvma": dict(attention="cga", branches=("qv",), iterate=True, fusion="gate"),
    "vqma": dict(attention="cga", branches=("vq",), iterate=True, fusion="gate"),
    "vq": dict(attention="cga", branches=("vq",), iterate=False, fusion="none"),
    "cma": dict(attention="cma", branches=("vq",), iterate=False, fusion="none"),
    "concat": dict(attention="cga", branches=("qv", "vq"), iterate=True, fusion="concat"),
    "matrix": dict(attention="cga", branches=("qv", "vq"), iterate=True, fusion="matrix"),
}


# ---------------------------------------------------------------- the model under test


def make_model(structure: dict, seed: int = 0) -> FIAN:
    torch.manual_seed(seed)
    model = FIAN(
        feature_dim=D,
        num_steps=T,
        max_query_len=NQ,
        window_sizes=WINDOWS,
        strides=STRIDES,
        hidden=HID,
        heads=HEADS,
        self_attn_heads=SELF_HEADS,
        ffn_dim=FFN,
        dropout=0.3,  # must be inactive in eval mode
        head="content",
        vocab_size=VOCAB,
        word_dim=WORD,
        **structure,
    ).double()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # every parameter random, none at its 0 / 1 initial value
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * noise)
            else:
                p.copy_(0.5 * noise)
    return model.eval()


VIDEO_LEN = (12, 9, 7)  # real steps per row (the smallest window is 4)
WORD_LEN = (6, 3, 1)  # real words per row (6 = n_q, and a one-word query)


def make_inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    B = len(VIDEO_LEN)
    video = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    video_mask = torch.arange(T)[None, :] < torch.tensor(VIDEO_LEN)[:, None]
    video[~video_mask] = 1e3  # garbage in padded frames must not matter
    words = torch.randint(1, VOCAB, (B, NQ), generator=g)
    word_mask = torch.arange(NQ)[None, :] < torch.tensor(WORD_LEN)[:, None]
    words[~word_mask] = 0
    return video, video_mask, words, word_mask


# ---------------------------------------------------------------- the reference, plain ops


def linear(x, P, name, bias=True):
    y = x @ P[f"{name}.weight"].T
    return y + P[f"{name}.bias"] if bias else y


def layer_norm(x, P, name):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + LN_EPS) * P[f"{name}.weight"] + P[f"{name}.bias"]


def gru(x, P, name):
    """One GRU direction over x [n, in] (torch's gate layout r, z, n in weight_ih / weight_hh)."""
    W_ih, W_hh = P[f"{name}.weight_ih_l0"], P[f"{name}.weight_hh_l0"]
    b_ih, b_hh = P[f"{name}.bias_ih_l0"], P[f"{name}.bias_hh_l0"]
    H = W_hh.shape[1]
    h = torch.zeros(H, dtype=x.dtype)
    out = []
    for t in range(x.shape[0]):
        gi, gh = W_ih @ x[t] + b_ih, W_hh @ h + b_hh
        r = torch.sigmoid(gi[:H] + gh[:H])
        z = torch.sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
        n = torch.tanh(gi[2 * H :] + r * gh[2 * H :])
        h = (1 - z) * n + z * h
        out.append(h)
    return torch.stack(out)


def bigru(x, P, name):
    """Eq. 1-3: [h^f; h^b], the backward GRU reading the sequence from its last real step."""
    return torch.cat([gru(x, P, f"{name}.fwd"), gru(x.flip(0), P, f"{name}.bwd").flip(0)], dim=-1)


def multi_head(q, kv, P, name, heads):
    """Eq. 4-5: heads side by side in the projections' output columns, then W^O."""
    Q, K, V = linear(q, P, f"{name}.w_q"), linear(kv, P, f"{name}.w_k"), linear(kv, P, f"{name}.w_v")
    d_k = Q.shape[-1] // heads
    out = []
    for i in range(heads):
        c = slice(i * d_k, (i + 1) * d_k)
        att = torch.softmax(Q[:, c] @ K[:, c].T / math.sqrt(d_k), dim=-1)
        out.append(att @ V[:, c])
    return linear(torch.cat(out, dim=-1), P, f"{name}.w_o")


def guided(q, kv, P, name, heads):
    """Eq. 6 with W^g = W^i (shared projections), distinct biases b^g, b^i."""
    cma = multi_head(q, kv, P, f"{name}.cma", heads)
    z = linear(q, P, f"{name}.w_q", bias=False) + linear(cma, P, f"{name}.w_v", bias=False)
    return torch.sigmoid(z + P[f"{name}.b_g"]) * (z + P[f"{name}.b_i"])


def encoder(q, kv, P, name, attention="cga"):
    """Eq. 7-8 with post-LN shortcuts: LN(X1 + FFN(X1)), X1 = LN(Q + Att(Q, V))."""
    att = guided if attention == "cga" else multi_head
    x1 = layer_norm(q + att(q, kv, P, f"{name}.attention", HEADS), P, f"{name}.norm1")
    ffn = linear(torch.relu(linear(x1, P, f"{name}.ffn.0")), P, f"{name}.ffn.3")
    return layer_norm(x1 + ffn, P, f"{name}.norm2")


def content_head(f, P):
    """S3.4: per window k, stride s, candidate j = steps [j s, j s + k) scored by Conv1d(1, k, s)
    and offset by Conv1d(2, k, s) over the features inside it.  f: [T, d], zero on padded steps."""
    cands, logits, offsets = [], [], []
    for i, (k, s) in enumerate(zip(WINDOWS, STRIDES, strict=True)):
        Ws, bs = P[f"head.score.{i}.weight"], P[f"head.score.{i}.bias"]  # [1, d, k], [1]
        Wo, bo = P[f"head.offset.{i}.weight"], P[f"head.offset.{i}.bias"]  # [2, d, k], [2]
        for j in range((T - k) // s + 1):
            window = f[j * s : j * s + k].T  # [d, k]
            cands.append((j * s, j * s + k))
            logits.append((Ws[0] * window).sum() + bs[0])
            offsets.append((Wo * window[None]).sum((1, 2)) + bo)
    return torch.tensor(cands, dtype=torch.float64), torch.stack(logits), torch.stack(offsets)


def reference(P, structure, video, video_mask, words, word_mask):
    """Per sample: (intermediates on real rows, logits [N], offsets [N, 2], candidates [N, 2])."""
    rows = []
    for b in range(video.shape[0]):
        n_v, n_q = int(video_mask[b].sum()), int(word_mask[b].sum())
        # S3.2: query = BiGRU(GloVe(words)); video = BiGRU(LN(x + SelfAtt(x))), x = FC(features)
        q = bigru(P["query_encoder.embed.weight"][words[b, :n_q]], P, "query_encoder.gru")
        x = linear(video[b, :n_v], P, "video_encoder.proj")
        x = layer_norm(x + multi_head(x, x, P, "video_encoder.self_attn", SELF_HEADS), P, "video_encoder.norm")
        v = bigru(x, P, "video_encoder.gru")
        mid = {"q": q, "v": v}
        att = structure["attention"]
        if "qv" in structure["branches"]:  # eq. 9
            mid["q1"] = encoder(q, v, P, "enc_a", att)
            mid["v1"] = encoder(v, mid["q1"], P, "enc_b", att)
        if "vq" in structure["branches"]:  # eq. 10
            mid["v2"] = encoder(v, q, P, "enc_c", att)
            if structure["fusion"] == "gate":
                mid["q2"] = encoder(q, mid["v2"], P, "enc_d", att)
        fusion = structure["fusion"]
        if fusion == "gate":  # eq. 11-14, Q_hat^(i) = W_i Q^(i) + b_i along the length axis
            keys = [k for k in ("1", "2") if f"v{k}" in mid]
            v_hat = torch.cat([mid[f"v{k}"] for k in keys], dim=-1)
            q_hat = torch.cat(
                [
                    P[f"fusion.gate.length_proj.{i}.weight"][:n_v, :n_q] @ mid[f"q{k}"]
                    + P[f"fusion.gate.length_proj.{i}.bias"][:n_v, None]
                    for i, k in enumerate(keys)
                ],
                dim=-1,
            )
            r = torch.sigmoid(linear(q_hat, P, "fusion.gate.filter"))
            m = layer_norm(v_hat + r * q_hat, P, "fusion.gate.norm")
        elif fusion == "concat":
            m = torch.cat([mid["v1"], mid["v2"]], dim=-1)
        elif fusion == "matrix":
            v1, v2 = mid["v1"], mid["v2"]
            m = torch.cat([v1, v2, v1 - v2, v1 * v2], dim=-1)
        else:
            m = mid["v2"]
        mid["m"] = m
        mid["f"] = bigru(m, P, "loc_gru")  # S3.4: M -> (f_1 .. f_nv)
        f = torch.zeros(T, HID, dtype=torch.float64)
        f[:n_v] = mid["f"]
        cands, logits, offsets = content_head(f, P)
        rows.append((mid, logits, offsets, cands))
    return rows


# ---------------------------------------------------------------- tests


def captured_forward(model, *inputs):
    """The model's output and, through forward hooks, what each part returned."""
    seen = {}
    parts = {
        "q": "query_encoder", "v": "video_encoder", "q1": "enc_a", "v1": "enc_b",
        "v2": "enc_c", "q2": "enc_d", "m": "fusion", "f": "loc_gru",
    }  # fmt: skip
    hooks = []
    for key, attr in parts.items():
        mod = getattr(model, attr)
        if mod is not None:
            hooks.append(mod.register_forward_hook(lambda _m, _i, o, key=key: seen.__setitem__(key, o)))
    try:
        with torch.no_grad():
            out = model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_forward_equals_plain_reference(name):
    structure = STRUCTURES[name]
    model = make_model(structure)
    inputs = make_inputs()
    video, video_mask, words, word_mask = inputs
    out, _ = captured_forward(model, *inputs)
    P = {k: v.detach() for k, v in model.state_dict().items()}
    ref = reference(P, structure, *inputs)

    cands = ref[0][3]
    assert torch.equal(out.candidates.double(), cands), "candidate windows (S3.4, Figure 5)"
    for b, (_, logits, offsets, _) in enumerate(ref):
        assert torch.equal(out.valid[b], cands[:, 1] <= VIDEO_LEN[b]), f"row {b}: valid candidates"
        close(out.logits[b], logits, f"row {b} logits")
        close(out.offsets[b], offsets, f"row {b} offsets")
        close(out.scores[b], torch.sigmoid(logits), f"row {b} scores")


@pytest.mark.parametrize("part", ["q", "v", "q1", "v1", "v2", "q2", "m", "f"])
def test_each_part_of_the_main_path_equals_the_reference(part):
    """Eq. 1-3 (q), S3.2 (v), eq. 9 (q1, v1), eq. 10 (v2, q2), eq. 11-14 (m), S3.4 (f): each part's
    output on the real words / steps, and padded steps of the BiGRU outputs are zero."""
    model = make_model(MAIN)
    inputs = make_inputs()
    _, seen = captured_forward(model, *inputs)
    P = {k: v.detach() for k, v in model.state_dict().items()}
    for b, (mid, *_rest) in enumerate(reference(P, MAIN, *inputs)):
        n = mid[part].shape[0]
        close(seen[part][b, :n], mid[part], f"{part}, row {b}")
        if part in ("q", "v", "f"):  # masked BiGRU outputs
            assert torch.all(seen[part][b, n:] == 0), f"{part}, row {b}: padded steps not zero"


def test_reference_is_sensitive_to_each_input_of_the_fusion():
    """Guard of the guard: the parts differ, so feeding one where another belongs shows up."""
    model = make_model(MAIN)
    P = {k: v.detach() for k, v in model.state_dict().items()}
    mid = reference(P, MAIN, *make_inputs())[0][0]
    for a, b in (("q1", "q2"), ("v1", "v2"), ("q", "q1"), ("q", "q2"), ("v", "v1"), ("v", "v2")):
        assert (mid[a] - mid[b]).abs().max() > 1e-3, (a, b)


# ---- positive rule of S3.5 ("o_j larger than tau") at IoU exactly tau, by hand


def bce(o: float, x: float) -> float:
    """-L_j of eq. 15 with cs = sigmoid(x)."""
    cs = 1 / (1 + math.exp(-x))
    return -(o * math.log(cs) + (1 - o) * math.log(1 - cs))


def smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


@pytest.mark.parametrize(
    "tau, gt_end, tie_end",
    [(0.5, 2.0, 4.0), (0.75, 3.0, 4.0), (0.55, 11.0, 20.0)],  # IoU(tie) = gt_end / tie_end = tau
)
def test_positive_rule_is_strictly_greater_than_tau(tau, gt_end, tie_end):
    # gt [0, gt_end); candidates: the gt itself (IoU 1), one at IoU exactly tau, one disjoint (IoU 0)
    cands = torch.tensor([[0.0, gt_end], [0.0, tie_end], [tie_end, tie_end + 4]])
    logits = torch.tensor([[0.7, -0.4, 1.3]])
    offsets = torch.tensor([[[0.5, -0.25], [3.0, -4.0], [7.0, 7.0]]])
    out = ModelOutput(logits, torch.sigmoid(logits), offsets, cands, torch.ones(1, 3, dtype=torch.bool))
    loss = FIANLoss(tau=tau, alpha=0.5)(out, torch.tensor([[0.0, gt_end]]))

    # positive: only IoU 1; negatives: the tie (o = tau) and the disjoint one (o = 0)
    align = bce(1.0, 0.7) / 1 + (bce(tau, -0.4) + bce(0.0, 1.3)) / 2
    boundary = (smooth_l1(0.5) + smooth_l1(-0.25)) / 1  # targets of the exact candidate are 0
    assert int(loss["n_pos"]) == 1
    assert loss["align"].item() == pytest.approx(align, rel=1e-6)
    assert loss["boundary"].item() == pytest.approx(boundary, rel=1e-6)
    assert loss["loss"].item() == pytest.approx(align + 0.5 * boundary, rel=1e-6)


def test_positive_rule_just_above_tau_is_positive():
    """IoU 5/9 = 0.5556 > tau = 0.55: positive (the rule is not IoU >= some larger value)."""
    cands = torch.tensor([[0.0, 9.0], [20.0, 24.0]])  # gt [0, 5): IoU 5/9 and 0
    logits = torch.tensor([[0.2, -0.3]])
    offsets = torch.tensor([[[1.0, -2.0], [9.0, 9.0]]])
    out = ModelOutput(logits, torch.sigmoid(logits), offsets, cands, torch.ones(1, 2, dtype=torch.bool))
    loss = FIANLoss(tau=0.55, alpha=1.0)(out, torch.tensor([[0.0, 5.0]]))
    assert int(loss["n_pos"]) == 1
    align = bce(5 / 9, 0.2) + bce(0.0, -0.3)
    boundary = smooth_l1(0.0 - 1.0) + smooth_l1((5.0 - 9.0) - (-2.0))  # target (0, -4) - prediction
    assert loss["align"].item() == pytest.approx(align, rel=1e-6)
    assert loss["boundary"].item() == pytest.approx(boundary, rel=1e-6)
