"""Candidates of Figure 5 and the localization heads (S3.4, Table 5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fian.config import stride_for
from fian.model.localization import CMINHead, ContentHead, TGNHead, anchor_grid, build_head, sliding_windows


@pytest.mark.parametrize("d,p", [(4, 2), (8, 7), (6, 0), (5, 3)])
def test_candidates_follow_figure_5(d, p):
    """C_1 = (1, d), C_2 = (1 + d - p, 2d - p) in the paper's 1-based, end-inclusive terms."""
    stride = d - p  # theta_s = window size minus overlap
    c = sliding_windows(20, [d], [stride])
    c1 = (int(c[0, 0]) + 1, int(c[0, 1]))  # 0-based [s, e) -> 1-based [s+1, e]
    c2 = (int(c[1, 0]) + 1, int(c[1, 1]))
    assert c1 == (1, d)
    assert c2 == (1 + d - p, 2 * d - p)


@pytest.mark.parametrize("T", [16, 17, 64, 200])
@pytest.mark.parametrize("ratio", [0.125, 0.25, 0.5, 1.0])
def test_candidate_count_equals_conv1d_outputs(T, ratio):
    sizes = [k for k in (8, 16, 24, 64, 192) if k <= T]
    strides = [stride_for(k, ratio, None) for k in sizes]
    c = sliding_windows(T, sizes, strides)
    x = torch.zeros(1, 1, T)
    counts = [nn.Conv1d(1, 1, k, s)(x).shape[-1] for k, s in zip(sizes, strides, strict=True)]
    assert c.shape == (sum(counts), 2)
    # each window size in config order, candidate j = [j*s, j*s + k)
    i = 0
    for k, s, n in zip(sizes, strides, counts, strict=True):
        j = torch.arange(n, dtype=torch.float32)
        torch.testing.assert_close(c[i : i + n], torch.stack([j * s, j * s + k], 1))
        assert c[i + n - 1, 1] <= T
        i += n


def test_content_head_scores_each_candidate_from_its_window_only():
    torch.manual_seed(0)
    head = ContentHead(dim=3, num_steps=12, window_sizes=[4, 6], strides=[2, 3]).eval()
    f = torch.randn(1, 12, 3)
    mask = torch.ones(1, 12, dtype=torch.bool)
    ref = head(f, mask)
    assert ref.logits.shape[1] == head.candidates.shape[0] == 5 + 3
    for j, (s, e) in enumerate(head.candidates.long().tolist()):
        g = f.clone()
        outside = torch.ones(12, dtype=torch.bool)
        outside[s:e] = False
        g[0, outside] = torch.randn(int(outside.sum()), 3)
        out = head(g, mask)
        torch.testing.assert_close(out.logits[0, j], ref.logits[0, j])
        torch.testing.assert_close(out.offsets[0, j], ref.offsets[0, j])
    # a candidate of window k at stride s is Conv1d(d, 1, k, s) of its k steps
    conv = head.score[1]
    k0 = 5  # first candidate of the second window size: [0, 6)
    expect = (conv.weight[0] * f[0, 0:6].T).sum() + conv.bias[0]
    torch.testing.assert_close(ref.logits[0, k0], expect)
    torch.testing.assert_close(ref.scores, torch.sigmoid(ref.logits))


def test_valid_marks_candidates_inside_the_real_video():
    head = ContentHead(dim=2, num_steps=12, window_sizes=[4], strides=[2])
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False  # 7 real steps
    out = head(torch.randn(2, 12, 2), mask)
    assert out.valid[0].all()
    torch.testing.assert_close(out.valid[1], head.candidates[:, 1] <= 7)
    assert out.valid[1].tolist() == [True, True, False, False, False]


def test_tgn_anchors_end_at_each_step_by_hand():
    """TGN: at step t (0-based, covering [t, t+1)) width w covers [t+1-w, t+1); step-major order."""
    cands, steps, wins = anchor_grid(4, [1, 3], "end")
    assert cands.tolist() == [
        [0, 1],  # t=0, w=1   (t=0, w=3 would start at -2: left out)
        [1, 2],  # t=1, w=1   (t=1, w=3 starts at -1)
        [2, 3], [0, 3],  # t=2: w=1, w=3
        [3, 4], [1, 4],  # t=3
    ]
    assert steps.tolist() == [0, 1, 2, 2, 3, 3]
    assert wins.tolist() == [0, 0, 0, 1, 0, 1]


def test_cmin_anchors_are_centred_on_each_step_by_hand():
    """CMIN: width w centred on step c spans frames c-(w-1)/2 .. c+(w-1)/2 inclusive, i.e.
    [c + 0.5 - w/2, c + 0.5 + w/2) closed-open; anchors outside [0, T] are left out ("illegal")."""
    cands, steps, wins = anchor_grid(5, [1, 2, 3], "center")
    assert cands.tolist() == [
        [0, 1],  # c=0: w=1 (w=2 starts at -0.5, w=3 at -1)
        [1, 2], [0.5, 2.5], [0, 3],  # c=1: w=1, 2, 3
        [2, 3], [1.5, 3.5], [1, 4],  # c=2
        [3, 4], [2.5, 4.5], [2, 5],  # c=3
        [4, 5],  # c=4: w=2 ends at 5.5 > 5, w=3 at 6
    ]
    assert steps.tolist() == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    assert wins.tolist() == [0, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    # CMIN's TACoS widths over its 200 steps: w=6 centred at c spans [c-2.5, c+3.5)
    c6, s6, w6 = anchor_grid(200, [6, 18, 32], "center")
    first6 = c6[w6 == 0][0].tolist()
    assert first6 == [0.5, 6.5] and int(s6[w6 == 0][0]) == 3  # c=3 is the first legal centre
    assert (c6[:, 1] - c6[:, 0]).unique().tolist() == [6.0, 18.0, 32.0]
    # count: c - (w-1)/2 >= 0 and c + (w-1)/2 <= 199 -> 200 - w legal centres per width
    assert [int((w6 == i).sum()) for i in range(3)] == [194, 182, 168]


def test_the_heads_place_their_anchors_by_hand():
    """The heads themselves (not only anchor_grid): CMIN's anchors are centred on the step that
    scores them, TGN's end at it.  T = 4, widths [1, 2]; step t covers [t, t + 1)."""
    for head in (CMINHead(3, 4, [1, 2]), build_head("cmin", 3, 4, [1, 2], [1, 1])):
        assert head.candidates.tolist() == [[0, 1], [1, 2], [0.5, 2.5], [2, 3], [1.5, 3.5], [3, 4]]
        assert head.anchor_step.tolist() == [0, 1, 1, 2, 2, 3]
        centre = head.candidates.mean(1)
        assert (centre == head.anchor_step + 0.5).all()  # centred on their own step
    for head in (TGNHead(3, 4, [1, 2]), build_head("tgn", 3, 4, [1, 2], [1, 1])):
        assert head.candidates.tolist() == [[0, 1], [1, 2], [0, 2], [2, 3], [1, 3], [3, 4], [2, 4]]
        assert (head.candidates[:, 1] == head.anchor_step + 1).all()  # ending at the end of their step


@pytest.mark.parametrize("kind", ["tgn", "cmin"])
def test_anchor_heads_score_each_anchor_from_its_own_step_only(kind):
    torch.manual_seed(0)
    head = build_head(kind, 3, 8, [2, 4], [1, 1]).eval()
    assert isinstance(head, TGNHead if kind == "tgn" else CMINHead)
    f = torch.randn(1, 8, 3)
    mask = torch.ones(1, 8, dtype=torch.bool)
    out = head(f, mask)
    W, b = head.score.weight, head.score.bias  # [K, d], [K]
    for j, (t, k) in enumerate(zip(head.anchor_step.tolist(), head.anchor_width.tolist(), strict=True)):
        torch.testing.assert_close(out.logits[0, j], (W[k] * f[0, t]).sum() + b[k])
        if kind == "cmin":  # fc_reg: 2 outputs per anchor, (start, end) of width k at 2k, 2k+1
            R, rb = head.reg.weight, head.reg.bias
            expect = torch.stack([(R[2 * k + i] * f[0, t]).sum() + rb[2 * k + i] for i in range(2)])
            torch.testing.assert_close(out.offsets[0, j], expect)
        # changing every other step leaves anchor j alone
        g = f.clone()
        others = torch.arange(8) != t
        g[0, others] = torch.randn(7, 3)
        torch.testing.assert_close(head(g, mask).logits[0, j], out.logits[0, j])
    if kind == "tgn":  # TGN regresses nothing: the predicted segment is the anchor
        assert torch.equal(out.offsets, torch.zeros_like(out.offsets))
    torch.testing.assert_close(out.scores, torch.sigmoid(out.logits))
    # validity against the real length: 5 real steps keep anchors ending at or before 5
    short = torch.arange(8)[None] < 5
    torch.testing.assert_close(head(f, short).valid[0], head.candidates[:, 1] <= 5)


def test_build_head_rejects_unknown_kinds_and_bad_windows():
    with pytest.raises(ValueError, match="unknown head"):
        build_head("2dtan", 4, 16, [4], [1])
    with pytest.raises(ValueError, match="does not fit"):
        sliding_windows(8, [16], [2])
    with pytest.raises(ValueError, match="strides"):
        sliding_windows(8, [4, 2], [2])
    with pytest.raises(ValueError, match="does not fit"):
        anchor_grid(8, [4, 9], "center")
    with pytest.raises(ValueError, match="align"):
        anchor_grid(8, [4], "start")
