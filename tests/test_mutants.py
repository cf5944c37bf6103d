"""Tests written for mutants that survived the mutation run of docs/MUTATION.md.

Each test names the mutant(s) it kills (mutmut 3 names, ``module.x_function__mutmut_N``).  Expected
values are hand computations.  Nothing here depends on the exact-threshold rule of the metrics
(``IoU >= m`` or ``> m``, a protocol option under change), nor on the NMS threshold schedule.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fian.inference import predicted_segments
from fian.losses import CMINLoss, FIANLoss, TGNLoss, seconds_to_steps, tgn_scale_weights, training_moments
from fian.metrics import (
    evaluate_predictions,
    mean_iou,
    nms_1d,
    protocol,
    rank_with_nms,
    recall_at,
    temporal_iou,
)
from fian.model.attention import MultiHeadAttention
from fian.model.localization import CMINHead, ModelOutput, TGNHead, anchor_grid, sliding_windows

NAN = float("nan")


# ---- fian.metrics.temporal_iou


def test_iou_of_short_intervals_in_torch():
    """Unions below 1 (seconds of a short clip): [0, .5] vs [.25, .5] -> .25 / .5.
    Kills x_temporal_iou__mutmut_37 (``union > 1``) and _40 (clamp at 1)."""
    iou = temporal_iou(torch.tensor([[0.0, 0.5], [0.1, 0.3]]), torch.tensor([[0.25, 0.5], [0.2, 0.3]]))
    torch.testing.assert_close(iou, torch.tensor([0.5, 0.5]))


def test_iou_of_short_intervals_in_numpy():
    """The same in numpy.  Kills x_temporal_iou__mutmut_101 (``union > 1``) and _110 (divided by 1)."""
    iou = temporal_iou(np.array([[0.0, 0.5], [0.1, 0.3]]), np.array([[0.25, 0.5], [0.2, 0.3]]))
    np.testing.assert_allclose(iou, [0.5, 0.5])


def test_iou_with_one_tensor_returns_a_tensor():
    """Numpy or torch in, same out: one tensor argument is enough for a tensor result.
    Kills x_temporal_iou__mutmut_1 (``or`` -> ``and``)."""
    iou = temporal_iou(torch.tensor([0.0, 2.0]), [1.0, 3.0])
    assert isinstance(iou, torch.Tensor) and iou.item() == pytest.approx(1 / 3)
    assert isinstance(temporal_iou([0.0, 2.0], torch.tensor([1.0, 3.0])), torch.Tensor)


# ---- fian.metrics.nms_1d


def test_nms_accepts_tensors_that_require_grad():
    """Kills x_nms_1d__mutmut_6 / _13 (tensor inputs not detached: numpy refuses them)."""
    seg = torch.tensor([[0.0, 4.0], [1.0, 4.0], [6.0, 9.0]], requires_grad=True)
    sc = torch.tensor([0.9, 0.8, 0.1], requires_grad=True)
    kept = nms_1d(seg, sc, threshold=0.5)  # IoU([0,4],[1,4]) = 0.75: the second is suppressed
    assert kept.tolist() == [0, 2]


def test_nms_skips_a_non_finite_best_score_and_goes_on():
    """+inf sorts first: it is skipped, and the finite ones after it are still visited.
    Kills x_nms_1d__mutmut_40 (``continue`` -> ``break``)."""
    seg = np.array([[0.0, 2.0], [3.0, 5.0], [6.0, 8.0], [9.0, 11.0]])
    kept = nms_1d(seg, np.array([math.inf, 0.9, NAN, 0.5]), threshold=0.5)
    assert kept.tolist() == [1, 3]


def test_nms_returns_int64_indices_even_when_nothing_is_kept():
    """Kills x_nms_1d__mutmut_52 / _54 (np.asarray([]) is float64)."""
    kept = nms_1d(np.array([[0.0, 1.0], [2.0, 3.0]]), np.array([-math.inf, -math.inf]), 0.5)
    assert kept.dtype == np.int64 and kept.shape == (0,)
    assert nms_1d(np.array([[0.0, 1.0]]), np.array([0.3]), 0.5).dtype == np.int64


# ---- fian.metrics recall / mIoU

GT2 = np.array([[0.0, 10.0], [20.0, 30.0]])


def test_zero_predictions_per_query_score_zero():
    """K = 0 (no prediction at all): every recall and the mIoU are 0, no error.
    Kills x_recall_at__mutmut_19 / _22 / _23 and x_evaluate_predictions__mutmut_20 / _26 / _27."""
    pred = np.zeros((2, 0, 2))
    r = recall_at(pred, GT2, ns=(1, 5), ms=(0.3, 0.7))
    assert r == {"R@1,IoU=0.3": 0.0, "R@1,IoU=0.7": 0.0, "R@5,IoU=0.3": 0.0, "R@5,IoU=0.7": 0.0}
    ev = evaluate_predictions(pred, GT2, ns=(1,), ms=(0.3,))
    assert ev == {"R@1,IoU=0.3": 0.0, "mIoU": 0.0}


def test_miou_is_of_the_top1_prediction_and_ms_are_passed_on():
    """mIoU reads prediction 0, not 1 (x_evaluate_predictions__mutmut_25); the given ms reach
    recall_at (x_evaluate_predictions__mutmut_14: the defaults would add 0.1 .. 0.7)."""
    pred = np.array([[[0.0, 5.0], [0.0, 10.0]], [[25.0, 30.0], [20.0, 30.0]]])  # top-1 IoU 0.5, 0.5
    ev = evaluate_predictions(pred, GT2, ns=(1, 2), ms=(0.6,))
    assert set(ev) == {"R@1,IoU=0.6", "R@2,IoU=0.6", "mIoU"}
    assert ev["mIoU"] == pytest.approx(0.5)  # the second predictions would give 1.0
    assert ev["R@1,IoU=0.6"] == 0.0 and ev["R@2,IoU=0.6"] == 1.0


def test_metrics_accept_tensors_that_require_grad():
    """Kills x__pred_gt__mutmut_6 and x__as_numpy__mutmut_6 (tensors must be detached)."""
    pred = torch.tensor([[[0.0, 5.0]], [[20.0, 30.0]]], requires_grad=True)
    gt = torch.tensor(GT2, requires_grad=True)
    ev = evaluate_predictions(pred, gt, ns=(1,), ms=(0.3,))
    assert ev["R@1,IoU=0.3"] == 1.0 and ev["mIoU"] == pytest.approx(0.75)


def test_row_count_mismatch_names_both_row_counts():
    """Kills x__pred_gt__mutmut_29 (K printed instead of Q)."""
    with pytest.raises(ValueError, match="^2 prediction rows but 4 ground-truth rows$"):
        evaluate_predictions(np.zeros((2, 3, 2)), np.zeros((4, 2)))


def test_nan_ground_truth_lists_at_most_ten_rows():
    """Kills x__pred_gt__mutmut_37 (eleven rows listed)."""
    gt = np.full((12, 2), NAN)
    with pytest.raises(ValueError, match=r"query rows \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]$"):
        evaluate_predictions(np.zeros((12, 1, 2)), gt)


def test_mean_iou_names_its_argument_in_errors():
    """Kills x_mean_iou__mutmut_3 / _8 / _9."""
    with pytest.raises(ValueError, match=r"^pred_top1 must be \[Q, 2\]"):
        mean_iou(np.zeros((2, 3)), GT2)


# ---- fian.inference.predicted_segments


def _out(cands, offsets):
    cands = torch.tensor(cands)
    offsets = torch.tensor(offsets)
    logits = torch.zeros(offsets.shape[:2])
    return ModelOutput(logits, torch.sigmoid(logits), offsets, cands, torch.ones_like(logits, dtype=torch.bool))


def test_predicted_segments_default_unit_is_steps():
    """Kills x_predicted_segments__mutmut_1 / _2 (a wrong default raises)."""
    seg = predicted_segments(_out([[2.0, 6.0]], [[[0.5, -1.0]]]), num_steps=10)
    torch.testing.assert_close(seg, torch.tensor([[[2.5, 5.0]]]))


def test_predicted_segments_window_unit_uses_the_window_length():
    """Window [2, 6) has length 4 (not 2 + 6): offsets (0.25, -0.5) windows -> (+1, -2) steps.
    Kills x_predicted_segments__mutmut_10."""
    seg = predicted_segments(_out([[2.0, 6.0]], [[[0.25, -0.5]]]), num_steps=10, offset_unit="window")
    torch.testing.assert_close(seg, torch.tensor([[[3.0, 4.0]]]))


# ---- fian.losses.seconds_to_steps


def test_seconds_to_steps_rejects_gt_that_is_not_pairs():
    """[B, 3] ground truth with a matching [B] duration is refused.  Kills x_seconds_to_steps__mutmut_2."""
    with pytest.raises(ValueError, match=r"gt must be \[B, 2\]"):
        seconds_to_steps(torch.zeros(2, 3), torch.ones(2), 16)
    torch.testing.assert_close(
        seconds_to_steps(torch.tensor([[1.0, 3.0]]), torch.tensor([4.0]), 16), torch.tensor([[4.0, 12.0]])
    )


# ---- fian.losses.FIANLoss


def test_boundary_targets_in_window_units_divide_by_the_window_length():
    """Candidate [2, 6) (length 4), gt [3, 5): targets (1, -1) steps = (0.25, -0.25) windows.
    Kills x_offset_targets__mutmut_7 (times the length) and _8 (divided by start + end = 8)."""
    cands = torch.tensor([[2.0, 6.0]])
    logits = torch.tensor([[0.0]])
    offsets = torch.tensor([[[0.75, 0.25]]])  # minus targets: (0.5, 0.5), both in the quadratic part
    out = ModelOutput(logits, torch.sigmoid(logits), offsets, cands, torch.ones(1, 1, dtype=torch.bool))
    loss = FIANLoss(tau=0.3, alpha=1.0, offset_unit="window")(out, torch.tensor([[3.0, 5.0]]))  # IoU 0.5
    assert int(loss["n_pos"]) == 1
    assert loss["boundary"].item() == pytest.approx(0.5 * 0.5**2 + 0.5 * 0.5**2)


def test_loss_names_the_bad_ground_truth_shape():
    """Kills xǁFIANLossǁforward__mutmut_4 / _5 (message lost)."""
    cands = torch.tensor([[0.0, 4.0]])
    logits = torch.zeros(2, 1)
    out = ModelOutput(logits, torch.sigmoid(logits), torch.zeros(2, 1, 2), cands, torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^gt_steps must be \[B=2, 2\] steps, got \(2, 3\)$"):
        FIANLoss(tau=0.5, alpha=1.0)(out, torch.zeros(2, 3))


def test_non_finite_loss_names_the_bad_term_and_shows_both_values():
    """NaN offsets on a positive: the boundary term is NaN, the alignment term is not.
    Kills xǁFIANLossǁforward__mutmut_103 / _105 / _108 / _109 (names and the list of bad terms)."""
    cands = torch.tensor([[0.0, 4.0]])
    logits = torch.tensor([[0.0]])
    offsets = torch.tensor([[[NAN, 0.0]]])
    out = ModelOutput(logits, torch.sigmoid(logits), offsets, cands, torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(
        FloatingPointError, match=r"^non-finite loss term\(s\) \['boundary'\]: \{'align': [0-9.]+, 'boundary': nan\}$"
    ):
        FIANLoss(tau=0.5, alpha=1.0)(out, torch.tensor([[0.0, 4.0]]))


# ---- fian.model.attention.MultiHeadAttention


def test_attention_dropout_acts_in_training_mode_only():
    """Dropout on the attention weights (params: "dropout in attention and FFN"): eval mode is
    deterministic; train mode with p = 0.5 changes the output; p = 0 in train mode changes nothing.
    Kills xǁMultiHeadAttentionǁforward__mutmut_66 / _68 (no dropout in training)."""
    torch.manual_seed(0)
    att = MultiHeadAttention(8, 2, dropout=0.5)
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        ref = att.eval()(q, kv, mask)
        torch.testing.assert_close(att(q, kv, mask), ref, rtol=0, atol=0)
        assert not torch.allclose(att.train()(q, kv, mask), ref, atol=1e-3)
        att.dropout = 0.0
        torch.testing.assert_close(att(q, kv, mask), ref)


# ---- second run (docs/MUTATION.md section 3): fian.metrics.protocol / rank_with_nms


def test_protocol_words_in_full():
    """Every key of both protocols, written out by hand.  Kills x_protocol__mutmut_27 (fixed
    ``nms_at`` None), _32 _33 _35 _36 (per-level ``nms_at`` text), _37-_40 (per-level text),
    _42 _44-_46 _48 (the source named for ``gt``)."""
    assert protocol("gt", "per_level", 0.5, (0.1, 0.5)) == {
        "preset": "custom",
        "iou_rule": "gt",
        "hit": "IoU > m",
        "nms": "per_level",
        "nms_threshold": "0.5",
        "nms_at": "m - 0.05 (m=0.1: 0.05, m=0.5: 0.45)",
        "text": "hit: IoU > m (S4.2 wording, 2D-TAN's code); one ranked list per m, NMS at m - 0.05 (TALL's evaluator)",
    }
    assert protocol("ge", "fixed", 0.4, (0.5, 0.7)) == {
        "preset": "custom",
        "iou_rule": "ge",
        "hit": "IoU >= m",
        "nms": "fixed",
        "nms_threshold": "0.4",
        "nms_at": "0.4 at every m",
        "text": "hit: IoU >= m (TALL's and CMIN's code); one ranked list, NMS at IoU 0.4 for every m",
    }


def test_protocol_rejects_an_unknown_rule_with_a_value_error_naming_it():
    """Kills x_protocol__mutmut_3 (KeyError instead) and _16 (message None)."""
    with pytest.raises(ValueError, match=r"iou_rule must be one of \('gt', 'ge'\), got 'GT'"):
        protocol("GT", "fixed", 0.5, (0.5,))


def test_rank_with_nms_of_integer_inputs_pads_with_nan_and_minus_inf():
    """Integer segments and scores (lists): [0, 10] twice (IoU 1 > .5: the second dropped), then
    [20, 30].  Kills x_rank_with_nms__mutmut_3 _5 (segments kept int: no NaN padding), _8 _10
    (scores kept int: no -inf) and _45 (kept scores not copied)."""
    seg, sc = rank_with_nms([[[0, 10], [0, 10], [20, 30]]], [[3, 2, 1]], 0.5)
    np.testing.assert_array_equal(seg, [[[0.0, 10.0], [20.0, 30.0], [NAN, NAN]]])
    np.testing.assert_array_equal(sc, [[3.0, 1.0, -np.inf]])


def test_iou_rule_is_passed_on_by_evaluate_and_per_level_recall():
    """Prediction [0, 10] for ground truth [0, 20]: IoU exactly 10 / 20 = 0.5, a hit at m = 0.5
    under ``ge`` only.  Kills x_evaluate_predictions__mutmut_13 (mapping branch) and _50 (array
    branch) and x_recall_at__mutmut_22 (per-level branch): the rule was dropped (default ``gt``)."""
    pred, gt = np.array([[[0.0, 10.0]]]), np.array([[0.0, 20.0]])
    for p in (pred, {0.5: pred}):
        assert evaluate_predictions(p, gt, ns=(1,), ms=(0.5,), iou_rule="ge") == {"R@1,IoU=0.5": 1.0, "mIoU": 0.5}
        assert evaluate_predictions(p, gt, ns=(1,), ms=(0.5,), iou_rule="gt") == {"R@1,IoU=0.5": 0.0, "mIoU": 0.5}
    assert recall_at({0.5: pred}, gt, ns=(1,), ms=(0.5,), iou_rule="ge") == {"R@1,IoU=0.5": 1.0}


def test_per_level_lists_with_zero_predictions_score_zero():
    """Per-level lists of K = 0 predictions: every recall and mIoU 0.  Kills
    x_evaluate_predictions__mutmut_27 and _33 (mIoU of an empty list: IndexError) and _34 (1.0)."""
    empty = np.zeros((2, 0, 2))
    got = evaluate_predictions({0.3: empty, 0.5: empty}, np.array([[0.0, 1.0], [2.0, 3.0]]), ns=(1,), ms=(0.3, 0.5))
    assert got == {"R@1,IoU=0.3": 0.0, "R@1,IoU=0.5": 0.0, "mIoU": 0.0}


# ---- second run: fian.losses.TGNLoss


def _tgn_case(valid):
    """Four width-1 anchors [t, t + 1) on T = 4, logits 0, ground truth [0, 1) (IoU 1 with anchor 0)."""
    cands = torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 4.0]])
    logits = torch.zeros(1, 4)
    out = ModelOutput(logits, torch.sigmoid(logits), torch.zeros(1, 4, 2), cands, torch.tensor([valid]),
                      torch.tensor([sum(valid)]))  # fmt: skip
    loss = TGNLoss(torch.tensor([2.0]), torch.tensor([3.0]), torch.zeros(4, dtype=torch.long))
    return loss, out


def test_tgn_loss_of_a_one_step_video_divides_by_one_step():
    """A video of one real step: only anchor 0 is valid, a positive: 2 * softplus(0) = 2 ln 2 over
    1 real step.  Kills xǁTGNLossǁforward__mutmut_65 (the step count clamped at 2)."""
    loss, out = _tgn_case([True, False, False, False])
    got = loss(out, torch.tensor([[0.0, 1.0]]))
    assert got["align"].item() == pytest.approx(2 * math.log(2))
    assert got["n_pos"].item() == 1 and got["boundary"].item() == 0.0
    # the whole video (4 steps): + 3 negatives at 3 * softplus(0) each, over 4 steps
    got = loss(*_tgn_case([True] * 4)[1:], torch.tensor([[0.0, 1.0]]))
    assert got["align"].item() == pytest.approx((2 + 3 * 3) * math.log(2) / 4)


def test_tgn_loss_names_the_bad_ground_truth_shape():
    """Kills xǁTGNLossǁforward__mutmut_4 (message None) and _5 (TypeError instead)."""
    loss, out = _tgn_case([True] * 4)
    with pytest.raises(ValueError, match=r"^gt_steps must be \[B=1, 2\] steps, got \(1, 3\)$"):
        loss(out, torch.zeros(1, 3))


@pytest.mark.parametrize(
    "gt,lengths,match",
    [
        # lengths of the wrong size: x_tgn_scale_weights__mutmut_2 (``or`` -> ``and``)
        (torch.zeros(3, 2), torch.ones(2), r"^gt_steps must be \[M, 2\] and lengths \[M\], got \(3, 2\), \(2,\)$"),
        # gt of three columns: _3 (``and``); the message: _11, _12, _13
        (torch.zeros(3, 3), torch.ones(3), r"^gt_steps must be \[M, 2\] and lengths \[M\], got \(3, 3\), \(3,\)$"),
        # no moment: _14 (``shape[1] == 0``) and the message: _17-_20
        (torch.zeros(0, 2), torch.ones(0), r"^TGN's scale weights need at least one training moment$"),
    ],
)
def test_tgn_scale_weights_reject_bad_training_moments(gt, lengths, match):
    with pytest.raises(ValueError, match=match):
        tgn_scale_weights(gt, lengths, 8, (1, 2), 0.5)


@pytest.mark.parametrize(
    "gt,lengths,widths,chunk,p",
    [
        # 4 moments [0, 4) in 4-step videos, width 4: 4 anchors, 4 positives -> #pos kept at
        # #all - 1 = 3: p = 3/4.  Kills x_tgn_scale_weights__mutmut_101 (p = 1) and _102 (p = 1/2).
        ([[0, 4]] * 4, [4] * 4, (4,), 512, [3 / 4]),
        # 2 of them: 2 anchors, 2 positives -> min(2, 1) / 2.  Kills _103 (clamp at 2: p = 1).
        ([[0, 4]] * 2, [4] * 2, (4,), 512, [1 / 2]),
        # width 1: [0, 1) in a 4-step video: 4 anchors, 1 positive (IoU 1); [1, 3) in a 2-step video:
        # 2 anchors, IoUs 0 and 0.5 (not > 0.5) -> 1 / 6.  Width 4: one anchor ([0, 4), IoU 1/4,
        # the 2-step video has none) -> #pos kept at 1: p = 1.  Kills _81 (raised at #all == 1).
        ([[0, 1], [1, 3]], [4, 2], (1, 4), 512, [1 / 6, 1]),
        # + [2, 3) in a 4-step video (width 1: 4 anchors, 1 positive; width 4: one, IoU 1/4), one
        # moment per chunk: width 1 -> 2 / 10, width 4 -> min(1, 1) / 2.  Kills _48 (chunks over
        # range(gt.shape[1]): the third moment left out).
        ([[0, 1], [1, 3], [2, 3]], [4, 2, 4], (1, 4), 1, [1 / 5, 1 / 2]),
    ],
)
def test_tgn_scale_weights_by_hand(gt, lengths, widths, chunk, p):
    w_pos, w_neg = tgn_scale_weights(torch.tensor(gt, dtype=torch.float32), torch.tensor(lengths), 4, widths, 0.5, chunk, form="frequency")
    torch.testing.assert_close(w_neg, torch.tensor(p))
    torch.testing.assert_close(w_pos, 1 - torch.tensor(p))


def test_tgn_scale_weights_name_the_width_that_fits_no_video():
    """Width 4 in a 2-step video: no anchor.  Kills x_tgn_scale_weights__mutmut_82-_84, _86, _87
    (message None, TypeError, unpacking), _90 (lists the widths that fit) and _91 (lists none)."""
    with pytest.raises(ValueError, match=r"^anchor widths \[4\] fit no training video$"):
        tgn_scale_weights(torch.tensor([[0.0, 1.0]]), torch.tensor([2]), 4, (1, 4), 0.5)


# ---- second run: fian.losses.CMINLoss, the anchor heads' buffers


def _cmin_case(logits=(0.0, 0.0)):
    """Anchors [0, 2), [2, 4); ground truth [0, 2) (IoUs 1 and 0: labels 1, 0); offsets of the best
    anchor (1, -3) against target gt - anchor = (0, 0)."""
    cands = torch.tensor([[0.0, 2.0], [2.0, 4.0]])
    lg = torch.tensor([list(logits)])
    off = torch.tensor([[[1.0, -3.0], [5.0, 5.0]]])
    return ModelOutput(lg, torch.sigmoid(lg), off, cands, torch.ones(1, 2, dtype=torch.bool)), torch.tensor([[0.0, 2.0]])


def test_cmin_loss_by_hand_with_its_defaults():
    """BCE at logit 0 = ln 2 per anchor, over B * grid = 2: ln 2; smooth-L1 (beta 1) of (1, -3):
    0.5 + 2.5, mean over 2 coordinates = 1.5; loss = ln 2 + 1e-3 * 1.5 (CMIN's alpha, the default).
    Kills xǁCMINLossǁ__init____mutmut_1 (default alpha 1.001) and xǁCMINLossǁforward__mutmut_6
    (a head of exactly grid_size anchors rejected); grid 1 allowed: __init___4, _5."""
    got = CMINLoss(2)(*_cmin_case())
    assert got["align"].item() == pytest.approx(math.log(2))
    assert got["boundary"].item() == pytest.approx(1.5)
    assert got["loss"].item() == pytest.approx(math.log(2) + 1e-3 * 1.5)
    assert got["n_pos"].item() == 1
    out, gt = _cmin_case()
    one = ModelOutput(out.logits[:, :1], out.scores[:, :1], out.offsets[:, :1], out.candidates[:1], out.valid[:, :1])
    assert CMINLoss(1)(one, gt)["align"].item() == pytest.approx(math.log(2))


def test_cmin_loss_checks_finiteness_by_default():
    """Kills xǁCMINLossǁ__init____mutmut_3 (check_finite default False)."""
    with pytest.raises(FloatingPointError, match="non-finite loss term"):
        CMINLoss(2)(*_cmin_case((NAN, 0.0)))


def test_cmin_loss_arguments_and_inputs_are_checked_with_their_messages():
    """min_ratio 0 allowed, 1 not: kills __init____mutmut_9 (0 rejected), _10 _11 (1 accepted);
    messages: __init___6, _12, forward_4, _5 (gt shape), _7 (more anchors than the grid)."""
    CMINLoss(2, min_ratio=0.0)
    with pytest.raises(ValueError, match=r"^min_ratio must be in \[0, 1\), got 1.0$"):
        CMINLoss(2, min_ratio=1.0)
    with pytest.raises(ValueError, match=r"^grid_size must be >= 1, got 0$"):
        CMINLoss(0)
    out, _ = _cmin_case()
    with pytest.raises(ValueError, match=r"^gt_steps must be \[B=1, 2\] steps, got \(1, 3\)$"):
        CMINLoss(2)(out, torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"^the head has 2 anchors, more than the grid of 1$"):
        CMINLoss(1)(out, torch.zeros(1, 2))


def test_anchor_buffers_stay_out_of_the_state_dict():
    """The anchor grid is rebuilt from the config: a checkpoint holds only the layers' weights.
    Kills xǁ_AnchorHeadǁ__init____mutmut_11, _14, _17, _20 (and the other ``persistent=`` ones)."""
    assert set(TGNHead(3, 6, (1, 2)).state_dict()) == {"score.weight", "score.bias"}
    assert set(CMINHead(3, 6, (1, 3)).state_dict()) == {"score.weight", "score.bias", "reg.weight", "reg.bias"}


def test_anchor_grid_of_a_full_width_anchor_and_no_width():
    """Width T = 4 ending at the last step: the one anchor [0, 4) (step 3, width index 0).  Kills
    x_anchor_grid__mutmut_14 (``w < num_steps``); no widths: _2-_4 (the message)."""
    cands, steps, width = anchor_grid(4, (4,), "end")
    assert cands.tolist() == [[0.0, 4.0]] and steps.tolist() == [3] and width.tolist() == [0]
    with pytest.raises(ValueError, match="^no anchor widths$"):
        anchor_grid(4, (), "end")


def test_build_loss_passes_tgn_pos_iou_and_asks_for_the_training_moments():
    """Kills x_build_loss__mutmut_37, _38 (``tgn_pos_iou`` / ``tgn_neg_iou`` not passed: TGNLoss's
    defaults 0.5) and _7, _8 (the message of a missing ``train_moments``)."""
    import dataclasses
    from pathlib import Path

    from fian.config import load_params
    from fian.losses import build_loss

    cfg = load_params(Path(__file__).resolve().parents[1] / "params", "tacos", "tgn")
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, tgn_pos_iou=0.7, tgn_neg_iou=0.3))
    loss = build_loss(cfg, (torch.tensor([[10.0, 30.0]]), torch.tensor([200])))
    assert (loss.pos_iou, loss.neg_iou) == (0.7, 0.3)
    with pytest.raises(ValueError, match=r"^FIAN-TGN's loss weights come from the training set: build_loss\(cfg, "):
        build_loss(cfg)
    # CMIN's alpha and min_ratio, FIAN's offset unit, each set away from the losses' defaults:
    # kill _46, _47 (not passed) and _54 (offset_unit not passed)
    cfg = load_params(Path(__file__).resolve().parents[1] / "params", "tacos", "cmin")
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, alpha=0.25, cmin_min_iou_ratio=0.4))
    loss = build_loss(cfg)
    assert isinstance(loss, CMINLoss) and (loss.alpha, loss.min_ratio) == (0.25, 0.4)
    cfg = load_params(Path(__file__).resolve().parents[1] / "params", "tacos", "fian")
    for unit in ("steps", "window"):
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, offset_unit=unit))
        assert build_loss(cfg).offset_unit == unit


def test_training_moments_by_hand():
    """Moments in steps (seconds / duration * T) and the real length of each moment's video.
    ``training_moments`` reads only these attributes of a split.  Kills x_training_moments 1-10
    (run C of docs/MUTATION.md found no test of it in the fast selection)."""
    from types import SimpleNamespace

    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :8], mask[1, :5] = True, True
    split = SimpleNamespace(
        gt=torch.tensor([[0.0, 10.0], [5.0, 20.0], [2.0, 4.0]]),
        duration=torch.tensor([20.0, 40.0, 16.0]),
        num_steps=8,
        video_mask=mask,
        video_index=torch.tensor([1, 0, 1]),
    )
    gt, lengths = training_moments(split)
    torch.testing.assert_close(gt, torch.tensor([[0.0, 4.0], [1.0, 4.0], [1.0, 2.0]]))
    assert lengths.tolist() == [5, 8, 5]


# ---- second run, run C: sliding_windows, fian.model.build


def test_sliding_windows_of_size_one():
    """Window 1 at stride 1 on 3 steps: [0, 1), [1, 2), [2, 3).  Kills x_sliding_windows__mutmut_13
    and _14 (window 1 rejected)."""
    assert sliding_windows(3, (1,), (1,)).tolist() == [[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]


def test_model_strides_of_the_content_head_and_build_model_message():
    """Content head: theta_s = round(theta_k * 0.125) = 1, 2, 4, 8 for 8, 16, 32, 64 (S4.3), or
    ``stride_steps`` for every window.  Kills x_model_strides__mutmut_2-_4 (content given the anchor
    heads' 1s), _9 (``stride_steps`` dropped); x_build_model__mutmut_6 (the message)."""
    import dataclasses
    from pathlib import Path

    from fian.config import load_params
    from fian.model.build import build_model, model_strides

    cfg = load_params(Path(__file__).resolve().parents[1] / "params", "tacos", "fian")
    model = dataclasses.replace(cfg.model, head="content", window_sizes=[8, 16, 32, 64], stride_ratio=0.125)
    assert model_strides(dataclasses.replace(cfg, model=model)) == [1, 2, 4, 8]
    model = dataclasses.replace(model, stride_steps=3)
    assert model_strides(dataclasses.replace(cfg, model=model)) == [3, 3, 3, 3]
    with pytest.raises(ValueError, match=r"^build_model needs the embeddings matrix \(or, for tests, a vocab_size\)$"):
        build_model(cfg)


def test_build_model_uses_the_given_embeddings_frozen_as_configured():
    """The GloVe matrix given is the model's one embedding table, frozen iff
    ``model.freeze_embeddings``.  Kills x_build_model__mutmut_31, _51 (matrix not passed: a random
    table), _34, _54 (``freeze_embeddings`` not passed: None, not frozen) and _11 (the width check
    reads the row count: a [300, 301] matrix passes it)."""
    import dataclasses
    from pathlib import Path

    from torch import nn

    from fian.config import load_params
    from fian.model.build import build_model

    cfg = load_params(Path(__file__).resolve().parents[1] / "params", "tacos", "fian")
    emb = torch.randn(7, cfg.text.word_dim)
    for freeze in (True, False):
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, freeze_embeddings=freeze))
        tables = [m for m in build_model(c, emb).modules() if isinstance(m, nn.Embedding)]
        assert len(tables) == 1 and torch.equal(tables[0].weight, emb)
        assert tables[0].weight.requires_grad is (not freeze)
    with pytest.raises(ValueError, match=r"^embeddings are \(300, 301\), text.word_dim is 300$"):
        build_model(cfg, torch.zeros(300, 301))


# ---- second run, run D (docs/MUTATION.md section 3): build_attention, MaskedBiGRU.__init__,
# FIAN.validate, _rows, ContentHead.__init__


def test_build_attention_passes_the_dropout_on():
    """Kills model.attention.x_build_attention__mutmut_9 (cga) and _18 (cma): dropout not passed,
    the attention runs at the default 0.0 instead of the params' model.dropout."""
    from fian.model.attention import GuidedAttention, build_attention

    cga, cma = build_attention("cga", 8, 2, 0.3), build_attention("cma", 8, 2, 0.3)
    assert isinstance(cga, GuidedAttention) and cga.cma.dropout == 0.3
    assert isinstance(cma, MultiHeadAttention) and cma.dropout == 0.3


def test_masked_bigru_odd_hidden_message():
    """Kills model.encoders.xǁMaskedBiGRUǁ__init____mutmut_3 (message None)."""
    from fian.model.encoders import MaskedBiGRU

    with pytest.raises(ValueError, match=r"^BiGRU hidden size must be even \(two directions\), got 7$"):
        MaskedBiGRU(4, 7)


def _validate_case():
    """A FIAN of T = 16 steps, windows (4, 8), 25 words, n_q = 6, and three good rows."""
    from test_model import inputs, tiny_model

    return tiny_model(), *inputs()


def test_validate_messages_in_full():
    """Kills model.fian.xǁFIANǁvalidate__mutmut_11 (message None), _21 / _23 (the mask's name),
    _31 (the shape in the message read from ``ref.shape[:3]``), _64 / _66 (the rows of a too long
    query: None / any over everything), _69 / _70 (the end of that message)."""
    model, video, video_mask, words, word_mask = _validate_case()
    with pytest.raises(ValueError, match=r"^video must be a float tensor, got torch.int64$"):
        model.validate(video.long(), video_mask, words, word_mask)
    with pytest.raises(ValueError, match=r"^video_mask must be a bool tensor of shape \(3, 16\), got torch.int64 \(3, 16\)$"):
        model.validate(video, video_mask.long(), words, word_mask)
    with pytest.raises(ValueError, match=r"^word_mask must be a bool tensor of shape \(3, 5\), got torch.bool \(3, 4\)$"):
        model.validate(video, video_mask, words, word_mask[:, :4])
    long_words = torch.randint(2, 25, (3, 8))
    long_mask = torch.ones(3, 8, dtype=torch.bool)
    long_mask[0, 6:] = False  # row 0 fits n_q = 6; rows 1 and 2 do not
    with pytest.raises(ValueError, match=r"^query longer than text.max_query_len=6 words in batch rows \[1, 2\] "
                                         r"\(the data layer must truncate\)$"):  # fmt: skip
        model.validate(video, video_mask, long_words, long_mask)


def test_validate_vocabulary_range_and_the_padding_id():
    """Ids 1 .. V - 1 are words; V is outside the vocabulary; 0 is <pad> (fian.data.text.Vocab) and
    may not stand at a real position (a data-layer bug the model would read as a zero vector).
    Kills model.fian.xǁFIANǁvalidate__mutmut_76 (id V accepted) and _74, _75 (``words <= 0`` /
    ``< 1``: id 0 reported as outside the vocabulary, not as padding)."""
    model, video, video_mask, words, word_mask = _validate_case()
    words = words.clone()
    words[0, 0] = 1  # <unk>
    words[2, 0] = 24  # V - 1
    model.validate(video, video_mask, words, word_mask)
    words[1, 2] = 25
    with pytest.raises(ValueError, match=r"^word ids outside the vocabulary \[0, 25\) in batch rows \[1\]$"):
        model.validate(video, video_mask, words, word_mask)
    words[1, 2] = 0
    words[0, 1] = 0
    with pytest.raises(ValueError, match=r"^the padding id 0 \(<pad>\) at a real word position \(word_mask true\) "
                                         r"in batch rows \[0, 1\]$"):  # fmt: skip
        model.validate(video, video_mask, words, word_mask)
    words[~word_mask] = 0  # padding positions hold 0: fine
    words[1, 2], words[0, 1] = 3, 3
    model.validate(video, video_mask, words, word_mask)


def test_validate_accepts_a_video_exactly_as_long_as_the_smallest_window():
    """Windows (4, 8): 4 real steps are enough, 3 are not.  Kills model.fian.xǁFIANǁvalidate__mutmut_84
    (``<=``: 4 refused) and _87 (the rows listed with ``<=``)."""
    model, video, video_mask, words, word_mask = _validate_case()
    video_mask = torch.zeros_like(video_mask)
    video_mask[0, :4] = True
    video_mask[1, :16] = True
    video_mask[2, :4] = True
    model.validate(video, video_mask, words, word_mask)
    video_mask[1, 3:] = False  # row 1: 3 steps
    with pytest.raises(ValueError, match=r"^video shorter than the smallest window \(4 steps\) in batch rows \[1\]$"):
        model.validate(video, video_mask, words, word_mask)


def test_rows_lists_at_most_ten():
    """Kills model.fian.x__rows__mutmut_1 (11 rows)."""
    from fian.model.fian import _rows

    assert _rows(torch.ones(12, dtype=torch.bool)) == list(range(10))
    assert _rows(torch.tensor([False, True, False, True])) == [1, 3]


def test_content_head_shapes_and_state_dict_by_hand():
    """Per window size k at stride s: a score Conv1d(d, 1, k, s) and an offset Conv1d(d, 2, k, s);
    the candidates are a buffer outside the state_dict (checkpoints hold weights only).
    Kills model.localization.xǁContentHeadǁ__init____mutmut_26 (2 score channels, one unused),
    _6 and _15 (the candidates persistent)."""
    from fian.model.localization import ContentHead

    d, T = 5, 16
    head = ContentHead(d, T, [4, 8], [2, 4])
    sd = head.state_dict()
    assert "candidates" not in sd
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "score.0.weight": (1, d, 4), "score.0.bias": (1,), "score.1.weight": (1, d, 8), "score.1.bias": (1,),
        "offset.0.weight": (2, d, 4), "offset.0.bias": (2,), "offset.1.weight": (2, d, 8), "offset.1.bias": (2,),
    }  # fmt: skip
    # parameters by hand: sum over k of (d k + 1) + (2 d k + 2)
    assert sum(p.numel() for p in head.parameters()) == (5 * 4 + 1) + (10 * 4 + 2) + (5 * 8 + 1) + (10 * 8 + 2)
    # windows [0,4] [2,6] ... [12,16] (7) and [0,8] [4,12] [8,16] (3)
    assert head.candidates.shape == (10, 2) and head.candidates[-1].tolist() == [8.0, 16.0]


def test_build_model_passes_every_model_key_on():
    """Values unlike FIAN's constructor defaults (heads 8, self_attn_heads 8, ffn_dim 1024, dropout
    0.1, word_dim 300, iterate True) must reach the modules.  Kills model.build.x_build_model__mutmut_42
    (heads), _43 (self_attn_heads), _44 (ffn_dim), _45 (dropout), _48 (iterate), _53 (word_dim): each
    left to the constructor's default, which equals params/base.yaml's value."""
    import dataclasses

    from test_model import tiny_cfg
    from torch import nn

    from fian.model.attention import GuidedAttention
    from fian.model.build import build_model

    cfg = tiny_cfg()  # hidden 16, heads 2, self_attn_heads 2, ffn_dim 24, word_dim 8
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, self_attn_heads=4, dropout=0.25))
    model = build_model(cfg, vocab_size=25)
    assert isinstance(model.enc_a.attention, GuidedAttention) and model.enc_a.attention.cma.heads == 2
    assert model.video_encoder.self_attn.heads == 4
    assert [m.out_features for m in model.enc_a.ffn if isinstance(m, nn.Linear)] == [24, 16]
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.25}
    assert {m.dropout for m in model.modules() if isinstance(m, MultiHeadAttention)} == {0.25}
    assert model.query_encoder.embed.weight.shape == (25, 8)
    no_iter = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, iterate=False))  # fusion stays gate
    with pytest.raises(ValueError, match=r"^branch 'qv' without iterate gives no video representation"):
        build_model(no_iter, vocab_size=25)


# ---- third run (docs/MUTATION.md section 4): the functions the first two runs never reached on
# the current code, and the code changed since


@pytest.mark.parametrize("tau", [0.0, 1.0, -0.1, 1.5])
def test_fian_loss_tau_is_in_the_open_interval(tau):
    """tau = 0 would make every overlapping candidate positive, tau = 1 none.  Kills
    losses.xǁFIANLossǁ__init____mutmut_6 (``0 <= tau``) and _7 (``tau <= 1``)."""
    with pytest.raises(ValueError, match=rf"^tau must be in \(0, 1\), got {tau}$"):
        FIANLoss(tau=tau, alpha=1.0)
    FIANLoss(tau=0.55, alpha=1.0)  # the paper's value


def test_tgn_loss_names_the_shape_of_bad_lengths():
    """Kills losses.xǁTGNLossǁforward__mutmut_54, _56, _58 (the shape of wrong lengths not shown)."""
    loss, out = _tgn_case([True] * 4)
    out.lengths = torch.tensor([4, 4, 4])
    with pytest.raises(ValueError, match=r"needs ModelOutput.lengths \[B=1\], got \(3,\)$"):
        loss(out, torch.tensor([[0.0, 1.0]]))


def test_length_projection_starts_as_nn_linear_does():
    """W and b ~ U(-1/sqrt(n_q), 1/sqrt(n_q)) (nn.Linear's default, fan_in = n_q = 16: bound 0.25).
    Kills model.integration.xǁLengthProjectionǁ__init____mutmut_3, _4 (bound sqrt(n_q), 2 / sqrt),
    _10, _11, _16 (W ~ U(bound, 1), U(-bound, 1), constant bound), _21, _22, _24 (the same for b)."""
    from fian.model.integration import LengthProjection

    torch.manual_seed(0)
    proj = LengthProjection(16, 400)
    for p in (proj.weight, proj.bias):
        assert p.abs().max() <= 0.25
        assert p.min() < -0.2 and p.max() > 0.2  # both ends of the interval are reached
    assert proj.weight.shape == (400, 16) and proj.bias.shape == (400,)


def test_every_head_reports_the_real_lengths():
    """Kills model.localization.xǁContentHeadǁforward__mutmut_34, _40, _46 (lengths None, left out,
    summed over everything)."""
    from fian.model.localization import ContentHead

    mask = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    for head in (ContentHead(3, 8, [2, 4], [1, 2]), TGNHead(3, 8, [1, 2]), CMINHead(3, 8, [1, 3])):
        assert head(torch.randn(2, 8, 3), mask).lengths.tolist() == [8, 5]


def test_constructor_defaults_are_the_papers_values():
    """FIAN built directly (no params) is the paper's model: what its keyword defaults build equals
    params/base.yaml (read here with yaml, not through fian.config); the attention modules' own
    dropout default is 0 (a plain module).  Kills model.fian.xǁFIANǁ__init____mutmut_1-_16 (a
    default changed) and model.attention.xǁGuidedAttentionǁ__init____mutmut_1 (default 1.0)."""
    from pathlib import Path

    import yaml
    from torch import nn

    from fian.model.attention import GuidedAttention
    from fian.model.fian import FIAN
    from fian.model.localization import ContentHead

    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "params/base.yaml").read_text())
    m, text = base["model"], base["text"]
    assert (m["hidden"], m["heads"], text["word_dim"]) == (512, 8, 300)  # S4.3 (d_h, n heads), GloVe 300-d
    model = FIAN(feature_dim=4, num_steps=16, max_query_len=5, window_sizes=[4], strides=[1], vocab_size=7)
    assert model.query_encoder.embed.weight.shape == (7, text["word_dim"])
    assert model.query_encoder.embed.weight.requires_grad is (not m["freeze_embeddings"])
    assert model.video_encoder.proj.out_features == m["hidden"]
    assert model.video_encoder.self_attn.heads == m["self_attn_heads"]
    encs = [model.enc_a, model.enc_b, model.enc_c, model.enc_d]  # branches qv + vq, iterate: all four
    assert all(e is not None for e in encs) == (m["branches"] == ["qv", "vq"] and m["iterate"] and m["fusion"] == "gate")
    assert m["attention"] == "cga" and all(isinstance(e.attention, GuidedAttention) for e in encs)
    assert {e.attention.cma.heads for e in encs} == {m["heads"]}
    assert {e.ffn[0].out_features for e in encs} == {m["ffn_dim"]}
    assert {d.p for d in model.modules() if isinstance(d, nn.Dropout)} == {m["dropout"]}
    assert model.fusion.kind == model.fusion_kind == m["fusion"]
    assert m["head"] == "content" and isinstance(model.head, ContentHead)
    assert model.check_inputs is True
    assert GuidedAttention(8, 2).cma.dropout == 0.0 and MultiHeadAttention(8, 2).dropout == 0.0


def test_query_encoder_random_table_padding_row_freeze_and_message():
    """The random table (tests, benchmarks): 300-d and frozen by default; row 0 is the padding row
    (zeros, ``padding_idx`` 0, as in the GloVe branch).  Kills model.encoders.xǁQueryEncoderǁ__init__
    _1 (default 301), _2 (default not frozen), _20, _23, _24 (padding_idx None / 1), _26 (frozen
    when ``freeze=False``), _27-_30 (the message)."""
    from fian.model.encoders import QueryEncoder

    enc = QueryEncoder(16, vocab_size=7)
    assert enc.embed.weight.shape == (7, 300) and enc.embed.weight.requires_grad is False
    assert enc.embed.padding_idx == 0 and torch.equal(enc.embed.weight[0], torch.zeros(300))
    assert QueryEncoder(16, vocab_size=7, word_dim=8, freeze=False).embed.weight.requires_grad is True
    with pytest.raises(ValueError, match=r"^QueryEncoder needs embeddings \[V, word_dim\] or a vocab_size$"):
        QueryEncoder(16)


def _fian(**kw):
    from fian.model.fian import FIAN

    return FIAN(feature_dim=4, num_steps=16, max_query_len=5, window_sizes=[4], strides=[1], vocab_size=7,
                hidden=8, heads=2, self_attn_heads=2, ffn_dim=8, **kw)  # fmt: skip


def test_fian_refuses_impossible_structures_with_their_messages():
    """Kills model.fian.xǁFIANǁ__init____mutmut_17 (an unknown branch name passes), _26, _27 (its
    message), _29, _30 (the qv check never matches), _33-_36 (its message), _39, _40 (the gate check
    never matches), _42-_45 (its message)."""
    with pytest.raises(ValueError, match=r"^branches must be one or both of 'qv', 'vq', got \['qv', 'xx'\]$"):
        _fian(branches=("qv", "xx"))
    with pytest.raises(ValueError, match=r"^branches must be one or both of 'qv', 'vq', got \['vq', 'vq'\]$"):
        _fian(branches=("vq", "vq"))
    with pytest.raises(ValueError, match=r"^branch 'qv' without iterate gives no video representation \(Q1 only\)$"):
        _fian(branches=("qv",), iterate=False, fusion="concat")
    with pytest.raises(ValueError, match=r"^fusion 'gate' needs iterate=True \(it reads Q1/Q2\)$"):
        _fian(branches=("vq",), iterate=False, fusion="gate")
    _fian(branches=("vq",), iterate=False, fusion="none")  # FIAN-VQ: fine
