"""Temporal IoU, 1-D NMS and R@n / mIoU on hand-made cases (ties, exact thresholds, empty rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fian.metrics import (
    evaluate_predictions,
    is_hit,
    mean_iou,
    nms_1d,
    nms_thresholds,
    protocol,
    rank_with_nms,
    recall_at,
    temporal_iou,
)

NAN = float("nan")


def test_temporal_iou_by_hand_numpy_and_torch():
    a = [[0, 2], [0, 1], [3, 5], [0, 10], [2, 2], [2, 2], [NAN, NAN]]
    b = [[1, 3], [1, 2], [3, 5], [2, 4], [2, 2], [0, 4], [0, 1]]
    expect = [1 / 3, 0.0, 1.0, 0.2, 0.0, 0.0, NAN]  # touching intervals do not overlap (closed-open)
    np.testing.assert_allclose(temporal_iou(np.array(a, float), np.array(b, float)), expect)
    got = temporal_iou(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), expect)


def test_temporal_iou_broadcasts():
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 10, (3, 1, 2))
    a = np.sort(s, -1)
    b = np.sort(rng.uniform(0, 10, (1, 4, 2)), -1)
    out = temporal_iou(a, b)
    assert out.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert out[i, j] == pytest.approx(float(temporal_iou(a[i, 0], b[0, j])))
    np.testing.assert_allclose(temporal_iou(torch.tensor(a), torch.tensor(b)).numpy(), out)


def test_nms_greedy_with_ties_by_index():
    seg = np.array([[0, 10], [1, 10], [20, 30], [0, 9], [21, 30]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.9, 0.1])
    assert nms_1d(seg, scores, 0.5).tolist() == [0, 2]  # 0 and 3 tie: 0 first, then 3 overlaps it
    seg2 = seg[[3, 1, 2, 0, 4]]  # swap the tied pair: now [0, 9] comes first by index
    assert nms_1d(seg2, scores, 0.5).tolist() == [0, 2]
    assert nms_1d(seg, scores, 0.5, top_k=1).tolist() == [0]
    assert nms_1d(seg, scores, 0.95).tolist() == [0, 3, 1, 2, 4]  # nothing overlaps more than 0.95
    assert nms_1d(torch.tensor(seg), torch.tensor(scores), 0.5).tolist() == [0, 2]  # torch in


def test_nms_threshold_is_strict_and_skips_padding():
    seg = np.array([[0, 4], [0, 2], [5, 6]], float)  # IoU([0,4], [0,2]) = 0.5 exactly
    assert nms_1d(seg, np.array([0.9, 0.8, 0.1]), 0.5).tolist() == [0, 1, 2]  # suppress only when > 0.5
    assert nms_1d(seg, np.array([0.9, 0.8, 0.1]), 0.49).tolist() == [0, 2]
    assert nms_1d(seg, np.array([-np.inf, 0.2, -np.inf]), 0.5).tolist() == [1]
    assert nms_1d(np.zeros((0, 2)), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match=r"\[K, 2\]"):
        nms_1d(np.zeros((3, 3)), np.zeros(3), 0.5)


GT = np.array([[0, 10], [5, 15], [0, 4]], float)
PRED = np.array(
    [
        [[0, 5], [0, 10]],  # IoU 0.5, 1.0
        [[10, 15], [NAN, NAN]],  # IoU 0.5, then nothing
        [[NAN, NAN], [NAN, NAN]],  # no prediction: a miss
    ]
)


def test_recall_at_by_hand_with_exact_threshold_and_empty_rows():
    # default rule "gt" (S4.2: "larger than m"): IoU exactly 0.5 is NOT a hit at m = 0.5.
    # (Until issue 11 the code counted IoU >= m; this test then expected 2/3 at R@1,IoU=0.5.)
    r = recall_at(PRED, GT, ns=(1, 2, 5), ms=(0.5, 0.7))
    assert r == {
        "R@1,IoU=0.5": 0.0,  # queries 0 and 1 have top-1 IoU exactly 0.5
        "R@1,IoU=0.7": 0.0,
        "R@2,IoU=0.5": pytest.approx(1 / 3),  # query 0's second moment, IoU 1.0
        "R@2,IoU=0.7": pytest.approx(1 / 3),
        "R@5,IoU=0.5": pytest.approx(1 / 3),  # fewer than 5 predictions: what there is
        "R@5,IoU=0.7": pytest.approx(1 / 3),
    }
    # rule "ge" (CMIN's code): IoU exactly 0.5 counts at m = 0.5
    ge = recall_at(PRED, GT, ns=(1, 2, 5), ms=(0.5, 0.7), iou_rule="ge")
    assert ge == {
        "R@1,IoU=0.5": pytest.approx(2 / 3),
        "R@1,IoU=0.7": 0.0,
        "R@2,IoU=0.5": pytest.approx(2 / 3),
        "R@2,IoU=0.7": pytest.approx(1 / 3),
        "R@5,IoU=0.5": pytest.approx(2 / 3),
        "R@5,IoU=0.7": pytest.approx(1 / 3),
    }
    assert all(0 <= v <= 1 for v in r.values())
    assert recall_at(torch.tensor(PRED), torch.tensor(GT), ns=(1,), ms=(0.5,), iou_rule="ge") == {
        "R@1,IoU=0.5": pytest.approx(2 / 3)
    }
    with pytest.raises(ValueError, match="iou_rule must be one of"):
        recall_at(PRED, GT, iou_rule=">=")


def test_is_hit_at_exactly_m_and_nan():
    iou = np.array([0.3, 0.5, 0.7, np.nan])
    assert is_hit(iou, 0.5, "gt").tolist() == [False, False, True, False]
    assert is_hit(iou, 0.5, "ge").tolist() == [False, True, True, False]
    # exact IoU from intervals: [0, 4] vs [0, 8] is 0.5 exactly; [0, 7] vs [0, 10] is 0.7 exactly
    assert recall_at([[[0, 4]], [[0, 7]]], [[0, 8], [0, 10]], ns=(1,), ms=(0.5, 0.7)) == {
        "R@1,IoU=0.5": 0.5, "R@1,IoU=0.7": 0.0,
    }  # fmt: skip
    assert recall_at([[[0, 4]], [[0, 7]]], [[0, 8], [0, 10]], ns=(1,), ms=(0.5, 0.7), iou_rule="ge") == {
        "R@1,IoU=0.5": 1.0, "R@1,IoU=0.7": 0.5,
    }  # fmt: skip


# per-level NMS, by hand.  GT [0, 10].  A [4, 14] (IoU with GT 6/14 = 0.43) scores best,
# B [1, 11] (IoU 9/11 = 0.82) second, C [20, 30] (IoU 0) last.  IoU(A, B) = 7/13 = 0.54.
SEG3 = np.array([[[4, 14], [1, 11], [20, 30]]], float)
SC3 = np.array([[0.9, 0.8, 0.1]])
GT3 = np.array([[0, 10]], float)


def test_nms_thresholds_fixed_and_per_level():
    assert nms_thresholds((0.1, 0.3, 0.5, 0.7), "fixed", 0.5) == {0.1: 0.5, 0.3: 0.5, 0.5: 0.5, 0.7: 0.5}
    assert nms_thresholds((0.1, 0.3, 0.5, 0.7), "per_level", 0.5) == {0.1: 0.05, 0.3: 0.25, 0.5: 0.45, 0.7: 0.65}
    with pytest.raises(ValueError, match="nms must be one of"):
        nms_thresholds((0.5,), "cmin", 0.5)


def test_per_level_nms_differs_from_fixed_by_hand():
    # fixed at 0.5: B overlaps A by 0.54 > 0.5 -> dropped: top-5 = [A, C] at every m
    fixed_seg, fixed_sc = rank_with_nms(SEG3, SC3, 0.5)
    np.testing.assert_array_equal(fixed_seg[0, :2], [[4, 14], [20, 30]])
    assert np.isnan(fixed_seg[0, 2]).all() and fixed_sc[0, 2] == -np.inf
    # per level: m = 0.7 suppresses only above 0.65 -> B survives; m = 0.5 suppresses above 0.45 -> B dropped
    lists = {m: rank_with_nms(SEG3, SC3, t)[0] for m, t in nms_thresholds((0.3, 0.5, 0.7), "per_level", 0.5).items()}
    np.testing.assert_array_equal(lists[0.7][0], [[4, 14], [1, 11], [20, 30]])
    np.testing.assert_array_equal(lists[0.5][0, :2], [[4, 14], [20, 30]])
    fixed = evaluate_predictions(fixed_seg, GT3, ns=(1, 5), ms=(0.3, 0.5, 0.7))
    per = evaluate_predictions(lists, GT3, ns=(1, 5), ms=(0.3, 0.5, 0.7))
    assert fixed == {"R@1,IoU=0.3": 1.0, "R@1,IoU=0.5": 0.0, "R@1,IoU=0.7": 0.0,
                     "R@5,IoU=0.3": 1.0, "R@5,IoU=0.5": 0.0, "R@5,IoU=0.7": 0.0, "mIoU": pytest.approx(6 / 14)}  # fmt: skip
    assert per == {**fixed, "R@5,IoU=0.7": 1.0}  # R@5 at 0.7 above R@5 at 0.5: per-level NMS is not monotone
    with pytest.raises(ValueError, match=r"no ranked list for IoU level\(s\) \[0.3\]"):
        recall_at({0.5: fixed_seg}, GT3, ms=(0.3, 0.5))


def test_protocol_words():
    p = protocol("gt", "per_level", 0.5, (0.1, 0.5))
    assert p["hit"] == "IoU > m" and p["nms"] == "per_level" and "m=0.1: 0.05" in p["nms_at"]
    assert all(isinstance(v, str) for v in p.values())  # text only: DVC never reads it as a metric
    assert protocol("ge", "fixed", 0.4, (0.5,))["text"] == (
        "hit: IoU >= m (TALL's and CMIN's code); one ranked list, NMS at IoU 0.4 for every m"
    )
    assert protocol("gt", "fixed", 0.5, (0.5,), "2dtan")["text"] == (
        "preset 2dtan (2D-TAN's evaluator, microsoft/2D-TAN lib/core/eval.py): "
        "hit: IoU > m (S4.2 wording, 2D-TAN's code); one ranked list, NMS at IoU 0.5 for every m"
    )
    with pytest.raises(ValueError, match=r"preset must be 'custom' or one of \['2dtan', 'cmin', 'tall'\], got 'x'"):
        protocol("gt", "fixed", 0.5, (0.5,), "x")


def test_mean_iou_and_evaluate_predictions():
    assert mean_iou(PRED[:, 0], GT) == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    ev = evaluate_predictions(PRED, GT, ns=(1, 5), ms=(0.1, 0.3, 0.5, 0.7))
    assert set(ev) == {f"R@{n},IoU={m}" for n in (1, 5) for m in (0.1, 0.3, 0.5, 0.7)} | {"mIoU"}
    assert ev["mIoU"] == pytest.approx(1 / 3)
    assert ev["R@5,IoU=0.7"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "pred,gt,match",
    [
        (np.zeros((3, 2)), GT, r"\[Q, K, 2\]"),
        (PRED[:2], GT, "2 prediction rows but 3"),
        (np.zeros((0, 1, 2)), np.zeros((0, 2)), "empty"),
        (PRED, np.array([[0, 1], [NAN, 2], [0, 1]]), r"NaN in the ground truth of query rows \[1\]"),
        (PRED, GT[:, :1], r"gt must be \[Q, 2\]"),
    ],
)
def test_bad_metric_inputs(pred, gt, match):
    with pytest.raises(ValueError, match=match):
        evaluate_predictions(pred, gt)


def test_discounted_recall_by_hand():
    """dR@n,IoU=m (Yuan et al. 2021): r(n, m, q) * (1 - |p_s - g_s| / T) * (1 - |p_e - g_e| / T), by hand.

    q0: T = 10, gt [2, 6], top-1 [3, 6]: IoU 3/4 = 0.75; alpha_s = 1 - 1/10 = 0.9, alpha_e = 1 -> 0.9.
        top-2 [2, 6.5]: IoU 4/4.5 = 0.889; alpha = 1 * (1 - 0.05) = 0.95.
    q1: T = 20, gt [0, 10], top-1 [10, 20]: IoU 0 (a miss at every m); top-2 [0, 8]: IoU 0.8,
        alpha = 1 * (1 - 2/20) = 0.9.
    """
    from fian.metrics import discounted_recall_at

    pred = np.array([[[3.0, 6.0], [2.0, 6.5]], [[10.0, 20.0], [0.0, 8.0]]])
    gt = np.array([[2.0, 6.0], [0.0, 10.0]])
    d = np.array([10.0, 20.0])
    out = discounted_recall_at(pred, gt, d, ns=(1, 2), ms=(0.5, 0.8, 0.85), iou_rule="ge")
    # n = 1: only q0 hits at 0.5 (0.75 >= 0.5), at 0.8 / 0.85 nobody: (0.9 + 0) / 2
    assert out["dR@1,IoU=0.5"] == pytest.approx(0.45)
    assert out["dR@1,IoU=0.8"] == 0.0
    # n = 2, m = 0.5: q0 best hitting alpha = max(0.9, 0.95) = 0.95; q1 = 0.9 -> 0.925
    assert out["dR@2,IoU=0.5"] == pytest.approx((0.95 + 0.9) / 2)
    # m = 0.8 (ge): q0's second (0.889) and q1's second (0.8 >= 0.8) hit -> (0.95 + 0.9) / 2
    assert out["dR@2,IoU=0.8"] == pytest.approx((0.95 + 0.9) / 2)
    # m = 0.85: only q0's second (0.889) -> 0.95 / 2
    assert out["dR@2,IoU=0.85"] == pytest.approx(0.475)
    # the hit rule is R@n's: under "gt" q1's 0.8 does not hit at m = 0.8
    assert discounted_recall_at(pred, gt, d, ns=(2,), ms=(0.8,), iou_rule="gt")["dR@2,IoU=0.8"] == pytest.approx(0.475)
    # dR <= R, and a perfect prediction is not discounted
    perfect = discounted_recall_at(gt[:, None, :], gt, d, ns=(1,), ms=(0.5,))
    assert perfect == {"dR@1,IoU=0.5": 1.0}
    # evaluate_predictions adds them only with durations; per-level lists are scored level by level
    assert not any(k.startswith("dR@") for k in evaluate_predictions(pred, gt, (1,), (0.5,)))
    both = evaluate_predictions({0.5: pred, 0.8: pred[:, ::-1]}, gt, (1,), (0.5, 0.8), "ge", duration=d)
    # at 0.8 the reversed lists put q0 [2, 6.5] (0.889, alpha 0.95) and q1 [0, 8] (0.8, alpha 0.9) first
    assert both["dR@1,IoU=0.5"] == pytest.approx(0.45) and both["dR@1,IoU=0.8"] == pytest.approx(0.925)
    with pytest.raises(ValueError, match="duration must be finite and > 0"):
        discounted_recall_at(pred, gt, np.array([10.0, 0.0]))
