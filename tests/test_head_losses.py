"""The Table 5 heads' own losses against hand computations: TGN's labels, per-scale weights and
weighted binary cross-entropy; CMIN's soft labels, BCE over the proposal grid and regression of
the best anchor (fian/losses.py; sources in the docstrings there)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from fian.config import load_params
from fian.losses import CMINLoss, TGNLoss, build_loss, cmin_labels, tgn_labels, tgn_scale_weights
from fian.model.localization import CMINHead, ModelOutput, TGNHead, anchor_grid

PARAMS = Path(__file__).resolve().parents[1] / "params"


def sp(x: float) -> float:
    """softplus: -log sigmoid(-x) = -log(1 - sigmoid(x))."""
    return math.log1p(math.exp(x))


def r1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def bce(y: float, x: float) -> float:
    c = 1 / (1 + math.exp(-x))
    return -(y * math.log(c) + (1 - y) * math.log(1 - c))


def out_for(cands, logits, offsets=None, lengths=None) -> ModelOutput:
    logits = torch.as_tensor(logits, dtype=torch.float32)
    B, N = logits.shape
    offsets = torch.zeros(B, N, 2) if offsets is None else torch.as_tensor(offsets, dtype=torch.float32)
    T = int(cands[:, 1].max())  # default: every video is the whole T steps
    lengths = torch.full((B,), T) if lengths is None else torch.as_tensor(lengths, dtype=torch.int64)
    valid = cands[None, :, 1] <= lengths[:, None]
    return ModelOutput(logits, torch.sigmoid(logits), offsets, cands, valid, lengths)


# ----------------------------------------------------------------------------------------- TGN
# T = 4, widths [1, 3] ending at each step: [0,1] [1,2] [2,3] [0,3] [3,4] [1,4]; widths 0 0 0 1 0 1
T4 = anchor_grid(4, [1, 3], "end")


def test_tgn_labels_threshold_with_an_ignore_band():
    iou = torch.tensor([0.2, 0.3, 0.4, 0.5, 0.51, 0.9])
    pos, neg = tgn_labels(iou, pos_iou=0.5, neg_iou=0.3)
    assert pos.tolist() == [False, False, False, False, True, True]  # IoU > 0.5
    assert neg.tolist() == [True, True, False, False, False, False]  # IoU <= 0.3; 0.4, 0.5 ignored
    pos, neg = tgn_labels(iou, 0.5, 0.5)  # TACoS: every non-positive is negative
    assert (pos ^ neg).all() and neg.tolist()[:4] == [True] * 4


def test_tgn_scale_weights_by_hand():
    # moment A [0, 3] in a 4-step video: IoUs [0,1] 1/3, [1,2] 1/3, [2,3] 1/3, [0,3] 1, [3,4] 0, [1,4] 1/2
    #   -> width 1: 0 positives of 4 anchors; width 3: 1 of 2 ([1,4] has IoU 0.5, not > 0.5)
    # moment B [1, 2] in a 3-step video (valid: ends <= 3): [1,2] IoU 1, [0,3] 1/3
    #   -> width 1: 1 of 3; width 3: 0 of 1
    gt = torch.tensor([[0.0, 3.0], [1.0, 2.0]])
    w_pos, w_neg = tgn_scale_weights(gt, torch.tensor([4, 3]), 4, [1, 3], pos_iou=0.5, form="frequency")
    p = torch.tensor([1 / 7, 1 / 3])
    torch.testing.assert_close(w_neg, p)  # w_1^k = frequency of positives of scale k
    torch.testing.assert_close(w_pos, 1 - p)  # w_0^k = 1 - that
    # the default: JaywongWang/TGN's w_0 /= w_1; w_1 = 1 -> ((1 - 1/7) / (1/7), 1), ((1 - 1/3) / (1/3), 1)
    w_pos, w_neg = tgn_scale_weights(gt, torch.tensor([4, 3]), 4, [1, 3], pos_iou=0.5)
    torch.testing.assert_close(w_pos, torch.tensor([6.0, 2.0]))
    torch.testing.assert_close(w_neg, torch.tensor([1.0, 1.0]))
    # a scale without any positive keeps one (ours): A alone, width 1 -> 1 / 4, not 0
    w_pos, w_neg = tgn_scale_weights(gt[:1], torch.tensor([4]), 4, [1, 3], pos_iou=0.5, form="frequency")
    torch.testing.assert_close(w_neg, torch.tensor([1 / 4, 1 / 2]))
    # only anchors inside the moment's video count: [3, 5] in a 5-step video of T = 6, width 3:
    #   [0,3] [1,4] [2,5] have IoUs 0, 1/4, 2/3 -> 1 positive of 3 ([3,6], IoU 2/3, lies past the end)
    _, w_neg = tgn_scale_weights(torch.tensor([[3.0, 5.0]]), torch.tensor([5]), 6, [3], pos_iou=0.5, form="frequency")
    torch.testing.assert_close(w_neg, torch.tensor([1 / 3]))
    with pytest.raises(ValueError, match="form must be"):
        tgn_scale_weights(gt, torch.tensor([4, 3]), 4, [1, 3], pos_iou=0.5, form="tf")


def plain_tgn_weights(moments, lengths, T, widths, pos_iou, form):
    """A plain re-computation of JaywongWang/TGN's per-scale weights on whole videos: p_k =
    positives / valid anchors of width k (anchors [e - w, e), e = w..T, inside the video), the count
    of positives kept in [1, #anchors - 1]; get_anchor_weight.py stores (1 - p, p), data_provider.py
    (lines 73-75) divides: w0 /= w1, w1 = 1."""
    out = []
    for w in widths:
        n_pos = n_all = 0
        for (g0, g1), length in zip(moments, lengths, strict=True):
            for e in range(w, T + 1):
                if e > length:
                    continue
                s = e - w
                inter = max(0.0, min(e, g1) - max(s, g0))
                union = max(e, g1) - min(s, g0)
                n_all += 1
                n_pos += inter / union > pos_iou
        p = min(max(n_pos, 1), max(n_all - 1, 1)) / n_all
        w0, w1 = 1 - p, p
        if form == "pos_weight":
            w0, w1 = w0 / w1, 1.0
        out.append((w0, w1))
    return out


@pytest.mark.parametrize("form", ["pos_weight", "frequency"])
def test_tgn_scale_weights_match_a_plain_recomputation(form):
    gen = torch.Generator().manual_seed(3)
    T, widths = 24, [1, 2, 4, 7, 12]
    lengths = torch.randint(12, T + 1, (30,), generator=gen)
    starts = (torch.rand(30, generator=gen) * (lengths - 2)).floor()
    ends = starts + 1 + (torch.rand(30, generator=gen) * (lengths - starts - 1))
    moments = torch.stack([starts, ends], 1)
    w_pos, w_neg = tgn_scale_weights(moments, lengths, T, widths, pos_iou=0.5, form=form)
    want = plain_tgn_weights(moments.tolist(), lengths.tolist(), T, widths, 0.5, form)
    torch.testing.assert_close(w_pos, torch.tensor([a for a, _ in want]))
    torch.testing.assert_close(w_neg, torch.tensor([b for _, b in want]))


def test_tgn_default_loss_is_tf_weighted_cross_entropy_with_pos_weight():
    """The default TGN loss, from the training moments to the number, against a plain
    re-computation of JaywongWang/TGN's model.py (lines 347-348 and after):
    ``weighted_cross_entropy_with_logits(targets, logits, pos_weight=w0/w1)`` =
    ``y * -log(sigmoid(x)) * pos_weight + (1 - y) * -log(1 - sigmoid(x))`` per anchor, summed
    over the (valid) anchors, divided by the real steps."""
    cfg = load_params(PARAMS, "tacos", "tgn")
    assert cfg.loss.tgn_weights == "pos_weight"
    T, widths = 200, list(range(1, 33))
    train_gt = torch.tensor([[10.0, 30.0], [50.0, 52.0], [0.0, 120.0], [90.5, 97.25]])
    train_len = torch.tensor([200, 200, 150, 110])
    loss_fn = build_loss(cfg, (train_gt, train_len))
    want_w = plain_tgn_weights(train_gt.tolist(), train_len.tolist(), T, widths, 0.5, "pos_weight")
    cands, _, width = anchor_grid(T, widths, "end")
    logits = torch.randn(2, cands.shape[0], generator=torch.Generator().manual_seed(0))
    lengths = [200, 120]
    gt = [(33.0, 47.5), (5.0, 9.0)]
    total = 0.0
    for b in range(2):
        for j, ((s, e), k) in enumerate(zip(cands.tolist(), width.tolist(), strict=True)):
            if e > lengths[b]:
                continue
            g0, g1 = gt[b]
            iou = max(0.0, min(e, g1) - max(s, g0)) / (max(e, g1) - min(s, g0))
            y = 1.0 if iou > 0.5 else 0.0
            x = logits[b, j].item()
            c = 1 / (1 + math.exp(-x))
            total += y * -math.log(c) * want_w[k][0] + (1 - y) * -math.log(1 - c)
    out = loss_fn(out_for(cands, logits, lengths=lengths), torch.tensor(gt))
    assert out["loss"].item() == pytest.approx(total / sum(lengths), rel=1e-5)


def test_tgn_weighted_bce_by_hand():
    cands, _, width = T4
    w_pos, w_neg = torch.tensor([0.9, 0.7]), torch.tensor([0.1, 0.3])
    loss_fn = TGNLoss(w_pos, w_neg, width, pos_iou=0.5, neg_iou=0.3)
    x = [[0.3, -0.2, 0.5, 1.0, -1.5, 0.25], [0.7, 0.1, -0.4, -2.0, 50.0, -50.0]]
    gt = torch.tensor([[0.5, 3.0], [0.0, 3.0]])
    out = loss_fn(out_for(cands, x, lengths=[4, 3]), gt)
    # row 0, gt [0.5, 3]: IoUs 1/6, 0.4, 0.4, 5/6, 0, 4/7 -> pos [0,3] (w3), [1,4] (w3);
    #   neg (<= 0.3) [0,1] (w1), [3,4] (w1); [1,2], [2,3] ignored
    row0 = 0.7 * sp(-1.0) + 0.7 * sp(-0.25) + 0.1 * sp(0.3) + 0.1 * sp(-1.5)  # -log c = sp(-x)
    # row 1, gt [0, 3], 3 real steps: [3,4] and [1,4] invalid (their logits +-50 must not count);
    #   IoUs 1/3, 1/3, 1/3, 1 -> pos [0,3] (w3); nothing <= 0.3
    row1 = 0.7 * sp(2.0)
    steps = 4 + 3  # the mean is over the real steps of the batch
    assert out["align"].item() == pytest.approx((row0 + row1) / steps, rel=1e-5)
    assert out["loss"].item() == pytest.approx((row0 + row1) / steps, rel=1e-5)
    assert out["boundary"].item() == 0.0 and out["n_pos"].item() == 3


def test_tgn_loss_counts_the_steps_of_a_video_shorter_than_every_anchor():
    """Widths [2, 3] on T = 4: anchors [0,2] [1,3] [0,3] [2,4] [1,4].  Video 0 has 4 steps, video 1
    one step: none of its anchors is valid, it adds no term, but its step counts (4 + 1 = 5)."""
    cands, _, width = anchor_grid(4, [2, 3], "end")
    assert cands.tolist() == [[0.0, 2.0], [1.0, 3.0], [0.0, 3.0], [2.0, 4.0], [1.0, 4.0]]
    loss_fn = TGNLoss(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]), width, pos_iou=0.5, neg_iou=0.5)
    gt = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    out = loss_fn(out_for(cands, torch.zeros(2, 5), lengths=[4, 1]), gt)
    # row 0, gt [0, 2]: IoUs 1, 1/3, 2/3, 0, 1/4 -> pos [0,2], [0,3]; neg the other three
    # (logit 0: softplus(0) = ln 2 for each of the 5); row 1: nothing valid
    assert out["align"].item() == pytest.approx(5 * math.log(2) / 5, rel=1e-6)
    assert out["n_pos"].item() == 2
    # without the lengths the loss refuses (it cannot know the real steps)
    bare = out_for(cands, torch.zeros(2, 5), lengths=[4, 1])
    bare.lengths = None
    with pytest.raises(ValueError, match=r"needs ModelOutput.lengths \[B=2\], got None"):
        loss_fn(bare, gt)


def test_heads_report_the_real_lengths():
    for head in (TGNHead(3, 4, [1, 2]), CMINHead(3, 4, [1, 3])):
        mask = torch.tensor([[True] * 4, [True, True, False, False]])
        assert head(torch.randn(2, 4, 3), mask).lengths.tolist() == [4, 2]


def test_tgn_loss_checks_its_anchor_count_and_thresholds():
    cands, _, width = T4
    loss_fn = TGNLoss(torch.ones(2), torch.ones(2), width)
    with pytest.raises(ValueError, match="anchors"):
        loss_fn(out_for(cands[:5], torch.zeros(1, 5)), torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="neg_iou"):
        TGNLoss(torch.ones(2), torch.ones(2), width, pos_iou=0.3, neg_iou=0.5)


def test_build_loss_tgn_from_the_training_moments():
    cfg = load_params(PARAMS, "tacos", "tgn")
    gt = torch.tensor([[10.0, 30.0], [50.0, 52.0]])
    loss_fn = build_loss(cfg, (gt, torch.tensor([200, 200])))
    assert isinstance(loss_fn, TGNLoss) and (loss_fn.pos_iou, loss_fn.neg_iou) == (0.5, 0.5)
    cands, _, width = anchor_grid(200, list(range(1, 33)), "end")
    assert loss_fn.w_pos.shape == (cands.shape[0],)
    # width 20 (index 19): moment [10, 30) has 13 anchors with IoU > 0.5
    #   (IoU of [e-20, e) with [10, 30) = (20-|e-30|) / (20+|e-30|) > 0.5 <=> |e-30| < 20/3: e = 24..36);
    #   moment [50, 52) none; 181 anchors of width 20 per video
    p20 = 13 / (2 * 181)
    j = int((width == 19).nonzero()[0])
    # default loss.tgn_weights: pos_weight, JaywongWang/TGN's ((1 - p) / p, 1)
    assert loss_fn.w_neg[j].item() == 1.0 and loss_fn.w_pos[j].item() == pytest.approx((1 - p20) / p20)
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, tgn_weights="frequency"))
    loss_fn = build_loss(cfg, (gt, torch.tensor([200, 200])))
    assert loss_fn.w_neg[j].item() == pytest.approx(p20) and loss_fn.w_pos[j].item() == pytest.approx(1 - p20)


# ---------------------------------------------------------------------------------------- CMIN
# T = 4, widths [1, 2] centred on each step: [0,1] | [1,2] [0.5,2.5] | [2,3] [1.5,3.5] | [3,4]
C4 = anchor_grid(4, [1, 2], "center")


def test_cmin_soft_labels_by_hand():
    cands = C4[0]
    assert cands.tolist() == [[0, 1], [1, 2], [0.5, 2.5], [2, 3], [1.5, 3.5], [3, 4]]
    gt = torch.tensor([[1.0, 2.5]])  # IoUs 0, 2/3, 3/4, 1/4, 2/5, 0; best 3/4
    valid = torch.ones(1, 6, dtype=torch.bool)
    from fian.losses import candidate_iou

    labels = cmin_labels(candidate_iou(cands, gt), valid, 0.3)
    torch.testing.assert_close(labels[0], torch.tensor([0, 8 / 9, 1, 1 / 3, 8 / 15, 0]))
    # ratio 0.5: 1/4 < 0.375 is dropped, 2/5 >= 0.375 kept
    labels = cmin_labels(candidate_iou(cands, gt), valid, 0.5)
    torch.testing.assert_close(labels[0], torch.tensor([0, 8 / 9, 1, 0, 8 / 15, 0]))
    # CMIN zeroes IoU < ratio x best: a label exactly at the ratio stays (gt [1, 2]: IoUs 0, 1, 1/2, 0, 1/5, 0)
    labels = cmin_labels(candidate_iou(cands, torch.tensor([[1.0, 2.0]])), valid, 0.5)
    torch.testing.assert_close(labels[0], torch.tensor([0, 1, 0.5, 0, 0, 0]))
    # an invalid anchor has IoU 0 and cannot be the best: best becomes 2/3 among the rest
    valid[0, 2] = False
    labels = cmin_labels(candidate_iou(cands, gt), valid, 0.3)
    torch.testing.assert_close(labels[0], torch.tensor([0, 1, 0, 3 / 8, 3 / 5, 0]))


def test_cmin_loss_by_hand():
    cands = C4[0]
    x = [[0.2, 1.0, 2.0, -0.5, 0.3, -1.0], [-0.3, 0.4, 0.1, 1.5, 40.0, -40.0]]
    big = 60.0  # offsets of anchors other than the best one must not count
    offsets = [
        [[big, big], [big, big], [0.2, 1.5], [big, big], [big, big], [big, big]],
        [[big, big], [big, big], [big, big], [0.5, -0.2], [big, big], [big, big]],
    ]
    gt = torch.tensor([[1.0, 2.5], [2.0, 3.0]])
    out = CMINLoss(grid_size=4 * 2, alpha=0.1, min_ratio=0.3)(out_for(cands, x, offsets, [4, 3]), gt)
    # row 0: labels 0, 8/9, 1, 1/3, 8/15, 0 (test above)
    cls0 = sum(bce(y, v) for y, v in zip([0, 8 / 9, 1, 1 / 3, 8 / 15, 0], x[0], strict=True))
    # row 1, 3 real steps: [1.5,3.5] and [3,4] invalid; IoUs with [2,3]: 0, 0, 1/5, 1 -> labels 0 0 0 1
    cls1 = bce(0, -0.3) + bce(0, 0.4) + bce(0, 0.1) + bce(1, 1.5)
    align = (cls0 + cls1) / (2 * 8)  # nn.BCELoss mean over the B x T x K grid
    # best anchors: row 0 [0.5, 2.5] (target gt - anchor = (0.5, 0)); row 1 [2, 3] (target (0, 0))
    boundary = (r1(0.2 - 0.5) + r1(1.5) + r1(0.5) + r1(-0.2)) / 4  # SmoothL1 mean over B x 2
    assert out["align"].item() == pytest.approx(align, rel=1e-5)
    assert out["boundary"].item() == pytest.approx(boundary, rel=1e-5)
    assert out["loss"].item() == pytest.approx(align + 0.1 * boundary, rel=1e-5)
    assert out["n_pos"].item() == 4 + 1


def test_cmin_regresses_the_first_best_anchor_on_ties():
    cands, _, _ = anchor_grid(4, [2], "center")  # [0.5, 2.5], [1.5, 3.5]
    gt = torch.tensor([[1.5, 2.5]])  # IoU 1/2 with both
    # offsets exact for the first anchor (target (1, 0)), zero for the second (target (0, -1))
    out = CMINLoss(2 * 4)(out_for(cands, torch.zeros(1, 2), [[[1.0, 0.0], [0.0, 0.0]]]), gt)
    assert out["boundary"].item() == 0.0  # CMIN's argmax takes the first maximum in grid order


def test_cmin_query_without_overlap_adds_no_regression():
    cands = C4[0]
    gt = torch.tensor([[1.0, 2.5], [3.0, 3.0]])  # the second has no length: every IoU 0
    off = torch.zeros(2, 6, 2)
    off[1] = 7.0
    out = CMINLoss(8)(out_for(cands, torch.zeros(2, 6), off), gt)
    # only row 0 regresses: its best anchor [0.5, 2.5] has target (0.5, 0) and offsets (0, 0)
    assert out["boundary"].item() == pytest.approx((r1(-0.5) + r1(0.0)) / 2)
