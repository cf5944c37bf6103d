"""The attention maps of FIAN's refinement steps (fian.attention_maps, issue 19 item 4) are the
model's actual attention: captured during a forward that gives the model's usual output, equal to a
plain recomputation per sample on its real words and steps (the reference of tests/test_wiring.py:
plain tensor ops on the state_dict), rows summing to 1 over the real positions, padded ones 0; and
the figures draw exactly those matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_wiring import HEADS, MAIN, STRUCTURES, WORD_LEN, make_inputs, make_model, reference

from fian.attention_maps import ENCODERS, capture_attention


def _plain_weights(q_in, kv_in, P, name):
    """Eq. 4 by hand for one sample, one encoder: [heads, Lq, Lk] over real positions only."""
    W = lambda x, part: x @ P[f"{name}.attention.cma.{part}.weight"].T + P[f"{name}.attention.cma.{part}.bias"]  # noqa: E731
    Q, K = W(q_in, "w_q"), W(kv_in, "w_k")
    dk = Q.shape[-1] // HEADS
    return torch.stack([torch.softmax(Q[:, i * dk:(i + 1) * dk] @ K[:, i * dk:(i + 1) * dk].T / math.sqrt(dk), -1)
                        for i in range(HEADS)])  # fmt: skip


# which reference intermediates each encoder attends from / to (eq. 9-10)
INPUTS = {"enc_a": ("q", "v"), "enc_b": ("v", "q1"), "enc_c": ("v", "q"), "enc_d": ("q", "v2")}


def test_captured_maps_equal_a_plain_recomputation_on_real_positions():
    model = make_model(MAIN)
    inputs = make_inputs()
    video, video_mask, words, word_mask = inputs
    out, maps = capture_attention(model, *inputs)
    assert [m.encoder for m in maps] == ["enc_a", "enc_b", "enc_c", "enc_d"]
    assert [(m.branch, m.step, m.direction) for m in maps] == [
        ("qv", 1, "query -> video"), ("qv", 2, "video -> query"), ("vq", 1, "video -> query"), ("vq", 2, "query -> video"),
    ]  # fmt: skip
    P = {k: v.detach() for k, v in model.state_dict().items()}
    by_name = {m.encoder: m for m in maps}
    for b, (mid, *_rest) in enumerate(reference(P, MAIN, *inputs)):
        n_q, n_v = int(word_mask[b].sum()), int(video_mask[b].sum())
        for name, (attending, attended) in INPUTS.items():
            w = by_name[name].weights[b]  # [heads, L_attending, L_attended]
            rows, cols = mid[attending].shape[0], mid[attended].shape[0]
            expect = _plain_weights(mid[attending], mid[attended], P, name).float()
            torch.testing.assert_close(w[:, :rows, :cols], expect, rtol=1e-5, atol=1e-6, msg=lambda m, n=name, b=b: f"{n} row {b}: {m}")
            assert torch.all(w[:, :, cols:] == 0), f"{name} row {b}: padded positions get weight"
            torch.testing.assert_close(w[:, :rows, :cols].sum(-1), torch.ones(HEADS, rows))
            # the head mean on real positions, as the figures draw it
            real = by_name[name].real(b, n_q, n_v)
            assert real.shape == ((n_q, n_v) if by_name[name].query_rows else (n_v, n_q))
            torch.testing.assert_close(real, expect.mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_capture_leaves_the_output_alone_and_removes_its_hooks(name):
    model = make_model(STRUCTURES[name])
    inputs = make_inputs()
    with torch.no_grad():
        plain = model(*inputs)
    out, maps = capture_attention(model, *inputs)
    for field in ("logits", "scores", "offsets", "valid"):
        assert torch.equal(getattr(out, field), getattr(plain, field)), field
    built = [n for n in ENCODERS if getattr(model, n) is not None]
    assert [m.encoder for m in maps] == built  # e.g. FIAN-VQ / FIAN-CMA: enc_c only
    assert all(not getattr(model, n).attention._forward_hooks for n in built)


def test_soft_attention_variant_has_one_head_maps():
    model = make_model({**MAIN, "attention": "soft"})
    _, maps = capture_attention(model, *make_inputs())
    assert all(m.weights.shape[1] == 1 for m in maps)
    b = 1
    n_q = WORD_LEN[b]
    assert torch.all(maps[1].weights[b, 0, :, n_q:] == 0)  # enc_b: video -> query, padded words


def test_figures_draw_exactly_the_captured_maps(tmp_path, monkeypatch):
    from fian.reports import plots

    model = make_model(MAIN)
    inputs = make_inputs()
    _, maps = capture_attention(model, *inputs)
    b = 0
    words = [f"w{i}" for i in range(WORD_LEN[b])]
    panels = plots.attention_panels(maps, b, words, n_steps=12)
    for m, p in zip(maps, panels, strict=True):  # time along x: video -> query maps transposed
        assert p.matrix.shape == (len(words), 12)
        np.testing.assert_allclose(p.matrix, m.real(b, len(words), 12).numpy().T if not m.query_rows
                                   else m.real(b, len(words), 12).numpy())  # fmt: skip
        np.testing.assert_allclose(p.matrix.sum(1 if p.rows_sum_to_one else 0), 1.0, rtol=1e-5)
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.append(fig) or out)
    plots.attention_figure(tmp_path / "a.png", panels, 30.0, sentence="a man opens a door", gt=(3.0, 9.0), top1=(4.0, 8.0))
    plots.moments_timeline(tmp_path / "t.png", "a man", 30.0, [], attention=panels)
    for fig in drawn:
        images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
        assert len(images) == 4
        for img, p in zip(images, panels, strict=True):
            np.testing.assert_array_equal(np.asarray(img), p.matrix)
    monkeypatch.undo()
    path = plots.attention_figure(tmp_path / "a.png", panels, 30.0, sentence="a man opens a door", gt=(3.0, 9.0))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
