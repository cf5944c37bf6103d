"""Candidates of Figure 5 and the localization heads (S3.4, Table 5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fian.config import stride_for
from fian.model.localization import ContentHead, StepAnchorHead, build_head, sliding_windows, step_anchors


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


def test_step_anchors_end_at_each_step():
    cands, steps, wins = step_anchors(6, [2, 4])
    assert cands.tolist()[:5] == [[0, 2], [1, 3], [2, 4], [3, 5], [4, 6]]
    assert cands.tolist()[5:] == [[0, 4], [1, 5], [2, 6]]
    torch.testing.assert_close(steps.float(), cands[:, 1] - 1)  # scored at its last step t: [t-k+1, t+1)
    assert wins.tolist() == [0] * 5 + [1] * 3


@pytest.mark.parametrize("kind", ["tgn", "cmin"])
def test_step_anchor_heads_score_from_one_step(kind):
    torch.manual_seed(0)
    head = StepAnchorHead(kind, dim=3, num_steps=8, window_sizes=[2, 4]).eval()
    f = torch.randn(1, 8, 3)
    mask = torch.ones(1, 8, dtype=torch.bool)
    out = head(f, mask)
    per_step = head.proj(f).view(1, 8, 2, -1)
    for j, (t, w) in enumerate(zip(head.anchor_step.tolist(), head.anchor_window.tolist(), strict=True)):
        torch.testing.assert_close(out.logits[0, j], per_step[0, t, w, 0])
        if kind == "cmin":
            torch.testing.assert_close(out.offsets[0, j], per_step[0, t, w, 1:])
    if kind == "tgn":
        assert torch.equal(out.offsets, torch.zeros_like(out.offsets))


def test_build_head_rejects_unknown_kinds_and_bad_windows():
    with pytest.raises(ValueError, match="unknown head"):
        build_head("2dtan", 4, 16, [4], [1])
    with pytest.raises(ValueError, match="does not fit"):
        sliding_windows(8, [16], [2])
    with pytest.raises(ValueError, match="strides"):
        sliding_windows(8, [4, 2], [2])
